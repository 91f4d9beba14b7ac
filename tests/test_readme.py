"""The README's walk-throughs, run line by line as a shell runs them, against real processes.

The commands are read from the ```sh blocks of the README section below (the first: Core and
a guest; the second: migration and failover between two simulators), so the README cannot
drift from what works. To extend a walk-through, add its lines to the README; if a line's
output must show something, or gives a value later lines name (`GUEST_ID`), add an entry to
its block's expectations (`EXPECTED`, `FAILOVER_EXPECTED`).

The simulated Cells find Core by multicast discovery, as the README says. Every process runs
inside a network namespace the test creates (only `lo`), so no ping reaches another nanocore
of this host and nothing leaves it; where no namespace can be made, the Cells are given the
Cell link Core logged instead (`--core`), and the rest runs as written.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import frozen
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from nanocore import cli, config, pidfile
from tests import test_discovery_netns

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
SECTION = "## Try it with simulated Cells"
reactor: Any = global_reactor

#: How the README's Cells find Core; without a namespace they are given the logged link.
DISCOVER = "--discover"
LINK_LOGGED = re.compile(r"Cell link \(TLS\) on (127\.0\.0\.1:\d+)")
#: How long a step that waits for the Cells may be repeated.
EVENTUALLY_SECONDS = 30.0
RETRY_INTERVAL = 0.25


def walk_through(readme: str, index: int = 0) -> list[str]:
    """The command lines of the ``index``-th ```sh block after the walk-through's heading
    (within its section)."""
    section = readme[readme.index(SECTION) :]
    following = re.search(r"^## ", section[len(SECTION) :], re.MULTILINE)
    if following is not None:
        section = section[: len(SECTION) + following.start()]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    if len(blocks) <= index:
        raise ValueError(f"no ```sh block {index} under {SECTION!r}")
    return [line for line in blocks[index].splitlines() if line.strip()]


#: The README's create line (its JSON makes it long).
CREATE_LINE = (
    'nanocore call POST /guests/ \'{"name": "vm1", "owner": "demo", "group": "demo", '
    '"pool": "default", "template": "TEMPLATE_ID", "cores": 1, "memory": 1073741824, '
    '"disks": [10737418240]}\''
)


def names(document: Any) -> list[str]:
    return [entry["name"] for entry in document["data"] or []]


def succeeded(document: Any) -> bool:
    return bool(document["error_code"] == 0)


@frozen
class Expect:
    """What a command's JSON output must show; `eventually`: repeat it until it does;
    `gives`: the placeholders later lines name, read from this line's output."""

    holds: Callable[[Any], bool] = succeeded
    eventually: bool = False
    gives: tuple[tuple[str, Callable[[Any], str]], ...] = ()


#: Checks beyond "exits 0", by README line. Every key must be a line of the walk-through.
EXPECTED: dict[str, Expect] = {
    "nanocore call GET /compute_pool_cells/": Expect(
        lambda d: {"Cell_sim000000", "Cell_sim000001", "Cell_sim000002"} <= set(names(d)),
        eventually=True,
    ),
    "nanocore call POST /compute_pool_cells/default/Cell_sim000000": Expect(),
    "nanocore call GET /compute_pool_status/": Expect(
        lambda d: (
            [(p["name"], p["cells"], p["max_cpu"] > 0) for p in d["data"]]
            == [("default", [0, 1], True)]
        ),
        eventually=True,
    ),
    "nanocore call GET /templates/": Expect(
        lambda d: len(d["data"]) == 5, gives=(("TEMPLATE_ID", lambda d: d["data"][0]["id"]),)
    ),
    CREATE_LINE: Expect(gives=(("GUEST_ID", lambda d: d["data"]["id"]),)),
    "nanocore call GET /guests/GUEST_ID": Expect(
        lambda d: (d["data"]["name"], d["data"]["created"]) == ("demo.vm1", True),
        eventually=True,
    ),
    "nanocore call POST /instances/GUEST_ID '{}'": Expect(),
    "nanocore call GET /instances/GUEST_ID": Expect(
        lambda d: d["data"]["running"] and d["data"]["cell"] == "Cell_sim000000",
        eventually=True,
    ),
    "nanocore call DELETE /instances/GUEST_ID '{}'": Expect(),
    "nanocore call GET /instance_status/default": Expect(
        lambda d: [(g["name"], g["running"]) for g in d["data"]] == [("demo.vm1", False)],
        eventually=True,
    ),
    "nanocore call DELETE /guests/GUEST_ID '{}'": Expect(),
}


