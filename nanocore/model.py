"""Frozen value objects for every piece of cluster state Core owns (core-internals §2.2-2.3).

Every field is validated when the object is built, so a value that exists is a valid value:
the API, the importer and the store all build these and never hand-check fields again.
Objects never change; use ``attrs.evolve`` to derive a changed copy.  This module imports
nothing else from nanocore.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable, Iterable
from enum import Enum, IntEnum, StrEnum
from typing import Any, TypeVar

import attrs
from attrs import field, frozen
from attrs import validators as v

# --------------------------------------------------------------------------------------------
# Validators
# --------------------------------------------------------------------------------------------

#: The longest name nanocore keeps: names are stored and shown (the original had no limit).
MAX_NAME = 255
#: Names the original qualifies (pools, cells, guests, owners, groups; §3.5).
NAME_PATTERN = rf"[A-Za-z0-9_-]{{1,{MAX_NAME}}}"
#: Image names additionally allow dots (§3.5).
IMAGE_NAME_PATTERN = rf"[A-Za-z0-9_.-]{{1,{MAX_NAME}}}"
#: Ids: UUID v4 (instances, images, policies) or xid (templates) strings.
ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
#: Free-text labels the original never qualified (template, address pool, policy names).
LABEL_PATTERN = rf"[^\x00-\x1f\x7f]{{1,{MAX_NAME}}}"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

_MAC = re.compile(r"([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}")
_SHA1 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_CIDR = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}/(?:3[0-2]|[12]?[0-9])")
_TIME = re.compile(
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r" (?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
)

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]

#: Unicode categories a label may not hold: controls, format characters (bidi overrides such
#: as U+202E, zero-width characters, BOM), surrogates, line and paragraph separators. They make
#: a name display as something it is not, or break the lines and tables it is shown in.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: How many characters of a refused value a message quotes: enough to tell which value it
#: was, never the kilobytes a client may have sent.
SHOWN = 64


def first_invisible(text: str) -> str | None:
    """The first character of ``text`` in INVISIBLE_CATEGORIES, or None (ASCII: a regex)."""
    if text.isascii():
        found = _ASCII_CONTROL.search(text)
        return found.group() if found else None
    for character in text:
        if unicodedata.category(character) in INVISIBLE_CATEGORIES:
            return character
    return None


def shown(text: str) -> str:
    """``text`` as a message quotes it: its first SHOWN characters (``…`` marks the cut), the
    invisible ones escaped (``\\u202e``), so a refusal neither swells with its input nor
    displays as something else."""
    head = text[:SHOWN]
    if first_invisible(head) is not None:
        head = "".join(
            repr(c)[1:-1] if unicodedata.category(c) in INVISIBLE_CATEGORIES else c for c in head
        )
    return head + "…" if len(text) > SHOWN else head


def quoted(value: Any) -> str:
    """A refused value as a validation message names it: a string ``'<shown>'``, else its
    repr, cut as `shown` cuts."""
    if type(value) is str:
        return f"'{shown(value)}'"
    text = repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN] + "…"


def matching(pattern: str, meaning: str) -> Validator:
    """A string fully matching ``pattern``, checked in one plain call (loading runs it a lot)."""
    compiled = re.compile(pattern)

    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if type(value) is not str or compiled.fullmatch(value) is None:
            raise ValueError(f"'{attribute.name}' must be {meaning}, not {quoted(value)}")

    return check


def visible_text(pattern: str, meaning: str) -> Validator:
    """Like `matching`, and refusing INVISIBLE_CATEGORIES (only non-ASCII text is scanned)."""
    shape = matching(pattern, meaning)

    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        shape(inst, attribute, value)
        if not value.isascii() and first_invisible(value) is not None:
            raise ValueError(f"'{attribute.name}' must be {meaning}, not {quoted(value)}")

    return check


qualified_name = matching(NAME_PATTERN, "1-255 characters of A-Z a-z 0-9 _ -")
#: A guest's name as a batch shows it: bare (create polls) or stored, ``<group>.<name>``.
guest_name = matching(
    rf"(?:{NAME_PATTERN}\.)?{NAME_PATTERN}", "a guest name, bare or as <group>.<name>"
)
image_name = matching(IMAGE_NAME_PATTERN, "1-255 characters of A-Z a-z 0-9 _ - .")
identifier = matching(ID_PATTERN, "an id of 1-64 characters of A-Z a-z 0-9 _ -")
label = visible_text(LABEL_PATTERN, "1-255 characters without control or format characters")
optional_name = matching(f"|{NAME_PATTERN}", "empty or 1-255 characters of A-Z a-z 0-9 _ -")
optional_label = visible_text(
    f"|{LABEL_PATTERN}", "empty or 1-255 characters without control or format characters"
)
#: The longest ``text`` (descriptions, errors kept in records).
TEXT_LIMIT = 4096
text = matching(r"[^\x00]{0,4096}", "text of at most 4096 characters, without NUL")


def clipped(message: str) -> str:
    """``message`` made fit a ``text`` field: a record keeping an error (a Cell's, or one
    naming many guests) must not fail to be written because the error is long."""
    message = message.replace("\x00", "")
    return message if len(message) <= TEXT_LIMIT else message[: TEXT_LIMIT - 1] + "…"


def boolean(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """True or False (not 0/1 or strings)."""
    if type(value) is not bool:
        raise ValueError(f"'{attribute.name}' must be true or false, not {quoted(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def non_negative(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A count or byte size: a non-negative integer (booleans are not sizes)."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"'{attribute.name}' must be an integer >= 0, not {quoted(value)}")


def positive(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A count that must be at least one (cores, memory, disk sizes)."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"'{attribute.name}' must be an integer >= 1, not {quoted(value)}")


def is_ipv4(value: object) -> bool:
    """Whether ``value`` is an IPv4 address as nanocore accepts one, wherever it comes from.

    The one rule (API bodies, config files, stored values, Cell reports): a ``str`` of four
    ASCII decimal octets 0-255 joined by dots, without leading zeros or surrounding space.
    It is what ``ipaddress.IPv4Address`` accepts for a string, and what Go's
    ``net.ParseIP(s).To4()`` accepts since Go 1.17 less the IPv6 spellings of an IPv4
    address (``::ffff:1.2.3.4``), which Core let through and then could not use. A regular
    expression, because loading a store checks every address and ``ipaddress`` is far slower.
    """
    return type(value) is str and _IPV4.fullmatch(value) is not None


def ipv4(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A field holding an IPv4 address (see :func:`is_ipv4`)."""
    if not is_ipv4(value):
        raise ValueError(f"'{attribute.name}' must be an IPv4 address, not {quoted(value)}")


