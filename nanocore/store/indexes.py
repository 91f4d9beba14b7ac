"""Indexes over the read model's instances: by pool, by Cell, by name, and per-Cell totals.

Instance lists, status aggregates, name uniqueness and the scheduler read a pool's or a Cell's
few instances; without these every one of them scanned all instances of the zone on the
reactor thread. They change with the read model (never before a commit is durable).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from itertools import islice
from types import MappingProxyType

from attrs import frozen

from nanocore.model import Instance, InstanceStatus

_NONE: Mapping[str, Instance] = MappingProxyType({})

#: What the status counters of a Cell's instances depend on: status, migrating, lost.
Condition = tuple[InstanceStatus, bool, bool]
_NO_CONDITIONS: Mapping[Condition, int] = MappingProxyType({})


def condition(instance: Instance) -> Condition:
    return (instance.status, instance.migrating, instance.lost)


@frozen
class CellLoad:
    """What Core's records place on one Cell: instance count and the sums of their sizes."""

    instances: int = 0
    cores: int = 0
    memory: int = 0
    disk: int = 0


#: The load of a Cell Core places nothing on.
NO_LOAD = CellLoad()

#: Load changes remembered for :meth:`InstanceIndex.loads_changed_since` (older ones: "many").
LOAD_JOURNAL = 4096


class InstanceIndex:
    """Kept by :class:`~nanocore.store.readmodel.ReadModel`; read it through the read model."""

    def __init__(self, instances: Iterable[Instance] = ()) -> None:
        self._by_pool: dict[str, dict[str, Instance]] = {}
        self._by_cell: dict[str, dict[str, Instance]] = {}
        self._names: dict[tuple[str, str, str], str] = {}
        self._loads: dict[str, CellLoad] = {}
        self._loads_view = MappingProxyType(self._loads)
        self._conditions: dict[str, dict[Condition, int]] = {}
        #: The Cells whose load changed, latest last, and how many changes there were in all.
        self._load_journal: deque[str] = deque(maxlen=LOAD_JOURNAL)
        self._load_changes = 0
        for instance in instances:
            self.added(instance)

    # -- reading -------------------------------------------------------------------------------

    def in_pool(self, pool: str) -> Mapping[str, Instance]:
        found = self._by_pool.get(pool)
        return _NONE if found is None else MappingProxyType(found)

    def on_cell(self, cell: str) -> Mapping[str, Instance]:
        found = self._by_cell.get(cell)
        return _NONE if found is None else MappingProxyType(found)

    def named(self, pool: str, group: str, name: str) -> str | None:
        """The id of the instance called ``<group>.<name>`` in ``pool``, if any."""
        return self._names.get((pool, group, name))

    def load(self, cell: str) -> CellLoad:
        return self._loads.get(cell, NO_LOAD)

    def conditions(self, cell: str) -> Mapping[Condition, int]:
        """How many of the Cell's instances are in each condition (none absent)."""
        found = self._conditions.get(cell)
        return _NO_CONDITIONS if found is None else MappingProxyType(found)

    @property
    def loads(self) -> Mapping[str, CellLoad]:
        """Every Cell's load (a Cell without instances is absent: :data:`NO_LOAD`)."""
        return self._loads_view

    @property
    def load_changes(self) -> int:
        """How many load changes there were: a mark for :meth:`loads_changed_since`."""
        return self._load_changes

    def loads_changed_since(self, mark: int) -> tuple[int, set[str] | None]:
        """The mark to pass next time, and the Cells whose load changed after ``mark`` (a
        mark this returned before; None: more changes than are remembered)."""
        missed = self._load_changes - mark
        journal = self._load_journal
        if missed > len(journal):
            return self._load_changes, None
        # From the newest end: the journal holds thousands, a decision missed a few.
        return self._load_changes, set(islice(reversed(journal), missed))

    # -- keeping -------------------------------------------------------------------------------

    def replaced(self, old: Instance | None, new: Instance | None) -> None:
        # A change of state, not of size or place, leaves the Cell's load the same object, so
        # whoever keeps something derived from it sees at once that nothing moved.
        same_load = (
            old is not None
            and new is not None
            and old.cell == new.cell
            and (old.cores, old.memory, old.disks) == (new.cores, new.memory, new.disks)
        )
        if old is not None:
            self.removed(old, shift=not same_load)
        if new is not None:
            self.added(new, shift=not same_load)

    def added(self, instance: Instance, *, shift: bool = True) -> None:
        self._by_pool.setdefault(instance.pool, {})[instance.id] = instance
        self._by_cell.setdefault(instance.cell, {})[instance.id] = instance
        self._names[(instance.pool, instance.group, instance.name)] = instance.id
        tally = self._conditions.setdefault(instance.cell, {})
        key = condition(instance)
        tally[key] = tally.get(key, 0) + 1
        if shift:
            self._shift(instance, 1)

    def removed(self, instance: Instance, *, shift: bool = True) -> None:
        _discard(self._by_pool, instance.pool, instance.id)
        _discard(self._by_cell, instance.cell, instance.id)
        name = (instance.pool, instance.group, instance.name)
        if self._names.get(name) == instance.id:
            del self._names[name]
        tally = self._conditions.get(instance.cell)
        key = condition(instance)
        if tally is not None and key in tally:
            tally[key] -= 1
            if not tally[key]:
                del tally[key]
                if not tally:
                    del self._conditions[instance.cell]
        if shift:
            self._shift(instance, -1)

    def _shift(self, instance: Instance, sign: int) -> None:
        load = self._loads.get(instance.cell, NO_LOAD)
        changed = CellLoad(
            load.instances + sign,
            load.cores + sign * instance.cores,
            load.memory + sign * instance.memory,
            load.disk + sign * instance.total_disk,
        )
        if changed.instances:
            self._loads[instance.cell] = changed
        else:
            self._loads.pop(instance.cell, None)
        self._load_journal.append(instance.cell)
        self._load_changes += 1


def _discard(index: dict[str, dict[str, Instance]], group: str, key: str) -> None:
    members = index.get(group)
    if members is not None:
        members.pop(key, None)
        if not members:
            del index[group]
