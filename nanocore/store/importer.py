"""Import of a Nano Core 1.4 data dir (``resource.data``, ``image.data`` and the image files
of ``disk_images/`` and ``media_images/``) into the store and its data folder.

Everything is read and checked before the store is touched, and written in one transaction:
bad or conflicting data is refused with the file, the entity and the field, and the store
stays as it was. A second run over the same files changes nothing.

An imported image with content (``version > 0``) needs its file, Nano's
``<id>_v<version>.<ext>`` beside the data files: a missing one refuses the import (naming every
missing file), a file whose size or SHA-1 differs from its record too. The files are
hard-linked into the data folder where it is on the same file system (neither side rewrites a
version's file), else copied, under a temporary name an interrupted import leaves for the next
start to remove (``.upload-*.part``), and given their names just before the commit; a refused
commit removes them again.

This is a synchronous tool for ``nanocore import-nano``; never call it from a running Core. It
sits above the store (only the CLI imports it): Nano's file names, the temporary names and the
hashing are the image room's (``operations.images.ImageKind``, ``images.files``).
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from attrs import frozen
from twisted.logger import Logger

from nanocore import gojson
from nanocore import model as m
from nanocore.atomicfile import sync_directory
from nanocore.images.files import PART_PREFIX, PART_SUFFIX, file_digests
from nanocore.operations.errors import UnknownEntity
from nanocore.operations.images import ImageKind
from nanocore.store.changes import Change, Delete, Put, UnitOfWork
from nanocore.store.errors import StoreError
from nanocore.store.schema import bundled_scripts, database_path, open_database
from nanocore.store.store import new_template_id
from nanocore.store.tables import BY_KIND
from nanocore.store.writer import State, Writer

log = Logger()

RESOURCE_FILE = "resource.data"
IMAGE_FILE = "image.data"

#: The image catalogue of each record type (its folder, and Nano's file names in it).
IMAGE_KINDS: dict[type, ImageKind] = {m.MediaImage: ImageKind.MEDIA, m.DiskImage: ImageKind.DISK}
#: Reading size for copying image files.
BLOCK = 4 << 20

T = TypeVar("T")


class ImportRefused(Exception):
    """The import was refused; ``message`` says which file, entity and field, and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@frozen
class NanoData:
    """Everything read from a Nano data dir, validated, in the order it must be written."""

    zone: m.Zone
    entities: tuple[Any, ...]

    def of_kind(self, kind: type[T]) -> list[T]:
        return [e for e in self.entities if isinstance(e, kind)]


@frozen
class ImageFile:
    """One image's file: where Nano keeps it, where nanocore wants it, what its record says."""

    source: Path
    target: Path
    size: int
    sha1: str


@frozen
class ImportReport:
    """What an import did beyond the store, for ``nanocore import-nano`` to print."""

    #: Image files placed in the data folder (not those already there).
    placed: tuple[Path, ...] = ()
    #: What the operator should know: a missing ``image.data``.
    warnings: tuple[str, ...] = ()


def run_import(source_dir: Path, data_dir: Path) -> ImportReport:
    """Import ``source_dir`` (a Nano install or its ``data/`` folder) into ``data_dir``."""
    resource_path, image_path = find_files(source_dir)
    data = read_nano_data(resource_path, image_path)
    warnings: tuple[str, ...] = ()
    if image_path is None:
        warnings = (
            f"no {IMAGE_FILE} in {resource_path.parent}: no disk or media image was imported "
            f"(if the installation has images, delete {database_path(data_dir)} and import "
            f"again from the folder that holds {IMAGE_FILE})",
        )
    files = image_files(data, resource_path.parent, data_dir)
    path = database_path(data_dir)
    created = not path.exists()
    try:
        connection = open_database(data_dir, bundled_scripts(), _now(), new_template_id)
    except StoreError as error:
        raise ImportRefused(f"cannot open the store: {error.message}") from None
    placed: list[Path] = []
    try:
        writer = Writer(connection, guard_io_thread=False)
        unit = plan_import(writer.load(), data, path)
        # Checked and in place before the commit; a refused commit removes them (below).
        placed = place_files(files)
        if unit is None:
            log.info("{source} is already imported; nothing to do", source=resource_path)
        else:
            (refusal,) = writer.apply_batch([unit])
            if refusal is not None:
                raise ImportRefused(f"the store refused the import: {refusal.message}")
            log.info(
                "imported {count} changes from {source}",
                count=len(unit.changes),
                source=source_dir,
            )
    except BaseException:
        connection.close()
        for target in placed:
            target.unlink(missing_ok=True)
        if created:  # leave no half-made store behind: there was none before
            for leftover in (path, path.with_name(f"{path.name}-wal")):
                leftover.unlink(missing_ok=True)
        raise
    connection.close()
    return ImportReport(tuple(placed), warnings)


