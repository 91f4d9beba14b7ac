"""Creating a guest (api-reference §4.6, cell-protocol.md §5.3, core-internals §4.2).

Validated in Nano's order, resolved (template → option vector, security policy group →
flattened rules, QoS, cloud-init, a disk image to clone), placed (Cell, name, address claimed
at once), recorded durably as *creating* before the Cell is asked, then sent. The Cell's answer
says whether the guest exists yet; usually not (``Enable`` false), and its progress and its
``GuestCreatedEvent`` come later as events.

A creation the Cell refuses leaves nothing behind. One that times out, or whose Cell drops the
link, may still happen on the Cell: its record and addresses go at once, and a pending error
naming the Cell stays until that Cell shows it does not hold the guest (a guest it reports under
that id is deleted there, see :mod:`nanocore.operations.guests.events`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from attrs import evolve, frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.model import (
    AddressAllocation,
    ComputePool,
    CPUPriority,
    Instance,
    InstanceNetwork,
    PendingError,
    QoS,
    SystemTemplate,
)
from nanocore.operations.base import build, check_name
from nanocore.operations.cells import CellLeaving, CellRefused
from nanocore.operations.claims import Claim
from nanocore.operations.errors import InvalidRequest, OperationError, UnknownEntity
from nanocore.operations.guests.common import GuestAccess
from nanocore.operations.guests.placement import Placement
from nanocore.operations.imagesite import ImageSiteLocator
from nanocore.scheduler import Demand, format_size
from nanocore.store import Change, Insert, Put, ReadModel

#: What the API calls the three CPU priorities (the Cells' 0, 1, 2).
PRIORITIES = {"high": CPUPriority.HIGH, "medium": CPUPriority.MEDIUM, "low": CPUPriority.LOW}
#: The guest modules a Cell knows.
MODULES = ("qemu", "cloud-init")
#: ``Mode:u[2]`` of every creation: network mode plain (1), storage mode local (0) (§3.3).
NETWORK_PLAIN, STORAGE_LOCAL = 1, 0


@frozen
class CloudInit:
    """The cloud-init object of a create request; omitted, root login stays enabled."""

    root_enabled: bool = True
    admin_name: str = ""
    admin_secret: str = ""
    data_path: str = ""


@frozen
class QoSSpec:
    """The QoS object of a create request (limits in bytes/s and IOPS, 0 = unlimited)."""

    cpu_priority: str = "high"
    read_speed: int = 0
    write_speed: int = 0
    read_iops: int = 0
    write_iops: int = 0
    receive_speed: int = 0
    send_speed: int = 0


@frozen
class GuestSpec:
    """A create request as the client sent it."""

    name: str
    owner: str
    group: str
    pool: str
    template: str
    cores: int
    memory: int
    disks: tuple[int, ...]
    auto_start: bool = False
    from_image: str = ""
    modules: tuple[str, ...] = ()
    cloud_init: CloudInit | None = None
    qos: QoSSpec | None = None
    security_policy_group: str = ""


@frozen
class Resolved:
    """What a create request names, looked up and checked, before it is placed."""

    pool: ComputePool
    template: SystemTemplate
    qos: QoS
    policy: tuple[int, ...]
    accept: bool
    image: ImageSource | None


@frozen
class Decision:
    """A placed creation: the record and what else to commit, the request, the claims."""

    instance: Instance
    message: Message
    changes: tuple[Change, ...]
    held: tuple[Claim[Any], ...]


@frozen
class Created:
    """The new guest's id, and whether the Cell says it exists already (else: poll it)."""

    id: str
    created: bool


def required(spec: GuestSpec) -> None:
    """The API's checks, in Core's order (api-reference §4.6)."""
    for present, message in (
        (spec.name, "name required"),
        (spec.owner, "owner required"),
        (spec.group, "group required"),
        (spec.pool, "target pool required"),
        (spec.template, "system template required"),
        (spec.cores, "cores required"),
        (spec.memory, "memory required"),
        (spec.disks, "must specify disk size"),
    ):
        if not present:
            raise InvalidRequest(message)


