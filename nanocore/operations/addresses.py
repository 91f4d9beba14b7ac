"""Address pools and their ranges (§4.13): ranges inside their mask, gateways outside every
range, no two ranges of a pool overlapping, nothing removed while addresses are allocated."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.model import AddressAllocation, AddressPool, AddressRange, is_ipv4
from nanocore.operations.base import Context, build, check_label
from nanocore.operations.claims import ClaimKind
from nanocore.operations.errors import (
    AlreadyExists,
    InvalidRequest,
    OperationError,
    UnknownEntity,
)
from nanocore.store import Delete, Insert, Put

PROVIDERS = ("dhcp", "cloudinit")
MODES = ("internal", "external", "both")
RANGE_KINDS = ("internal",)

#: An address pool (key: its name) while a range is added to it or its gateway changed: each
#: is checked against the other's committed values (ranges do not overlap, the gateway is in
#: none), so no two may be in flight at once (QA pass 25: a gateway change and a range
#: addition sent together left the gateway inside the range).
POOL_CHANGE: ClaimKind[None] = ClaimKind(
    "address pool change",
    lambda held: InvalidRequest(f"address pool '{held.key}' is being changed, retry"),
)


@frozen
class AddressPoolSummary:
    pool: AddressPool
    capacity: int
    allocated: int


@frozen
class AddressPoolDetail:
    pool: AddressPool
    ranges: tuple[AddressRange, ...]
    allocations: tuple[AddressAllocation, ...]


@frozen
class RangeDetail:
    range: AddressRange
    allocations: tuple[AddressAllocation, ...]


class AddressPools:
    def __init__(
        self, context: Context, notify: Callable[[str, Message], None] | None = None
    ) -> None:
        """``notify`` sends a fire-and-forget message to a connected Cell."""
        self._context = context
        self._notify = notify

    def _pool(self, name: str) -> AddressPool:
        pool = self._context.view.address_pools.get(name)
        if pool is None:
            raise UnknownEntity(f"invalid address pool '{name}'")
        return pool

    def _ranges(self, name: str) -> tuple[AddressRange, ...]:
        return tuple(r for r in self._context.view.address_ranges.values() if r.pool == name)

    def _allocations(self, name: str) -> tuple[AddressAllocation, ...]:
        return tuple(a for a in self._context.view.allocations.values() if a.pool == name)

    def list(self) -> list[AddressPoolSummary]:
        capacity: dict[str, int] = {}
        allocated: dict[str, int] = {}
        for item in self._context.view.address_ranges.values():
            capacity[item.pool] = capacity.get(item.pool, 0) + item.capacity
        for allocation in self._context.view.allocations.values():
            allocated[allocation.pool] = allocated.get(allocation.pool, 0) + 1
        return [
            AddressPoolSummary(pool, capacity.get(name, 0), allocated.get(name, 0))
            for name, pool in self._context.view.address_pools.items()
        ]

    def get(self, name: str) -> AddressPoolDetail:
        return AddressPoolDetail(self._pool(name), self._ranges(name), self._allocations(name))

    def _validated(
        self, name: str, gateway: str, dns: Sequence[str], provider: str, mode: str
    ) -> AddressPool:
        if not is_ipv4(gateway):
            raise InvalidRequest(f"invalid gateway '{gateway}'")
        for server in dns:
            if not is_ipv4(server):
                raise InvalidRequest(f"invalid DNS '{server}'")
        if provider not in PROVIDERS:
            raise InvalidRequest(f"invalid provider '{provider}'")
        if mode and mode not in MODES:
            raise InvalidRequest("invalid allocation mode")
        for item in self._ranges(name):
            if gateway in item:
                raise InvalidRequest(
                    f"gateway {gateway} inside range {item.start}-{item.end} of '{name}'"
                )
        return build(AddressPool, name=name, gateway=gateway, dns=tuple(dns), provider=provider)

    def create(
        self, name: str, gateway: str, dns: Sequence[str], provider: str, mode: str
    ) -> Deferred[None]:
        check_label("address pool", name)
        if name in self._context.view.address_pools:
            raise AlreadyExists(f"address pool '{name}' already exists")
        return self._context.commit(Insert(self._validated(name, gateway, dns, provider, mode)))

    def modify(
        self, name: str, gateway: str, dns: Sequence[str], provider: str, mode: str
    ) -> Deferred[None]:
        self._pool(name)
        pool = self._validated(name, gateway, dns, provider, mode)
        claim = self._context.claims.take(POOL_CHANGE, name, None)
        committing = self._context.commit(Put(pool), holding=(claim,))
        return committing.addCallback(lambda _: self._announce(pool))

    def _announce(self, pool: AddressPool) -> None:
        """Tell the Cells of every compute pool using ``pool`` (Core's AddressPoolChanged)."""
        if self._notify is None:
            return
        view = self._context.view
        users = {p.name for p in view.compute_pools.values() if p.network == pool.name}
        message = Message(
            id=MessageID.AddressPoolChangedEvent,
            string_params={
                ParamKey.Address: pool.name,
                ParamKey.Gateway: pool.gateway,
                ParamKey.Mode: pool.provider.value,
            },
            string_array_params={ParamKey.Server: pool.dns},
        )
        for cell in view.cells.values():
            if cell.pool in users:
                self._notify(cell.name, message)

    def delete(self, name: str) -> Deferred[None]:
        self._pool(name)
        for pool in self._context.view.compute_pools.values():
            if pool.network == name:
                raise InvalidRequest(
                    f"address pool '{name}' still used by compute pool '{pool.name}'"
                )
        allocated = len(self._allocations(name))
        if allocated:
            raise InvalidRequest(
                f"{allocated} address(es) still allocated in address pool '{name}'"
            )
        changes = [Delete(AddressRange, item.key) for item in self._ranges(name)]
        return self._context.commit(*changes, Delete(AddressPool, name))

    # ranges

    def _check_kind(self, kind: str) -> None:
        if kind not in RANGE_KINDS:
            raise InvalidRequest(f"unsupported range type '{kind}'")

    def _range(self, name: str, kind: str, start: str) -> AddressRange:
        self._check_kind(kind)
        self._pool(name)
        item = self._context.view.address_ranges.get((name, start))
        if item is None:
            raise UnknownEntity(f"invalid range '{start}' in address pool '{name}'")
        return item

    def ranges(self, name: str, kind: str) -> tuple[AddressRange, ...]:
        self._check_kind(kind)
        self._pool(name)
        return self._ranges(name)

    def get_range(self, name: str, kind: str, start: str) -> RangeDetail:
        item = self._range(name, kind, start)
        return RangeDetail(
            item, tuple(a for a in self._allocations(name) if a.range_start == item.start)
        )

    def add_range(
        self, name: str, kind: str, start: str, end: str, netmask: str
    ) -> Deferred[None]:
        self._check_kind(kind)
        pool = self._pool(name)
        if not is_ipv4(start):
            raise InvalidRequest(f"invalid start address '{start}'")
        if not is_ipv4(end):
            raise InvalidRequest(f"invalid end address '{end}'")
        try:
            network = ipaddress.IPv4Network(f"{start}/{netmask}", strict=False)
        except ValueError:
            raise InvalidRequest(f"invalid netmask '{netmask}'") from None
        if netmask.count(".") != 3:
            raise InvalidRequest(f"invalid netmask '{netmask}'")
        first, last = ipaddress.IPv4Address(start), ipaddress.IPv4Address(end)
        if last < first:
            raise InvalidRequest(f"end address {end} is before start address {start}")
        if last not in network:
            raise InvalidRequest(f"end address {end} is outside the network {network}")
        if (name, start) in self._context.view.address_ranges:
            raise AlreadyExists(f"range '{start}' already exists in address pool '{name}'")
        item = build(AddressRange, pool=name, start=start, end=end, netmask=netmask, kind=kind)
        if pool.gateway in item:
            raise InvalidRequest(f"gateway {pool.gateway} inside range {start}-{end}")
        for other in self._ranges(name):
            if item.overlaps(other):
                raise InvalidRequest(
                    f"range {start}-{end} overlaps range {other.start}-{other.end}"
                )
        claim = self._context.claims.take(POOL_CHANGE, name, None)
        return self._context.commit(Insert(item), holding=(claim,))

    def remove_range(self, name: str, kind: str, start: str) -> Deferred[None]:
        item = self._range(name, kind, start)
        self._refuse_allocated(item)

        def allocated_meanwhile(failure: Failure) -> Failure:
            # An allocation committed between the check and the removal (a guest placed
            # then): Nano's answer on what is committed now, not the store's sentence.
            failure.trap(OperationError)
            self._refuse_allocated(item)
            return failure

        return self._context.commit(Delete(AddressRange, item.key)).addErrback(allocated_meanwhile)

    def _refuse_allocated(self, item: AddressRange) -> None:
        allocated = sum(1 for a in self._allocations(item.pool) if a.range_start == item.start)
        if allocated:
            raise InvalidRequest(
                f"{allocated} address(es) of range '{item.start}' still allocated"
            )