def image_files(data: NanoData, folder: Path, data_dir: Path) -> list[ImageFile]:
    """The file of every image with content; refuses naming each one that is missing."""
    files, missing = [], []
    for image in data.entities:
        kind = IMAGE_KINDS.get(type(image))
        if kind is None or image.version <= 0:
            continue
        try:
            name = kind.file_name(image.id, image.version)  # refuses an id a path could hide in
        except UnknownEntity:
            raise ImportRefused(
                f"{IMAGE_FILE}: image id {image.id!r} cannot name a file"
            ) from None
        source = folder / kind.folder / name
        if not source.is_file():
            missing.append(str(source))
        sha1 = getattr(image, "check_sum", "")
        files.append(ImageFile(source, data_dir / kind.folder / name, image.size, sha1))
    if missing:
        raise ImportRefused(
            f"{len(missing)} image file(s) named in {IMAGE_FILE} are missing: "
            f"{', '.join(missing)}; put them there, or remove their records from {IMAGE_FILE} "
            "(nothing was imported)"
        )
    return files


def place_files(files: list[ImageFile]) -> list[Path]:
    """Link or copy each file not yet in place, checked; the targets placed, in order.

    All or nothing: a refusal removes what this call placed."""
    placed: list[Path] = []
    try:
        for file in files:
            if _same_file(file.source, file.target):
                continue
            if file.target.exists():
                _check(file, file.target, file.target)  # by an earlier, interrupted import
                continue
            file.target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            part = file.target.with_name(f"{PART_PREFIX}{file.target.stem}-import{PART_SUFFIX}")
            try:
                _link_or_copy(file.source, part)
                _check(file, part, file.source)
                os.replace(part, file.target)
            finally:
                part.unlink(missing_ok=True)
            placed.append(file.target)
        for folder in {file.target.parent for file in files}:
            sync_directory(folder)
    except BaseException:
        for target in placed:
            target.unlink(missing_ok=True)
        raise
    return placed


def _same_file(source: Path, target: Path) -> bool:
    try:
        return os.path.samefile(source, target)
    except OSError:
        return False


def _link_or_copy(source: Path, part: Path) -> None:
    try:
        os.link(source, part)
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise ImportRefused(f"cannot link {source} to {part}: {error.strerror}") from None
        try:
            with source.open("rb") as reading, part.open("xb") as writing:
                shutil.copyfileobj(reading, writing, BLOCK)
                writing.flush()
                os.fsync(writing.fileno())
        except OSError as error:
            raise ImportRefused(f"cannot copy {source} to {part}: {error.strerror}") from None


def _check(file: ImageFile, path: Path, shown: Path) -> None:
    """``path`` has the size (when recorded) and SHA-1 (disk images) of ``file``'s record;
    a refusal names ``shown``."""
    try:
        if file.sha1:
            size, digest, _ = file_digests(path)
        else:
            size, digest = path.stat().st_size, ""
    except OSError as error:
        raise ImportRefused(f"cannot read {path}: {error.strerror}") from None
    if file.size > 0 and size != file.size:
        raise ImportRefused(
            f"{shown} holds {size} bytes, but {IMAGE_FILE} records {file.size} "
            "(nothing was imported)"
        )
    if file.sha1 and digest != file.sha1.lower():
        raise ImportRefused(
            f"{shown} has SHA-1 {digest}, but {IMAGE_FILE} records {file.sha1} "
            "(nothing was imported)"
        )


def _now() -> str:
    return time.strftime(m.TIME_FORMAT)


