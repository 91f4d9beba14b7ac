"""Status answers may be kept while ``Status.revision()`` stands: it moves whenever they do.

The real Cell registry and cell operations, Cells linked over in-memory transports, driven by
generated sequences of links, reports, keep-alives, silences (a link goes lost, then
disconnected), closes and time: wherever the revision reads the same as at the previous step,
the zone, pool and cell answers must be the same too.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

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
from nanocore.store import ReadModel
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
        store = SimpleNamespace(view=ReadModel(state), units_committed=0)
        context = Context(store, self.clock)  # type: ignore[arg-type]
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

    def answers(self) -> tuple[Any, ...]:
        return (self.status.zone(), self.status.pools(), self.status.cells("p"))


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

    def test_a_report_moves_the_revision(self) -> None:
        world = World()
        world.act(("link", "Cell_a"))
        before = world.status.revision()
        world.act(("report", "Cell_a", 1))
        self.assertNotEqual(world.status.revision(), before)
        world.act(("close", "Cell_a"))
        self.flushLoggedErrors()