SHARED_POOL = "shared"
CELL_A, CELL_B = "Cell_a000000", "Cell_b000000"
#: The failover walk-through's create line.
SHARED_CREATE_LINE = CREATE_LINE.replace('"vm1"', '"vm2"').replace('"default"', '"shared"')
MIGRATE_LINE = (
    'nanocore call POST /migrations/ \'{"source_pool": "shared", "source_cell": "Cell_a000000", '
    '"target_cell": "Cell_b000000", "instances": ["GUEST_ID"]}\''
)


def on_cell_a(document: Any) -> bool:
    """The guest is created and served by Cell A: neither lost nor migrating."""
    guest = document["data"]
    return bool(
        guest["created"]
        and guest["cell"] == CELL_A
        and not guest.get("lost")
        and not guest.get("migrating")
    )


#: Checks of the second block (migration and failover), as for `EXPECTED`.
FAILOVER_EXPECTED: dict[str, Expect] = {
    "nanocore call GET /compute_pool_cells/": Expect(
        lambda d: {CELL_A, CELL_B} <= set(names(d)), eventually=True
    ),
    f"nanocore call POST /compute_pool_cells/{SHARED_POOL}/{CELL_A}": Expect(),
    f"nanocore call POST /compute_pool_cells/{SHARED_POOL}/{CELL_B}": Expect(),
    "nanocore call GET /templates/": EXPECTED["nanocore call GET /templates/"],
    SHARED_CREATE_LINE: Expect(gives=(("GUEST_ID", lambda d: d["data"]["id"]),)),
    # Created on A; after B is killed, back on A.
    "nanocore call GET /guests/GUEST_ID": Expect(on_cell_a, eventually=True),
    MIGRATE_LINE: Expect(gives=(("MIGRATION_ID", lambda d: d["data"]["id"]),)),
    "nanocore call GET /migrations/MIGRATION_ID": Expect(
        lambda d: d["data"] == {"finished": True, "progress": 100}, eventually=True
    ),
    "nanocore call GET /instances/GUEST_ID": Expect(lambda d: d["data"]["cell"] == CELL_B),
    "nanocore call GET /migrations/": Expect(
        lambda d: len(d["data"]) == 2 and all(m["finished"] for m in d["data"]),
        eventually=True,
    ),
}
#: Each block of the section, with its checks.
BLOCKS = (EXPECTED, FAILOVER_EXPECTED)


class WalkThroughParsingTests(SynchronousTestCase):
    def test_every_expectation_names_a_line_of_the_readme(self) -> None:
        for index, expected in enumerate(BLOCKS):
            lines = walk_through(README.read_text(encoding="utf-8"), index)
            self.assertEqual([key for key in expected if key not in lines], [])
            self.assertEqual((lines[0], lines[-1]), ("nanocore start", "nanocore stop"))
            # A value is named only after the line that gives it.
            given: set[str] = set()
            for line in lines:
                named = set(re.findall(r"\b[A-Z]+_ID\b", line))
                self.assertLessEqual(named, given, line)
                given.update(name for name, _ in expected.get(line, Expect()).gives)

    def test_reads_only_the_sh_blocks_of_the_section(self) -> None:
        text = (
            "# x\n```sh\nnot this\n```\n" + SECTION + "\nSome words.\n```sh\na\n\nb\n```\n"
            "More.\n```sh\nc\n```\n## Next\n```sh\nnor this\n```\n"
        )
        self.assertEqual((walk_through(text), walk_through(text, 1)), (["a", "b"], ["c"]))
        self.assertRaises(ValueError, walk_through, text, 2)


