"""The README's walk-through, run line by line as a shell runs it, against real processes.

The commands are read from the first ```sh block of the README section below, so the README
cannot drift from what works. To extend the walk-through (create a guest, …), add its lines to
the README; if a line's output must show something, add an entry to `EXPECTED`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import frozen
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nanocore import cli, config, pidfile

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
SECTION = "## Try it with simulated Cells"
reactor: Any = global_reactor

#: The Cell link address the README names; the test uses the one the started Core logged.
README_LINK = "127.0.0.1:5600"
LINK_LOGGED = re.compile(r"Cell link \(TLS\) on (127\.0\.0\.1:\d+)")
#: How long a step that waits for the Cells may be repeated.
EVENTUALLY_SECONDS = 30.0
RETRY_INTERVAL = 0.25


def walk_through(readme: str) -> list[str]:
    """The command lines of the first ```sh block after the walk-through's heading."""
    section = readme[readme.index(SECTION) :]
    block = re.search(r"^```sh\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    if block is None:
        raise ValueError(f"no ```sh block under {SECTION!r}")
    return [line for line in block.group(1).splitlines() if line.strip()]


def names(document: Any) -> list[str]:
    return [entry["name"] for entry in document["data"] or []]


@frozen
class Expect:
    """What a command's JSON output must show; `eventually`: repeat it until it does."""

    holds: Callable[[Any], bool]
    eventually: bool = False


#: Checks beyond "exits 0", by README line. Every key must be a line of the walk-through.
EXPECTED: dict[str, Expect] = {
    "nanocore call GET /compute_pool_cells/": Expect(
        lambda d: {"Cell_sim000000", "Cell_sim000001", "Cell_sim000002"} <= set(names(d)),
        eventually=True,
    ),
    "nanocore call POST /compute_pool_cells/default/Cell_sim000000": Expect(
        lambda d: d["error_code"] == 0
    ),
    "nanocore call GET /compute_pool_status/": Expect(
        lambda d: (
            [(p["name"], p["cells"], p["max_cpu"] > 0) for p in d["data"]]
            == [("default", [0, 1], True)]
        ),
        eventually=True,
    ),
}


class WalkThroughParsingTests(SynchronousTestCase):
    def test_every_expectation_names_a_line_of_the_readme(self) -> None:
        lines = walk_through(README.read_text(encoding="utf-8"))
        self.assertEqual([key for key in EXPECTED if key not in lines], [])
        self.assertEqual((lines[0], lines[-1]), ("nanocore start", "nanocore stop"))

    def test_reads_only_the_sh_block_of_the_section(self) -> None:
        text = "# x\n```sh\nnot this\n```\n" + SECTION + "\nSome words.\n```sh\na\n\nb\n```\n"
        self.assertEqual(walk_through(text), ["a", "b"])


class WalkThroughTests(TestCase):
    """Each README line in a fresh folder, through /bin/sh, with `nanocore` and `twistd` on
    PATH running this checkout; only the API port (any free one: api.cfg says 0) and the Cell
    link port (the one Core logged) differ from the README."""

    timeout = 180

    def setUp(self) -> None:
        self.root = Path(self.mktemp()).absolute()
        self.root.mkdir()
        bin_dir = self.root / "bin"
        bin_dir.mkdir()
        python = shlex.quote(sys.executable)
        wrappers = {
            "nanocore": f'exec {python} -m nanocore "$@"',
            "twistd": f'exec {python} -c {shlex.quote(cli.TWISTD_BOOTSTRAP)} "$@"',
        }
        for name, body in wrappers.items():
            path = bin_dir / name
            path.write_text(f"#!/bin/sh\n{body}\n")
            path.chmod(0o755)
        self.environment = dict(
            os.environ,
            PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONPATH=str(REPO_ROOT),
        )
        config_dir = self.root / "config"
        config.ensure_config(config_dir, cert_dir=self.root / "cert")
        api_file = config_dir / config.API_FILE
        api = json.loads(api_file.read_text())
        api["port"] = 0  # the daemon reports the port it got in data/api.port
        api_file.write_text(json.dumps(api))
        self.addCleanup(self.stop_everything)

    def simulator_pid(self) -> int | None:
        """The pid of the running `nanocell-sim` daemon this test started, if it runs."""
        pid = pidfile.read_pid(self.root / "data" / "sim.pid")
        if pid is None:
            return None
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        return pid if b"nanocell-sim" in argv else None

    async def until_simulator_exits(self) -> bool:
        for _ in range(100):
            if self.simulator_pid() is None:
                return True
            await deferLater(reactor, 0.1, lambda: None)
        return False

    async def stop_everything(self) -> None:
        """Whatever a failed step left running: the simulated Cells, then nanocore."""
        sim = self.simulator_pid()
        if sim is not None:
            os.kill(sim, signal.SIGTERM)
            await self.until_simulator_exits()
        await self.shell(f"nanocore halt --data-dir {shlex.quote(str(self.root / 'data'))}")

    async def shell(self, line: str) -> tuple[int, str]:
        out, err, code = await getProcessOutputAndValue(
            "/bin/sh", ["-c", line], env=self.environment, path=str(self.root), reactor=reactor
        )
        return code, (out + err).decode("utf-8", errors="replace")

    def link_address(self) -> str:
        found = LINK_LOGGED.findall((self.root / "log" / "core.log").read_text())
        self.assertTrue(found, "the started Core logged no Cell link address")
        return str(found[-1])

    async def run_step(self, line: str) -> None:
        expect = EXPECTED.get(line)
        command = (
            line.replace(README_LINK, self.link_address()) if "nanocell-sim" in line else line
        )
        waited = 0.0
        while True:
            code, text = await self.shell(command)
            held = code == 0 and (expect is None or expect.holds(json.loads(text)))
            if held:
                return
            if expect is None or not expect.eventually or waited >= EVENTUALLY_SECONDS:
                self.fail(f"README step {line!r} (exit {code}) did not do what it says:\n{text}")
            await deferLater(reactor, RETRY_INTERVAL, lambda: None)
            waited += RETRY_INTERVAL

    async def test_the_walk_through_runs_as_written(self) -> None:
        for line in walk_through(README.read_text(encoding="utf-8")):
            await self.run_step(line)
        self.assertIsNone(pidfile.running_pid(self.root / "data" / "core.pid"))
        self.assertTrue(await self.until_simulator_exits(), "the simulated Cells still run")
