"""A Core's guest operations over the real store and a fabric of FakeCells on loopback TLS.

Core's fabric timers (transactions, keepalives) run on ``core_clock`` and the Cells' own
(creation, progress, stop, reports) on ``cell_clock``: a test moves either on its own and waits
on Deferreds for what crosses the real sockets, never on the wall clock.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from nanocore.api.app import build_api_resource
from nanocore.api.testing import TEST_CREDENTIALS, Answer, APIClient
from nanocore.cluster.cells import CellObserver, CellStatus
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.operations.core import Operations
from nanocore.operations.guests import CAPACITY
from nanocore.operations.imagesite import ImageSiteAddress
from nanocore.pki import CertificateAuthority, create_ca
from nanocore.store import CommitFailed, Store, UnitOfWork
from nanocore.testing.cluster import InProcessCluster, Wire
from nanocore.testing.fakecell import Capacity, FakeCell

reactor: Any = _reactor
GiB = 1 << 30
NOW = 1_714_529_472.0
#: Core's Cell timeout in these tests: short, so that Core's link keepalives (3 s) and loss
#: detection (9 s) on the same clock are not reached when a test lets a request time out.
TIMEOUT = 2.0
SITE = ImageSiteAddress("127.0.0.1", 5801)


@functools.cache
def cluster_ca() -> CertificateAuthority:
    return create_ca()


@implementer(CellObserver)
class GuestEventWaiter:
    """Fires when a Cell event about a guest reached Core (after the operations saw it)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Message]] = []
        self._waiting: dict[tuple[int, str], list[Deferred[Message]]] = defaultdict(list)
        self._available: dict[str, list[Deferred[None]]] = defaultdict(list)
        self._gone: dict[str, list[Deferred[None]]] = defaultdict(list)

    def until_disconnected(self, name: str) -> Deferred[None]:
        """Fires when ``name``'s link is gone (after Core's operations heard of it)."""
        d: Deferred[None] = Deferred()
        self._gone[name].append(d)
        return d

    def until_available(self, name: str) -> Deferred[None]:
        """Fires when ``name`` next links up (after Core's operations heard of it)."""
        d: Deferred[None] = Deferred()
        self._available[name].append(d)
        return d

    def until(self, message_id: int, guest: str) -> Deferred[Message]:
        d: Deferred[Message] = Deferred()
        self._waiting[(message_id, guest)].append(d)
        return d

    def cell_available(self, name: str, address: str) -> None:
        for d in self._available.pop(name, []):
            d.callback(None)

    def cell_status(self, name: str, status: CellStatus) -> None:
        pass

    def cell_event(self, name: str, message: Message) -> None:
        self.seen.append((name, message))
        params = message.string_params
        guest = params.get(ParamKey.Instance) or params.get(ParamKey.Guest, "")
        for d in self._waiting.pop((message.id, guest), []):
            d.callback(message)

    def cell_disconnected(self, name: str, gracefully: bool) -> None:
        for d in self._gone.pop(name, []):
            d.callback(None)

    def cell_answered_late(self, name: str, request: Message, reply: Message) -> None:
        pass


