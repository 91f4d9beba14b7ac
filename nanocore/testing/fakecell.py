"""FakeCell: a Cell that speaks the real protocol over the real link, with simulated guests.

It dials Core with its CA-issued certificate over TLS, or over KCP as a stock Cell does,
completes the handshake, reports its status every 2 s, and answers every Core→Cell request of
cell-protocol.md §5 from a table of small handlers over :mod:`nanocore.testing.guests`. Faults
can be injected per message id: a delay, a dropped reply, an error reply, or a disconnect.

Departures from a real Cell, chosen to make tests quick and clear: the first status report goes
out as soon as the link is up (not after 4 s); a request missing a parameter gets an error reply
(a real Cell stays silent); guest events that follow a reply (created, started, progress) are sent
as unsolicited events (``to`` = 0), except ``DiskImageUpdatedEvent`` which the spec addresses to
Core's session.

Given :class:`~nanocore.testing.celldisks.CellDisks`, a FakeCell moves image bytes as a Cell
does: a guest created from a disk image is downloaded from the image site with the Cell's
certificate and checked against its signature (a mismatch fails the creation), a system reset
downloads its image the same way, and a disk image captured from a guest is uploaded there;
progress is reported as the bytes move. Without it, all three are simulated on the Cell's clock.

Guests' volumes live on the pool's storage as the Cell sees it: on a pool with NFS storage, an
export of :class:`~nanocore.testing.sharedstorage.SharedStorage` that every FakeCell given the
same ``shared`` mounts, so migration and failover (§5.7) move guests between them: an attach
prepares guests of the export (or, with Immediate, takes them at once), Core's Migrate
activates them, a detach lets go of them (or of what was prepared), and a prepared attach is
undone after ``attach_timeout`` without a Migrate. On an export kept in a folder that other
processes share, a guest is written there before any message naming it is sent and before it
is detached, so a Cell that dies leaves its guests as it last told Core.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from attrs import evolve, frozen
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from nanocore.cluster.cells import CellStatus
from nanocore.cluster.discovery import SonarEcho, core_service, find_core
from nanocore.cluster.kcp.dialer import KCPClientService
from nanocore.cluster.kcp.link import cell_sessions
from nanocore.cluster.message import Message, MessageID, ParamKey, response_id
from nanocore.cluster.transactions import reply_to
from nanocore.cluster.transport import (
    FramedLinkProtocol,
    LinkError,
    LinkHandler,
    LinkSession,
    cell_link_protocol,
)
from nanocore.model import TIME_FORMAT
from nanocore.testing.celldisks import CellDisks
from nanocore.testing.guests import GuestError, GuestState, Rule, SimulatedGuest
from nanocore.testing.sharedstorage import SharedStorage, Volumes

#: Seconds between status reports (the Cell collector's tick).
REPORT_INTERVAL = 2.0
#: Seconds between reconnect attempts after the link to Core is gone (§2.9).
RECONNECT_DELAY = 3.0
#: Seconds from a stop to ``GuestStoppedEvent`` (a real Cell polls the guest once a second).
STOP_TIME = 1.0
#: Progress events of a creation that clones a disk image (25, 50, 75 %), and of a reset.
CLONE_STEPS = 4
#: CPU usage (percent) a running guest reports.
GUEST_USAGE = 12.5

GiB = 1 << 30


@frozen
class Capacity:
    """What the simulated host has."""

    cores: int = 8
    memory: int = 16 * GiB
    disk: int = 500 * GiB


@frozen
class Fault:
    """What goes wrong when a request arrives; applied ``times`` times (None: always)."""

    delay: float = 0.0  #: seconds before replying
    drop: bool = False  #: never reply
    error: str = ""  #: reply with success=false and this text, doing nothing
    disconnect: bool = False  #: drop the connection without a goodbye
    times: int | None = 1


class _GoodbyeClientService(ClientService):
    """A Cell's reconnecting link whose stop is a Cell's graceful shutdown: without the
    goodbye, Core would take the stop for a crash (and fail the Cell's guests over)."""

    def __init__(self, cell: FakeCell, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cell = cell

    def stopService(self) -> Deferred[None]:
        self._cell.close()
        stopped: Deferred[None] = super().stopService()
        return stopped


class MissingParameter(GuestError):
    """A required parameter is absent (a real Cell would not reply at all)."""


Handler = Callable[[Message], list[Message]]


def create_guest_request(
    guest_id: str,
    *,
    name: str = "group.vm",
    cores: int = 2,
    memory: int = 2 * GiB,
    disks: tuple[int, ...] = (10 * GiB, 20 * GiB),
    auto_start: bool = False,
    image: str = "",
) -> Message:
    """A ``CreateGuestRequest`` with every parameter Core sends (cell-protocol.md §5.3), for
    tests that talk to a Cell without a Core."""
    group = name.partition(".")[0]
    strings: dict[int, str] = {
        ParamKey.Name: name,
        ParamKey.Instance: guest_id,
        ParamKey.User: "user",
        ParamKey.Group: group,
        ParamKey.Pool: "default",
        ParamKey.Admin: "root",
        ParamKey.Template: "template-1",
        ParamKey.Secret: "",
        ParamKey.Path: "",
    }
    uints: dict[int, int] = {ParamKey.Core: cores, ParamKey.Memory: memory, ParamKey.Priority: 0}
    if image:
        strings.update({ParamKey.Image: image, ParamKey.Host: "127.0.0.1"})
        uints.update({ParamKey.Port: 5801, ParamKey.Size: GiB})
    return Message(
        id=MessageID.CreateGuestRequest,
        string_params=strings,
        uint_params=uints,
        bool_params={ParamKey.Option: auto_start},
        uint_array_params={
            ParamKey.Disk: disks,
            ParamKey.Template: (0, 0, 0, 0, 0, 1, 1),
            ParamKey.Flag: (1,),
            ParamKey.Limit: (0,) * 6,
            ParamKey.Mode: (1, 0),
        },
        string_array_params={ParamKey.Module: (), ParamKey.Address: ("", "")},
    )


def _require(params: Any, key: ParamKey, what: str) -> Any:
    try:
        return params[key]
    except KeyError:
        raise MissingParameter(f"missing {what} parameter {key.name}") from None


@implementer(LinkHandler)
class FakeCell:
    """One simulated Cell. Use :meth:`service` to keep it connected, or :meth:`connect`."""

    log = Logger()

    def __init__(
        self,
        name: str,
        clock: IReactorTime,
        *,
        capacity: Capacity = Capacity(),
        usage: float = 5.0,
        report_interval: float = REPORT_INTERVAL,
        creation_time: float = 1.0,
        stop_time: float = STOP_TIME,
        reconnect_delay: float = RECONNECT_DELAY,
        reconnect_clock: IReactorTime | None = None,
        disks: CellDisks | None = None,
        shared: SharedStorage | None = None,
        attach_timeout: float = 10.0,
    ) -> None:
        """``creation_time``: seconds from a create request to ``GuestCreatedEvent`` (0: at
        the next turn); ``stop_time``: from a stop to ``GuestStoppedEvent``; ``disks``: clone
        and capture through the image site (see the module's docstring); ``shared``: the NFS
        exports this Cell mounts when its pool has shared storage (default: its own, seen by
        no other Cell); ``attach_timeout``: how long a prepared migration waits for Core's
        ``MigrateInstanceRequest`` before the Cell undoes it (a Cell's operate timeout)."""
        self.name = name
        self.capacity = capacity
        self.usage = usage
        self._clock = clock
        self._report_interval = report_interval
        self._creation_time = creation_time
        self._stop_time = stop_time
        self._reconnect_delay = reconnect_delay
        #: Where the reconnect delay runs (default: the Cell's clock); a test that freezes
        #: the Cell's clock can let the Cell come back on its own on the reactor's.
        self._reconnect_clock = reconnect_clock if reconnect_clock is not None else clock
        self.disks = disks
        self.shared = shared if shared is not None else SharedStorage()
        self._local_volumes: Volumes = {}
        #: The volumes of the guests this Cell can see: its pool's NFS export, or its own.
        self.volumes: Volumes = self._local_volumes
        self._attach_timeout = attach_timeout
        #: Errors the next creations fail with (a ``GuestUpdatedEvent`` with success false).
        self.creation_failures: deque[str] = deque()
        #: Errors the next system resets end with (a ``SystemResetEvent`` with success false).
        self.reset_failures: deque[str] = deque()
        self.link: LinkSession | None = None
        self.guests: dict[str, SimulatedGuest] = {}
        self.pool = ""
        self.storage: dict[str, str] = {}
        self.network: dict[str, Any] = {}
        self.storage_paths: list[str] = ["/var/lib/libvirt/images"]
        self.faults: dict[int, Fault] = {}
        #: What answers a shrink: ``ResizeDiskResponse`` as stock Cells do (§5.4 quirk), or
        #: the ``ShrinkDiskResponse`` the protocol defines.
        self.shrink_answer: int = MessageID.ResizeDiskResponse
        #: The latest messages Core sent (bounded, so a long simulation does not grow).
        self.received: deque[Message] = deque(maxlen=1000)
        self._sessions = itertools.count(1)
        #: Migrations prepared here (attach session -> guests), waiting for Core's Migrate.
        self._attach_sessions: dict[int, tuple[str, ...]] = {}
        self._ports = itertools.count(5901)
        self._timers: set[IDelayedCall] = set()
        self._reporter = LoopingCall(self.report)
        self._reporter.clock = clock
        self._waiting: list[Deferred[LinkSession]] = []
        self._arrivals: dict[int, list[Deferred[Message]]] = {}
        self._handlers: dict[int, Handler] = self._handler_table()

    # -- connecting ---------------------------------------------------------------------------

    def protocol(self) -> FramedLinkProtocol:
        """A fresh link protocol for one connection to Core."""
        return cell_link_protocol(self, self._clock, self.name)

    def factory(self) -> Factory:
        return Factory.forProtocol(self.protocol)

    def service(self, endpoint: IStreamClientEndpoint) -> ClientService:
        """Keep a link to Core up, reconnecting every 3 s like a real Cell (§2.9); stopping
        the service says goodbye first, so that Core sees a stop, not a crash."""
        return _GoodbyeClientService(
            self,
            endpoint,
            self.factory(),
            retryPolicy=lambda attempt: self._reconnect_delay,
            clock=self._reconnect_clock,
        )

    def kcp_service(self, reactor: Any, locate: Locate, *, interface: str) -> KCPClientService:
        """Keep a KCP link to Core up, as a stock Cell does, dialing again 3 s after it drops.

        The link's session runs on this Cell's clock; KCP's own timers on the reactor's, so
        that a Cell frozen by a clock that never moves still acknowledges what it receives.
        ``interface`` is the local address to dial from.
        """
        return KCPClientService(
            reactor,
            reactor,
            locate,
            cell_sessions(self, self._clock, self.name),
            interface=interface,
            retry=self._reconnect_delay,
        )

    def connected(self) -> Deferred[LinkSession]:
        """Fires with the link once the handshake with Core completes (at once if it has)."""
        if self.link is not None and self.link.connected:
            return succeed(self.link)
        d: Deferred[LinkSession] = Deferred()
        self._waiting.append(d)
        return d

    def until_received(self, message_id: int) -> Deferred[Message]:
        """Fires with the next message of ``message_id`` Core sends, once it is handled (a
        delayed answer's timer is set by then: a test may advance past it)."""
        d: Deferred[Message] = Deferred()
        self._arrivals.setdefault(message_id, []).append(d)
        return d

    def inject(self, message_id: int, fault: Fault) -> None:
        """Make the next ``fault.times`` requests with ``message_id`` go wrong."""
        self.faults[message_id] = fault

    def report(self) -> None:
        """Send one status report now."""
        if self.link is not None and self.link.connected:
            self.link.send(self.status().to_message())

    def status(self) -> CellStatus:
        memory_used = sum(g.memory for g in self.guests.values())
        disk_used = sum(sum(g.disks) for g in self.guests.values())
        return CellStatus(
            cores=self.capacity.cores,
            usage=self.usage,
            memory_available=max(0, self.capacity.memory - memory_used),
            memory_total=self.capacity.memory,
            disk_free=max(0, self.capacity.disk - disk_used),
            disk_total=self.capacity.disk,
        )

    def close(self) -> None:
        """Stop gracefully: Core sees ``ConnectionClosedEvent``."""
        self._stop_timers()
        if self.link is not None:
            self.link.close()

    def kill(self) -> None:
        """Die abruptly: the connection drops with no goodbye."""
        self._stop_timers()
        if self.link is not None:
            self.link.protocol_error("killed")

    def drop_link(self) -> None:
        """The link drops with no goodbye (a network fault), but the Cell lives on: what it was
        doing (a creation, a reset, a stop) ends as it would, told over its next link."""
        if self.link is not None:
            self.link.protocol_error("link dropped")

    # -- LinkHandler --------------------------------------------------------------------------

    def link_connected(self, link: LinkSession) -> None:
        self.link = link
        if not self._reporter.running:
            self._reporter.start(self._report_interval, now=True)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(link)

    def link_lost(self, link: LinkSession) -> None:
        pass

    def link_recovered(self, link: LinkSession) -> None:
        pass

    def link_closed(self, link: LinkSession, gracefully: bool) -> None:
        if link is self.link:
            self.link = None
            if self._reporter.running:
                self._reporter.stop()

    def message_received(self, link: LinkSession, message: Message) -> None:
        self.received.append(message)
        try:
            self._handle(link, message)
        finally:
            for d in self._arrivals.pop(message.id, []):
                d.callback(message)

    def _handle(self, link: LinkSession, message: Message) -> None:
        if message.id == MessageID.MigrateInstanceRequest:
            self._send_all(self._migrate(message))
            return
        handler = self._handlers.get(message.id)
        if handler is None:
            self.log.info("{cell} ignores message {id:#08x}", cell=self.name, id=message.id)
            return
        fault = self._take_fault(message.id)
        if fault is not None and fault.disconnect:
            link.protocol_error(f"injected fault on {message.id:#08x}")
            return
        if fault is not None and fault.drop:
            return
        if fault is not None and fault.error:
            replies = [self._failure(message, fault.error)]
        else:
            try:
                replies = handler(message)
            except GuestError as e:
                replies = [self._failure(message, str(e))]
            else:
                self._keep(message)  # the guest it changed, on its export before any answer
        if fault is not None and fault.delay:
            self._schedule(fault.delay, self._send_all, replies)
        else:
            self._send_all(replies)

    # -- plumbing -----------------------------------------------------------------------------

    def _take_fault(self, message_id: int) -> Fault | None:
        fault = self.faults.get(message_id)
        if fault is None:
            return None
        if fault.times is not None:
            if fault.times <= 1:
                del self.faults[message_id]
            else:
                self.faults[message_id] = evolve(fault, times=fault.times - 1)
        return fault

    def _send_all(self, messages: Iterable[Message]) -> None:
        for message in messages:
            self._send(message)

    def _send(self, message: Message) -> None:
        self._keep(message)
        if self.link is None or not self.link.connected:
            return
        try:
            self.link.send(message)
        except LinkError as e:
            self.log.warn("{cell} could not send {id}: {e}", cell=self.name, id=message.id, e=e)

    def _keep(self, message: Message) -> None:
        """The guests a message names (an answer or event of the Cell, or a request it
        carried out) are on their export as they are now (a no-op in memory; on a folder
        shared by processes, it survives this process's death)."""
        params = message.string_params
        for guest_id in message.string_array_params.get(ParamKey.Instance, ()):
            self._save(guest_id)
        for key in (ParamKey.Instance, ParamKey.Guest):
            if params.get(key):
                self._save(params[key])

    def _save(self, guest_id: str) -> None:
        """A guest this Cell holds, written to its export as it is now."""
        guest = self.guests.get(guest_id)
        if guest is not None and self.volumes.get(guest_id) is guest:
            self.volumes[guest_id] = guest

    def _schedule(self, delay: float, f: Callable[..., object], *args: Any) -> None:
        """A timer of the simulation; all of them stop when the Cell closes or dies."""

        def fire() -> None:
            self._timers.discard(call)
            f(*args)

        call = self._clock.callLater(delay, fire)
        self._timers.add(call)

    def _stop_timers(self) -> None:
        for call in self._timers:
            if call.active():
                call.cancel()
        self._timers.clear()

    def _later(self, delay: float, *messages: Message) -> None:
        self._schedule(delay, self._send_all, messages)

    def _reply_id(self, request: Message) -> int:
        if request.id == MessageID.ShrinkDiskRequest:
            return self.shrink_answer
        if request.id == MessageID.ComputePoolReadyEvent:
            return MessageID.ComputeCellReadyEvent
        return response_id(request.id)

    def _success(self, request: Message, **params: Any) -> Message:
        return reply_to(request, id=self._reply_id(request), **params)

    def _failure(self, request: Message, error: str) -> Message:
        return reply_to(request, id=self._reply_id(request), success=False, error=error)

    @staticmethod
    def _event(message_id: int, **params: Any) -> Message:
        return Message(id=message_id, success=True, **params)

    def _guest(self, request: Message, key: ParamKey = ParamKey.Instance) -> SimulatedGuest:
        guest_id = _require(request.string_params, key, "string")
        try:
            return self.guests[guest_id]
        except KeyError:
            kind = "guest" if key == ParamKey.Guest else "instance"
            raise GuestError(f"invalid {kind} '{guest_id}'") from None

    def _now(self) -> str:
        """The Cell's time as it writes it (``2006-01-02 15:04:05``, local)."""
        return time.strftime(TIME_FORMAT, time.localtime(self._clock.seconds()))

    def _handler_table(self) -> dict[int, Handler]:
        m = MessageID
        return {
            m.ComputePoolReadyEvent: self._pool_ready,
            m.ComputeCellRemovedEvent: self._cell_removed,
            m.AddressPoolChangedEvent: self._address_pool_changed,
            m.GetComputePoolCellRequest: self._get_pool_cell,
            m.CreateGuestRequest: self._create_guest,
            m.DeleteGuestRequest: self._delete_guest,
            m.StartInstanceRequest: self._start,
            m.StopInstanceRequest: self._stop,
            m.GetInstanceStatusRequest: self._instance_status,
            m.GetGuestRequest: self._instance_status,
            m.ModifyGuestNameRequest: self._modify(
                "name", ParamKey.Name, "string_params", check_unchanged=False
            ),
            m.ModifyCoreRequest: self._modify("cores", ParamKey.Core, "uint_params"),
            m.ModifyMemoryRequest: self._modify("memory", ParamKey.Memory, "uint_params"),
            m.ModifyPriorityRequest: self._modify("priority", ParamKey.Priority, "uint_params"),
            m.ModifyAutoStartRequest: self._modify("auto_start", ParamKey.Enable, "bool_params"),
            m.ModifyDiskThresholdRequest: self._thresholds(0, 4),
            m.ModifyNetworkThresholdRequest: self._thresholds(4, 2),
            m.ModifyAuthRequest: self._modify_auth,
            m.GetAuthRequest: self._get_auth,
            m.ResetSecretRequest: self._reset_secret,
            m.ResizeDiskRequest: self._resize_disk,
            m.ShrinkDiskRequest: self._shrink_disk,
            m.ResetSystemRequest: self._reset_system,
            m.InsertMediaRequest: self._insert_media,
            m.EjectMediaRequest: self._eject_media,
            m.QuerySnapshotRequest: self._query_snapshots,
            m.GetSnapshotRequest: self._get_snapshot,
            m.CreateSnapshotRequest: self._create_snapshot,
            m.DeleteSnapshotRequest: self._delete_snapshot,
            m.RestoreSnapshotRequest: self._restore_snapshot,
            m.AttachInstanceRequest: self._attach,
            m.DetachInstanceRequest: self._detach,
            m.QueryCellStorageRequest: self._query_storage,
            m.ModifyCellStorageRequest: self._modify_storage,
            m.GetGuestRuleRequest: self._get_rules,
            m.AddGuestRuleRequest: self._add_rule,
            m.ModifyGuestRuleRequest: self._modify_rule,
            m.RemoveGuestRuleRequest: self._remove_rule,
            m.ChangeGuestRuleOrderRequest: self._change_rule_order,
            m.ChangeGuestRuleDefaultActionRequest: self._default_rule_action,
            m.CreateDiskImageRequest: self._create_disk_image,
        }

    # -- §5.2 pool membership -----------------------------------------------------------------

    def _pool_ready(self, request: Message) -> list[Message]:
        s = request.string_params
        self.pool = _require(s, ParamKey.Pool, "string")
        storage = _require(s, ParamKey.Storage, "string")
        network = _require(s, ParamKey.Network, "string")
        self.storage = {}
        if storage:
            self.storage = {
                "name": storage,
                "type": _require(s, ParamKey.Type, "string"),
                "host": _require(s, ParamKey.Host, "string"),
                "target": _require(s, ParamKey.Target, "string"),
            }
        self._mount()
        self.network = {}
        if network:
            self.network = {
                "name": network,
                "gateway": _require(s, ParamKey.Gateway, "string"),
                "mode": _require(s, ParamKey.Mode, "string"),
                "dns": request.string_array_params.get(ParamKey.Server, ()),
            }
        return [self._success(request, **self._inventory())]

    def _inventory(self) -> dict[str, Any]:
        guests = list(self.guests.values())
        strings = {
            ParamKey.Name: [g.name for g in guests],
            ParamKey.Instance: [g.id for g in guests],
            ParamKey.User: [g.user for g in guests],
            ParamKey.Group: [g.group for g in guests],
            ParamKey.Secret: [g.monitor_secret for g in guests],
            ParamKey.Address: [g.internal_address for g in guests],
            ParamKey.System: [g.system for g in guests],
            ParamKey.Create: [g.created for g in guests],
            ParamKey.Internal: [g.internal_address for g in guests],
            ParamKey.External: [g.external_address for g in guests],
            ParamKey.Hardware: [g.hardware for g in guests],
        }
        uints = {
            ParamKey.Core: [g.cores for g in guests],
            ParamKey.Option: [int(g.auto_start) for g in guests],
            ParamKey.Enable: [int(g.created_ok) for g in guests],
            ParamKey.Progress: [g.progress for g in guests],
            ParamKey.Status: [int(g.running) for g in guests],
            ParamKey.Monitor: [g.monitor_port for g in guests],
            ParamKey.Memory: [g.memory for g in guests],
            ParamKey.Count: [len(g.disks) for g in guests],
            ParamKey.Disk: [size for g in guests for size in g.disks],
            ParamKey.Priority: [g.priority for g in guests],
            ParamKey.Limit: [limit for g in guests for limit in g.limits],
        }
        return {
            "uint_params": {ParamKey.Count: len(guests)},
            "string_array_params": strings,
            "uint_array_params": uints,
        }

    def _mount(self) -> None:
        """Keep the guests' volumes on the pool's NFS export (or locally), with those of the
        guests this Cell holds already."""
        if self.storage:
            volumes = self.shared.export(self.storage["host"], self.storage["target"])
        else:
            volumes = self._local_volumes
        for guest in self.guests.values():
            volumes.setdefault(guest.id, guest)
        self.volumes = volumes

    def prepared(self) -> set[str]:
        """The guests attached here for a migration that has not been activated yet."""
        return {guest for guests in self._attach_sessions.values() for guest in guests}

    def _cell_removed(self, request: Message) -> list[Message]:
        self.pool, self.storage, self.network = "", {}, {}
        self._mount()
        return []

    def _address_pool_changed(self, request: Message) -> list[Message]:
        s = request.string_params
        self.network = {
            "name": _require(s, ParamKey.Address, "string"),
            "gateway": s.get(ParamKey.Gateway, ""),
            "mode": s.get(ParamKey.Mode, ""),
            "dns": request.string_array_params.get(ParamKey.Server, ()),
        }
        return []

    def _get_pool_cell(self, request: Message) -> list[Message]:
        devices = [self.storage["name"]] if self.storage else []
        return [
            self._success(
                request,
                string_array_params={
                    ParamKey.Storage: devices,
                    ParamKey.Error: [""] * len(devices),
                },
                uint_array_params={ParamKey.Attach: [1] * len(devices)},
            )
        ]

    # -- §5.3 lifecycle -----------------------------------------------------------------------

    def _create_guest(self, request: Message) -> list[Message]:
        """Every parameter Core sends is read (a real Cell ignores a request lacking one)."""
        s, u = request.string_params, request.uint_params
        arrays, texts = request.uint_array_params, request.string_array_params
        guest_id = _require(s, ParamKey.Instance, "string")
        if guest_id in self.guests or guest_id in self.volumes:
            raise GuestError(f"guest {guest_id} already exists")
        for key in (ParamKey.Name, ParamKey.User, ParamKey.Group, ParamKey.Pool, ParamKey.Admin,
                    ParamKey.Template):  # fmt: skip
            _require(s, key, "string")
        _require(request.bool_params, ParamKey.Option, "bool")
        for key, length in ((ParamKey.Template, 7), (ParamKey.Mode, 2), (ParamKey.Limit, 6),
                            (ParamKey.Flag, 1)):  # fmt: skip
            if len(_require(arrays, key, "uint array")) != length:
                raise GuestError(f"{key.name} must have {length} values")
        addresses = list(_require(texts, ParamKey.Address, "string array"))
        if len(addresses) != 2:
            raise GuestError("Address must have 2 values")
        disks = list(_require(arrays, ParamKey.Disk, "uint array"))
        cloning = ParamKey.Image in s
        if cloning:
            _require(s, ParamKey.Host, "string")
            _require(u, ParamKey.Port, "uint")
            _require(u, ParamKey.Size, "uint")
            if self.disks is not None and not self.disks.holds(guest_id):
                raise GuestError(f"cannot keep a disk for guest id {guest_id!r}")
        port = next(self._ports)
        guest = SimulatedGuest(
            id=guest_id,
            name=s[ParamKey.Name],
            user=s[ParamKey.User],
            group=s[ParamKey.Group],
            cores=_require(u, ParamKey.Core, "uint"),
            memory=_require(u, ParamKey.Memory, "uint"),
            disks=disks,
            auto_start=request.bool_params[ParamKey.Option],
            created=self._now(),
            monitor_port=port,
            monitor_secret=f"vnc-{guest_id[:8]}",
            hardware=f"00:16:3e:{port >> 16 & 0xFF:02x}:{port >> 8 & 0xFF:02x}:{port & 0xFF:02x}",
            priority=_require(u, ParamKey.Priority, "uint"),
            limits=list(arrays[ParamKey.Limit]),
            internal_address=addresses[0],
            external_address=addresses[1],
            admin=s[ParamKey.Admin],
            admin_secret=s.get(ParamKey.Secret, "") or f"secret-{guest_id[:8]}",
        )
        policy = arrays.get(ParamKey.Policy, ())
        guest.rules = [
            Rule(policy[i] == 0, policy[i + 1], policy[i + 2], policy[i + 3], policy[i + 4])
            for i in range(0, len(policy) - len(policy) % 5, 5)
        ]
        guest.default_accept = request.bool_params.get(ParamKey.Action, True)
        self.guests[guest_id] = self.volumes[guest_id] = guest
        if cloning and self.disks is not None:
            self._fetch_disk(guest, request, self._created, self._creation_failed)
            return [self._not_yet(request, guest_id)]
        steps = CLONE_STEPS if cloning else 1
        for step in range(1, steps):
            self._schedule(
                self._creation_time * step / steps, self._progress, guest, 100 * step // steps
            )
        self._schedule(self._creation_time, self._created, guest)
        return [self._not_yet(request, guest_id)]

    def _not_yet(self, request: Message, guest_id: str) -> Message:
        """As a stock Cell: the guest does not exist yet (Enable false); events say when."""
        return self._success(
            request,
            string_params={ParamKey.Instance: guest_id},
            bool_params={ParamKey.Enable: False},
        )

    def _fetch_disk(
        self,
        guest: SimulatedGuest,
        request: Message,
        done: Callable[[SimulatedGuest], None],
        failed: Callable[[SimulatedGuest, str], None],
    ) -> None:
        """Download the image ``request`` names as the guest's system disk (a clone, a
        reset), verified against the site's signature, telling its progress; then ``done``, or
        ``failed`` with the reason. A guest deleted meanwhile hears of neither, and its new
        disk goes with it."""
        assert self.disks is not None
        disks, s, u = self.disks, request.string_params, request.uint_params
        fetching = disks.fetch(
            guest.id,
            (s[ParamKey.Host], u[ParamKey.Port]),
            s[ParamKey.Image],
            u[ParamKey.Size],
            lambda percent: self._progress(guest, percent),
        )

        def fetched(_: object) -> None:
            if self.guests.get(guest.id) is not guest:
                disks.forget(guest.id)
            else:
                done(guest)

        fetching.addCallbacks(fetched, lambda failure: failed(guest, str(failure.value)))

    def _progress(self, guest: SimulatedGuest, percent: int) -> None:
        if self.guests.get(guest.id) is not guest:
            return
        guest.progress = percent
        self._send(
            self._event(
                MessageID.GuestUpdatedEvent,
                string_params={ParamKey.Instance: guest.id},
                uint_params={ParamKey.Progress: percent},
            )
        )

    def _created(self, guest: SimulatedGuest) -> None:
        if self.guests.get(guest.id) is not guest:
            return
        if self.creation_failures:
            self._creation_failed(guest, self.creation_failures.popleft())
            return
        guest.move("created", self._clock.seconds())
        self._send(
            self._event(
                MessageID.GuestCreatedEvent,
                string_params={
                    ParamKey.Instance: guest.id,
                    ParamKey.Secret: guest.monitor_secret,
                    ParamKey.Hardware: guest.hardware,
                },
                uint_params={ParamKey.Monitor: guest.monitor_port},
            )
        )
        if guest.auto_start:
            guest.move("start", self._clock.seconds())
            self._send(self._guest_event(MessageID.GuestStartedEvent, guest))

    def _creation_failed(self, guest: SimulatedGuest, error: str) -> None:
        if self.guests.get(guest.id) is not guest:
            return
        del self.guests[guest.id]
        self._forget_volumes(guest)
        self._send(
            Message(
                id=MessageID.GuestUpdatedEvent,
                success=False,
                error=error,
                string_params={ParamKey.Instance: guest.id},
            )
        )

    def _guest_event(self, message_id: int, guest: SimulatedGuest) -> Message:
        return self._event(message_id, string_params={ParamKey.Instance: guest.id})

    def _delete_guest(self, request: Message) -> list[Message]:
        guest = self._guest(request)
        guest.require(GuestState.STOPPED, GuestState.CREATING, GuestState.RESETTING)
        del self.guests[guest.id]
        self._forget_volumes(guest)
        return [self._success(request), self._guest_event(MessageID.GuestDeletedEvent, guest)]

    def _forget_volumes(self, guest: SimulatedGuest) -> None:
        if self.volumes.get(guest.id) is guest:
            del self.volumes[guest.id]
        if self.disks is not None:
            self.disks.forget(guest.id)

    def _start(self, request: Message) -> list[Message]:
        guest = self._guest(request)
        option = _require(request.uint_params, ParamKey.Option, "uint")
        if option == 2:
            raise GuestError("boot from network is not supported")
        media = ""
        if option == 1:
            media = _require(request.string_params, ParamKey.Source, "string")
            _require(request.string_params, ParamKey.Host, "string")
            _require(request.uint_params, ParamKey.Port, "uint")
        guest.move("start", self._clock.seconds())
        replies = [self._success(request), self._guest_event(MessageID.GuestStartedEvent, guest)]
        if media:
            guest.media = media
            replies.append(self._media_event(MessageID.MediaAttachedEvent, guest))
        return replies

    def _stop(self, request: Message) -> list[Message]:
        """The guest stops at once; the event follows ``stop_time`` later, as a real Cell's
        once-a-second poll notices it (sent only if the guest is still stopped by then)."""
        guest = self._guest(request)
        options = _require(request.uint_array_params, ParamKey.Option, "uint array")
        if len(options) != 2:
            raise GuestError("Option must have 2 values")
        if options[0]:  # reboot
            guest.require(GuestState.RUNNING)
            return [self._success(request)]
        guest.move("stop", self._clock.seconds())
        self._schedule(self._stop_time, self._stopped, guest)
        return [self._success(request)]

    def _stopped(self, guest: SimulatedGuest) -> None:
        if self.guests.get(guest.id) is guest and guest.state is GuestState.STOPPED:
            self._send(self._guest_event(MessageID.GuestStoppedEvent, guest))

    def _instance_status(self, request: Message) -> list[Message]:
        """The guest's config and its live figures: CPU usage and free memory while it runs,
        I/O counters that grow with the time it has run."""
        g = self._guest(request)
        now = self._clock.seconds()
        uints = {
            ParamKey.Core: g.cores,
            ParamKey.Status: int(g.running),
            ParamKey.Monitor: g.monitor_port,
            ParamKey.Memory: g.memory,
            ParamKey.Priority: g.priority,
        }
        if not g.created_ok:
            uints[ParamKey.Progress] = g.progress
        free_memory = g.memory - g.memory // 4 if g.running else g.memory
        return [
            self._success(
                request,
                string_params={
                    ParamKey.Name: g.name,
                    ParamKey.Instance: g.id,
                    ParamKey.User: g.user,
                    ParamKey.Group: g.group,
                    ParamKey.System: g.system,
                    ParamKey.Secret: g.monitor_secret,
                    ParamKey.Address: g.internal_address,
                    ParamKey.Create: g.created,
                    ParamKey.Hardware: g.hardware,
                },
                uint_params=uints,
                bool_params={ParamKey.Enable: g.created_ok, ParamKey.Media: bool(g.media)},
                float_params={ParamKey.Usage: GUEST_USAGE if g.running else 0.0},
                uint_array_params={
                    ParamKey.Option: [int(g.auto_start)],
                    ParamKey.Disk: g.disks,
                    ParamKey.Limit: g.limits,
                    ParamKey.Available: [free_memory, sum(g.disks) // 2],
                    ParamKey.IO: g.io(now),
                },
            )
        ]

    # -- §5.4 modification --------------------------------------------------------------------

    def _modify(
        self, attribute: str, key: ParamKey, params: str, *, check_unchanged: bool = True
    ) -> Handler:
        """A field a Cell sets as asked; the same value again is refused (a rename is not)."""

        def handler(request: Message) -> list[Message]:
            guest = self._guest(request, ParamKey.Guest)
            value = _require(getattr(request, params), key, params)
            if check_unchanged and getattr(guest, attribute) == value:
                raise GuestError("no need to change")
            setattr(guest, attribute, value)
            return [self._success(request)]

        return handler

    def _thresholds(self, start: int, count: int) -> Handler:
        def handler(request: Message) -> list[Message]:
            guest = self._guest(request, ParamKey.Guest)
            values = _require(request.uint_array_params, ParamKey.Limit, "uint array")
            if len(values) != count:
                raise GuestError(f"invalid QoS parameters count {len(values)}")
            if guest.limits[start : start + count] == list(values):
                raise GuestError("no need to change")
            guest.limits[start : start + count] = values
            return [self._success(request)]

        return handler

    def _auth_reply(self, request: Message, guest: SimulatedGuest) -> Message:
        return self._success(
            request,
            string_params={ParamKey.User: guest.admin, ParamKey.Secret: guest.admin_secret},
        )

    def _modify_auth(self, request: Message) -> list[Message]:
        guest = self._guest(request, ParamKey.Guest)
        guest.require(GuestState.RUNNING)  # the guest agent sets it inside the running guest
        guest.admin = request.string_params.get(ParamKey.User, "") or guest.admin
        secret = request.string_params.get(ParamKey.Secret, "")
        guest.admin_secret = secret or f"generated-{self._now()}"
        return [self._auth_reply(request, guest)]

    def _get_auth(self, request: Message) -> list[Message]:
        return [self._auth_reply(request, self._guest(request, ParamKey.Guest))]

    def _reset_secret(self, request: Message) -> list[Message]:
        guest = self._guest(request, ParamKey.Guest)
        guest.monitor_secret = f"vnc-{next(self._sessions)}"
        return [self._success(request, string_params={ParamKey.Secret: guest.monitor_secret})]

    def _disk_index(self, request: Message, guest: SimulatedGuest) -> int:
        index = _require(request.uint_params, ParamKey.Disk, "uint")
        guest.require_stopped()
        if index >= len(guest.disks):
            raise GuestError(f"invalid disk index {index}")
        return int(index)

    def _resize_disk(self, request: Message) -> list[Message]:
        guest = self._guest(request, ParamKey.Guest)
        size = _require(request.uint_params, ParamKey.Size, "uint")
        index = self._disk_index(request, guest)
        if size <= guest.disks[index]:
            raise GuestError(f"must larger than current volume size {guest.disks[index] >> 30} GB")
        guest.disks[index] = size
        return [self._success(request)]

    def _shrink_disk(self, request: Message) -> list[Message]:
        """Compacts the volume: its virtual size stays."""
        guest = self._guest(request, ParamKey.Guest)
        self._disk_index(request, guest)
        return [self._success(request)]

    def _reset_system(self, request: Message) -> list[Message]:
        """Every parameter Core sends is read; progress as for a clone, then the end. With
        disks, the image is downloaded and verified as for a clone, and a failure ends the
        reset with the reason (the guest keeps its old disk)."""
        guest = self._guest(request, ParamKey.Guest)
        _require(request.string_params, ParamKey.Image, "string")
        _require(request.string_params, ParamKey.Host, "string")
        _require(request.uint_params, ParamKey.Port, "uint")
        _require(request.uint_params, ParamKey.Size, "uint")
        guest.move("reset", self._clock.seconds())
        if self.disks is not None:
            self._fetch_disk(guest, request, self._reset_done, self._reset_done)
            return [self._success(request)]
        for step in range(1, CLONE_STEPS):
            self._schedule(
                self._creation_time * step / CLONE_STEPS,
                self._progress,
                guest,
                100 * step // CLONE_STEPS,
            )
        self._schedule(self._creation_time, self._reset_done, guest)
        return [self._success(request)]

    def _reset_done(self, guest: SimulatedGuest, failure: str = "") -> None:
        if self.guests.get(guest.id) is not guest:
            return
        guest.move("reset done", self._clock.seconds())
        error = failure or (self.reset_failures.popleft() if self.reset_failures else "")
        self._send(
            Message(
                id=MessageID.SystemResetEvent,
                success=not error,
                error=error,
                string_params={ParamKey.Guest: guest.id},
            )
        )

    # -- §5.5 media ---------------------------------------------------------------------------

    def _media_event(self, message_id: int, guest: SimulatedGuest) -> Message:
        params = {ParamKey.Instance: guest.id}
        if message_id == MessageID.MediaAttachedEvent:
            params[ParamKey.Media] = guest.media
        return self._event(message_id, string_params=params)

    def _insert_media(self, request: Message) -> list[Message]:
        guest = self._guest(request)
        media = _require(request.string_params, ParamKey.Media, "string")
        _require(request.string_params, ParamKey.Host, "string")
        _require(request.uint_params, ParamKey.Port, "uint")
        guest.require(GuestState.RUNNING)
        if guest.media:
            raise GuestError(f"instance '{guest.id}' already has media attached")
        guest.media = media
        # A real Cell sends the event before the response (§5.5).
        return [self._media_event(MessageID.MediaAttachedEvent, guest), self._success(request)]

    def _eject_media(self, request: Message) -> list[Message]:
        guest = self._guest(request)
        if not guest.media:
            raise GuestError(f"no media attached with instance '{guest.id}'")
        guest.media = ""
        # As on insert, the event goes before the response.
        return [self._media_event(MessageID.MediaDetachedEvent, guest), self._success(request)]

    # -- §5.6 snapshots -----------------------------------------------------------------------

    def _snapshot_name(self, request: Message) -> str:
        return str(_require(request.string_params, ParamKey.Name, "string"))

    def _query_snapshots(self, request: Message) -> list[Message]:
        guest = self._guest(request)
        snapshots = list(guest.snapshots.values())
        return [
            self._success(
                request,
                string_array_params={
                    ParamKey.Name: [s.name for s in snapshots],
                    ParamKey.Previous: [s.parent for s in snapshots],
                },
                uint_array_params={
                    ParamKey.Source: [int(not s.parent) for s in snapshots],
                    ParamKey.Current: [int(s.name == guest.current_snapshot) for s in snapshots],
                },
            )
        ]

    def _get_snapshot(self, request: Message) -> list[Message]:
        snapshot = self._guest(request).snapshot(self._snapshot_name(request))
        return [
            self._success(
                request,
                bool_params={ParamKey.Status: snapshot.running},
                string_params={
                    ParamKey.Description: snapshot.description,
                    ParamKey.Create: snapshot.created,
                },
            )
        ]

    def _create_snapshot(self, request: Message) -> list[Message]:
        description = request.string_params.get(ParamKey.Description, "")
        self._guest(request).take_snapshot(self._snapshot_name(request), description, self._now())
        return [self._success(request)]

    def _delete_snapshot(self, request: Message) -> list[Message]:
        self._guest(request).delete_snapshot(self._snapshot_name(request))
        return [self._success(request)]

    def _restore_snapshot(self, request: Message) -> list[Message]:
        self._guest(request).restore_snapshot(self._snapshot_name(request))
        return [self._success(request)]

    # -- §5.7 migration -----------------------------------------------------------------------

    def _attachable(self, instances: tuple[str, ...]) -> list[SimulatedGuest]:
        """The guests' volumes, as this Cell sees them: on its pool's NFS export."""
        if not self.storage:
            raise GuestError("instance storage is not shared, can not attach")
        found = []
        for guest_id in instances:
            guest = self.volumes.get(guest_id)
            if guest is None:
                raise GuestError(f"invalid instance '{guest_id}'")
            if guest_id in self.guests:
                raise GuestError(f"instance '{guest_id}' already attached")
            found.append(guest)
        return found

    def _attach(self, request: Message) -> list[Message]:
        """Prepare the guests for a migration (kept until Core's Migrate, or undone after the
        attach timeout), or, for a failover, take them at once and tell Core."""
        instances = tuple(_require(request.string_array_params, ParamKey.Instance, "string array"))
        if request.bool_params.get(ParamKey.Immediate, False):
            source = request.string_params.get(ParamKey.Cell, "")
            # A failure: AttachInstanceResponse, ``to`` = the request's ``from`` (a stock Cell).
            self._attachable(instances)
            return [self._migrated(instances, immediate=True, source=source)]
        self._attachable(instances)
        busy = self.prepared().intersection(instances)
        if busy:
            raise GuestError(f"instance '{sorted(busy)[0]}' already attaching")
        session = next(self._sessions)
        self._attach_sessions[session] = instances
        # The attach transaction stays open for the MigrateInstanceRequest, then undoes itself.
        self._schedule(self._attach_timeout, self._attach_sessions.pop, session, None)
        reply = self._success(request)
        return [evolve(reply, from_session=session)]

    def _migrate(self, request: Message) -> list[Message]:
        """Activate what the attach session prepared; silent on failure, as a stock Cell."""
        instances = self._attach_sessions.pop(request.to_session, None)
        if instances is None:
            self.log.warn("{cell}: migrate for an unknown attach session", cell=self.name)
            return []
        fault = self._take_fault(MessageID.MigrateInstanceRequest)
        if fault is not None and (fault.drop or fault.error):
            return []  # activation failed: the prepared guests are let go, nothing is said
        migration = request.string_params.get(ParamKey.Migration, "")
        try:
            self._attachable(instances)
        except GuestError as error:
            self.log.warn("{cell}: migration {id} not activated: {error}", cell=self.name,
                          id=migration, error=str(error))  # fmt: skip
            return []
        return [self._migrated(instances, immediate=False, migration=migration)]

    def _migrated(
        self, instances: tuple[str, ...], *, immediate: bool, source: str = "", migration: str = ""
    ) -> Message:
        ports = []
        for guest_id in instances:
            guest = self.guests[guest_id] = self.volumes[guest_id]
            guest.monitor_port = next(self._ports)
            ports.append(guest.monitor_port)
        strings = {ParamKey.Cell: source} if immediate else {ParamKey.Migration: migration}
        return self._event(
            MessageID.InstanceMigratedEvent,
            bool_params={ParamKey.Immediate: immediate},
            string_params=strings,
            string_array_params={ParamKey.Instance: instances},
            uint_array_params={ParamKey.Monitor: ports},
        )

    def _detach(self, request: Message) -> list[Message]:
        """Let go of guests (their volumes stay on the export); an empty list: everything.
        Guests prepared for a migration are let go too."""
        instances = request.string_array_params.get(ParamKey.Instance, ())
        for guest_id in instances or tuple(self.guests):
            self._save(guest_id)  # as it is now, for the Cell that takes it
        if not instances:  # purge: drop everything here (§5.7)
            self.guests.clear()
            self._attach_sessions.clear()
        for guest_id in instances:
            self.guests.pop(guest_id, None)
        for session, prepared in list(self._attach_sessions.items()):
            left = tuple(g for g in prepared if g not in instances)
            if left:
                self._attach_sessions[session] = left
            else:
                del self._attach_sessions[session]
        return [self._success(request)]

    # -- §5.8 storage paths -------------------------------------------------------------------

    def _query_storage(self, request: Message) -> list[Message]:
        return [
            self._success(
                request,
                uint_params={ParamKey.Mode: 1 if self.storage else 0},
                string_array_params={
                    ParamKey.System: self.storage_paths,
                    ParamKey.Data: self.storage_paths,
                },
            )
        ]

    def _modify_storage(self, request: Message) -> list[Message]:
        path = _require(request.string_params, ParamKey.Path, "string")
        # A real Cell keeps its volumes on the NFS pool and has no local path to change
        # (cell storage_manager.go handleChangeDefaultStoragePath).
        if self.storage:
            return [self._failure(request, "must running in local mode")]
        if path == self.storage_paths[0]:
            return [self._failure(request, "no need to change storage path")]
        self.storage_paths = [path]
        return [self._success(request)]

    # -- §5.9 security rules ------------------------------------------------------------------

    def _rule_from(self, request: Message) -> Rule:
        """A stock Cell stays silent on a bad port or protocol; this one says why."""
        u = request.uint_params
        port = _require(u, ParamKey.Port, "uint")
        if not 0 < port <= 0xFFFF:
            raise GuestError(f"invalid target port {port}")
        protocol = _require(u, ParamKey.Protocol, "uint")
        if protocol > 2:
            raise GuestError(f"invalid protocol {protocol} for security rule")
        source = _require(u, ParamKey.From, "uint")
        target = _require(u, ParamKey.To, "uint")
        if source >> 32 or target >> 32:
            raise GuestError("invalid address for security rule")
        return Rule(
            accept=_require(request.bool_params, ParamKey.Action, "bool"),
            protocol=protocol,
            source=source,
            target=target,
            port=port,
        )

    def _index(self, request: Message) -> int:
        return int(_require(request.int_params, ParamKey.Index, "int"))

    def _get_rules(self, request: Message) -> list[Message]:
        guest = self._guest(request)
        rules = guest.rules
        return [
            self._success(
                request,
                uint_array_params={
                    ParamKey.From: [r.source for r in rules],
                    ParamKey.To: [r.target for r in rules],
                    ParamKey.Port: [r.port for r in rules],
                    ParamKey.Protocol: [r.protocol for r in rules],
                    ParamKey.Action: [int(not r.accept) for r in rules]
                    + [int(not guest.default_accept)],
                },
            )
        ]

    def _add_rule(self, request: Message) -> list[Message]:
        self._guest(request).add_rule(self._rule_from(request))
        return [self._success(request)]

    def _modify_rule(self, request: Message) -> list[Message]:
        guest = self._guest(request)
        guest.modify_rule(self._index(request), self._rule_from(request))
        return [self._success(request)]

    def _remove_rule(self, request: Message) -> list[Message]:
        guest = self._guest(request)
        del guest.rules[guest.rule_index(self._index(request))]
        return [self._success(request)]

    def _change_rule_order(self, request: Message) -> list[Message]:
        mode = _require(request.int_params, ParamKey.Mode, "int")
        self._guest(request).move_rule(self._index(request), up=mode >= 0)
        return [self._success(request)]

    def _default_rule_action(self, request: Message) -> list[Message]:
        guest = self._guest(request)
        guest.set_default_action(_require(request.bool_params, ParamKey.Action, "bool"))
        return [self._success(request)]

    # -- §5.12 disk images --------------------------------------------------------------------

    def _create_disk_image(self, request: Message) -> list[Message]:
        guest = self._guest(request, ParamKey.Guest)
        guest.require(GuestState.STOPPED)
        image = _require(request.string_params, ParamKey.Image, "string")
        to = request.from_session
        if self.disks is not None:
            host = _require(request.string_params, ParamKey.Host, "string")
            port = _require(request.uint_params, ParamKey.Port, "uint")
            self._capture(guest, image, host, port, to)
            return [self._success(request)]
        for step, percent in enumerate((50, 100), start=1):
            done = percent == 100
            uints: dict[int, int] = {ParamKey.Progress: percent}
            if done:
                uints[ParamKey.Size] = sum(guest.disks[:1])
            self._later(
                self._creation_time * step / 2,
                Message(
                    id=MessageID.DiskImageUpdatedEvent,
                    success=True,
                    to_session=to,
                    uint_params=uints,
                    bool_params={ParamKey.Enable: done},
                ),
            )
        return [self._success(request)]

    def _capture(self, guest: SimulatedGuest, image: str, host: str, port: int, to: int) -> None:
        """Upload the guest's system disk as ``image``, telling Core's session how far it is."""
        assert self.disks is not None

        def updated(percent: int, *, size: int | None = None, error: str = "") -> None:
            """Progress; with ``size``: done (Enable); with ``error``: failed."""
            uints: dict[int, int] = {ParamKey.Progress: percent}
            if size is not None:
                uints[ParamKey.Size] = size
            self._send(
                Message(
                    id=MessageID.DiskImageUpdatedEvent,
                    success=not error,
                    error=error,
                    to_session=to,
                    uint_params=uints,
                    bool_params={ParamKey.Enable: size is not None},
                )
            )

        capturing = self.disks.capture(guest.id, (host, port), image, updated)
        capturing.addCallbacks(
            lambda size: updated(100, size=size),
            lambda failure: updated(0, error=str(failure.value)),
        )


Locate = Callable[[], Deferred[tuple[str, int]]]


@implementer(IStreamClientEndpoint)
class LocatedCoreEndpoint:
    """Dial Core wherever ``locate`` says it is now, over TLS checked against that address.

    ``locate`` is asked again on every connection attempt, so with :meth:`FakeCell.service` a
    Cell re-discovers Core after losing it, as a real Cell does (§2.9). Pass a discovery query
    (``nanocore.cluster.discovery.find_core``) or a fixed address.
    """

    def __init__(
        self,
        reactor: Any,
        locate: Locate,
        tls_for: Callable[[str], IOpenSSLClientConnectionCreator],
    ) -> None:
        self._reactor = reactor
        self._locate = locate
        self._tls_for = tls_for

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        async def dial() -> IProtocol:
            host, port = await self._locate()
            tcp = TCP4ClientEndpoint(self._reactor, host, port)
            return await wrapClientTLS(self._tls_for(host), tcp).connect(protocolFactory)

        return Deferred.fromCoroutine(dial())


class NoCoreService(Exception):
    """A discovery echo answered but named no "core" service of the wanted protocol."""


def discover_core(
    reactor: Any,
    clock: IReactorTime,
    *,
    protocol: str = "tls",
    find: Callable[..., Deferred[SonarEcho]] = find_core,
    **query: Any,
) -> Locate:
    """A :data:`Locate` that asks sonar discovery where Core is, as a Cell does (§1.3, §2.9),
    taking the first "core" service of ``protocol`` (a stock Cell takes the first of any).

    ``query`` goes to :func:`~nanocore.cluster.discovery.find_core` (``domain``,
    ``group_address``, ``group_port``, ``interface``, ``timeout``).
    """

    async def locate() -> tuple[str, int]:
        echo = await find(reactor, clock, **query)
        service = core_service(echo, protocol)
        if service is None:
            raise NoCoreService(f"echo {echo.id} from discovery names no {protocol} core service")
        return service.address, service.port

    return lambda: Deferred.fromCoroutine(locate())
