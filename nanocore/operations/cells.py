"""Cell pool membership (§4.2, cell-protocol §5.2): add, remove, enable/disable, list.

Adding a Cell pushes the pool's storage and network to it and waits for its ready event; the
membership is committed only once the Cell reports ready, so a Cell that fails or times out
is left unallocated (Core kept it assigned).
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from attrs import evolve, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from nanocore.cluster.cells import CellState, CellStatus
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.cluster.transactions import CellError, TransactionTimeout
from nanocore.cluster.transport import LinkError
from nanocore.model import ComputeCell, ComputePool
from nanocore.operations.base import Context
from nanocore.operations.errors import InvalidRequest, OperationTimeout, UnknownEntity
from nanocore.operations.status import CellUsage
from nanocore.store import Delete, Insert, Put

#: Core waits a fixed 10 s for a Cell's ready event when it joins a pool.
READY_TIMEOUT = 10.0


class CellLinks(Protocol):
    """The part of :class:`nanocore.cluster.cells.CellRegistry` operations use."""

    def names(self) -> Any: ...

    def address(self, name: str) -> str | None: ...

    def status(self, name: str) -> CellStatus | None: ...

    def state(self, name: str) -> CellState | None: ...

    def send(self, name: str, message: Message) -> None: ...

    def request(self, name: str, message: Message, **kw: Any) -> Deferred[Message]: ...


class NoLinks:
    """No fabric: no Cell is ever connected."""

    def names(self) -> Any:
        return iter(())

    def address(self, name: str) -> str | None:
        return None

    def status(self, name: str) -> CellStatus | None:
        return None

    def state(self, name: str) -> CellState | None:
        return None

    def send(self, name: str, message: Message) -> None:
        raise InvalidRequest(f"cell '{name}' is not connected")

    def request(self, name: str, message: Message, **kw: Any) -> Deferred[Message]:
        raise InvalidRequest(f"cell '{name}' is not connected")


class RegistryMonitor:
    """The status view of a Cell registry (see :class:`nanocore.operations.status.CellMonitor`)."""

    def __init__(self, links: CellLinks) -> None:
        self._links = links

    def alive(self, name: str) -> bool:
        return self._links.state(name) is CellState.ALIVE

    def address(self, name: str) -> str:
        return self._links.address(name) or ""

    def usage(self, name: str) -> CellUsage | None:
        status = self._links.status(name)
        if status is None:
            return None
        read, write, receive, send = status.speed
        return CellUsage(
            cores=status.cores,
            cpu_usage=status.usage,
            memory=status.memory_total,
            memory_available=status.memory_available,
            disk=status.disk_total,
            disk_available=status.disk_free,
            read_speed=read,
            write_speed=write,
            receive_speed=receive,
            send_speed=send,
        )


@frozen
class CellInfo:
    name: str
    address: str
    enabled: bool
    alive: bool


@frozen
class AttachedStorage:
    name: str
    attached: bool
    error: str = ""


@frozen
class CellDetail:
    info: CellInfo
    storage: tuple[AttachedStorage, ...] = ()


@frozen
class StoragePaths:
    mode: str
    system: tuple[str, ...]
    data: tuple[str, ...]


class Cells:
    def __init__(
        self, context: Context, links: CellLinks, ready_timeout: float = READY_TIMEOUT
    ) -> None:
        self._context = context
        self._links = links
        self._ready_timeout = ready_timeout
        self._monitor = RegistryMonitor(links)

    def notify(self, name: str, message: Message) -> None:
        """Fire-and-forget to a Cell if it is connected; a missing Cell re-syncs on rejoin."""
        with contextlib.suppress(LinkError, InvalidRequest):
            self._links.send(name, message)

    def _info(self, name: str, enabled: bool) -> CellInfo:
        return CellInfo(name, self._monitor.address(name), enabled, self._monitor.alive(name))

    def _pool(self, name: str) -> ComputePool:
        pool = self._context.view.compute_pools.get(name)
        if pool is None:
            raise UnknownEntity(f"invalid pool '{name}'")
        return pool

    def _member(self, pool: str, name: str) -> ComputeCell:
        self._pool(pool)
        cell = self._context.view.cells.get(name)
        if cell is None or cell.pool != pool:
            raise InvalidRequest(f"cell '{name}' not in pool '{pool}'")
        return cell

    def unallocated(self) -> list[CellInfo]:
        stored = self._context.view.cells
        names = {name for name, cell in stored.items() if not cell.pool}
        names.update(name for name in self._links.names() if name not in stored)
        return [self._info(name, stored[name].enabled if name in stored else True)
                for name in sorted(names)]  # fmt: skip

    def in_pool(self, pool: str) -> list[CellInfo]:
        self._pool(pool)
        cells = self._context.view.cells
        return [
            self._info(name, cells[name].enabled)
            for name in sorted(cells)
            if cells[name].pool == pool
        ]

    def get(self, pool: str, name: str) -> Deferred[CellDetail]:
        """The cell, with its storage attachment asked live while it is alive and enabled."""
        info = self._info(name, self._member(pool, name).enabled)
        if not (info.alive and info.enabled):
            return succeed(CellDetail(info))
        asked = self._ask(name, MessageID.GetComputePoolCellRequest)

        def detail(reply: Message) -> CellDetail:
            names = reply.string_array_params.get(ParamKey.Storage, ())
            errors = reply.string_array_params.get(ParamKey.Error, ())
            attached = reply.uint_array_params.get(ParamKey.Attach, ())
            return CellDetail(
                info,
                tuple(
                    AttachedStorage(
                        device,
                        bool(attached[i]) if i < len(attached) else False,
                        errors[i] if i < len(errors) else "",
                    )
                    for i, device in enumerate(names)
                ),
            )

        return asked.addCallback(detail)

    def storage_paths(self, pool: str, name: str) -> Deferred[StoragePaths]:
        self._member(pool, name)

        def paths(reply: Message) -> StoragePaths:
            mode = reply.uint_params.get(ParamKey.Mode, 0)
            return StoragePaths(
                "nfs" if mode == 1 else "local",
                tuple(reply.string_array_params.get(ParamKey.System, ())),
                tuple(reply.string_array_params.get(ParamKey.Data, ())),
            )

        return self._ask(name, MessageID.QueryCellStorageRequest).addCallback(paths)

    def change_storage_path(self, pool: str, name: str, path: str) -> Deferred[None]:
        self._member(pool, name)
        if not path:
            raise InvalidRequest("target path required")
        asked = self._ask(name, MessageID.ModifyCellStorageRequest, {ParamKey.Path: path})
        return asked.addCallback(lambda _: None)

    def _ask(
        self, name: str, message_id: int, strings: dict[int, str] | None = None
    ) -> Deferred[Message]:
        """A request to the Cell; its failures become messages the client can read."""
        message = Message(id=message_id, string_params={ParamKey.Cell: name, **(strings or {})})

        def failed(failure: Failure) -> Failure:
            if failure.check(TransactionTimeout):
                return Failure(OperationTimeout("cell timeout"))
            if failure.check(CellError, LinkError):
                return Failure(InvalidRequest(f"cell '{name}': {failure.value}"))
            return failure

        return self._links.request(name, message).addErrback(failed)

    def add(self, pool_name: str, name: str) -> Deferred[None]:
        pool = self._pool(pool_name)
        stored = self._context.view.cells.get(name)
        if stored is not None and stored.pool:
            if stored.pool == pool_name:
                raise InvalidRequest(f"cell '{name}' already in pool '{pool_name}'")
            raise InvalidRequest(f"cell '{name}' already allocated")
        if self._links.state(name) in (None, CellState.DISCONNECTED):
            raise InvalidRequest(f"cell '{name}' is not connected")
        claim = ("cell", name)
        if self._context.claimed(claim):
            raise InvalidRequest(f"cell '{name}' is already being added to a pool")
        self._context.claim(claim)
        ready = self._links.request(name, self._pool_ready(pool), timeout=self._ready_timeout)

        def joined(reply: Message) -> Deferred[None]:
            cell = ComputeCell(name=name, pool=pool_name, enabled=True)
            change = Put(cell) if stored is not None else Insert(cell)
            return self._context.commit(change, claims=(claim,))

        def refused(failure: Failure) -> Failure:
            self._context.release(claim)
            if failure.check(TransactionTimeout):
                return Failure(OperationTimeout("wait cell ready timeout"))
            if failure.check(CellError, LinkError):
                return Failure(InvalidRequest(f"cell '{name}' not ready: {failure.value}"))
            return failure

        return ready.addCallbacks(joined, refused)

    def _pool_ready(self, pool: ComputePool) -> Message:
        view = self._context.view
        strings: dict[int, str] = {
            ParamKey.Pool: pool.name,
            ParamKey.Storage: pool.storage,
            ParamKey.Network: pool.network,
        }
        arrays: dict[int, tuple[str, ...]] = {}
        if pool.storage:
            storage = view.storage_pools[pool.storage]
            strings.update({ParamKey.Type: storage.type.value, ParamKey.Host: storage.host,
                            ParamKey.Target: storage.target})  # fmt: skip
        if pool.network:
            network = view.address_pools[pool.network]
            strings.update({ParamKey.Gateway: network.gateway,
                            ParamKey.Mode: network.provider.value})  # fmt: skip
            arrays[ParamKey.Server] = tuple(network.dns)
        return Message(
            id=MessageID.ComputePoolReadyEvent,
            string_params=strings,
            string_array_params=arrays,
        )

    def remove(self, pool: str, name: str) -> Deferred[None]:
        self._member(pool, name)
        left = sum(1 for i in self._context.view.instances.values() if i.cell == name)
        if left:
            raise InvalidRequest(
                f"{left} instance(s) left in cell '{name}', "
                "migrate or delete all instance(s) before remove cell"
            )

        removed = Message(id=MessageID.ComputeCellRemovedEvent)
        d = self._context.commit(Delete(ComputeCell, name))
        return d.addCallback(lambda _: self.notify(name, removed))

    def modify(self, pool: str, name: str, enable: bool) -> Deferred[None]:
        cell = self._member(pool, name)
        if cell.enabled == enable:
            state = "enabled" if enable else "disabled"
            raise InvalidRequest(f"cell '{name}' already {state}")
        return self._context.commit(Put(evolve(cell, enabled=enable)))
