"""All operations families over one store, clock and Cell directory: what the API is given."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from twisted.internet.interfaces import IReactorTime

from nanocore.cluster.cells import CellDirectory
from nanocore.durations import Durations
from nanocore.operations.addresses import AddressPools
from nanocore.operations.backups import Backups
from nanocore.operations.base import Context
from nanocore.operations.batches import Batches
from nanocore.operations.capture import Captures
from nanocore.operations.cells import CellOperations, NoLinks
from nanocore.operations.growth import Growth
from nanocore.operations.guest_config import GuestConfig
from nanocore.operations.guest_firewall import GuestFirewall
from nanocore.operations.guests import GuestOperations
from nanocore.operations.images import ImageFiles, Images, NoImageFiles
from nanocore.operations.imagesite import ImageSiteLocator, no_image_site
from nanocore.operations.media import GuestMedia
from nanocore.operations.migrations import Migrations
from nanocore.operations.pools import ComputePools, StoragePools
from nanocore.operations.security import SecurityGroups
from nanocore.operations.snapshots import Snapshots
from nanocore.operations.status import Status
from nanocore.operations.templates import Templates
from nanocore.scheduler import Scheduler
from nanocore.store import CommitStore


class Operations:
    """The one place that changes state; each attribute is one resource family."""

    def __init__(
        self,
        store: CommitStore,
        clock: IReactorTime,
        cells: CellDirectory | None = None,
        *,
        timeout: float | None = None,
        image_files: ImageFiles | None = None,
        scheduler: Scheduler | None = None,
        image_site: ImageSiteLocator = no_image_site,
        randbelow: Callable[[int], int] | None = None,
        decision_times: Durations | None = None,
        backups: Backups | None = None,
    ) -> None:
        """``cells`` is the Cell registry (none: a Core with no fabric, every Cell offline).

        ``timeout`` bounds Cell requests (default: the registry's own, the domain timeout);
        ``scheduler`` places guests (default: the original's filters and score); ``image_site``
        says where Cells fetch images; ``randbelow(n)`` starts the address search in a range;
        ``image_files`` are the image folders (none: a Core that keeps no image files);
        ``decision_times`` records how long each placement decision takes; ``backups``
        copies the store (none: a Core whose store is not copied).
        """
        self.context = Context(store, clock)
        self.compute_pools = ComputePools(self.context)
        self.storage_pools = StoragePools(self.context)
        self.templates = Templates(self.context)
        self.security_groups = SecurityGroups(self.context)
        folders = image_files if image_files is not None else NoImageFiles()
        self.images = Images(self.context, folders)
        links = cells if cells is not None else NoLinks()
        self.guests = GuestOperations(
            self.context,
            links,
            timeout,
            scheduler=scheduler,
            image_site=image_site,
            randbelow=randbelow,
            decision_times=decision_times,
            resync=lambda cell, reason: self.cells.resync(cell, reason),
        )
        self.images.clones_of = self.guests.access.clones.of
        access, placement = self.guests.access, self.guests.placement
        self.guest_config = GuestConfig(access, placement, Growth(self.context, placement))
        self.media = GuestMedia(access, image_site)
        self.snapshots = Snapshots(access)
        self.guest_firewall = GuestFirewall(access)
        self.captures = Captures(self.context, self.images, self.guests.access, image_site)
        self.cells = CellOperations(
            self.context,
            links,
            timeout,
            reconcile=self.guests.reconcile,
            bound_for=placement.bound_for,
        )
        self.batches = Batches(self.context, self.guests)
        self.migrations = Migrations(access, placement, timeout, refresh=self.cells.refresh)
        links.subscribe(self.cells)
        links.subscribe(self.guests.events)
        # After the guests' observer: a failover re-places guests once they are marked lost.
        links.subscribe(self.migrations)
        # After the guests' observer: a batch judges a member once its event is applied.
        links.subscribe(self.batches)
        # A Cell that died while Core was down has no link to lose: presumed lost if it does
        # not link again in time, as a link lost without goodbye.
        self.cells.expect_members_back()
        self.address_pools = AddressPools(self.context, self.cells.notify)
        self.status = Status(self.context, self.cells, self.context.now_text())
        self.backups = backups if backups is not None else Backups(None, Path(), clock)

    def revision(self) -> tuple[int, int]:
        """Changes with every commit made through these operations (keys the API's cache)."""
        return self.context.revision()
