"""The in-memory mirror of committed state that operations read without touching SQLite."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar, cast

from nanocore import model as m
from nanocore.store.writer import State

T = TypeVar("T")


class ReadModel:
    """Read-only mappings (key -> frozen value) that change only when a commit is durable.

    Ordered kinds (address ranges, templates, policy groups) iterate in insertion order, as
    the original does. The mappings are live views: keep a reference, not a copy.
    """

    def __init__(self, state: State) -> None:
        self._state = state
        self._views: dict[type, Mapping[Any, Any]] = {
            kind: MappingProxyType(entities) for kind, entities in state.items()
        }

    def all(self, kind: type[T]) -> Mapping[Hashable, T]:
        return cast(Mapping[Hashable, T], self._views[kind])

    def get(self, kind: type[T], key: Hashable) -> T | None:
        return cast(T | None, self._views[kind].get(key))

    @property
    def zone(self) -> m.Zone:
        return cast(m.Zone, next(iter(self._state[m.Zone].values())))

    @property
    def compute_pools(self) -> Mapping[str, m.ComputePool]:
        return self._views[m.ComputePool]

    @property
    def cells(self) -> Mapping[str, m.ComputeCell]:
        return self._views[m.ComputeCell]

    @property
    def storage_pools(self) -> Mapping[str, m.StoragePool]:
        return self._views[m.StoragePool]

    @property
    def address_pools(self) -> Mapping[str, m.AddressPool]:
        return self._views[m.AddressPool]

    @property
    def address_ranges(self) -> Mapping[tuple[str, str], m.AddressRange]:
        return self._views[m.AddressRange]

    @property
    def allocations(self) -> Mapping[tuple[str, str], m.AddressAllocation]:
        return self._views[m.AddressAllocation]

    @property
    def templates(self) -> Mapping[str, m.SystemTemplate]:
        return self._views[m.SystemTemplate]

    @property
    def policy_groups(self) -> Mapping[str, m.SecurityPolicyGroup]:
        return self._views[m.SecurityPolicyGroup]

    @property
    def instances(self) -> Mapping[str, m.Instance]:
        return self._views[m.Instance]

    @property
    def media_images(self) -> Mapping[str, m.MediaImage]:
        return self._views[m.MediaImage]

    @property
    def disk_images(self) -> Mapping[str, m.DiskImage]:
        return self._views[m.DiskImage]

    @property
    def migrations(self) -> Mapping[str, m.Migration]:
        return self._views[m.Migration]

    @property
    def batch_tasks(self) -> Mapping[str, m.BatchTask]:
        return self._views[m.BatchTask]
