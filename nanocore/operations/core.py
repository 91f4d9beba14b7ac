"""All operations families over one store, clock and Cell monitor: what the API is given."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from nanocore.operations.addresses import AddressPools
from nanocore.operations.base import Context, StoreLike
from nanocore.operations.cells import CellDirectory, CellOperations, FailoverPlanner, NoLinks
from nanocore.operations.pools import ComputePools, StoragePools
from nanocore.operations.security import SecurityGroups
from nanocore.operations.status import CellMonitor, NoCells, Status
from nanocore.operations.templates import Templates


class Operations:
    """The one place that changes state; each attribute is one resource family."""

    def __init__(
        self,
        store: StoreLike,
        clock: IReactorTime,
        monitor: CellMonitor | None = None,
        cells: CellDirectory | None = None,
        *,
        timeout: float | None = None,
        failover: FailoverPlanner | None = None,
    ) -> None:
        """``cells`` is the Cell registry; the cell family subscribes to it and is the monitor.

        ``timeout`` bounds Cell requests (default: the registry's own, the domain timeout);
        ``failover`` plans the failover of
        a Cell lost without goodbye from a pool with failover on (a later issue).
        """
        self.context = Context(store, clock)
        self.compute_pools = ComputePools(self.context)
        self.storage_pools = StoragePools(self.context)
        self.templates = Templates(self.context)
        self.security_groups = SecurityGroups(self.context)
        links = cells if cells is not None else NoLinks()
        self.cells = CellOperations(self.context, links, timeout, failover=failover)
        links.subscribe(self.cells)
        if monitor is None:
            monitor = self.cells if cells is not None else NoCells()
        self.address_pools = AddressPools(self.context, self.cells.notify)
        self.status = Status(self.context, monitor, self.context.now_text())

    def revision(self) -> tuple[int, int]:
        """Changes with every commit made through these operations (keys the API's cache)."""
        return self.context.revision()
