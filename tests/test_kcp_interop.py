"""Interop with kcp-go: a small Go Cell of ours (tests/go/fakecell) against Core's KCP link.

The Go Cell is built once per test process from Debian's ``golang-go`` and
``golang-github-xtaci-kcp-dev`` (GOPATH mode, no network) and run as a real process against
Core's real KCP endpoint on 127.0.0.1, through a small UDP relay of ours that can lose datagrams
in both directions and checks the FEC framing of everything it carries. Core's link timers
(keepalive, loss, disconnect) and transactions run on a Clock that follows real time while the
Go Cell runs, and is moved on at once after it stops, so "disconnected within 20 s" costs no
20 s of waiting. Skipped, with the reason, where Go or kcp-go is not installed.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import random
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol, ProcessProtocol
from twisted.internet.task import Clock, LoopingCall
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from nanocore.cluster.cells import CellLiveness, CellRegistry
from nanocore.cluster.kcp.endpoint import KCPEndpoint
from nanocore.cluster.kcp.fec import DATA_SHARDS, SHARDS_PER_GROUP, TYPE_DATA, TYPE_PARITY
from nanocore.cluster.kcp.link import core_sessions
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.cluster.transactions import Transactions
from nanocore.cluster.transport import DISCONNECT_AFTER
from nanocore.testing.cluster import Waiter

reactor: Any = _reactor
LOOPBACK = "127.0.0.1"
SOURCE = Path(__file__).resolve().parent / "go" / "fakecell"
GOPATH = "/usr/share/gocode"  # where Debian's golang-*-dev packages install their sources
CELL = "Cell_0000000000aa"
CORE_NAME = "Core_5254000a0b0c"
PAYLOAD = 200_000
#: Real seconds any one step of a test may take (handshakes under 10% loss included).
STEP = 60.0

_built: dict[str, str] = {}


def go_binary() -> str:
    """The Go toolchain, or SkipTest saying what to install."""
    go = shutil.which("go") or next(
        (str(p) for p in sorted(Path("/usr/lib").glob("go-*/bin/go")) if p.exists()), None
    )
    if go is None:
        raise SkipTest("Go is not installed (apt-get install golang-go)")
    if not (Path(GOPATH) / "src/github.com/xtaci/kcp-go").is_dir():
        raise SkipTest(f"kcp-go is not in {GOPATH} (apt-get install golang-github-xtaci-kcp-dev)")
    return go


async def built_cell() -> str:
    """Build the Go Cell once per test process, into a temporary directory."""
    if "path" in _built:
        return _built["path"]
    go = go_binary()
    folder = tempfile.mkdtemp(prefix="nanocore-gocell-")
    atexit.register(shutil.rmtree, folder, True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GO111MODULE": "off",
        "GOPATH": GOPATH,
        "GOPROXY": "off",
        "GOFLAGS": "",
        "GOCACHE": os.environ.get("GOCACHE") or str(Path(folder) / "cache"),
    }
    if "HOME" in os.environ and "GOCACHE" not in os.environ:
        env["GOCACHE"] = str(Path(os.environ["HOME"]) / ".cache" / "go-build")
    binary = str(Path(folder) / "fakecell")
    out, err, code = await getProcessOutputAndValue(
        go, ["build", "-o", binary, "."], env=env, path=str(SOURCE), reactor=reactor
    )
    if code != 0:
        raise AssertionError(f"go build failed ({code}):\n{out.decode()}{err.decode()}")
    _built["path"] = binary
    return binary


class GoCell(ProcessProtocol):
    """The Go Cell's process: its JSON event lines, and Deferreds waiting for them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        self._waiting: list[tuple[Callable[[dict[str, Any]], bool], Deferred[dict[str, Any]]]] = []
        self.ended: Deferred[None] = Deferred()
        self.stderr = b""

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            event = json.loads(line)
            self.events.append(event)
            for entry in list(self._waiting):
                if entry[0](event):
                    self._waiting.remove(entry)
                    entry[1].callback(event)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)

    def until(self, name: str, **fields: Any) -> Deferred[dict[str, Any]]:
        """Fires with the first event (past or future) called ``name`` with ``fields``."""

        def matches(event: dict[str, Any]) -> bool:
            return event["event"] == name and all(event.get(k) == v for k, v in fields.items())

        d: Deferred[dict[str, Any]] = Deferred()
        seen = next((event for event in self.events if matches(event)), None)
        if seen is not None:
            d.callback(seen)
        else:
            self._waiting.append((matches, d))
        return d.addTimeout(STEP, reactor)


class Relay:
    """UDP between the Go Cell and Core that loses ``loss`` of the datagrams each way, and
    records the FEC flag and seqid of each datagram it carries."""

    def __init__(self, core: tuple[str, int], loss: float, seed: int = 13) -> None:
        self._random = random.Random(seed)
        self._loss = loss
        self._cell: tuple[str, int] | None = None
        self.shards: dict[str, list[tuple[int, int]]] = {"cell": [], "core": []}
        self.lost = {"cell": 0, "core": 0}
        relay = self

        class Front(DatagramProtocol):
            def datagramReceived(self, datagram: bytes, addr: Any) -> None:
                relay._cell = addr
                relay._carry("cell", datagram, lambda d: relay.back.write(d))

        class Back(DatagramProtocol):
            def datagramReceived(self, datagram: bytes, addr: Any) -> None:
                if relay._cell is not None:
                    relay._carry("core", datagram, lambda d: relay.front.write(d, relay._cell))

        self.front = reactor.listenUDP(0, Front(), interface=LOOPBACK)
        self.back = reactor.listenUDP(0, Back(), interface=LOOPBACK)
        self.back.connect(*core)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.front.getHost().port}"

    def _carry(self, side: str, datagram: bytes, forward: Callable[[bytes], None]) -> None:
        seqid, flag = struct.unpack_from("<IH", datagram)
        self.shards[side].append((flag, seqid))
        if self._random.random() < self._loss:
            self.lost[side] += 1
            return
        forward(datagram)

    def stop(self) -> Deferred[Any]:
        self.front.stopListening()
        return self.back.stopListening()


