"""The cell registry: which Cells are linked, whether they are alive, and what they last reported.

The registry sits on top of the Cell links (it is their :class:`LinkHandler`) and routes what
arrives: replies and progress events (non-zero ``to``) go to :class:`Transactions`, status reports
become the latest :class:`CellStatus`, and every other message goes to the subscribed
:class:`CellObserver` s, which is how Cell events reach ``operations`` (cell-protocol.md §6).
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from attrs import define, frozen
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from nanocore.cluster.message import (
    KIND_RESPONSE,
    KNOWN_IDS,
    Message,
    MessageID,
    ParamKey,
    message_kind,
    message_name,
)
from nanocore.cluster.transactions import Transactions
from nanocore.cluster.transport import LinkError, LinkHandler, LinkSession, LinkState
from nanocore.ratelog import RateLimitedLog

#: A cell whose last status report is older than this is no longer *alive* (core §6, step 2).
STATUS_STALE_AFTER = 10.0

#: How long a Cell Core knew before it started may take to link again before it is presumed
#: lost. A live Cell redials every 3 to 8 s once its Core is gone (cell-protocol §2.9); a
#: minute leaves room for a thousand Cells linking in waves over a slow network.
REJOIN_GRACE = 60.0


class CellLiveness(enum.Enum):
    """How Core sees a Cell right now."""

    #: Linked (handshake done) but no recent status report.
    CONNECTED = "connected"
    #: Linked and reported its status within ``STATUS_STALE_AFTER`` seconds.
    ALIVE = "alive"
    #: Linked but silent for ``transport.LOST_AFTER`` seconds.
    LOST = "lost"
    #: Known, but its link is gone.
    DISCONNECTED = "disconnected"


#: The most a Cell may report of each: beyond what any host holds, and small enough that the
#: sums over a zone of a few thousand Cells stay within the uint64 Go clients read them into
#: (QA pass 21: a Cell reporting 2**64-1 cores drew every placement of its pool, and the zone
#: status answered totals no Go client could decode).
MAX_CORES = 1 << 16
MAX_MEMORY = 1 << 48  # 256 TiB
MAX_DISK = 1 << 52  # 4 PiB
#: The highest CPU usage a report may give, in percent (a measure may round past 100).
USAGE_MAX = 100.5


class StatusReportError(ValueError):
    """A ``CellStatusReportEvent`` lacks a field, has an array of the wrong length, or says
    what no host can (no core, usage outside 0-100 %, more free than in all)."""


class CellUnavailable(LinkError):
    """No connected link to that Cell."""


class CoreStopping(CellUnavailable):
    """The request's link closed because Core is stopping, not because the Cell left."""


Quad = tuple[int, int, int, int]


