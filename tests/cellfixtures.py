"""Shared set-up for the cell and status tests: a real store, a scripted Cell directory."""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from nanocore import model as m
from nanocore.api.app import build_api_resource
from nanocore.api.testing import TEST_CREDENTIALS, APIClient
from nanocore.cluster.cells import (
    REJOIN_GRACE,
    STATUS_STALE_AFTER,
    CellDirectory,
    CellLiveness,
    CellObserver,
    CellStatus,
    CellUnavailable,
    RejoinWatch,
)
from nanocore.cluster.message import Message, MessageID, encode
from nanocore.cluster.transactions import Transactions, reply_to
from nanocore.operations.cells import CellOperations
from nanocore.operations.core import Operations
from nanocore.store import CommitStore, Put, ReadModel, Store, UnitOfWork
from nanocore.store.schema import bundled_scripts, open_database
from nanocore.store.writer import Writer
from nanocore.testing.fakecell import FakeCell

reactor: Any = _reactor
NOW = 1_714_529_472.0
TIMEOUT = 10.0
GiB = 1 << 30

Responder = Callable[[Message], "Message | None"]


def ready(request: Message, **fields: Any) -> Message:
    """The Cell's successful answer to a pool push (an empty inventory unless given)."""
    return reply_to(request, id=MessageID.ComputeCellReadyEvent, **fields)


@implementer(CellDirectory)
class FakeDirectory:
    """The registry, scripted: each Cell answers through a responder function.

    Requests go through the real :class:`Transactions` on the test's ``Clock``, so timeouts
    are the real ones, driven by ``clock.advance``. Subscribed observers hear what the real
    registry would tell them. ``tests/test_celldirectory_contract.py`` runs the same cases
    against this fake and the real :class:`CellRegistry`, so the two cannot drift apart.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.transactions = Transactions(clock, TIMEOUT)
        self.linked: dict[str, bool] = {}
        self.addresses: dict[str, str] = {}
        self.statuses: dict[str, CellStatus] = {}
        self.reported_at: dict[str, float] = {}
        self.responders: dict[str, Responder] = {}
        self.requests: list[tuple[str, Message]] = []
        self.sent: list[tuple[str, Message]] = []
        self.observers: list[CellObserver] = []
        self.events = 0
        self.rejoin: RejoinWatch | None = None
        self.transactions.late = self._answered_late

    def connect(
        self, name: str, address: str = "127.0.0.1", status: CellStatus | None = None
    ) -> None:
        """The Cell links up (again); a ``status`` is its first report."""
        self.events += 1
        self.linked[name] = True
        self.addresses[name] = address
        if self.rejoin is not None:
            self.rejoin.linked(name)
        for observer in list(self.observers):
            observer.cell_available(name, address)
        if status is not None:
            self.report(name, status)

    def report(self, name: str, status: CellStatus) -> None:
        self.events += 1
        self.statuses[name] = status
        self.reported_at[name] = self.clock.seconds()
        for observer in list(self.observers):
            observer.cell_status(name, status)

    def disconnect(self, name: str, gracefully: bool = False) -> None:
        self.events += 1
        self.linked[name] = False
        self.transactions.fail_peer(name, CellUnavailable(f"cell {name!r} disconnected"))
        for observer in list(self.observers):
            observer.cell_disconnected(name, gracefully)

    def _answered_late(self, request: Message, reply: Message) -> None:
        for observer in list(self.observers):
            observer.cell_answered_late(reply.sender, request, reply)

    def answer(self, message: Message, name: str) -> None:
        """Deliver a Cell's reply now (for requests whose responder returned None)."""
        self.transactions.deliver(attrs.evolve(message, sender=name))

    def last_request(self, name: str) -> Message:
        return [message for cell, message in self.requests if cell == name][-1]

    # -- the CellDirectory surface ------------------------------------------------------------

    def names(self) -> Iterator[str]:
        return iter(list(self.linked))

    def subscribe(self, observer: CellObserver) -> None:
        self.observers.append(observer)

    def state(self, name: str) -> CellLiveness | None:
        linked = self.linked.get(name)
        if linked is None:
            return None
        if not linked:
            return CellLiveness.DISCONNECTED
        reported = self.reported_at.get(name)
        if reported is not None and self.clock.seconds() - reported < STATUS_STALE_AFTER:
            return CellLiveness.ALIVE
        return CellLiveness.CONNECTED

    def address(self, name: str) -> str | None:
        return self.addresses.get(name)

    def status(self, name: str) -> CellStatus | None:
        return self.statuses.get(name)

    def generation(self) -> int:
        now = self.clock.seconds()
        stale = sum(now - at >= STATUS_STALE_AFTER for at in self.reported_at.values())
        return self.events * 1_000_000 + stale

    def request(self, name: str, message: Message, **kw: Any) -> Deferred[Message]:
        if not self.linked.get(name):
            return fail(CellUnavailable(f"cell {name!r} is not connected"))
        kw.setdefault("peer", name)

        def send(stamped: Message) -> None:
            self.requests.append((name, stamped))
            responder = self.responders.get(name)
            reply = responder(stamped) if responder is not None else None
            if reply is not None:
                self.answer(reply, name)

        return self.transactions.request(send, message, **kw)

    def send(self, name: str, message: Message) -> None:
        if not self.linked.get(name):
            raise CellUnavailable(f"cell {name!r} is not connected")
        self.sent.append((name, message))

    def expect_back(
        self,
        groups: Mapping[str, Collection[str]],
        within: float = REJOIN_GRACE,
        departed: Collection[str] = (),
    ) -> None:
        def presume_lost(name: str) -> None:
            self.events += 1
            for observer in list(self.observers):
                observer.cell_disconnected(name, False)

        self.rejoin = RejoinWatch(self.clock, groups, presume_lost, departed)
        for name in self.linked:
            self.rejoin.linked(name)
        self.rejoin.start(within)


