"""Interop with kcp-go: a small Go Cell of ours (tests/go/fakecell) against Core's KCP link.

The Go Cell is built once per test process from Debian's ``golang-go`` and
``golang-github-xtaci-kcp-dev`` (GOPATH mode, no network) and run as a real process against
Core's real KCP endpoint on 127.0.0.1, through a small UDP relay of ours that can lose datagrams
in both directions and checks the FEC framing of everything it carries (``tests/gocell.py``).
With discovery, everything runs inside a network namespace the test creates (only ``lo``, the
multicast route on it): the Go Cell finds Core's discovery listener by multicast there, and
nothing leaves the machine. Skipped, with the reason, where Go, kcp-go or namespaces are not
available.
"""

from __future__ import annotations

import json
import shutil
import sys

from twisted.trial.unittest import TestCase

from nanocore.cluster.message import MessageID
from nanocore.cluster.transport import DISCONNECT_AFTER
from tests import test_discovery_netns
from tests.gocell import (
    CELL,
    CORE_NAME,
    PAYLOAD,
    STEP,
    CoreSide,
    GoCell,
    Relay,
    built_cell,
    reactor,
)


class InteropTests(TestCase):
    timeout = 240

    async def start(self, loss: float) -> tuple[CoreSide, GoCell, Relay]:
        """Core's KCP endpoint, a relay in front of it, and the Go Cell dialing the relay."""
        binary = await built_cell()
        core = CoreSide()
        self.addCleanup(core.stop)
        relay = Relay(core.address, loss)
        self.addCleanup(relay.stop)
        cell = GoCell.spawn(binary, "-core", relay.address, "-name", CELL, "-report", "500ms")
        self.addCleanup(cell.kill)
        return core, cell, relay

    def check_exchange(self, facts: dict[str, object]) -> None:
        self.assertEqual(facts["core_name_seen_by_cell"], CORE_NAME)
        self.assertEqual(facts["status"], [4, 12.5, 8 << 30])
        self.assertEqual(facts["reply_id"], MessageID.QueryCellStorageResponse)
        self.assertIs(facts["reply_digest_matches"], True)
        self.assertIs(facts["cell_digest_matches"], True)
        self.assertEqual(facts["reply_size"], PAYLOAD)
        self.assertGreaterEqual(facts["returned_bytes"], PAYLOAD)  # type: ignore[arg-type]
        self.assertEqual(facts["state"], "alive")

    def check_fec(self, relay: Relay) -> None:
        self.assertEqual(set(relay.fec().values()), {True}, relay.fec())

    async def test_go_cell_links_reports_and_exchanges_200_kb_both_ways(self) -> None:
        core, cell, relay = await self.start(loss=0.0)
        self.check_exchange(await core.exchange(cell))
        self.check_fec(relay)
        # Stopped dead: no goodbye. Once the process is gone, Core's clock moves on.
        self.assertLessEqual(await core.disconnect_after_kill(cell), DISCONNECT_AFTER + 0.5)
        self.assertEqual(core.waiter.disconnected, {CELL: False})

    async def test_go_cell_survives_10_percent_loss_both_ways(self) -> None:
        core, cell, relay = await self.start(loss=0.10)
        self.check_exchange(await core.exchange(cell))
        self.check_fec(relay)
        self.assertGreater(relay.lost["cell"], 0)
        self.assertGreater(relay.lost["core"], 0)

    async def test_go_cell_that_stops_says_goodbye(self) -> None:
        core, cell, _ = await self.start(loss=0.0)
        await core.waiter.until_reported({CELL}).addTimeout(STEP, reactor)
        gone = core.waiter.until_disconnected(CELL)
        await cell.kill("TERM")
        self.assertTrue(await gone.addTimeout(STEP, reactor))
        await cell.until("stopped")


class DiscoveredInteropTests(TestCase):
    """The Go Cell discovers nanocore by multicast inside a network namespace, dials the first
    entry it is given (the KCP link) with FEC 10/3 through 10% loss each way, and is seen
    disconnected within 20 s after it dies (tests/netns_kcp_probe.py runs it all there)."""

    timeout = 240

    async def test_go_cell_discovers_core_and_links_through_loss(self) -> None:
        binary = await built_cell()
        namespace = await test_discovery_netns.RealMulticastTests._namespace(self)  # type: ignore[arg-type]
        ip = shutil.which("ip")
        assert ip is not None
        out, err, code = await test_discovery_netns._run(
            ip, "netns", "exec", namespace, sys.executable, "-m", "tests.netns_kcp_probe",
            binary,
        )  # fmt: skip
        self.assertEqual(code, 0, err.decode(errors="replace"))
        result = json.loads(out.decode().strip().splitlines()[-1])
        discovered = result["discovered"]
        self.assertEqual(
            (discovered["protocol"], discovered["address"], discovered["requestor"]),
            ("kcp", "127.0.0.1", "127.0.0.1"),
        )
        self.assertEqual(discovered["port"], result["kcp_port"])
        self.assertGreaterEqual(result["echoes_sent"], 1)
        self.check_exchange(result["exchange"])
        self.assertEqual(set(result["fec"].values()), {True}, result["fec"])
        self.assertGreater(result["lost"]["cell"], 0)
        self.assertGreater(result["lost"]["core"], 0)
        self.assertLessEqual(result["disconnected_after"], 20.0)
        self.assertEqual(result["disconnected"], {CELL: False})

    check_exchange = InteropTests.check_exchange