@frozen
class CellStatus:
    """One ``CellStatusReportEvent`` (§5.2). IO and Speed are zeros from real 1.4.1 Cells."""

    cores: int
    usage: float  #: host CPU %, 0-100
    memory_available: int
    memory_total: int
    disk_free: int
    disk_total: int
    io: Quad = (0, 0, 0, 0)  #: bytes read, written, received, sent over the last interval
    speed: Quad = (0, 0, 0, 0)  #: read, write, receive, send bytes/s

    @classmethod
    def from_message(cls, message: Message) -> CellStatus:
        """Read a report; like the original, reject the whole of it if any field is wrong."""

        def array(key: ParamKey, length: int) -> tuple[int, ...]:
            values = message.uint_array_params.get(key)
            if values is None or len(values) != length:
                raise StatusReportError(f"{key.name}: expected {length} unsigned integers")
            return tuple(values)

        cores = message.uint_params.get(ParamKey.Core)
        usage = message.float_params.get(ParamKey.Usage)
        if cores is None:
            raise StatusReportError("Core: missing")
        if usage is None:
            raise StatusReportError("Usage: missing")
        memory = array(ParamKey.Memory, 2)
        disk = array(ParamKey.Disk, 2)
        io = array(ParamKey.IO, 4)
        speed = array(ParamKey.Speed, 4)
        # What no host can report; the scheduler and the status routes would take it as it
        # came (QA pass 20: a usage of 1e308 made every status route an internal error, and
        # 2**64-1 bytes of free memory drew every placement of the pool).
        if not 1 <= cores <= MAX_CORES:
            raise StatusReportError(f"Core: expected 1 to {MAX_CORES}, got {cores}")
        if memory[1] > MAX_MEMORY or disk[1] > MAX_DISK:
            raise StatusReportError(
                f"Memory or Disk: more than {MAX_MEMORY} bytes of memory or {MAX_DISK} of disk"
                " in all"
            )
        if not 0.0 <= usage <= USAGE_MAX:
            raise StatusReportError(f"Usage: expected 0 to 100 percent, got {usage:g}")
        if memory[0] > memory[1]:
            raise StatusReportError(f"Memory: {memory[0]} available of {memory[1]} in all")
        if disk[0] > disk[1]:
            raise StatusReportError(f"Disk: {disk[0]} free of {disk[1]} in all")
        return cls(
            cores=cores,
            usage=min(usage, 100.0),
            memory_available=memory[0],
            memory_total=memory[1],
            disk_free=disk[0],
            disk_total=disk[1],
            io=(io[0], io[1], io[2], io[3]),
            speed=(speed[0], speed[1], speed[2], speed[3]),
        )

    def to_message(self) -> Message:
        """The report as a Cell sends it."""
        return Message(
            id=MessageID.CellStatusReportEvent,
            uint_params={ParamKey.Core: self.cores},
            float_params={ParamKey.Usage: self.usage},
            uint_array_params={
                ParamKey.Memory: (self.memory_available, self.memory_total),
                ParamKey.Disk: (self.disk_free, self.disk_total),
                ParamKey.IO: self.io,
                ParamKey.Speed: self.speed,
            },
        )


class CellObserver(Interface):
    """The rest of Core (``operations``) hears about Cells through this."""

    def cell_available(name: str, address: str) -> None:
        """A Cell completed its handshake from ``address`` (also after a reconnect)."""

    def cell_status(name: str, status: CellStatus) -> None:
        """A Cell sent a valid status report."""

    def cell_event(name: str, message: Message) -> None:
        """A Cell sent an unsolicited message (``to == 0``) other than a status report."""

    def cell_disconnected(name: str, gracefully: bool) -> None:
        """A Cell's link is gone; ``gracefully`` if the Cell said goodbye."""

    def cell_answered_late(name: str, request: Message, reply: Message) -> None:
        """A Cell answered ``request`` after Core had stopped waiting (the domain timeout):
        it may have done what was asked though the client was told it did not."""


class CellDirectory(Interface):
    """What the rest of Core (``operations``) may ask of the Cell registry."""

    def names() -> Iterator[str]:
        """Every Cell seen since start, linked or not."""

    def subscribe(observer: CellObserver) -> None:
        """Tell ``observer`` of every Cell event from now on."""

    def state(name: str) -> CellLiveness | None:
        """The Cell's liveness now, or None for a name never seen."""

    def address(name: str) -> str | None:
        """The address the Cell last linked from, or None for a name never seen."""

    def status(name: str) -> CellStatus | None:
        """The Cell's latest valid status report, kept after it disconnects."""

    def generation() -> int:
        """A number that changes whenever ``state``, ``address`` or ``status`` of any Cell
        may have changed, by an event or by time passing (answers derived from them are
        kept while it stands)."""

    def expect_back(
        groups: Mapping[str, Collection[str]],
        within: float = REJOIN_GRACE,
        departed: Collection[str] = (),
    ) -> None:
        """The Cells Core knew before it started, by group (their pools), are to link again,
        but those ``departed`` (which only tell, by linking, that their group is back); see
        :class:`RejoinWatch` for when one that does not is presumed lost."""

    def request(name: str, message: Message, **kw: Any) -> Deferred[Message]:
        """A transaction with the Cell; fails with :class:`CellUnavailable` if it is unlinked."""

    def send(name: str, message: Message) -> None:
        """Fire-and-forget; raises :class:`CellUnavailable` if the Cell is unlinked."""