@implementer(CommitStore)
class SyncStore:
    """The store's writer and read model, committing each unit at once (no thread)."""

    def __init__(self, folder: Path) -> None:
        self._connection = open_database(folder, bundled_scripts(), "", _ids())
        self._writer = Writer(self._connection, guard_io_thread=False)
        self.view = ReadModel(self._writer.load())
        self.units_committed = 0

    def commit(self, unit: UnitOfWork) -> Deferred[None]:
        (refusal,) = self._writer.apply_batch([unit])
        if refusal is not None:
            return fail(refusal)
        self.view.mirror(unit)
        self.units_committed += 1
        return succeed(None)

    def close(self) -> None:
        self._connection.close()


def _ids() -> Any:
    counter = iter(range(10_000))
    return lambda: f"tpl{next(counter):017d}"


class StubLink:
    """A FakeCell's link straight into the current directory: replies and events at once."""

    connected = True

    def __init__(self, directory: Callable[[], FakeDirectory], name: str) -> None:
        self._directory = directory
        self.name = name

    def send(self, message: Message) -> None:
        directory = self._directory()
        if not directory.linked.get(self.name):
            return
        if message.to_session:
            directory.answer(message, self.name)
        elif message.id == MessageID.CellStatusReportEvent:
            pass
        else:
            for observer in list(directory.observers):
                observer.cell_event(self.name, message)


def wired(
    cells: Mapping[str, FakeCell], directory: Callable[[], FakeDirectory]
) -> dict[str, Responder]:
    """Each FakeCell's link goes straight into the current ``directory()`` (:class:`StubLink`);
    what it returns is the responders that take the directory's requests straight to the
    Cells (install them in each new directory)."""
    responders: dict[str, Responder] = {}
    for name, cell in cells.items():
        link = cell.link = StubLink(directory, name)  # type: ignore[assignment]

        def respond(request: Message, cell: FakeCell = cell, link: Any = link) -> None:
            cell.message_received(link, request)

        responders[name] = respond
    return responders