class InteropTests(TestCase):
    timeout = 240

    async def start(self, loss: float) -> tuple[GoCell, Relay]:
        """Core's KCP endpoint, a relay in front of it, and the Go Cell dialing the relay."""
        binary = await built_cell()
        # Core's link timers follow real time while the Go Cell runs (see the module doc).
        self.clock = Clock()
        self.clock.advance(reactor.seconds())
        pump = LoopingCall(lambda: self.clock.advance(reactor.seconds() - self.clock.seconds()))
        pump.start(0.02)
        self.addCleanup(lambda: pump.running and pump.stop())
        self.pump = pump
        self.registry = CellRegistry(self.clock, Transactions(self.clock, 30.0))
        self.waiter = Waiter()
        self.registry.subscribe(self.waiter)
        # KCP's own timers need real time; the sessions above run on the pumped clock.
        attach = core_sessions(self.registry, self.clock, CORE_NAME, self.registry.link)
        endpoint = KCPEndpoint(reactor, attach)
        core = reactor.listenUDP(0, endpoint, interface=LOOPBACK)
        self.addCleanup(core.stopListening)
        relay = Relay((LOOPBACK, core.getHost().port), loss)
        self.addCleanup(relay.stop)
        cell = GoCell()
        process = reactor.spawnProcess(
            cell,
            binary,
            [binary, "-core", relay.address, "-name", CELL, "-report", "500ms"],
            env={},
        )

        def stop_process() -> Deferred[None]:
            if not cell.ended.called:
                process.signalProcess("KILL")
            return cell.ended

        self.addCleanup(stop_process)
        self.process = process
        return cell, relay

    async def exchange(self, cell: GoCell) -> None:
        """Handshake both ways, status reports, and a 200 KB request answered with 200 KB."""
        opened = await cell.until("opened")
        self.assertEqual(opened["core"], CORE_NAME)
        await self.waiter.until_reported({CELL}).addTimeout(STEP, reactor)
        status = self.registry.status(CELL)
        assert status is not None
        self.assertEqual((status.cores, status.usage, status.memory_total), (4, 12.5, 8 << 30))
        payload = "".join(random.Random(5).choice("abcdefgh") for _ in range(PAYLOAD))
        request = Message(
            id=MessageID.QueryCellStorageRequest,
            string_params={ParamKey.Data: payload},
            uint_params={ParamKey.Size: PAYLOAD},
        )
        reply = await self.registry.request(CELL, request).addTimeout(STEP, reactor)
        digest = hashlib.sha256(payload.encode()).hexdigest()
        self.assertEqual(reply.id, MessageID.QueryCellStorageResponse)
        self.assertEqual(reply.string_params[ParamKey.Data], digest)
        self.assertEqual(reply.uint_params[ParamKey.Size], PAYLOAD)
        returned = reply.string_array_params[ParamKey.Data]
        self.assertGreaterEqual(sum(len(item) for item in returned), PAYLOAD)
        self.assertEqual((await cell.until("request", size=PAYLOAD))["sha256"], digest)
        self.assertEqual(self.registry.state(CELL), CellLiveness.ALIVE)

    def check_fec(self, relay: Relay) -> None:
        """The Go Cell sends FEC 10/3 (parity included); Core only data shards at data slots."""
        from_cell = {flag for flag, _ in relay.shards["cell"]}
        self.assertEqual(from_cell, {TYPE_DATA, TYPE_PARITY})
        for flag, seqid in relay.shards["cell"]:
            self.assertEqual(flag == TYPE_DATA, seqid % SHARDS_PER_GROUP < DATA_SHARDS)
        self.assertTrue(relay.shards["core"])
        for flag, seqid in relay.shards["core"]:
            self.assertEqual((flag, seqid % SHARDS_PER_GROUP < DATA_SHARDS), (TYPE_DATA, True))

    async def test_go_cell_links_reports_and_exchanges_200_kb_both_ways(self) -> None:
        cell, relay = await self.start(loss=0.0)
        await self.exchange(cell)
        self.check_fec(relay)
        # Stopped dead: no goodbye. Once the process is gone, move Core's clock on.
        self.process.signalProcess("KILL")
        await cell.ended
        self.pump.stop()
        stopped = self.clock.seconds()
        while self.registry.state(CELL) is not CellLiveness.DISCONNECTED:
            self.assertLessEqual(self.clock.seconds() - stopped, 20.0)
            self.clock.advance(0.5)
        self.assertLessEqual(self.clock.seconds() - stopped, DISCONNECT_AFTER + 0.5)
        self.assertEqual(self.waiter.disconnected, {CELL: False})

    async def test_go_cell_survives_10_percent_loss_both_ways(self) -> None:
        cell, relay = await self.start(loss=0.10)
        await self.exchange(cell)
        self.check_fec(relay)
        self.assertGreater(relay.lost["cell"], 0)
        self.assertGreater(relay.lost["core"], 0)

    async def test_go_cell_that_stops_says_goodbye(self) -> None:
        cell, _ = await self.start(loss=0.0)
        await self.waiter.until_reported({CELL}).addTimeout(STEP, reactor)
        gone = self.waiter.until_disconnected(CELL).addTimeout(STEP, reactor)
        self.process.signalProcess("TERM")
        self.assertTrue(await gone)
        await cell.until("stopped")