def qos_of(spec: QoSSpec | None) -> QoS:
    if spec is None:
        return QoS()
    priority = PRIORITIES.get(spec.cpu_priority)
    if priority is None:
        raise InvalidRequest(f"invalid CPU priority {spec.cpu_priority}")
    return build(
        QoS,
        cpu_priority=priority,
        read_speed=spec.read_speed,
        write_speed=spec.write_speed,
        read_iops=spec.read_iops,
        write_iops=spec.write_iops,
        receive_speed=spec.receive_speed,
        send_speed=spec.send_speed,
    )


def limits(qos: QoS) -> tuple[int, ...]:
    """``Limit:u[6]``: read B/s, write B/s, read IOPS, write IOPS, receive, send."""
    return (
        qos.read_speed,
        qos.write_speed,
        qos.read_iops,
        qos.write_iops,
        qos.receive_speed,
        qos.send_speed,
    )


@frozen
class ImageSource:
    """A disk image for a Cell to write a system disk from, and where the Cell fetches it."""

    image: str
    host: str
    port: int
    size: int


def image_source(
    view: ReadModel, image_id: str, system_disk: int, image_site: ImageSiteLocator
) -> ImageSource:
    """The checks of a disk image a system disk is written from (create, reset), in order."""
    image = view.disk_images.get(image_id)
    if image is None:
        raise UnknownEntity(f"invalid disk image '{image_id}'")
    if not image.created:
        raise InvalidRequest(f"disk image '{image_id}' not created")
    if image.size > system_disk:
        raise InvalidRequest(
            f"source image ({format_size(image.size)}) larger than system disk "
            f"({format_size(system_disk)})"
        )
    site = image_site()
    if site is None:
        raise InvalidRequest("no image server available")
    return ImageSource(image.id, site.host, site.port, image.size)