class GuestClusterCase(TestCase):
    """``self.ops`` over a fresh store, ``self.cells`` linked over ``wire`` and added to pool
    ``default``."""

    CELLS: tuple[str, ...] = ("Cell_0000000000a1", "Cell_0000000000b2")
    #: The link the Cells use: TLS, or KCP as stock Cells link (slower: run a few cases on it).
    wire: Wire = "tls"
    capacity = Capacity(cores=16, memory=32 * GiB, disk=1000 * GiB)
    creation_time = 1.0

    async def asyncSetUp(self) -> None:
        self.data_dir = Path(self.mktemp())
        self.data_dir.mkdir(parents=True)
        self.store = await Store.open(self.data_dir, reactor)
        self.addCleanup(lambda: self.store.close())
        self.core_clock = Clock()
        self.core_clock.advance(NOW)
        self.cell_clock = Clock()
        self.cell_clock.advance(NOW)
        self.cluster = InProcessCluster(
            reactor, cluster_ca(), clock=self.core_clock, wire=self.wire
        )
        await self.cluster.listen()
        self.addCleanup(lambda: ensureDeferred(self.cluster.stop()))
        self.cells: dict[str, FakeCell] = {
            name: self.cluster.add_cell(
                name,
                clock=self.cell_clock,
                capacity=self.capacity,
                creation_time=self.creation_time,
                # A Cell whose link drops comes back on its own, a moment later.
                reconnect_delay=0.01,
                reconnect_clock=reactor,
                **self.cell_options(),
            )
            for name in self.CELLS
        }
        await self.cluster.waiter.until_reported(set(self.CELLS))
        self.ops = self.build_operations()
        self.events = GuestEventWaiter()
        self.cluster.registry.subscribe(self.events)
        for name in self.CELLS:
            await self.ok("POST", f"/compute_pool_cells/default/{name}")

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.asyncSetUp())

    def cell_options(self) -> dict[str, Any]:
        """More options of ``InProcessCluster.add_cell`` for every Cell (image tests: disks)."""
        return {}

    def build_operations(self) -> Operations:
        ops = Operations(
            self.store,
            self.core_clock,
            cells=self.cluster.registry,
            timeout=TIMEOUT,
            image_site=lambda: SITE,
            randbelow=lambda n: 0,
        )
        self.client = APIClient(
            build_api_resource(ops, TEST_CREDENTIALS, self.core_clock), self.core_clock
        )
        return ops

    # -- the API ------------------------------------------------------------------------------

    async def call(self, method: str, path: str, body: Any = None) -> Answer:
        return await self.client.request(method, path, body)

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        answer = await self.call(method, path, body)
        document = answer.envelope()
        self.assertEqual((answer.status, document["error_code"]), (status, 0), document)
        return document["data"]

    async def refused(self, method: str, path: str, body: Any = None) -> str:
        answer = await self.call(method, path, body)
        document = answer.envelope()
        self.assertEqual((answer.status, document["error_code"]), (200, 500), document)
        return str(document["message"])

    async def use_network(self, end: str = "172.16.0.20") -> None:
        """The Cells move to pool ``netted``, whose address pool ``net`` has one range from
        172.16.0.10 (a pool's network can change only while it has no Cells)."""
        await self.address_pool(end)
        await self.ok("POST", "/compute_pools/netted", {"network": "net"})
        for name in self.CELLS:
            await self.ok("DELETE", f"/compute_pool_cells/default/{name}")
            await self.ok("POST", f"/compute_pool_cells/netted/{name}")

    async def address_pool(self, end: str = "172.16.0.20") -> None:
        """Address pool ``net``, with one range from 172.16.0.10 to ``end``."""
        await self.ok("POST", "/address_pools/net", {"gateway": "172.16.0.1", "provider": "dhcp"})
        await self.ok(
            "POST",
            "/address_pools/net/internal/ranges/172.16.0.10",
            {"end": end, "netmask": "255.255.255.0"},
        )

    async def created(self, **fields: Any) -> str:
        """A guest made through the API (``guest_body(**fields)``) and confirmed by its Cell."""
        answer = await self.ok("POST", "/guests/", self.guest_body(**fields), status=202)
        guest: str = answer["id"]
        created = self.events.until(MessageID.GuestCreatedEvent, guest)
        self.cell_clock.advance(self.creation_time)
        await self.applied(created, guest)
        return guest

    async def started(self, guest: str, body: Any = None) -> None:
        """Start ``guest`` through the API; Core's record says running."""
        started = self.events.until(MessageID.GuestStartedEvent, guest)
        self.assertEqual(await self.ok("POST", f"/instances/{guest}", body or {}), "")
        await self.applied(started, guest)

    # -- waiting ------------------------------------------------------------------------------

    async def applied(self, waiting: Deferred[Message], guest: str) -> Message:
        """The event arrived and what the operations made of it is committed."""
        message = await waiting
        await self.ops.guests.access.serially(guest, lambda: succeed(None))
        return message

    async def reported(self, *names: str) -> None:
        """Each Cell sends a status report now; Core has read them all."""
        for name in names or self.CELLS:
            self.cells[name].report()
        # A request to each Cell after its report: the report is ahead of the reply on the link.
        for name in names or self.CELLS:
            await self.ops.cells.storage_paths(self.store.view.cells[name].pool, name)

    async def rejoined(self, name: str, *, died: bool = True) -> None:
        """Drop ``name``'s link (if it is up); it reconnects, rejoins its pool, and Core took
        its inventory. ``died``: the Cell died with its link and forgot what it was doing;
        otherwise only the link dropped."""
        linked = self.events.until_available(name)
        if died:
            self.cells[name].kill()
        else:
            self.cells[name].drop_link()
        await linked
        self.cells[name].report()
        # The pool push went out when Core heard of the Cell: a round trip after it means its
        # answer arrived, and the inventory's commit is queued before this empty one.
        await self.ops.cells.storage_paths(self.store.view.cells[name].pool, name)
        await self.store.commit(UnitOfWork(()))

    def store_cannot_save(self) -> list[bool]:
        """Every commit fails as SQLite's on a full disk, until the flag is cleared;
        ``self.commit`` still commits (a test's own barrier)."""
        full = [True]
        commit = self.commit = self.store.commit

        def failing(unit: UnitOfWork) -> Deferred[None]:
            if full[0]:
                return fail(CommitFailed("state could not be saved: database or disk is full"))
            return commit(unit)

        self.patch(self.store, "commit", failing)
        return full

    def claims(self) -> list[str]:
        return sorted(str(c.key) for c in self.ops.context.claims.live(CAPACITY))

    def guest_body(self, name: str = "vm1", **fields: Any) -> dict[str, Any]:
        template = next(iter(self.store.view.templates))
        body: dict[str, Any] = {
            "name": name, "owner": "alice", "group": "team", "pool": "default",
            "template": template, "cores": 2, "memory": 2 * GiB, "disks": [20 * GiB],
        }  # fmt: skip
        body.update(fields)
        return body
