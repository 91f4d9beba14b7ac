"""Units of work: the only way to ask the store for a change."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from attrs import field, frozen
from attrs import validators as v

from nanocore.model import ENTITY_TYPES, Entity, Zone


def _entity(_inst: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, ENTITY_TYPES):
        raise TypeError(f"not a storable entity: {value!r}")


@frozen
class Put:
    """Create the entity, or replace the stored one with the same key."""

    entity: Entity = field(validator=_entity)


@frozen
class Insert:
    """Create the entity; fails with ``Conflict`` if its key is already stored.

    Use it for creations so that two racing creations cannot silently overwrite each other.
    """

    entity: Entity = field(validator=_entity)


def _kind(_inst: Any, attribute: Any, value: Any) -> None:
    if value not in ENTITY_TYPES or value is Zone:
        raise TypeError(f"not a deletable entity kind: {value!r}")


@frozen
class Delete:
    """Remove the entity of ``kind`` with ``key``; fails with ``NotFound`` if absent, unless
    ``missing_ok`` (a note two decisions may both drop, such as a stale copy)."""

    kind: type = field(validator=_kind)
    key: Hashable = field()
    missing_ok: bool = field(default=False, kw_only=True)


Change = Put | Insert | Delete


def _as_changes(changes: Iterable[Change]) -> tuple[Change, ...]:
    return tuple(changes)


@frozen
class UnitOfWork:
    """An ordered list of changes that commit all together or not at all."""

    changes: tuple[Change, ...] = field(
        converter=_as_changes,
        validator=v.deep_iterable(v.instance_of((Put, Insert, Delete)), v.instance_of(tuple)),
    )
    #: What Core must record even on a full disk (a Cell's goodbye, its guests' loss): the
    #: store gives up its reserve of room for it (:mod:`nanocore.store.reserve`).
    essential: bool = field(default=False, kw_only=True)

    @classmethod
    def of(cls, *changes: Change, essential: bool = False) -> UnitOfWork:
        return cls(changes, essential=essential)