class Creations:
    """The create flow; ``in_flight`` holds the ids whose Cell has not answered yet."""

    log = Logger()

    def __init__(
        self,
        access: GuestAccess,
        placement: Placement,
        image_site: ImageSiteLocator,
        on_created: Callable[[str, Message], Deferred[None]],
        on_progress: Callable[[str, Message], None],
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._access = access
        self._context = access.context
        self._placement = placement
        self._image_site = image_site
        self._on_created = on_created
        self._on_progress = on_progress
        self._new_id = new_id
        self.in_flight: set[str] = set()

    def create(self, spec: GuestSpec) -> Deferred[Created]:
        """Validate and place now (refusals are raised at once), then record and ask."""
        return self.begin(spec)[1]

    def begin(self, spec: GuestSpec) -> tuple[str, Deferred[Created]]:
        """As :meth:`create`, also naming the new guest's id, known from the decision on.

        A batch shows each member's id while its creation is still being recorded.
        """
        decision = self._decide(spec)
        return decision.instance.id, Deferred.fromCoroutine(self._create(decision))

    def validate(self, spec: GuestSpec) -> None:
        """Every check of a create that does not place it (a batch's checks up front)."""
        self._resolve(spec)

    # -- deciding ---------------------------------------------------------------------------

    def _resolve(self, spec: GuestSpec) -> Resolved:
        required(spec)
        check_name("guest", spec.name)
        check_name("owner", spec.owner)
        check_name("group", spec.group)
        for size in spec.disks:
            if size < 1:
                raise InvalidRequest(f"invalid disk size {size}")
        qos = qos_of(spec.qos)
        for module in spec.modules:
            if module not in MODULES:
                raise InvalidRequest(f"invalid module '{module}'")
        view = self._context.view
        pool = view.compute_pools.get(spec.pool)
        if pool is None:
            raise UnknownEntity(f"invalid pool '{spec.pool}'")
        template = view.templates.get(spec.template)
        if template is None:
            raise UnknownEntity(f"invalid template '{spec.template}'")
        policy: tuple[int, ...] = ()
        accept = True
        if spec.security_policy_group:
            group = view.policy_groups.get(spec.security_policy_group)
            if group is None:
                raise UnknownEntity(
                    f"invalid security policy group '{spec.security_policy_group}'"
                )
            policy = tuple(value for rule in group.rules for value in rule.flatten())
            accept = group.accept
        image = (
            image_source(view, spec.from_image, spec.disks[0], self._image_site)
            if spec.from_image
            else None
        )
        return Resolved(pool, template, qos, policy, accept, image)

    def _decide(self, spec: GuestSpec) -> Decision:
        resolved = self._resolve(spec)
        pool, template, qos = resolved.pool, resolved.template, resolved.qos
        demand = Demand(spec.cores, spec.memory, sum(spec.disks))
        instance_id = self._new_id()
        name_claim = self._placement.claim_name(spec.pool, spec.group, spec.name)
        claims = self._context.claims
        try:
            capacity = self._placement.place(instance_id, spec.pool, demand)
            try:
                address = self._placement.claim_address(pool, instance_id)
            except BaseException:
                # Through the placement, which counted it on its Cell (QA pass 25: each
                # creation refused for want of an address kept its share counted there).
                self._placement.abandon(capacity)
                raise
        except BaseException:
            claims.release(name_claim)
            raise
        cell = capacity.value.cell
        internal = InstanceNetwork(monitor_address=self._access.cells.address(cell) or "")
        changes: list[Change] = []
        held: list[Claim[Any]] = [name_claim]
        if address is not None:
            chosen, address_claim = address
            internal = evolve(internal, assigned_address=chosen.cidr)
            changes.append(
                Insert(
                    AddressAllocation(
                        pool=chosen.range.pool,
                        range_start=chosen.range.start,
                        address=chosen.address,
                        instance=instance_id,
                    )
                )
            )
            held.append(address_claim)
        try:
            instance = build(
                Instance,
                id=instance_id,
                name=spec.name,
                owner=spec.owner,
                group=spec.group,
                pool=spec.pool,
                cell=cell,
                cores=spec.cores,
                memory=spec.memory,
                disks=spec.disks,
                template=template.id,
                system=template.operating_system,
                auto_start=spec.auto_start,
                internal=internal,
                qos=qos,
            )
        except BaseException:
            for claim in held:
                claims.release(claim)
            self._placement.abandon(capacity)
            raise
        message = self._message(
            instance, spec, template, resolved.policy, resolved.accept, resolved.image
        )
        return Decision(instance, message, (Insert(instance), *changes), tuple(held))

    def _message(
        self,
        instance: Instance,
        spec: GuestSpec,
        template: SystemTemplate,
        policy: Sequence[int],
        accept: bool,
        image: ImageSource | None,
    ) -> Message:
        cloud = spec.cloud_init if spec.cloud_init is not None else CloudInit()
        strings: dict[int, str] = {
            ParamKey.Name: instance.full_name,
            ParamKey.Instance: instance.id,
            ParamKey.User: instance.owner,
            ParamKey.Group: instance.group,
            ParamKey.Pool: instance.pool,
            ParamKey.Admin: cloud.admin_name or template.admin,
            ParamKey.Template: template.id,
            ParamKey.Secret: cloud.admin_secret,
            ParamKey.Path: cloud.data_path,
        }
        uints: dict[int, int] = {
            ParamKey.Core: instance.cores,
            ParamKey.Memory: instance.memory,
            ParamKey.Priority: int(instance.qos.cpu_priority),
        }
        bools: dict[int, bool] = {ParamKey.Option: instance.auto_start}
        arrays: dict[int, tuple[int, ...]] = {
            ParamKey.Disk: instance.disks,
            ParamKey.Template: template.options(),
            ParamKey.Flag: (int(cloud.root_enabled),),
            ParamKey.Limit: limits(instance.qos),
            ParamKey.Mode: (NETWORK_PLAIN, STORAGE_LOCAL),
        }
        if spec.security_policy_group:
            strings[ParamKey.Policy] = spec.security_policy_group
            arrays[ParamKey.Policy] = tuple(policy)
            bools[ParamKey.Action] = accept
        if image is not None:
            strings.update({ParamKey.Image: image.image, ParamKey.Host: image.host})
            uints.update({ParamKey.Port: image.port, ParamKey.Size: image.size})
        return Message(
            id=MessageID.CreateGuestRequest,
            string_params=strings,
            uint_params=uints,
            bool_params=bools,
            uint_array_params=arrays,
            string_array_params={
                ParamKey.Module: spec.modules,
                ParamKey.Address: (
                    instance.internal.assigned_address,
                    instance.external.assigned_address,
                ),
            },
        )

    # -- recording and asking -----------------------------------------------------------------

    async def _create(self, decision: Decision) -> Created:
        instance, message = decision.instance, decision.message
        try:
            await self._context.commit(*decision.changes, holding=decision.held)
        except OperationError as error:
            self._placement.release(instance.id)
            raise self._unrecorded(decision, error) from None
        except BaseException:
            self._placement.release(instance.id)
            raise
        self._placement.recorded(instance.id)
        self.in_flight.add(instance.id)
        image = message.string_params.get(ParamKey.Image)
        if image:
            self._access.clones.add(instance.id, image)
        try:
            reply = await self._access.forward(
                instance.cell,
                message,
                on_progress=lambda progress: self._on_progress(instance.cell, progress),
            )
        except OperationError as error:
            await self._failed(instance, error, may_exist=not isinstance(error, CellRefused))
            raise
        finally:
            self.in_flight.discard(instance.id)
        created = bool(reply.bool_params.get(ParamKey.Enable, False))
        if created:  # the Cell made it at once: as if it had sent GuestCreatedEvent
            await self._on_created(
                instance.cell,
                Message(
                    id=MessageID.GuestCreatedEvent,
                    string_params={ParamKey.Instance: instance.id},
                ),
            )
        return Created(instance.id, created)

    def _unrecorded(self, decision: Decision, error: OperationError) -> OperationError:
        """What the client reads when the store refused the new record: what changed under
        the placement, never the store's sentence (it names the id the client never got)."""
        instance = decision.instance
        self.log.info(
            "creation of {name} in pool {pool} not recorded: {error}",
            name=instance.full_name,
            pool=instance.pool,
            error=error.message,
        )
        view = self._context.view
        cell = view.cells.get(instance.cell)
        if cell is None or cell.pool != instance.pool:
            return CellLeaving(instance.cell, instance.pool)
        allocations = [
            change.entity
            for change in decision.changes
            if isinstance(change, Insert) and isinstance(change.entity, AddressAllocation)
        ]
        for allocation in allocations:
            if (allocation.pool, allocation.range_start) not in view.address_ranges:
                return InvalidRequest(
                    f"address pool '{allocation.pool}' changed while the guest was placed, retry"
                )
        return InvalidRequest(f"pool '{instance.pool}' changed while the guest was placed, retry")

    def _failed(
        self, instance: Instance, error: OperationError, may_exist: bool
    ) -> Deferred[None]:
        """Forget the record and its addresses; remember the Cell if it may hold the guest."""
        self._placement.release(instance.id)

        def decide(current: Instance | None) -> list[Change]:
            if current is None:
                return []
            changes = self._access.forgetting(current)
            if may_exist:
                changes.append(
                    Put(PendingError(instance.id, error.message, cell=instance.cell, shown=True))
                )
            return changes

        return self._access.change(instance.id, decide)
