"""Simulated guests for FakeCell: a small state machine and the records a Cell keeps per guest.

A guest is CREATING until its disk is ready, then STOPPED or RUNNING. The only moves are:

    CREATING ──created──► STOPPED ──start──► RUNNING ──stop──► STOPPED
                                 ├──reset──► RESETTING ──reset done──► STOPPED
                                 └──delete (only when stopped)──► gone

Everything else a Cell does to a guest (resize, media, snapshots, rules, ...) is a field change
guarded by the checks a stock Cell 1.4 makes, refused in its words (cell ``instance_manager.go``,
``storage_manager.go`` and the task executors).
"""

from __future__ import annotations

import enum
import ipaddress

from attrs import Factory, define, evolve, frozen


class GuestError(Exception):
    """The request does not fit the guest's state; the text goes back in the error reply."""


class GuestState(enum.Enum):
    CREATING = "creating"
    STOPPED = "stopped"
    RUNNING = "running"
    RESETTING = "resetting"  #: its system disk is being written again from an image


#: The moves the state machine allows: (from, action) -> to.
TRANSITIONS: dict[tuple[GuestState, str], GuestState] = {
    (GuestState.CREATING, "created"): GuestState.STOPPED,
    (GuestState.STOPPED, "start"): GuestState.RUNNING,
    (GuestState.RUNNING, "stop"): GuestState.STOPPED,
    (GuestState.STOPPED, "reset"): GuestState.RESETTING,
    (GuestState.RESETTING, "reset done"): GuestState.STOPPED,
}
#: A stock Cell's words where it has its own (cell instance_manager.go; "alreay" is its
#: spelling), so that a race Core relays reads as a real cluster's would; else the simulator's.
_STOCK_REFUSALS = {
    (GuestState.RUNNING, "start"): "instance '{id}' already started",
    (GuestState.STOPPED, "stop"): "instance '{id}' alreay stopped",
}
_refusal = "guest {id} is {state}: cannot {action}"
#: Bytes per second a running guest reads, writes, receives and sends (its I/O counters).
IO_RATES = (4096, 2048, 1024, 512)


@frozen
class Snapshot:
    name: str
    description: str
    created: str
    running: bool  #: taken while the guest was running
    parent: str  #: "" for a root snapshot


@frozen
class Rule:
    """One guest firewall rule (§5.9): action 0 accept / 1 reject, protocol 0 tcp/1 udp/2 icmp."""

    accept: bool
    protocol: int
    source: int  #: IPv4 as a big-endian uint32, 0 = any
    target: int
    port: int

    def same_traffic(self, other: Rule) -> bool:
        """Two rules for the same traffic (whatever their action) cannot both be listed."""
        return (self.protocol, self.source, self.target, self.port) == (
            other.protocol, other.source, other.target, other.port,
        )  # fmt: skip

    def describe(self) -> str:
        """``tcp:10.0.0.1->:22`` as a Cell words a rule (any address is empty)."""
        protocol = ("tcp", "udp", "icmp")[self.protocol]
        return f"{protocol}:{_address(self.source)}->{_address(self.target)}:{self.port}"


def _address(value: int) -> str:
    return str(ipaddress.IPv4Address(value)) if value else ""