class WalkThroughTests(TestCase):
    """Each README line in a fresh folder, through /bin/sh, with `nanocore` and `twistd` on
    PATH running this checkout, inside a network namespace of its own where one can be made;
    only the API port (any free one: api.cfg says 0) differs from the README, and the values
    earlier answers give (`TEMPLATE_ID`, `GUEST_ID`) are put where the README names them."""

    timeout = 180

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._set_up())

    async def _set_up(self) -> None:
        #: The namespace every line runs in (made first, so that it is removed last).
        self.namespace: str | None
        try:
            self.namespace = await test_discovery_netns.RealMulticastTests._namespace(self)  # type: ignore[arg-type]
        except SkipTest:
            self.namespace = None
        self.given: dict[str, str] = {}
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

    def simulator_pids(self) -> list[int]:
        """The pids of the running `nanocell-sim` daemons this test started (`data/sim*.pid`)."""
        running = []
        for path in sorted((self.root / "data").glob("sim*.pid")):
            pid = pidfile.read_pid(path)
            if pid is None:
                continue
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"nanocell-sim" in argv:
                running.append(pid)
        return running

    async def until_simulator_exits(self) -> bool:
        for _ in range(100):
            if not self.simulator_pids():
                return True
            await deferLater(reactor, 0.1, lambda: None)
        return False

    async def stop_everything(self) -> None:
        """Whatever a failed step left running: the simulated Cells, then nanocore."""
        sims = self.simulator_pids()
        for sim in sims:
            os.kill(sim, signal.SIGTERM)
        if sims:
            await self.until_simulator_exits()
        await self.shell(f"nanocore halt --data-dir {shlex.quote(str(self.root / 'data'))}")

    async def shell(self, line: str) -> tuple[int, str]:
        argv = ["/bin/sh", "-c", line]
        if self.namespace is not None:
            ip = shutil.which("ip")
            assert ip is not None
            argv = [ip, "netns", "exec", self.namespace, *argv]
        out, err, code = await getProcessOutputAndValue(
            argv[0], argv[1:], env=self.environment, path=str(self.root), reactor=reactor
        )
        return code, (out + err).decode("utf-8", errors="replace")

    def link_address(self) -> str:
        found = LINK_LOGGED.findall((self.root / "log" / "core.log").read_text())
        self.assertTrue(found, "the started Core logged no Cell link address")
        return str(found[-1])

    def command(self, line: str) -> str:
        """The line as it runs here: earlier answers in place of their names."""
        for name, value in self.given.items():
            line = line.replace(name, value)
        if self.namespace is None and "nanocell-sim" in line:
            line = line.replace(DISCOVER, f"--core {self.link_address()}")
        return line

    async def run_step(self, line: str, expected: dict[str, Expect]) -> None:
        expect = expected.get(line)
        command = self.command(line)
        waited = 0.0
        while True:
            code, text = await self.shell(command)
            held = code == 0 and (expect is None or expect.holds(json.loads(text)))
            if held:
                if expect is not None:
                    document = json.loads(text)
                    self.given.update((name, read(document)) for name, read in expect.gives)
                return
            if expect is None or not expect.eventually or waited >= EVENTUALLY_SECONDS:
                self.fail(f"README step {line!r} (exit {code}) did not do what it says:\n{text}")
            await deferLater(reactor, RETRY_INTERVAL, lambda: None)
            waited += RETRY_INTERVAL

    async def walk(self, index: int) -> None:
        for line in walk_through(README.read_text(encoding="utf-8"), index):
            await self.run_step(line, BLOCKS[index])
        self.assertIsNone(pidfile.running_pid(self.root / "data" / "core.pid"))
        self.assertTrue(await self.until_simulator_exits(), "the simulated Cells still run")

    async def test_the_walk_through_runs_as_written(self) -> None:
        await self.walk(0)

    async def test_migration_and_failover_run_as_written(self) -> None:
        """Two simulators share a folder as NFS storage; a guest migrates from A to B, and
        fails over back to A when B is killed."""
        await self.walk(1)
