"""Compute pools and storage pools: create, modify, delete with Core's rules (§4.1, §4.3)."""

from __future__ import annotations

from attrs import frozen
from twisted.internet.defer import Deferred

from nanocore.model import ComputePool, StoragePool
from nanocore.operations.base import Context, build, check_name
from nanocore.operations.errors import AlreadyExists, InvalidRequest, UnknownEntity
from nanocore.store import Delete, Insert, Put


@frozen
class PoolSummary:
    pool: ComputePool
    cells: int


class ComputePools:
    def __init__(self, context: Context) -> None:
        self._context = context

    def _cell_count(self, name: str) -> int:
        return sum(1 for cell in self._context.view.cells.values() if cell.pool == name)

    def _pool(self, name: str) -> ComputePool:
        pool = self._context.view.compute_pools.get(name)
        if pool is None:
            raise UnknownEntity(f"invalid pool '{name}'")
        return pool

    def list(self) -> list[PoolSummary]:
        counts: dict[str, int] = {}
        for cell in self._context.view.cells.values():
            if cell.pool:
                counts[cell.pool] = counts.get(cell.pool, 0) + 1
        pools = self._context.view.compute_pools
        return [PoolSummary(pools[name], counts.get(name, 0)) for name in sorted(pools)]

    def get(self, name: str) -> PoolSummary:
        return PoolSummary(self._pool(name), self._cell_count(name))

    def _validated(self, name: str, storage: str, network: str, failover: bool) -> ComputePool:
        view = self._context.view
        if storage and storage not in view.storage_pools:
            raise InvalidRequest(f"invalid storage pool '{storage}'")
        if network and network not in view.address_pools:
            raise InvalidRequest(f"invalid address pool '{network}'")
        if failover and not storage:
            raise InvalidRequest("using shared storage to enable Failover feature")
        return build(ComputePool, name=name, storage=storage, network=network, failover=failover)

    def create(self, name: str, storage: str, network: str, failover: bool) -> Deferred[None]:
        check_name("pool", name)
        if name in self._context.view.compute_pools:
            raise AlreadyExists(f"compute pool '{name}' already exists")
        pool = self._validated(name, storage, network, failover)
        return self._context.commit(Insert(pool))

    def modify(self, name: str, storage: str, network: str, failover: bool) -> Deferred[None]:
        check_name("pool", name)  # before the lookup, as Core's modify
        current = self._pool(name)
        pool = self._validated(name, storage, network, failover)
        if pool == current:
            raise InvalidRequest("no need to change")
        if pool.storage != current.storage and self._cell_count(name):
            raise InvalidRequest("must remove all cells before change storage")
        if pool.network != current.network and current.network:
            held = self._held_addresses(name, current.network)
            if held:
                raise InvalidRequest(
                    f"{held} instance(s) of pool '{name}' still hold addresses of "
                    f"address pool '{current.network}'"
                )
        return self._context.commit(Put(pool))

    def _held_addresses(self, pool: str, network: str) -> int:
        view = self._context.view
        return sum(
            1
            for allocation in view.allocations.values()
            if allocation.pool == network
            and (instance := view.instances.get(allocation.instance)) is not None
            and instance.pool == pool
        )

    def delete(self, name: str) -> Deferred[None]:
        self._pool(name)
        if self._cell_count(name):
            raise InvalidRequest("must remove all cells before delete")
        return self._context.commit(Delete(ComputePool, name))


class StoragePools:
    def __init__(self, context: Context) -> None:
        self._context = context

    def _pool(self, name: str) -> StoragePool:
        pool = self._context.view.storage_pools.get(name)
        if pool is None:
            raise UnknownEntity(f"invalid storage pool '{name}'")
        return pool

    def list(self) -> list[StoragePool]:
        pools = self._context.view.storage_pools
        return [pools[name] for name in sorted(pools)]

    def get(self, name: str) -> StoragePool:
        return self._pool(name)

    def _validated(self, name: str, kind: str, host: str, target: str) -> StoragePool:
        if kind != "nfs":
            raise InvalidRequest(f"invalid storage type '{kind}'")
        if not host:
            raise InvalidRequest("host required")
        if not target:
            raise InvalidRequest("target required")
        return build(StoragePool, name=name, type=kind, host=host, target=target)

    def _user(self, name: str) -> str | None:
        for pool in self._context.view.compute_pools.values():
            if pool.storage == name:
                return pool.name
        return None

    def create(self, name: str, kind: str, host: str, target: str) -> Deferred[None]:
        check_name("storage pool", name)
        if name in self._context.view.storage_pools:
            raise AlreadyExists(f"storage pool '{name}' already exists")
        return self._context.commit(Insert(self._validated(name, kind, host, target)))

    def modify(self, name: str, kind: str, host: str, target: str) -> Deferred[None]:
        check_name("storage pool", name)  # before the lookup, as Core's modify
        current = self._pool(name)
        pool = self._validated(name, kind, host, target)
        if pool == current:
            raise InvalidRequest("no need to change")
        user = self._user(name)
        if user is not None:
            raise InvalidRequest(f"compute pool '{user}' still attached to storage '{name}'")
        return self._context.commit(Put(pool))

    def delete(self, name: str) -> Deferred[None]:
        self._pool(name)
        user = self._user(name)
        if user is not None:
            raise InvalidRequest(f"compute pool '{user}' still attached to storage '{name}'")
        return self._context.commit(Delete(StoragePool, name))
