"""The Go Cell of ours (tests/go/fakecell, on Debian's kcp-go) and what runs around it: its
build, its process, a lossy UDP relay in front of Core, and Core's side of the link on a Clock
that follows real time. Used by tests/test_kcp_interop.py and, inside a network namespace, by
tests/netns_kcp_probe.py.
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
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol, ProcessProtocol
from twisted.internet.task import Clock, LoopingCall
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest

from nanocore.cluster.cells import CellLiveness, CellRegistry
from nanocore.cluster.kcp.endpoint import KCPEndpoint
from nanocore.cluster.kcp.fec import DATA_SHARDS, SHARDS_PER_GROUP, TYPE_DATA, TYPE_PARITY
from nanocore.cluster.kcp.link import core_sessions
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.cluster.transactions import Transactions
from nanocore.testing.cluster import Waiter

reactor: Any = _reactor
LOOPBACK = "127.0.0.1"
SOURCE = Path(__file__).resolve().parent / "go" / "fakecell"
GOPATH = "/usr/share/gocode"  # where Debian's golang-*-dev packages install their sources
CELL = "Cell_0000000000aa"
CORE_NAME = "Core_5254000a0b0c"
PAYLOAD = 200_000
#: Real seconds any one step may take (handshakes under 10% loss included).
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
        self.process: Any = None

    @classmethod
    def spawn(cls, binary: str, *arguments: str) -> GoCell:
        cell = cls()
        cell.process = reactor.spawnProcess(cell, binary, [binary, *arguments], env={})
        return cell

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

    def kill(self, signal: str = "KILL") -> Deferred[None]:
        """Stop the process (dead: no goodbye; TERM: the framework's goodbye first)."""
        if not self.ended.called:
            self.process.signalProcess(signal)
        return self.ended


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
    def port(self) -> int:
        number: int = self.front.getHost().port
        return number

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _carry(self, side: str, datagram: bytes, forward: Callable[[bytes], None]) -> None:
        seqid, flag = struct.unpack_from("<IH", datagram)
        self.shards[side].append((flag, seqid))
        if self._random.random() < self._loss:
            self.lost[side] += 1
            return
        forward(datagram)

    def fec(self) -> dict[str, bool]:
        """What the shards carried say: the Go Cell sends FEC 10/3 (parity included, each kind
        at its slots); Core sends only data shards, at data slots."""
        cell, core = self.shards["cell"], self.shards["core"]
        return {
            "cell_sends_data_and_parity": {flag for flag, _ in cell} == {TYPE_DATA, TYPE_PARITY},
            "cell_shards_at_their_slots": all(
                (flag == TYPE_DATA) == (seqid % SHARDS_PER_GROUP < DATA_SHARDS)
                for flag, seqid in cell
            ),
            "core_sends_data_at_data_slots": bool(core)
            and all(
                flag == TYPE_DATA and seqid % SHARDS_PER_GROUP < DATA_SHARDS
                for flag, seqid in core
            ),
        }

    def stop(self) -> Deferred[Any]:
        self.front.stopListening()
        return self.back.stopListening()  # type: ignore[no-any-return]


class CoreSide:
    """Core's KCP endpoint on 127.0.0.1 with the registry above it.

    Core's link timers (keepalive, loss, disconnect) and transactions run on a Clock that
    follows real time while the Go Cell runs (``pump``), and is moved on at once after it
    stops, so "disconnected within 20 s" costs no 20 s of waiting; KCP's own timers need real
    time and run on the reactor.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(reactor.seconds())
        self.pump = LoopingCall(self._follow)
        self.pump.start(0.02)
        self.registry = CellRegistry(self.clock, Transactions(self.clock, 30.0))
        self.waiter = Waiter()
        self.registry.subscribe(self.waiter)
        attach = core_sessions(self.registry, self.clock, CORE_NAME, self.registry.link)
        self.endpoint = KCPEndpoint(reactor, attach)
        self.port: IListeningPort = reactor.listenUDP(0, self.endpoint, interface=LOOPBACK)

    def _follow(self) -> None:
        self.clock.advance(reactor.seconds() - self.clock.seconds())

    @property
    def address(self) -> tuple[str, int]:
        return LOOPBACK, self.port.getHost().port  # type: ignore[attr-defined]

    async def exchange(self, cell: GoCell) -> dict[str, Any]:
        """Handshake both ways, status reports, and a 200 KB request answered with 200 KB;
        what each step showed."""
        opened = await cell.until("opened")
        await self.waiter.until_reported({CELL}).addTimeout(STEP, reactor)
        status = self.registry.status(CELL)
        assert status is not None
        payload = "".join(random.Random(5).choice("abcdefgh") for _ in range(PAYLOAD))
        request = Message(
            id=MessageID.QueryCellStorageRequest,
            string_params={ParamKey.Data: payload},
            uint_params={ParamKey.Size: PAYLOAD},
        )
        reply = await self.registry.request(CELL, request).addTimeout(STEP, reactor)
        digest = hashlib.sha256(payload.encode()).hexdigest()
        seen_by_cell = await cell.until("request", size=PAYLOAD)
        returned = reply.string_array_params[ParamKey.Data]
        return {
            "core_name_seen_by_cell": opened["core"],
            "status": [status.cores, status.usage, status.memory_total],
            "reply_id": reply.id,
            "reply_digest_matches": reply.string_params[ParamKey.Data] == digest,
            "cell_digest_matches": seen_by_cell["sha256"] == digest,
            "reply_size": reply.uint_params[ParamKey.Size],
            "returned_bytes": sum(len(item) for item in returned),
            "state": self.registry.state(CELL).value,  # type: ignore[union-attr]
        }

    async def disconnect_after_kill(self, cell: GoCell, limit: float = 20.0) -> float:
        """Kill the Go Cell dead (no goodbye) and move Core's clock on until it sees the Cell
        disconnected; the seconds that took on Core's clock (``limit`` at most)."""
        await cell.kill()
        self.pump.stop()
        stopped = self.clock.seconds()
        while self.registry.state(CELL) is not CellLiveness.DISCONNECTED:
            if self.clock.seconds() - stopped > limit:
                break
            self.clock.advance(0.5)
        return self.clock.seconds() - stopped

    async def stop(self) -> None:
        if self.pump.running:
            self.pump.stop()
        await self.endpoint.close_all()
        await self.port.stopListening()