@define
class SimulatedGuest:
    """What a Cell knows of one guest; mutable because the Cell changes it in place."""

    id: str
    name: str
    user: str = ""
    group: str = ""
    cores: int = 1
    memory: int = 1 << 30
    disks: list[int] = Factory(lambda: [10 << 30])
    auto_start: bool = False
    system: str = "linux"
    created: str = ""
    monitor_port: int = 5901
    monitor_secret: str = ""
    hardware: str = "00:16:3e:00:00:01"
    priority: int = 0
    limits: list[int] = Factory(lambda: [0] * 6)
    internal_address: str = ""
    external_address: str = ""
    admin: str = "root"
    admin_secret: str = ""
    state: GuestState = GuestState.CREATING
    progress: int = 0
    media: str = ""
    snapshots: dict[str, Snapshot] = Factory(dict)
    current_snapshot: str = ""
    rules: list[Rule] = Factory(list)
    default_accept: bool = True
    #: Seconds it ran before its latest start, and when that start was (clock seconds).
    ran: float = 0.0
    running_since: float = 0.0

    @property
    def running(self) -> bool:
        return self.state is GuestState.RUNNING

    @property
    def created_ok(self) -> bool:
        return self.state is not GuestState.CREATING

    def move(self, action: str, now: float = 0.0) -> None:
        """Take one transition of the state machine at ``now`` (clock seconds), or raise
        :class:`GuestError`."""
        target = TRANSITIONS.get((self.state, action))
        if target is None:
            raise GuestError(_STOCK_REFUSALS.get((self.state, action), _refusal).format(
                id=self.id, state=self.state.value, action=action
            ))  # fmt: skip
        if action == "start":
            self.running_since = now
        elif action == "stop":
            self.ran += max(0.0, now - self.running_since)
        self.state = target
        if action in ("created", "reset done"):
            self.progress = 100
        elif action == "reset":
            self.progress = 0

    def uptime(self, now: float) -> float:
        """Seconds it has run in all, up to ``now``."""
        return self.ran + (max(0.0, now - self.running_since) if self.running else 0.0)

    def io(self, now: float) -> list[int]:
        """Bytes read, written, received and sent so far: they grow while it runs."""
        seconds = self.uptime(now)
        return [int(rate * seconds) for rate in IO_RATES]

    def require(self, *states: GuestState) -> None:
        """Refuse a change unless the guest is in one of ``states``."""
        if self.state is GuestState.RUNNING and GuestState.RUNNING not in states:
            # What a stock Cell's libvirt check says (cell instance_utility.go DeleteInstance).
            raise GuestError(f"instance '{self.id}' is running")
        if self.state not in states:
            wanted = " or ".join(s.value for s in states)
            raise GuestError(f"guest {self.id} is {self.state.value}, must be {wanted}")

    def require_stopped(self) -> None:
        """What a Cell checks before touching volumes (resize, shrink): created and stopped."""
        if self.state is GuestState.CREATING:
            raise GuestError(f"instance '{self.id}' not created")
        if self.running:
            raise GuestError(f"instance '{self.id}' not stopped")

    # -- snapshots (a real Cell's external qcow2 chain, cell storage_manager.go) ---------------

    def _require_offline_snapshot(self) -> None:
        if self.state is GuestState.CREATING:
            raise GuestError(f"instance '{self.id}' not created")
        if self.running:
            # The stock Cell's words, typo included.
            raise GuestError("live snapshot not supported yes, shutdown instance first")

    def take_snapshot(self, name: str, description: str, now: str) -> None:
        self._require_offline_snapshot()
        if name in self.snapshots:
            raise GuestError(f"snapshot '{self.id}.{name}' exists")
        parent = self.current_snapshot
        self.snapshots[name] = Snapshot(name, description, now, self.running, parent)
        self.current_snapshot = name

    def snapshot(self, name: str) -> Snapshot:
        try:
            return self.snapshots[name]
        except KeyError:
            raise GuestError(f"invalid snapshot '{name}'") from None

    def delete_snapshot(self, name: str) -> None:
        """Merge a snapshot away: refused when two depend on it, or it is current and one
        does; its one dependant is then backed by its own backing."""
        self._require_offline_snapshot()
        removed = self.snapshot(name)
        children = [s for s in self.snapshots.values() if s.parent == name]
        if len(children) > 1:
            raise GuestError(f"more than one snapshot depend on '{name}', can not delete")
        if children and self.current_snapshot == name:
            raise GuestError(
                f"can't delete current snapshot when backed by snapshot '{children[0].name}'"
            )
        for child in children:
            self.snapshots[child.name] = evolve(child, parent=removed.parent)
        del self.snapshots[name]
        if self.current_snapshot == name:
            self.current_snapshot = removed.parent

    def restore_snapshot(self, name: str) -> None:
        self._require_offline_snapshot()
        self.snapshot(name)
        self.current_snapshot = name

    # -- security rules (cell instance_manager.go) --------------------------------------------

    def rule_index(self, index: int, quoted: bool = True) -> int:
        if not 0 <= index < len(self.rules):
            name = f"'{self.name}'" if quoted else self.name
            raise GuestError(f"invalid rule index {index} for instance {name}")
        return index

    def _duplicate(self, rule: Rule, skip: int = -1) -> None:
        for index, other in enumerate(self.rules):
            if index != skip and other.same_traffic(rule):
                raise GuestError(
                    f"{rule.describe()} already defined on {index}th rule of instance "
                    f"'{self.name}'"
                )

    def add_rule(self, rule: Rule) -> None:
        self._duplicate(rule)
        self.rules.append(rule)

    def modify_rule(self, index: int, rule: Rule) -> None:
        index = self.rule_index(index, quoted=False)
        if self.rules[index] == rule:
            raise GuestError("no need to change")
        self._duplicate(rule, skip=index)
        self.rules[index] = rule

    def move_rule(self, index: int, up: bool) -> None:
        index = self.rule_index(index)
        if up and index == 0:
            raise GuestError("already on top")
        if not up and index == len(self.rules) - 1:
            raise GuestError("already on bottom")
        other = index - 1 if up else index + 1
        self.rules[index], self.rules[other] = self.rules[other], self.rules[index]

    def set_default_action(self, accept: bool) -> None:
        if self.default_accept == accept:
            raise GuestError("no need to change")
        self.default_accept = accept