def optional_ipv4(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An IPv4 address, or the empty string for "none"."""
    if value != "":
        ipv4(inst, attribute, value)


def dotted_netmask(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A dotted-quad netmask with contiguous leading ones (prefix 1..32)."""
    try:
        bits = int(ipaddress.IPv4Address(value))
    except (ValueError, TypeError):
        bits = -1
    inverted = ~bits & 0xFFFFFFFF
    if bits <= 0 or (inverted + 1) & inverted:
        raise ValueError(f"'{attribute.name}' must be a dotted IPv4 netmask, not {quoted(value)}")


def optional_cidr(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An ``address/prefix`` IPv4 interface, or the empty string."""
    if value != "" and (type(value) is not str or _CIDR.fullmatch(value) is None):
        raise ValueError(
            f"'{attribute.name}' must be an IPv4 address with prefix (a.b.c.d/n), "
            f"not {quoted(value)}"
        )


def optional_mac(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A colon-separated MAC address, or the empty string."""
    if value != "" and not (isinstance(value, str) and _MAC.fullmatch(value)):
        raise ValueError(f"'{attribute.name}' must be a MAC address, not {quoted(value)}")


def optional_sha1(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A lowercase SHA-1 hex digest, or the empty string."""
    if value != "" and not (isinstance(value, str) and _SHA1.fullmatch(value)):
        raise ValueError(f"'{attribute.name}' must be a SHA-1 hex digest, not {quoted(value)}")


def optional_sha256(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A lowercase SHA-256 hex digest, or the empty string."""
    if value != "" and not (isinstance(value, str) and _SHA256.fullmatch(value)):
        raise ValueError(f"'{attribute.name}' must be a SHA-256 hex digest, not {quoted(value)}")


def optional_time(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A ``YYYY-MM-DD HH:MM:SS`` timestamp as the original writes it, or the empty string."""
    if value != "" and (type(value) is not str or _TIME.fullmatch(value) is None):
        raise ValueError(
            f"'{attribute.name}' must be a time like '2006-01-02 15:04:05', not {quoted(value)}"
        )


def port_number(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A TCP/UDP port number (0 = any/none)."""
    if not _is_int(value) or not 0 <= value <= 65535:
        raise ValueError(f"'{attribute.name}' must be a port number 0..65535, not {quoted(value)}")


def percent(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A progress figure 0..100."""
    if not _is_int(value) or not 0 <= value <= 100:
        raise ValueError(f"'{attribute.name}' must be an integer 0..100, not {quoted(value)}")


def timestamp(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """Seconds since the epoch as reported by the injected clock."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(
            f"'{attribute.name}' must be a number of seconds >= 0, not {quoted(value)}"
        )


def each(member: Callable[[Any, attrs.Attribute[Any], Any], None]) -> Any:
    """Validate a tuple field and every member of it."""
    return v.deep_iterable(member_validator=member, iterable_validator=v.instance_of(tuple))


E = TypeVar("E", bound=Enum)


def enum_or_raw(enum: type[E], value: Any) -> E | Any:
    """Convert a raw value to ``enum`` when it is one; leave it for the validator otherwise.

    Keeping the raw value lets ``v.in_`` report the field name and the allowed values.
    """
    try:
        return enum(value)
    except (ValueError, TypeError):
        return value


def one_of(enum: type[Enum]) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """The value must be a member of ``enum``; the message lists the accepted wire values."""
    members = tuple(enum)

    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in members:
            accepted = ", ".join(repr(member.value) for member in members)
            raise ValueError(f"'{attribute.name}' must be one of {accepted}, not {quoted(value)}")

    return check


def validation_message(error: Exception) -> str:
    """The human sentence of a validation error (attrs puts it in ``args[0]``)."""
    if error.args and isinstance(error.args[0], str):
        return error.args[0]
    return str(error)


def as_tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    """Accept any iterable (e.g. a JSON list) for tuple fields; strings are not iterables here."""
    if isinstance(value, str | bytes):
        raise TypeError(f"expected a list, not {quoted(value)}")
    return tuple(value)


# --------------------------------------------------------------------------------------------
# Enumerations (values are the strings of the original, index order is the wire order)
# --------------------------------------------------------------------------------------------


class OperatingSystem(StrEnum):
    LINUX = "linux"
    WINDOWS = "windows"


class DiskBus(StrEnum):
    SCSI = "scsi"
    SATA = "sata"
    IDE = "ide"


class NetworkModel(StrEnum):
    VIRTIO = "virtio"
    E1000 = "e1000"
    RTL8139 = "rtl8139"


class DisplayDriver(StrEnum):
    """In the Cells' index order (cell-protocol.md §5.10): virtio is 2 and qxl 3."""

    VGA = "vga"
    CIRRUS = "cirrus"
    VIRTIO = "virtio"
    QXL = "qxl"
    NONE = "none"


class RemoteControl(StrEnum):
    VNC = "vnc"
    SPICE = "spice"


class USBModel(StrEnum):
    NONE = ""
    NEC_XHCI = "nec-xhci"


class TabletModel(StrEnum):
    NONE = ""
    USB = "usb"
    VIRTIO = "virtio"


class StorageType(StrEnum):
    NFS = "nfs"


class AddressProvider(StrEnum):
    DHCP = "dhcp"
    CLOUDINIT = "cloudinit"


class AddressMode(StrEnum):
    """Allocation mode; the original validates it but always stores it empty."""

    UNSET = ""
    INTERNAL = "internal"
    EXTERNAL = "external"
    BOTH = "both"


class RangeKind(StrEnum):
    INTERNAL = "internal"
    EXTERNAL = "external"


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"


class CPUPriority(IntEnum):
    HIGH = 0
    MEDIUM = 1
    LOW = 2


class InstanceStatus(StrEnum):
    """Lifecycle state of Core's instance record (§4.1); lost/migrating are separate flags."""

    CREATING = "creating"
    STOPPED = "stopped"
    RUNNING = "running"
    RESETTING = "resetting"


class BatchKind(StrEnum):
    CREATE = "create"
    DELETE = "delete"
    STOP = "stop"


class MigrationKind(StrEnum):
    MANUAL = "manual"  #: asked through ``POST /migrations/``
    FAILOVER = "failover"  #: guests of a lost Cell re-placed by Core


class BatchStatus(IntEnum):
    PROCESSING = 0
    SUCCESS = 1
    FAIL = 2


class ImageFormat(StrEnum):
    ISO = "iso"
    QCOW2 = "qcow2"


# Named converters (the attrs mypy plugin only understands named functions).


def to_address_mode(raw: Any) -> Any:
    return enum_or_raw(AddressMode, raw)


def to_address_provider(raw: Any) -> Any:
    return enum_or_raw(AddressProvider, raw)


def to_batch_kind(raw: Any) -> Any:
    return enum_or_raw(BatchKind, raw)


def to_migration_kind(raw: Any) -> Any:
    return enum_or_raw(MigrationKind, raw)


def to_batch_status(raw: Any) -> Any:
    return enum_or_raw(BatchStatus, raw)


def to_cpu_priority(raw: Any) -> Any:
    return enum_or_raw(CPUPriority, raw)


def to_disk_bus(raw: Any) -> Any:
    return enum_or_raw(DiskBus, raw)


def to_display_driver(raw: Any) -> Any:
    return enum_or_raw(DisplayDriver, raw)


def to_image_format(raw: Any) -> Any:
    return enum_or_raw(ImageFormat, raw)


def to_instance_status(raw: Any) -> Any:
    return enum_or_raw(InstanceStatus, raw)


def to_network_model(raw: Any) -> Any:
    return enum_or_raw(NetworkModel, raw)


def to_operating_system(raw: Any) -> Any:
    return enum_or_raw(OperatingSystem, raw)


def to_protocol(raw: Any) -> Any:
    return enum_or_raw(Protocol, raw)


def to_range_kind(raw: Any) -> Any:
    return enum_or_raw(RangeKind, raw)


def to_remote_control(raw: Any) -> Any:
    return enum_or_raw(RemoteControl, raw)


def to_storage_type(raw: Any) -> Any:
    return enum_or_raw(StorageType, raw)


def to_tablet_model(raw: Any) -> Any:
    return enum_or_raw(TabletModel, raw)


def to_usb_model(raw: Any) -> Any:
    return enum_or_raw(USBModel, raw)


# --------------------------------------------------------------------------------------------
# Cluster entities (§2.2)
# --------------------------------------------------------------------------------------------

DEFAULT_ZONE = "default"
DEFAULT_POOL = "default"


@frozen
class Zone:
    """The singleton zone; only its name is state (counters are derived)."""

    name: str = field(default=DEFAULT_ZONE, validator=label)

    @property
    def key(self) -> str:
        return "zone"


@frozen
class ComputePool:
    """Compute pool: ``network`` names an address pool, ``storage`` a storage pool ("" = none)."""

    name: str = field(validator=qualified_name)
    enabled: bool = field(default=True, validator=boolean)
    network: str = field(default="", validator=optional_label)
    storage: str = field(default="", validator=optional_name)
    failover: bool = field(default=False, validator=boolean)

    @failover.validator
    def _failover_needs_storage(self, attribute: attrs.Attribute[bool], value: bool) -> None:
        if value and not self.storage:
            raise ValueError("'failover' requires a shared 'storage' pool")

    @property
    def key(self) -> str:
        return self.name


@frozen
class ComputeCell:
    """What Core persists of a Cell: its pool membership and admin flags ("" pool = unallocated).

    Liveness, address and usage come from the live link, not from the store.
    """

    name: str = field(validator=qualified_name)
    pool: str = field(default="", validator=optional_name)
    enabled: bool = field(default=True, validator=boolean)
    purge_pending: bool = field(default=False, validator=boolean)

    @property
    def key(self) -> str:
        return self.name


@frozen
class StoragePool:
    """Shared storage a compute pool can use; only NFS exists (§3.3)."""

    name: str = field(validator=qualified_name)
    host: str = field(validator=v.and_(label, v.max_len(255)))
    target: str = field(validator=v.and_(label, v.max_len(1024)))
    type: StorageType = field(
        default=StorageType.NFS,
        converter=to_storage_type,
        validator=one_of(StorageType),
    )

    @property
    def key(self) -> str:
        return self.name


@frozen
class AddressPool:
    """Addressing settings handed to the Cells of the compute pools that use this pool."""

    name: str = field(validator=label)
    gateway: str = field(validator=ipv4)
    dns: tuple[str, ...] = field(default=(), converter=as_tuple, validator=each(ipv4))
    provider: AddressProvider = field(
        default=AddressProvider.DHCP,
        converter=to_address_provider,
        validator=one_of(AddressProvider),
    )
    mode: AddressMode = field(
        default=AddressMode.UNSET,
        converter=to_address_mode,
        validator=one_of(AddressMode),
    )

    @property
    def key(self) -> str:
        return self.name


@frozen
class AddressRange:
    """A contiguous IPv4 range of an address pool, keyed by (pool, start)."""

    pool: str = field(validator=label)
    start: str = field(validator=ipv4)
    end: str = field(validator=ipv4)
    netmask: str = field(validator=dotted_netmask)
    kind: RangeKind = field(
        default=RangeKind.INTERNAL,
        converter=to_range_kind,
        validator=one_of(RangeKind),
    )

    def __attrs_post_init__(self) -> None:
        first, last = self.first, self.last
        if last < first:
            raise ValueError(f"'end' {self.end} is before 'start' {self.start}")
        if last not in self.network:
            raise ValueError(f"'end' {self.end} is outside the network {self.network}")

    @property
    def key(self) -> tuple[str, str]:
        return (self.pool, self.start)

    @property
    def first(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.start)

    @property
    def last(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.end)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.start}/{self.netmask}", strict=False)

    @property
    def capacity(self) -> int:
        return int(self.last) - int(self.first) + 1

    def __contains__(self, address: object) -> bool:
        try:
            ip = ipaddress.IPv4Address(address)
        except (ValueError, TypeError):
            return False
        return self.first <= ip <= self.last

    def overlaps(self, other: AddressRange) -> bool:
        return self.first <= other.last and other.first <= self.last


@frozen
class AddressAllocation:
    """One address of a range handed to an instance; (pool, address) is unique."""

    pool: str = field(validator=label)
    range_start: str = field(validator=ipv4)
    address: str = field(validator=ipv4)
    instance: str = field(validator=identifier)

    @property
    def key(self) -> tuple[str, str]:
        return (self.pool, self.address)


@frozen
class SystemTemplate:
    """Guest hardware options; ``options()`` is the 7-number list sent to a Cell (§2.2)."""

    id: str = field(validator=identifier)
    name: str = field(validator=label)
    admin: str = field(validator=label)
    operating_system: OperatingSystem = field(
        converter=to_operating_system, validator=one_of(OperatingSystem)
    )
    disk: DiskBus = field(converter=to_disk_bus, validator=one_of(DiskBus))
    network: NetworkModel = field(converter=to_network_model, validator=one_of(NetworkModel))
    display: DisplayDriver = field(converter=to_display_driver, validator=one_of(DisplayDriver))
    control: RemoteControl = field(converter=to_remote_control, validator=one_of(RemoteControl))
    usb: USBModel = field(
        default=USBModel.NONE,
        converter=to_usb_model,
        validator=one_of(USBModel),
    )
    tablet: TabletModel = field(
        default=TabletModel.NONE,
        converter=to_tablet_model,
        validator=one_of(TabletModel),
    )
    created_time: str = field(default="", validator=optional_time)
    modified_time: str = field(default="", validator=optional_time)

    @property
    def key(self) -> str:
        return self.id

    def options(self) -> tuple[int, ...]:
        """OS, disk bus, NIC, display, remote control, USB, tablet as list indexes."""
        chosen: tuple[Enum, ...] = (
            self.operating_system,
            self.disk,
            self.network,
            self.display,
            self.control,
            self.usb,
            self.tablet,
        )
        return tuple(_OPTION_INDEX[type(option), option] for option in chosen)


#: Each template option's index in its list (keyed with its type: "virtio" is in three lists).
_OPTION_INDEX: dict[tuple[type, Enum], int] = {
    (kind, member): index
    for kind in (
        OperatingSystem, DiskBus, NetworkModel, DisplayDriver, RemoteControl, USBModel,
        TabletModel,
    )
    for index, member in enumerate(kind)
}  # fmt: skip

#: The five templates the original generates when it has none (§2.2): name, admin, options.
DEFAULT_TEMPLATES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("CentOS 7", "root", ("linux", "scsi", "virtio", "vga", "vnc", "nec-xhci", "usb")),
    ("CentOS 6", "root", ("linux", "sata", "virtio", "vga", "vnc", "nec-xhci", "usb")),
    (
        "Windows Server 2012",
        "Administrator",
        ("windows", "sata", "e1000", "vga", "vnc", "nec-xhci", "usb"),
    ),
    ("General", "root", ("linux", "sata", "rtl8139", "vga", "vnc", "", "usb")),
    ("Legacy", "root", ("linux", "ide", "rtl8139", "cirrus", "vnc", "", "")),
)


def default_templates(ids: Iterable[str], now: str) -> tuple[SystemTemplate, ...]:
    """Build the five default templates with the given ids and creation time."""
    result = []
    for template_id, (template_name, admin, options) in zip(ids, DEFAULT_TEMPLATES, strict=True):
        os_, disk, nic, display, control, usb, tablet = options
        result.append(
            SystemTemplate(
                id=template_id,
                name=template_name,
                admin=admin,
                operating_system=OperatingSystem(os_),
                disk=DiskBus(disk),
                network=NetworkModel(nic),
                display=DisplayDriver(display),
                control=RemoteControl(control),
                usb=USBModel(usb),
                tablet=TabletModel(tablet),
                created_time=now,
                modified_time=now,
            )
        )
    return tuple(result)


@frozen
class SecurityPolicyRule:
    """One firewall rule; within a group (protocol, source_address, target_port) is unique."""

    protocol: Protocol = field(converter=to_protocol, validator=one_of(Protocol))
    target_port: int = field(default=0, validator=port_number)
    accept: bool = field(default=True, validator=boolean)
    source_address: str = field(default="", validator=optional_ipv4)
    target_address: str = field(default="", validator=optional_ipv4)

    @property
    def identity(self) -> tuple[str, str, int]:
        return (self.protocol.value, self.source_address, self.target_port)

    def flatten(self) -> tuple[int, int, int, int, int]:
        """The five integers a Cell receives: action, protocol, source, target, port."""
        source = int(ipaddress.IPv4Address(self.source_address)) if self.source_address else 0
        target = int(ipaddress.IPv4Address(self.target_address)) if self.target_address else 0
        return (
            0 if self.accept else 1,
            list(Protocol).index(self.protocol),
            source,
            target,
            self.target_port,
        )


def _unique_rules(
    _inst: Any, attribute: attrs.Attribute[Any], rules: tuple[SecurityPolicyRule, ...]
) -> None:
    seen: set[tuple[str, str, int]] = set()
    for index, rule in enumerate(rules):
        if rule.identity in seen:
            raise ValueError(
                f"'{attribute.name}[{index}]' duplicates another rule with protocol "
                f"{rule.protocol.value}, source '{rule.source_address}', port {rule.target_port}"
            )
        seen.add(rule.identity)


@frozen
class SecurityPolicyGroup:
    """A named, ordered rule set; ``accept`` is the action when no rule matches."""

    id: str = field(validator=identifier)
    name: str = field(validator=label)
    user: str = field(validator=qualified_name)
    group: str = field(validator=qualified_name)
    description: str = field(default="", validator=text)
    enabled: bool = field(default=True, validator=boolean)
    is_global: bool = field(default=False, validator=boolean)
    accept: bool = field(default=False, validator=boolean)
    rules: tuple[SecurityPolicyRule, ...] = field(
        default=(),
        converter=as_tuple,
        validator=v.and_(each(v.instance_of(SecurityPolicyRule)), _unique_rules),
    )

    @property
    def key(self) -> str:
        return self.id


@frozen
class QoS:
    """Per-instance limits; 0 = unlimited."""

    cpu_priority: CPUPriority = field(
        default=CPUPriority.HIGH,
        converter=to_cpu_priority,
        validator=one_of(CPUPriority),
    )
    read_speed: int = field(default=0, validator=non_negative)
    write_speed: int = field(default=0, validator=non_negative)
    read_iops: int = field(default=0, validator=non_negative)
    write_iops: int = field(default=0, validator=non_negative)
    receive_speed: int = field(default=0, validator=non_negative)
    send_speed: int = field(default=0, validator=non_negative)


@frozen
class InstanceNetwork:
    """One network side of an instance (internal or external)."""

    assigned_address: str = field(default="", validator=optional_cidr)
    instance_address: str = field(default="", validator=optional_ipv4)
    monitor_address: str = field(default="", validator=optional_ipv4)
    monitor_port: int = field(default=0, validator=port_number)


@frozen
class Instance:
    """Core's own record of a guest, kept so Core knows it while its Cell is down.

    ``name`` is the bare guest name; the original's stored form is ``full_name``
    (``<group>.<name>``), unique within a compute pool.
    """

    id: str = field(validator=identifier)
    name: str = field(validator=qualified_name)
    owner: str = field(validator=qualified_name)
    group: str = field(validator=qualified_name)
    pool: str = field(validator=qualified_name)
    cell: str = field(validator=qualified_name)
    cores: int = field(validator=positive)
    memory: int = field(validator=positive)
    disks: tuple[int, ...] = field(
        converter=as_tuple, validator=v.and_(each(positive), v.min_len(1))
    )
    template: str = field(default="", validator=v.or_(v.in_(("",)), identifier))
    system: OperatingSystem = field(
        default=OperatingSystem.LINUX,
        converter=to_operating_system,
        validator=one_of(OperatingSystem),
    )
    status: InstanceStatus = field(
        default=InstanceStatus.CREATING,
        converter=to_instance_status,
        validator=one_of(InstanceStatus),
    )
    progress: int = field(default=0, validator=percent)
    lost: bool = field(default=False, validator=boolean)
    migrating: bool = field(default=False, validator=boolean)
    auto_start: bool = field(default=False, validator=boolean)
    media_attached: bool = field(default=False, validator=boolean)
    internal: InstanceNetwork = field(
        factory=InstanceNetwork, validator=v.instance_of(InstanceNetwork)
    )
    external: InstanceNetwork = field(
        factory=InstanceNetwork, validator=v.instance_of(InstanceNetwork)
    )
    hardware_address: str = field(default="", validator=optional_mac)
    monitor_secret: str = field(default="", validator=v.and_(v.instance_of(str), v.max_len(255)))
    qos: QoS = field(factory=QoS, validator=v.instance_of(QoS))
    create_time: str = field(default="", validator=optional_time)
    #: The media image the guest was started from ("" none); shown by the runtime status.
    media_source: str = field(default="", validator=v.or_(v.in_(("",)), identifier))

    @property
    def key(self) -> str:
        return self.id

    @property
    def full_name(self) -> str:
        return f"{self.group}.{self.name}"

    @property
    def created(self) -> bool:
        return self.status in (InstanceStatus.STOPPED, InstanceStatus.RUNNING)

    @property
    def running(self) -> bool:
        return self.status is InstanceStatus.RUNNING

    @property
    def total_disk(self) -> int:
        return sum(self.disks)


@frozen
class DepartedCell:
    """A Cell whose link last ended with its goodbye while Core ran, not linked since.

    A Cell stopped on purpose may leave its guests running: after a start it is not expected
    back (``RejoinWatch``), so never presumed lost and failed over.
    """

    name: str = field(validator=qualified_name)

    @property
    def key(self) -> str:
        return self.name


@frozen
class StaleCopy:
    """A guest failed over away from ``cell`` while that Cell was lost: the Cell may still
    hold a copy, which it is told to let go of when it links again, even once the guest is
    deleted (adopted back, it would undo the delete and every change since the failover).
    Kept until the Cell's inventory no longer lists the guest, or lists it as its own again.
    """

    cell: str = field(validator=qualified_name)
    guest: str = field(validator=identifier)

    @property
    def key(self) -> tuple[str, str]:
        return (self.cell, self.guest)


@frozen
class PendingError:
    """A guest's asynchronous failure, told once by the next ``GET /guests/:id`` (§2.2 #16).

    ``cell`` names the Cell that may still hold a guest whose creation Core gave up (a timeout,
    a disconnect): until that Cell shows it does not, a report of the guest is an orphan to
    delete there. The record goes once it was ``shown`` and no Cell is left to check.
    """

    id: str = field(validator=identifier)
    error: str = field(validator=v.and_(v.instance_of(str), v.min_len(1), v.max_len(4096)))
    cell: str = field(default="", validator=optional_name)
    shown: bool = field(default=False, validator=boolean)

    @property
    def key(self) -> str:
        return self.id

    @property
    def settled(self) -> bool:
        """Nothing left to tell the client and nothing left to clean on a Cell."""
        return self.shown and not self.cell


# --------------------------------------------------------------------------------------------
# Image catalogue (§2.3)
# --------------------------------------------------------------------------------------------


@frozen
class MediaImage:
    """An ISO image; (group, name) is unique among media images."""

    id: str = field(validator=identifier)
    name: str = field(validator=label)
    owner: str = field(validator=optional_name)  #: may be empty, as in Core
    group: str = field(validator=optional_name)
    description: str = field(default="", validator=text)
    tags: tuple[str, ...] = field(default=(), converter=as_tuple, validator=each(label))
    format: ImageFormat = field(
        default=ImageFormat.ISO,
        converter=to_image_format,
        validator=one_of(ImageFormat),
    )
    path: str = field(default="", validator=v.and_(v.instance_of(str), v.max_len(4096)))
    size: int = field(default=0, validator=non_negative)
    version: int = field(default=0, validator=non_negative)
    create_time: str = field(default="", validator=optional_time)
    modify_time: str = field(default="", validator=optional_time)
    #: Of the recorded version's file ("" when not known: imported, or never uploaded).
    sha256: str = field(default="", validator=optional_sha256)

    @property
    def key(self) -> str:
        return self.id


@frozen
class DiskImage:
    """A qcow2 disk image; ``created`` is persisted so an unfinished upload stays unfinished."""

    id: str = field(validator=identifier)
    name: str = field(validator=image_name)
    owner: str = field(validator=optional_name)  #: may be empty, as in Core
    group: str = field(validator=optional_name)
    description: str = field(default="", validator=text)
    tags: tuple[str, ...] = field(default=(), converter=as_tuple, validator=each(label))
    format: ImageFormat = field(
        default=ImageFormat.QCOW2,
        converter=to_image_format,
        validator=one_of(ImageFormat),
    )
    path: str = field(default="", validator=v.and_(v.instance_of(str), v.max_len(4096)))
    size: int = field(default=0, validator=non_negative)
    version: int = field(default=0, validator=non_negative)
    create_time: str = field(default="", validator=optional_time)
    modify_time: str = field(default="", validator=optional_time)
    check_sum: str = field(default="", validator=optional_sha1)
    created: bool = field(default=False, validator=boolean)
    #: Of the recorded version's file ("" when not known: imported, or never uploaded).
    sha256: str = field(default="", validator=optional_sha256)

    @property
    def key(self) -> str:
        return self.id


# --------------------------------------------------------------------------------------------
# Tasks (§2.2: migrations and batches)
# --------------------------------------------------------------------------------------------


@frozen
class Migration:
    """A manual migration or failover of instances between two cells of one pool.

    Running while neither ``finished`` nor ``error``; ``end_time`` (clock seconds, 0 while
    running) starts its retention. A failover's guests that no Cell could take are a record
    with no ``target_cell`` and the reasons in ``error``.
    """

    id: str = field(validator=identifier)
    source_pool: str = field(validator=qualified_name)
    source_cell: str = field(validator=qualified_name)
    target_pool: str = field(validator=qualified_name)
    target_cell: str = field(validator=optional_name)
    instances: tuple[str, ...] = field(default=(), converter=as_tuple, validator=each(identifier))
    finished: bool = field(default=False, validator=boolean)
    progress: int = field(default=0, validator=percent)
    error: str = field(default="", validator=text)
    kind: MigrationKind = field(
        default=MigrationKind.MANUAL,
        converter=to_migration_kind,
        validator=one_of(MigrationKind),
    )
    start_time: float = field(default=0.0, validator=timestamp)
    end_time: float = field(default=0.0, validator=timestamp)

    @property
    def running(self) -> bool:
        return not (self.finished or self.error)

    @property
    def key(self) -> str:
        return self.id


@frozen
class BatchGuest:
    """One guest of a batch task; ``id`` is empty until the guest exists.

    ``name`` is ``<prefix>_<i>`` in a batch create, the stored ``<group>.<name>`` in a batch
    delete or stop (observed-with-cells, "with Cells" point 1).
    """

    name: str = field(validator=guest_name)
    id: str = field(default="", validator=v.or_(v.in_(("",)), identifier))
    status: BatchStatus = field(
        default=BatchStatus.PROCESSING,
        converter=to_batch_status,
        validator=one_of(BatchStatus),
    )
    progress: int = field(default=0, validator=percent)
    error: str = field(default="", validator=text)


@frozen
class BatchTask:
    """A batch create/delete/stop task; times are clock seconds."""

    id: str = field(validator=identifier)
    kind: BatchKind = field(converter=to_batch_kind, validator=one_of(BatchKind))
    start_time: float = field(validator=timestamp)
    latest_update: float = field(validator=timestamp)
    finished: bool = field(default=False, validator=boolean)
    guests: tuple[BatchGuest, ...] = field(
        default=(), converter=as_tuple, validator=each(v.instance_of(BatchGuest))
    )

    @property
    def key(self) -> str:
        return self.id


#: Every persisted entity class, in dependency order (referenced before referencing).
ENTITY_TYPES: tuple[type, ...] = (
    Zone,
    StoragePool,
    AddressPool,
    AddressRange,
    ComputePool,
    ComputeCell,
    SystemTemplate,
    SecurityPolicyGroup,
    Instance,
    AddressAllocation,
    MediaImage,
    DiskImage,
    Migration,
    BatchTask,
    PendingError,
    DepartedCell,
    StaleCopy,
)

Entity = (
    Zone
    | StoragePool
    | AddressPool
    | AddressRange
    | ComputePool
    | ComputeCell
    | SystemTemplate
    | SecurityPolicyGroup
    | Instance
    | AddressAllocation
    | MediaImage
    | DiskImage
    | Migration
    | BatchTask
    | PendingError
    | DepartedCell
    | StaleCopy
)
