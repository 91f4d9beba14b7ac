"""The in-memory mirror of committed state that operations read without touching SQLite."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar, cast

from nanocore import model as m
from nanocore.store.changes import Delete, UnitOfWork
from nanocore.store.indexes import CellLoad, Condition, InstanceIndex
from nanocore.store.writer import State, apply_to_state

T = TypeVar("T")


class ReadModel:
    """Read-only mappings (key -> frozen value) that change only when a commit is durable.

    Ordered kinds (address ranges, templates, policy groups) iterate in insertion order, as
    the original does. The mappings are live views: keep a reference, not a copy. Instances
    are also indexed by pool, by Cell and by name (:mod:`nanocore.store.indexes`).
    """

    def __init__(self, state: State) -> None:
        self._state = state
        self._views: dict[type, Mapping[Any, Any]] = {
            kind: MappingProxyType(entities) for kind, entities in state.items()
        }
        self._index = InstanceIndex(state[m.Instance].values())
        self._revisions: dict[type, int] = {}

    def mirror(self, unit: UnitOfWork) -> None:
        """Apply a unit the database has just committed (only the store calls this)."""
        instances = self._state[m.Instance]
        touched = []
        revisions = self._revisions
        for change in unit.changes:
            kind = change.kind if isinstance(change, Delete) else type(change.entity)
            revisions[kind] = revisions.get(kind, 0) + 1
            if kind is m.Instance:
                touched.append(change.key if isinstance(change, Delete) else change.entity.key)
        before = {key: instances.get(key) for key in touched}
        apply_to_state(self._state, unit)
        for key, old in before.items():
            self._index.replaced(old, instances.get(key))

    def revision_of(self, kind: type) -> int:
        """Moves whenever a committed change touches an entity of ``kind``."""
        return self._revisions.get(kind, 0)

    # -- instance indexes ------------------------------------------------------------------

    def instances_in_pool(self, pool: str) -> Mapping[str, m.Instance]:
        """The instances of ``pool`` by id (creations in flight included)."""
        return self._index.in_pool(pool)

    def instances_on_cell(self, cell: str) -> Mapping[str, m.Instance]:
        """The instances Core places on ``cell`` by id."""
        return self._index.on_cell(cell)

    def instance_named(self, pool: str, group: str, name: str) -> m.Instance | None:
        """The instance whose stored name is ``<group>.<name>`` in ``pool``, if any."""
        found = self._index.named(pool, group, name)
        return None if found is None else self._state[m.Instance].get(found)

    def instance_conditions(self, cell: str) -> Mapping[Condition, int]:
        """How many instances on ``cell`` are in each (status, migrating, lost) condition:
        the status counters without a pass over the Cell's instances."""
        return self._index.conditions(cell)

    def load_on_cell(self, cell: str) -> CellLoad:
        """How many instances Core places on ``cell``, and their cores, memory and disk."""
        return self._index.load(cell)

    @property
    def cell_loads(self) -> Mapping[str, CellLoad]:
        """:meth:`load_on_cell` of every Cell holding instances, for a pass over many."""
        return self._index.loads

    @property
    def load_changes(self) -> int:
        """A mark for :meth:`loads_changed_since`: how many load changes there were."""
        return self._index.load_changes

    def loads_changed_since(self, mark: int) -> tuple[int, set[str] | None]:
        """For whoever keeps what it derived from loads: the mark to pass next time, and
        the Cells whose load changed after ``mark`` (None: too many to tell)."""
        return self._index.loads_changed_since(mark)

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

    @property
    def pending_errors(self) -> Mapping[str, m.PendingError]:
        return self._views[m.PendingError]

    @property
    def departed_cells(self) -> Mapping[str, m.DepartedCell]:
        return self._views[m.DepartedCell]

    @property
    def stale_copies(self) -> Mapping[tuple[str, str], m.StaleCopy]:
        return self._views[m.StaleCopy]
