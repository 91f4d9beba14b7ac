"""Real multicast discovery, inside a network namespace this test creates (only ``lo``).

Nothing leaves the machine: the namespace has no interface but its own loopback, and the
multicast route points at it. Skipped, with the reason, where namespaces are unavailable.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

PROJECT_ROOT = Path(__file__).resolve().parent.parent


async def _run(*argv: str) -> tuple[bytes, bytes, int]:
    out, err, code = await getProcessOutputAndValue(
        argv[0], argv[1:], env=dict(os.environ), path=str(PROJECT_ROOT), reactor=reactor
    )
    return out, err, code


class RealMulticastTests(TestCase):
    timeout = 60

    async def _namespace(self) -> str:
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            raise SkipTest("network namespaces need root")
        ip = shutil.which("ip")
        if ip is None:
            raise SkipTest("the `ip` command (iproute2) is not installed")
        name = f"nanocore-disc-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        _, err, code = await _run(ip, "netns", "add", name)
        if code != 0:
            raise SkipTest(f"`ip netns add` failed: {err.decode(errors='replace').strip()}")

        async def delete() -> None:
            await _run(ip, "netns", "delete", name)

        self.addCleanup(delete)
        for step in (
            ("link", "set", "lo", "up"),
            ("link", "set", "lo", "multicast", "on"),
            ("route", "add", "224.0.0.0/4", "dev", "lo", "src", "127.0.0.1"),
        ):
            _, err, code = await _run(ip, "netns", "exec", name, ip, *step)
            if code != 0:
                raise SkipTest(f"cannot prepare the namespace ({' '.join(step)}): {err!r}")
        return name

    async def test_ping_gets_the_echo_over_real_multicast(self) -> None:
        name = await self._namespace()
        ip = shutil.which("ip")
        assert ip is not None
        out, err, code = await _run(
            ip, "netns", "exec", name, sys.executable, "-m", "tests.netns_discovery_probe"
        )
        self.assertEqual(code, 0, err.decode(errors="replace"))
        result = json.loads(out.decode().strip().splitlines()[-1])
        self.assertEqual(result["requestor"], "127.0.0.1")
        self.assertEqual(result["core"], ["core", "tls", "127.0.0.1", 5600])
        self.assertTrue(0 <= result["id"] < 0xFFFF)
        self.assertEqual(result["echoes_sent"], 1)
        self.assertEqual(result["other_domain"], "unanswered")