class RejoinWatch:
    """Cells Core knew before it started, watched until each has linked again or is presumed
    lost.

    A link lost while Core runs is a Cell lost; a Cell that died while Core was down leaves no
    such trace. So a Cell that has not linked since start is presumed lost without goodbye
    (``presume_lost(name)``: its guests are shown lost, and a failover pool fails them over)
    once ``within`` seconds have passed both since start and since the first Cell of its group
    (its pool) linked again. Until one of a pool's Cells is back, Core cannot tell dead Cells
    from a whole cluster still booting or a network that does not carry their links yet, and
    waits; the grace from the first one back leaves its siblings, booting beside it, as long.
    Cells ``departed`` (that said goodbye) are not expected, but one linking again shows its
    group is back as any other does.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        groups: Mapping[str, Collection[str]],
        presume_lost: Callable[[str], None],
        departed: Collection[str] = (),
    ) -> None:
        self._clock = clock
        self._group_of = {name: group for group, names in groups.items() for name in names}
        gone = set(departed)
        expected = {group: set(names) - gone for group, names in groups.items()}
        self._groups = {group: names for group, names in expected.items() if names}
        #: When the first Cell of each group linked since start, and which did since.
        self._first_back: dict[str, float] = {}
        self._back: dict[str, str] = {}
        self._presume_lost = presume_lost
        self._call: IDelayedCall | None = None
        self._within = 0.0

    def start(self, within: float) -> None:
        self._within = within
        if self._groups:
            self._call = self._clock.callLater(within, self._judge)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def linked(self, name: str) -> None:
        """``name`` linked (it is back, and so is its group)."""
        group = self._group_of.pop(name, None)
        if group is not None and group in self._groups:
            self._groups[group].discard(name)
            self._first_back.setdefault(group, self._clock.seconds())
            self._back.setdefault(group, name)

    def _judge(self) -> None:
        self._call = None
        now = self._clock.seconds()
        next_due = now + self._within  # a group none of whose Cells is back: again then
        for group, absent in sorted(self._groups.items()):
            first = self._first_back.get(group)
            if first is None:
                continue
            if now < first + self._within:
                next_due = min(next_due, first + self._within)
                continue
            del self._groups[group]
            for name in sorted(absent):
                del self._group_of[name]
                self.log.warn(
                    "{name} has not linked since Core started, while {back} of its pool "
                    "'{group}' has: presumed lost without goodbye",
                    name=name, back=self._back[group], group=group,
                )  # fmt: skip
                self._presume_lost(name)
        self._groups = {group: absent for group, absent in self._groups.items() if absent}
        if self._groups:
            self._call = self._clock.callLater(next_due - now, self._judge)


@define
class _Cell:
    """What the registry knows about one Cell name."""

    name: str
    address: str
    link: LinkSession | None
    status: CellStatus | None = None
    reported_at: float | None = None


class Deadlines:
    """Moments at which something derived from Cells goes stale (a report, a link that never
    reported), to tell whether any passed: :meth:`passed` changes when one did.

    Moments already past are dropped whenever one is added or asked about, so what is kept is
    bounded by what falls due within one window (a report every 2 s from each Cell), however
    long nobody asks.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._due: list[float] = []
        self._passed = 0

    def add(self, at: float) -> None:
        self._drop_past()
        heapq.heappush(self._due, at)

    def passed(self) -> int:
        """A count that grows each time some moments have passed since it was last read."""
        self._drop_past()
        return self._passed

    def __len__(self) -> int:
        return len(self._due)

    def _drop_past(self) -> None:
        due, now = self._due, self._clock.seconds()
        if due and due[0] <= now:
            while due and due[0] <= now:
                heapq.heappop(due)
            self._passed += 1


