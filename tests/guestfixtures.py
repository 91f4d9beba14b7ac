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
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from nanocore.api.app import build_api_resource
from nanocore.api.testing import TEST_CREDENTIALS, Answer, APIClient
from nanocore.cluster.cells import CellObserver, CellStatus
from nanocore.cluster.message import Message, ParamKey
from nanocore.operations.core import Operations
from nanocore.operations.guests import CAPACITY
from nanocore.operations.imagesite import ImageSiteAddress
from nanocore.pki import CertificateAuthority, create_ca
from nanocore.store import Store
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

    def until(self, message_id: int, guest: str) -> Deferred[Message]:
        d: Deferred[Message] = Deferred()
        self._waiting[(message_id, guest)].append(d)
        return d

    def cell_available(self, name: str, address: str) -> None:
        pass

    def cell_status(self, name: str, status: CellStatus) -> None:
        pass

    def cell_event(self, name: str, message: Message) -> None:
        self.seen.append((name, message))
        params = message.string_params
        guest = params.get(ParamKey.Instance) or params.get(ParamKey.Guest, "")
        for d in self._waiting.pop((message.id, guest), []):
            d.callback(message)

    def cell_disconnected(self, name: str, gracefully: bool) -> None:
        pass


class GuestClusterCase(TestCase):
    """``self.ops`` over a fresh store, ``self.cells`` linked over ``wire`` and added to pool
    ``default``."""

    CELLS: tuple[str, ...] = ("Cell_0000000000a1", "Cell_0000000000b2")
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
            await self.ops.cells.storage_paths("default", name)

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
