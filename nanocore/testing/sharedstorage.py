"""Simulated NFS backends: what simulated Cells on the same shared storage all see.

On a real pool with NFS storage every Cell mounts the same export, so a guest's volumes (and
the definition a Cell keeps beside them) are visible to every Cell of the pool: that is what
lets a target attach a guest its source created, and the source release it (cell-protocol
§5.7). Here an export is a mapping of guest id to :class:`SimulatedGuest`, one per
``(host, target)``: a FakeCell keeps the guests it creates on its pool's export, attaches
guests from it, and deletes them from it; detaching leaves them there for another Cell.
A Cell on local storage keeps its guests in an export of its own that no other Cell sees.

:class:`SharedStorage` keeps its exports in memory, shared by the Cells of one process (a
test, one ``nanocell-sim``). Given a folder, it keeps them on disk instead
(:class:`FolderExport`: one small JSON file per guest, written atomically), so that Cells of
several processes share them, and one process can die (``kill -9``) while the Cells of the
others fail its guests over: what it last told Core about a guest is on the disk.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import attrs

from nanocore.atomicfile import write_file
from nanocore.testing.guests import GuestState, Rule, SimulatedGuest, Snapshot

#: One export: guest id -> the guest's volumes and definition.
Volumes = MutableMapping[str, SimulatedGuest]

SUFFIX = ".json"


class SharedStorage:
    """Every simulated NFS export of one simulation; ``folder``: kept there, for every
    process given the same folder (none: in this process's memory)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._exports: dict[tuple[str, str], Volumes] = {}

    def export(self, host: str, target: str) -> Volumes:
        """The volumes on ``host:target``, shared by every Cell that mounts it."""
        key = (host, target)
        found = self._exports.get(key)
        if found is None:
            if self.folder is None:
                found = {}
            else:
                # One folder per export; quoting keeps any host or path inside ``folder``.
                name = f"{quote(host, safe='')}:{quote(target, safe='')}"
                found = FolderExport(self.folder / name)
            self._exports[key] = found
        return found


class FolderExport(MutableMapping[str, SimulatedGuest]):
    """One export as a folder of ``<guest id>.json`` files that processes share.

    Reading a guest gives the object this process last wrote or read while the file still
    holds those bytes (so a Cell sees its own guest as the same object, as in memory), else
    one read afresh. Writing a guest that did not change writes nothing.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        #: guest id -> (the bytes on disk when last seen here, the object they were).
        self._seen: dict[str, tuple[bytes, SimulatedGuest]] = {}

    def _path(self, guest_id: str) -> Path:
        return self.folder / f"{quote(guest_id, safe='')}{SUFFIX}"

    def __getitem__(self, guest_id: str) -> SimulatedGuest:
        try:
            data = self._path(guest_id).read_bytes()
        except FileNotFoundError:
            self._seen.pop(guest_id, None)
            raise KeyError(guest_id) from None
        seen = self._seen.get(guest_id)
        if seen is not None and seen[0] == data:
            return seen[1]
        guest = decode_guest(data)
        self._seen[guest_id] = (data, guest)
        return guest

    def __setitem__(self, guest_id: str, guest: SimulatedGuest) -> None:
        data = encode_guest(guest)
        seen = self._seen.get(guest_id)
        if seen is not None and seen[0] == data and seen[1] is guest:
            return
        write_file(self._path(guest_id), data, mode=0o600)
        self._seen[guest_id] = (data, guest)

    def __delitem__(self, guest_id: str) -> None:
        self._seen.pop(guest_id, None)
        try:
            self._path(guest_id).unlink()
        except FileNotFoundError:
            raise KeyError(guest_id) from None

    def __contains__(self, guest_id: object) -> bool:
        return isinstance(guest_id, str) and self._path(guest_id).exists()

    def __iter__(self) -> Iterator[str]:
        for entry in sorted(os.listdir(self.folder)):
            if entry.endswith(SUFFIX):  # not the temporary files of writes under way
                yield unquote(entry[: -len(SUFFIX)])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"FolderExport({str(self.folder)!r})"


def encode_guest(guest: SimulatedGuest) -> bytes:
    """The guest as the JSON its file holds."""

    def plain(_: Any, __: Any, value: Any) -> Any:
        return value.value if isinstance(value, enum.Enum) else value

    document = attrs.asdict(guest, value_serializer=plain)
    return json.dumps(document, sort_keys=True).encode()


def decode_guest(data: bytes) -> SimulatedGuest:
    """A guest from its file (written by :func:`encode_guest`)."""
    document = json.loads(data)
    document["state"] = GuestState(document["state"])
    document["snapshots"] = {
        name: Snapshot(**fields) for name, fields in document["snapshots"].items()
    }
    document["rules"] = [Rule(**fields) for fields in document["rules"]]
    return SimulatedGuest(**document)