def find_files(source_dir: Path) -> tuple[Path, Path | None]:
    """Locate ``resource.data`` (required) and ``image.data`` (optional)."""
    for folder in (source_dir / "data", source_dir):
        if (folder / RESOURCE_FILE).is_file():
            image = folder / IMAGE_FILE
            return folder / RESOURCE_FILE, image if image.is_file() else None
    raise ImportRefused(f"no {RESOURCE_FILE} in {source_dir} or {source_dir / 'data'}")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _load_json(path: Path) -> dict[str, Any]:
    try:
        document = gojson.loads(path.read_bytes())
    except OSError as error:
        raise ImportRefused(f"{path}: cannot read ({error.strerror})") from None
    except gojson.JSONError as error:
        raise ImportRefused(f"{path}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise ImportRefused(f"{path}: expected a JSON object at the top level")
    return document


class _Reader:
    """Walks one JSON document, naming where every problem is."""

    def __init__(self, path: Path) -> None:
        self.file = path.name

    def items(
        self, parent: dict[str, Any], key: str, where: str = ""
    ) -> Iterator[tuple[str, Any]]:
        value = parent.get(key)
        place = f"{where}{key}"
        if value is None:
            return
        if not isinstance(value, list):
            raise ImportRefused(f"{self.file}: '{place}' must be a list")
        for index, item in enumerate(value):
            item_place = f"{place}[{index}]"
            if not isinstance(item, dict):
                raise ImportRefused(f"{self.file}: {item_place} must be an object")
            yield item_place, item

    def build(self, where: str, factory: Callable[..., T], **fields: Any) -> T:
        try:
            return factory(**fields)
        except (ValueError, TypeError) as error:
            label = fields.get("name") or fields.get("id") or fields.get("start") or ""
            entity = f" ({label!r})" if isinstance(label, str) and label else ""
            raise ImportRefused(
                f"{self.file}: {where}{entity}: {m.validation_message(error)}"
            ) from None

    def refuse(self, where: str, message: str) -> ImportRefused:
        return ImportRefused(f"{self.file}: {where}: {message}")


def _flag(item: dict[str, Any], key: str) -> Any:
    """Booleans the original omits when false."""
    return item.get(key, False)


def read_nano_data(resource_path: Path, image_path: Path | None) -> NanoData:
    """Parse and check both files; raise ImportRefused naming the first problem."""
    entities = list(_read_resources(resource_path))
    if image_path is not None:
        entities.extend(_read_images(image_path))
    zone = next(e for e in entities if isinstance(e, m.Zone))
    return NanoData(zone=zone, entities=tuple(entities))


def _read_resources(path: Path) -> Iterator[Any]:
    document = _load_json(path)
    read = _Reader(path)
    yield read.build("zone", m.Zone, name=document.get("zone", m.DEFAULT_ZONE))

    storage = _unique(
        read,
        "storage_pools",
        (
            (
                where,
                read.build(
                    where,
                    m.StoragePool,
                    name=item.get("name"),
                    type=item.get("type"),
                    host=item.get("host"),
                    target=item.get("target"),
                ),
            )
            for where, item in read.items(document, "storage_pools")
        ),
    )
    yield from storage.values()

    address_pools: dict[Hashable, Any] = {}
    ranges: list[tuple[str, m.AddressRange]] = []
    allocations: list[tuple[str, m.AddressAllocation]] = []
    for where, item in read.items(document, "address_pools"):
        pool = read.build(
            where,
            m.AddressPool,
            name=item.get("name", ""),
            gateway=item.get("gateway"),
            dns=item.get("dns") or (),
            provider=item.get("provider"),
            mode=item.get("mode", ""),
        )
        if pool.key in address_pools:
            raise read.refuse(where, f"address pool '{pool.name}' appears twice")
        address_pools[pool.key] = pool
        for range_where, span in read.items(item, "ranges", f"{where}."):
            built = read.build(
                range_where,
                m.AddressRange,
                pool=pool.name,
                start=span.get("start"),
                end=span.get("end"),
                netmask=span.get("netmask"),
            )
            if span.get("capacity", built.capacity) != built.capacity:
                raise read.refuse(
                    range_where,
                    f"'capacity' is {span.get('capacity')!r} but the range holds {built.capacity}",
                )
            for earlier_where, earlier in ranges:
                if earlier.pool == pool.name and earlier.overlaps(built):
                    raise read.refuse(range_where, f"overlaps {earlier_where}")
            ranges.append((range_where, built))
            for allocation_where, allocated in read.items(span, "allocated", f"{range_where}."):
                allocation = read.build(
                    allocation_where,
                    m.AddressAllocation,
                    pool=pool.name,
                    range_start=built.start,
                    address=allocated.get("address"),
                    instance=allocated.get("instance"),
                )
                if allocation.address not in built:
                    raise read.refuse(
                        allocation_where,
                        f"'address' {allocation.address} is outside the range "
                        f"{built.start}-{built.end}",
                    )
                if any(a.key == allocation.key for _, a in allocations):
                    raise read.refuse(
                        allocation_where, f"address {allocation.address} is allocated twice"
                    )
                allocations.append((allocation_where, allocation))
    yield from address_pools.values()
    yield from (r for _, r in ranges)

    pools: dict[Hashable, Any] = {}
    cells: dict[str, tuple[str, m.ComputeCell]] = {}
    for where, item in read.items(document, "pools"):
        compute = read.build(
            where,
            m.ComputePool,
            name=item.get("name"),
            enabled=_flag(item, "enabled"),
            network=item.get("network", ""),
            storage=item.get("storage", ""),
            failover=_flag(item, "failover"),
        )
        if compute.key in pools:
            raise read.refuse(where, f"compute pool '{compute.name}' appears twice")
        if compute.storage and compute.storage not in storage:
            raise read.refuse(
                where, f"'storage' names storage pool '{compute.storage}', which does not exist"
            )
        if compute.network and compute.network not in address_pools:
            raise read.refuse(
                where, f"'network' names address pool '{compute.network}', which does not exist"
            )
        pools[compute.key] = compute
        members = item.get("cells") or {}
        if not isinstance(members, dict):
            raise read.refuse(where, "'cells' must be an object keyed by cell name")
        for cell_name, flags in members.items():
            cell_where = f"{where}.cells[{cell_name!r}]"
            if not isinstance(flags, dict):
                raise read.refuse(cell_where, "must be an object")
            cell = read.build(
                cell_where,
                m.ComputeCell,
                name=cell_name,
                pool=compute.name,
                enabled=_flag(flags, "enabled"),
                purge_pending=_flag(flags, "purge_appending"),
            )
            if cell_name in cells:
                raise read.refuse(cell_where, f"cell is also a member of {cells[cell_name][0]}")
            cells[cell_name] = (where, cell)
    yield from pools.values()
    yield from (cell for _, cell in cells.values())

    templates = _unique(
        read,
        "system_templates",
        (
            (
                where,
                read.build(
                    where,
                    m.SystemTemplate,
                    id=item.get("id"),
                    name=item.get("name"),
                    admin=item.get("admin"),
                    operating_system=item.get("operating_system"),
                    disk=item.get("disk"),
                    network=item.get("network"),
                    display=item.get("display"),
                    control=item.get("control"),
                    usb=item.get("usb", ""),
                    tablet=item.get("tablet", ""),
                    created_time=item.get("created_time", ""),
                    modified_time=item.get("modified_time", ""),
                ),
            )
            for where, item in read.items(document, "system_templates")
        ),
        also_unique=lambda t: t.name,
    )
    yield from templates.values()

    def policy(where: str, item: dict[str, Any]) -> m.SecurityPolicyGroup:
        rules = [
            read.build(
                rule_where,
                m.SecurityPolicyRule,
                accept=_flag(rule, "accept"),
                protocol=rule.get("protocol"),
                source_address=rule.get("source_address", ""),
                target_address=rule.get("target_address", ""),
                target_port=rule.get("target_port", 0),
            )
            for rule_where, rule in read.items(item, "rules", f"{where}.")
        ]
        return read.build(
            where,
            m.SecurityPolicyGroup,
            id=item.get("id"),
            name=item.get("name"),
            description=item.get("description", ""),
            user=item.get("user"),
            group=item.get("group"),
            enabled=_flag(item, "enabled"),
            is_global=_flag(item, "global"),
            accept=_flag(item, "accept"),
            rules=rules,
        )

    policies = _unique(
        read,
        "security_policy_group",
        (
            (where, policy(where, item))
            for where, item in read.items(document, "security_policy_group")
        ),
        also_unique=lambda g: g.name,
    )
    yield from policies.values()
    yield from (a for _, a in allocations)


def _read_images(path: Path) -> Iterator[Any]:
    document = _load_json(path)
    read = _Reader(path)

    def image(where: str, item: dict[str, Any], kind: type[T], **extra: Any) -> T:
        return read.build(
            where,
            kind,
            id=item.get("id"),
            name=item.get("name"),
            owner=item.get("owner"),
            group=item.get("group"),
            description=item.get("description", ""),
            tags=item.get("tags") or (),
            format=item.get("format"),
            path=item.get("path", ""),
            size=item.get("size", 0),
            version=item.get("version", 0),
            create_time=item.get("create_time", ""),
            modify_time=item.get("modify_time", ""),
            **extra,
        )

    def group_name(i: m.MediaImage | m.DiskImage) -> str:
        return f"{i.group}.{i.name}"

    yield from _unique(
        read,
        "media_images",
        (
            (where, image(where, item, m.MediaImage))
            for where, item in read.items(document, "media_images")
        ),
        also_unique=group_name,
    ).values()
    # A disk image without content (version 0) is an upload that never finished: the
    # original reloads it as created; nanocore keeps it uncreated (compatibility.md).
    yield from _unique(
        read,
        "disk_images",
        (
            (
                where,
                image(
                    where,
                    item,
                    m.DiskImage,
                    check_sum=item.get("check_sum", ""),
                    created=item.get("version", 0) > 0
                    if _is_int(item.get("version", 0))
                    else False,
                ),
            )
            for where, item in read.items(document, "disk_images")
        ),
        also_unique=group_name,
    ).values()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unique(
    read: _Reader,
    what: str,
    built: Iterator[tuple[str, Any]],
    also_unique: Callable[[Any], str] | None = None,
) -> dict[Hashable, Any]:
    """Entities by key, refusing a key (or a second unique attribute) seen twice."""
    by_key: dict[Hashable, Any] = {}
    seen: dict[str, str] = {}
    for where, entity in built:
        if entity.key in by_key:
            raise read.refuse(where, f"'{entity.key}' appears twice in {what}")
        if also_unique is not None:
            other = seen.get(also_unique(entity))
            if other is not None:
                raise read.refuse(
                    where, f"name '{also_unique(entity)}' is already used by {other}"
                )
            seen[also_unique(entity)] = where
        by_key[entity.key] = entity
    return by_key


# --------------------------------------------------------------------------------------------
# Deciding what to write
# --------------------------------------------------------------------------------------------


def _is_pristine(state: State) -> bool:
    """The store holds only what a first start creates, unchanged."""
    defaults = {(t.name, t.admin, t.options()) for t in m.default_templates(["x"] * 5, "")}
    templates = {(t.name, t.admin, t.options()) for t in state[m.SystemTemplate].values()}
    if templates != defaults or len(state[m.SystemTemplate]) != 5:
        return False
    if list(state[m.Zone].values()) != [m.Zone()]:
        return False
    if state[m.ComputePool] != {m.DEFAULT_POOL: m.ComputePool(m.DEFAULT_POOL)}:
        return False
    fixed = (m.Zone, m.ComputePool, m.SystemTemplate)
    return all(not entities for kind, entities in state.items() if kind not in fixed)


def plan_import(state: State, data: NanoData, store_path: Path) -> UnitOfWork | None:
    """The unit that imports ``data``, None if it is already there, or ImportRefused."""
    missing = [e for e in data.entities if state[type(e)].get(e.key) != e]
    if not missing:
        return None
    if not _is_pristine(state):
        first = missing[0]
        how = "differs from" if first.key in state[type(first)] else "is not in"
        subject = BY_KIND[type(first)].describe(first.key)
        raise ImportRefused(
            f"{store_path} already holds cluster state: the imported {subject} {how} "
            "the store; import only into a new data dir (the store is unchanged)"
        )
    changes: list[Change] = []
    if data.of_kind(m.SystemTemplate):
        changes.extend(Delete(m.SystemTemplate, key) for key in state[m.SystemTemplate])
    changes.extend(Put(entity) for entity in data.entities)
    return UnitOfWork(changes)