def frame(message: Message) -> bytes:
    """``message`` as a Cell link carries it: a 4-byte big-endian length, then the JSON."""
    data = encode(message)
    return struct.pack(">I", len(data)) + data


@implementer(CellObserver)
class RecordingObserver:
    """Writes down what an observer of the Cell directory hears."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, ...]] = []

    def cell_available(self, name: str, address: str) -> None:
        self.seen.append(("available", name, address))

    def cell_status(self, name: str, status: CellStatus) -> None:
        self.seen.append(("status", name, status))

    def cell_event(self, name: str, message: Message) -> None:
        self.seen.append(("event", name, message.id))

    def cell_disconnected(self, name: str, gracefully: bool) -> None:
        self.seen.append(("disconnected", name, gracefully))

    def cell_answered_late(self, name: str, request: Message, reply: Message) -> None:
        self.seen.append(("late", name, request.id))


def status_report(cores: int = 8, usage: float = 25.0, speed: int = 0) -> CellStatus:
    return CellStatus(
        cores=cores,
        usage=usage,
        memory_available=12 * GiB,
        memory_total=16 * GiB,
        disk_free=400 * GiB,
        disk_total=500 * GiB,
        speed=(speed + 1, speed + 2, speed + 3, speed + 4),
    )


SEED = (
    m.StoragePool(name="nfs1", host="127.0.0.1", target="/exports/nano"),
    m.AddressPool(name="net1", gateway="192.0.2.1", dns=("192.0.2.53",), provider="cloudinit"),
    m.ComputePool(name="shared", network="net1", storage="nfs1", failover=True),
    m.ComputePool(name="local"),
)


async def open_store(path: str) -> Store:
    store = await Store.open(Path(path), reactor)
    await store.commit(UnitOfWork(tuple(Put(entity) for entity in SEED)))
    return store


class Harness:
    """Store + scripted directory + operations + a signed in-memory API client."""

    def __init__(self, store: Store, *, timeout: float = TIMEOUT) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = store
        self.directory = FakeDirectory(self.clock)
        self.operations = Operations(store, self.clock, cells=self.directory, timeout=timeout)
        self.cells: CellOperations = self.operations.cells
        self.status = self.operations.status
        resource = build_api_resource(self.operations, TEST_CREDENTIALS, self.clock)
        self.api = APIClient(resource, self.clock)

    def connect(
        self, name: str, status: CellStatus | None = None, address: str = "127.0.0.1"
    ) -> None:
        """A Cell links up: the directory knows it and tells the operations."""
        self.directory.connect(name, address, status)

    async def member(self, name: str, pool: str, **flags: Any) -> m.ComputeCell:
        """Put a cell straight into a pool in the store (set-up, not the add route)."""
        cell = m.ComputeCell(name=name, pool=pool, **flags)
        await self.store.commit(UnitOfWork.of(Put(cell)))
        return cell

    async def put(self, *entities: Any) -> None:
        await self.store.commit(UnitOfWork(tuple(Put(entity) for entity in entities)))


def instance(instance_id: str, cell: str, pool: str = "shared", **fields: Any) -> m.Instance:
    defaults: dict[str, Any] = dict(
        name=f"vm-{instance_id}",
        owner="admin",
        group="admin",
        cores=2,
        memory=2 * GiB,
        disks=(10 * GiB,),
        status=m.InstanceStatus.STOPPED,
    )
    defaults.update(fields)
    return m.Instance(id=instance_id, pool=pool, cell=cell, **defaults)


class HarnessTestCase(TestCase):
    """A trial case with ``self.h``: a :class:`Harness` over a fresh store, closed after."""

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._open_harness())

    async def _open_harness(self) -> None:
        store = await open_store(self.mktemp())
        self.addCleanup(store.close)
        self.h = Harness(store)