@implementer(CellDirectory, LinkHandler)
class CellRegistry:
    """Who is connected, alive, lost or disconnected, and how to reach them."""

    log = Logger()

    def __init__(self, clock: IReactorTime, transactions: Transactions) -> None:
        self._clock = clock
        self._transactions = transactions
        self._cells: dict[str, _Cell] = {}
        self._observers: list[CellObserver] = []
        self._generation = 0
        #: When reports go stale (a Cell turns from alive to connected).
        self._stale = Deadlines(clock)
        #: Core is stopping: the links it closes are its goodbyes, not Cells lost.
        self._leaving = False
        self._rejoin: RejoinWatch | None = None
        #: A frozen Cell's late replies come in hundreds: a line per Cell per minute.
        self._noise = RateLimitedLog(self.log, clock)
        transactions.late = self._answered_late

    # -- queries ------------------------------------------------------------------------------

    def names(self) -> Iterator[str]:
        """Every Cell seen since start, linked or not."""
        return iter(list(self._cells))

    def link(self, name: str) -> LinkSession | None:
        """The Cell's link while it is connected (lost included), else None."""
        cell = self._cells.get(name)
        if cell is None or cell.link is None:
            return None
        return cell.link

    def address(self, name: str) -> str | None:
        cell = self._cells.get(name)
        return cell.address if cell is not None else None

    def status(self, name: str) -> CellStatus | None:
        """The latest valid status report of the Cell (kept after it disconnects)."""
        cell = self._cells.get(name)
        return cell.status if cell is not None else None

    def state(self, name: str) -> CellLiveness | None:
        """The Cell's state now, or None for a name never seen."""
        cell = self._cells.get(name)
        if cell is None:
            return None
        if cell.link is None or not cell.link.connected:
            return CellLiveness.DISCONNECTED
        if cell.link.state is LinkState.LOST:
            return CellLiveness.LOST
        if (
            cell.reported_at is not None
            and self._clock.seconds() - cell.reported_at < STATUS_STALE_AFTER
        ):
            return CellLiveness.ALIVE
        return CellLiveness.CONNECTED

    def generation(self) -> int:
        return self._generation + self._stale.passed()

    # -- talking to Cells ---------------------------------------------------------------------

    def send(self, name: str, message: Message) -> None:
        """Fire-and-forget (e.g. ``ComputeCellRemovedEvent``); raises :class:`LinkError`."""
        link = self.link(name)
        if link is None:
            raise CellUnavailable(f"cell {name!r} is not connected")
        link.send(message)

    def request(self, name: str, message: Message, **kw: Any) -> Deferred[Message]:
        """A transaction with the Cell; fails at once with :class:`CellUnavailable` if unlinked.

        Keywords (``timeout``, ``on_progress``, ...) go to :meth:`Transactions.request`; only
        this Cell may answer, and the request fails when its link goes down.
        """
        link = self.link(name)
        if link is None:
            return fail(CellUnavailable(f"cell {name!r} is not connected"))
        kw.setdefault("peer", name)
        try:
            return self._transactions.request(link.send, message, **kw)
        except LinkError as e:
            return fail(e)

    def subscribe(self, observer: CellObserver) -> None:
        self._observers.append(observer)

    def leaving(self) -> None:
        """Core is stopping and closes every link: observers are not told of those closes.

        A Cell that Core leaves has not failed: its guests are not lost, its pool fails
        nothing over, and Core's records stay as they were for the next start, when the Cells
        link again and their inventories are reconciled. Requests still waiting for a Cell's
        answer fail as the links close, as ever.
        """
        self._leaving = True
        if self._rejoin is not None:
            self._rejoin.stop()
        self._noise.flush()
        self._transactions.flush_log()

    def expect_back(
        self,
        groups: Mapping[str, Collection[str]],
        within: float = REJOIN_GRACE,
        departed: Collection[str] = (),
    ) -> None:
        """Watch the Cells Core knew before it started (:class:`RejoinWatch`); one presumed
        lost is told to the observers as a link lost without goodbye."""
        if self._rejoin is not None:
            self._rejoin.stop()

        def presume_lost(name: str) -> None:
            self._notify(lambda observer: observer.cell_disconnected(name, False))

        self._rejoin = RejoinWatch(self._clock, groups, presume_lost, departed)
        for name in self._cells:  # linked before this watch began
            self._rejoin.linked(name)
        self._rejoin.start(within)

    # -- LinkHandler --------------------------------------------------------------------------

    def link_connected(self, link: LinkSession) -> None:
        # Logged here, where it is taken: a KCP claim still proving itself (or refused) is
        # not a Cell connecting, and anyone can make those.
        self.log.info("link {name} ({address}) connected", name=link.name, address=link.address)
        self._generation += 1
        if self._rejoin is not None:
            self._rejoin.linked(link.name)
        cell = self._cells.get(link.name)
        previous = cell.link if cell is not None else None
        if cell is None:
            cell = self._cells[link.name] = _Cell(link.name, link.address, link)
        else:
            cell.link, cell.address = link, link.address
        if previous is not None and previous is not link:
            # Same certificate, new connection: the Cell restarted before its old link timed
            # out. The newest link wins; the old one leaves without a disconnect event.
            self.log.info("{name} reconnected; closing its previous link", name=link.name)
            previous.close()
        self._notify(lambda observer: observer.cell_available(link.name, link.address))

    def message_received(self, link: LinkSession, message: Message) -> None:
        cell = self._cells.get(link.name)
        if cell is None or cell.link is not link:
            return
        if message.to_session:
            self._transactions.deliver(message)
        elif message.id == MessageID.CellStatusReportEvent:
            self._status_received(link.name, message)
        elif message.id not in KNOWN_IDS or message_kind(message.id) == KIND_RESPONSE:
            # cell-protocol §2.7: logged and dropped (they were dropped without a word: QA
            # pass 20). A response names the request it answers; one naming none answers
            # nothing.
            self._noise.warn(
                "unexpected messages",
                link.name,
                "{name} sent {id}, {why}; dropped",
                name=link.name,
                id=message_name(message.id),
                why="a response that names no request"
                if message.id in KNOWN_IDS
                else "which is no message nanocore knows",
            )
        else:
            self._notify(lambda observer: observer.cell_event(link.name, message))

    def link_lost(self, link: LinkSession) -> None:
        """Lost is bookkeeping only (``state``); failover waits for the disconnect."""
        self._generation += 1

    def link_recovered(self, link: LinkSession) -> None:
        """Back to connected; nothing to tell observers."""
        self._generation += 1

    def link_closed(self, link: LinkSession, gracefully: bool) -> None:
        self._generation += 1
        cell = self._cells.get(link.name)
        if cell is None or cell.link is not link:
            return
        cell.link = None
        reason = (
            CoreStopping("nanocore is stopping")
            if self._leaving
            else CellUnavailable(f"cell {link.name!r} disconnected")
        )
        self._transactions.fail_peer(link.name, reason)
        if not self._leaving:
            self._notify(lambda observer: observer.cell_disconnected(link.name, gracefully))

    # -- internals ----------------------------------------------------------------------------

    def _answered_late(self, request: Message, reply: Message) -> None:
        name = reply.sender
        if name not in self._cells or self._leaving:
            return
        self._noise.info(
            "late replies", name, "{name} answered {request} after Core stopped waiting",
            name=name, request=message_name(request.id),
        )  # fmt: skip
        self._notify(lambda observer: observer.cell_answered_late(name, request, reply))

    def _status_received(self, name: str, message: Message) -> None:
        try:
            status = CellStatus.from_message(message)
        except StatusReportError as e:
            # A Cell that reports wrongly does so every 2 s: a line a minute, with the count.
            self._noise.warn(
                "ignored status reports",
                name,
                "ignoring status report from {name}: {reason}",
                name=name,
                reason=str(e),
            )
            return
        cell = self._cells[name]
        cell.status = status
        cell.reported_at = self._clock.seconds()
        self._generation += 1
        self._stale.add(cell.reported_at + STATUS_STALE_AFTER)
        self._notify(lambda observer: observer.cell_status(name, status))

    def _notify(self, tell: Callable[[CellObserver], None]) -> None:
        """Tell every observer; one that fails is logged and does not stop the others."""
        for observer in list(self._observers):
            try:
                tell(observer)
            except Exception:
                self.log.failure("observer {observer!r} failed", observer=observer)
