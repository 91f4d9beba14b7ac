"""Status answers may be kept while ``Status.revision()`` stands: it moves whenever they do;
and what ``Status`` keeps of each Cell between answers never makes them differ from answers
computed afresh.

The real Cell registry and cell operations, Cells linked over in-memory transports, driven by
generated sequences of links, reports, keep-alives, silences (a link goes lost, then
disconnected), closes, time, and commits (a Cell enabled or disabled, instances placed,
changed and removed): wherever the revision reads the same as at the previous step, the zone,
pool and cell answers must be the same too; and at every step they must be those of a new
``Status`` (nothing kept).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from attrs import evolve
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nanocore import model as m
from nanocore.cluster.cells import CellRegistry
from nanocore.cluster.message import Message, MessageID
from nanocore.cluster.transactions import Transactions
from nanocore.cluster.transport import (
    CellLinkFactory,
    FramedLinkProtocol,
    ServiceType,
    opened_event,
)
from nanocore.operations.base import Context
from nanocore.operations.cells import CellOperations
from nanocore.operations.status import Status
from nanocore.store import Change, Delete, Put, ReadModel, UnitOfWork
from nanocore.store.tables import TABLES
from tests.cellfixtures import frame, status_report

CORE = "Core_000000000001"
CELLS = ("Cell_a", "Cell_b", "Cell_c")
KEEPALIVE = frame(Message(id=MessageID.ConnectionKeepAliveEvent))

steps = st.lists(
    st.one_of(
        st.tuples(st.just("link"), st.sampled_from(CELLS)),
        st.tuples(st.just("report"), st.sampled_from(CELLS), st.integers(1, 3)),
        st.tuples(st.just("keepalive"), st.sampled_from(CELLS)),
        st.tuples(st.just("close"), st.sampled_from(CELLS)),
        st.tuples(st.just("wait"), st.sampled_from([0.0, 0.5, 2.0, 3.0, 5.0, 9.5, 10.0, 16.0])),
        st.tuples(st.just("toggle"), st.sampled_from(CELLS)),
        st.tuples(
            st.just("place"),
            st.sampled_from(CELLS),
            st.integers(0, 3),
            st.sampled_from(list(m.InstanceStatus)),
            st.booleans(),
        ),
        st.tuples(st.just("remove"), st.integers(0, 3)),
    ),
    max_size=30,
)


class World:
    """A Core's status over the real registry; the store is a fixed read model."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_714_529_472)
        state: dict[type, dict[Any, Any]] = {table.kind: {} for table in TABLES}
        state[m.Zone] = {m.Zone().key: m.Zone()}
        state[m.ComputePool]["p"] = m.ComputePool(name="p")
        for name in CELLS:
            state[m.ComputeCell][name] = m.ComputeCell(name=name, pool="p")
        self.store = SimpleNamespace(view=ReadModel(state), units_committed=0)
        context = self.context = Context(self.store, self.clock)  # type: ignore[arg-type]
        self.registry = CellRegistry(self.clock, Transactions(self.clock, 10_000.0))
        self.cells = CellOperations(context, self.registry, reconcile=lambda *a: None)  # type: ignore[arg-type]
        self.registry.subscribe(self.cells)
        self.status = Status(context, self.cells, "2024-05-01 10:11:12")
        self.factory = CellLinkFactory(self.registry, self.clock, CORE, self._identify)
        self.links: dict[str, FramedLinkProtocol] = {}
        self._names: dict[int, str] = {}

    def _identify(self, transport: object) -> str:
        return self._names[id(transport)]

    def act(self, step: tuple[Any, ...]) -> None:
        kind, *rest = step
        if kind == "wait":
            self.clock.advance(rest[0])
            return
        if kind in ("toggle", "place", "remove"):
            self.commit(kind, *rest)
            return
        name = rest[0]
        link = self.links.get(name)
        if link is not None and link.transport is None:
            link = None
        if kind == "link" and link is None:
            address = IPv4Address("TCP", "127.0.0.2", 5000)
            protocol = self.factory.buildProtocol(address)
            transport = StringTransport(peerAddress=address)
            self._names[id(transport)] = name
            protocol.makeConnection(transport)
            protocol.dataReceived(frame(opened_event(name, ServiceType.CELL)))
            self.links[name] = protocol
        elif kind == "report" and link is not None:
            link.dataReceived(frame(status_report(cores=4 * rest[1], usage=10.0 * rest[1])
                                    .to_message()))  # fmt: skip
        elif kind == "keepalive" and link is not None:
            link.dataReceived(KEEPALIVE)
        elif kind == "close" and link is not None:
            link.connectionLost(Failure(ConnectionDone()))

    def commit(self, kind: str, *rest: Any) -> None:
        """A unit committed as the store would: mirrored into the read model, counted."""
        view = self.store.view
        change: Change
        if kind == "toggle":
            cell = view.cells[rest[0]]
            change = Put(evolve(cell, enabled=not cell.enabled))
        elif kind == "place":
            cell_name, number, status, lost = rest
            change = Put(m.Instance(id=f"i{number}", name=f"vm{number}", owner="admin",
                                    group="admin", pool="p", cell=cell_name, cores=1,
                                    memory=1 << 30, disks=(10 << 30,), status=status,
                                    lost=lost))  # fmt: skip
        elif f"i{rest[0]}" in view.instances:
            change = Delete(m.Instance, f"i{rest[0]}")
        else:
            return
        view.mirror(UnitOfWork((change,)))
        self.store.units_committed += 1

    def answers(self, status: Status | None = None) -> tuple[Any, ...]:
        status = self.status if status is None else status
        return (status.zone(), status.pools(), status.cells("p"), status.cell("p", "Cell_a"))

    def answers_afresh(self) -> tuple[Any, ...]:
        return self.answers(Status(self.context, self.cells, "2024-05-01 10:11:12"))


class StatusRevisionTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(steps)
    @example(  # a report goes stale while keep-alives hold the link up
        [("link", "Cell_a"), ("wait", 2.0), ("report", "Cell_a", 1)]
        + [("wait", 3.0), ("keepalive", "Cell_a")] * 3
        + [("wait", 2.0)]
    )
    @example(  # a Cell that never reported stops counting as alive
        [("link", "Cell_a")] + [("wait", 3.0), ("keepalive", "Cell_a")] * 3 + [("wait", 2.0)]
    )
    def test_answers_move_only_with_the_revision(self, sequence: list[tuple[Any, ...]]) -> None:
        world = World()
        revision, answers = world.status.revision(), world.answers()
        for step in sequence:
            world.act(step)
            now_revision, now_answers = world.status.revision(), world.answers()
            if now_revision == revision:
                self.assertEqual(now_answers, answers, step)
            revision, answers = now_revision, now_answers
        for link in world.links.values():
            if link.transport is not None:
                link.connectionLost(Failure(ConnectionDone()))
        self.flushLoggedErrors()

    @settings(max_examples=150, deadline=None)
    @given(steps)
    @example(  # a Cell's counters change while its report and liveness stay
        [
            ("link", "Cell_a"),
            ("report", "Cell_a", 1),
            ("place", "Cell_a", 0, m.InstanceStatus.RUNNING, False),
            ("place", "Cell_a", 0, m.InstanceStatus.RUNNING, True),
            ("toggle", "Cell_a"),
            ("remove", 0),
        ]
    )
    def test_kept_answers_are_those_computed_afresh(self, sequence: list[tuple[Any, ...]]) -> None:
        world = World()
        for step in sequence:
            world.act(step)
            self.assertEqual(world.answers(), world.answers_afresh(), step)
        for link in world.links.values():
            if link.transport is not None:
                link.connectionLost(Failure(ConnectionDone()))
        self.flushLoggedErrors()

    def test_a_report_moves_the_revision(self) -> None:
        world = World()
        world.act(("link", "Cell_a"))
        before = world.status.revision()
        world.act(("report", "Cell_a", 1))
        self.assertNotEqual(world.status.revision(), before)
        world.act(("close", "Cell_a"))
        self.flushLoggedErrors()
