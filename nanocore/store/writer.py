"""The one owner of the SQLite connection: applies batches of units and loads the state.

Every method here runs on the store's writer thread (or in the importer, which has no
reactor); none of it may run on the reactor thread.
"""

from __future__ import annotations

import gc
import ipaddress
import sqlite3
import threading
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from attrs import evolve, frozen
from twisted.python.threadable import isInIOThread

from nanocore import model as m
from nanocore.store.backup import Backup, make_backup
from nanocore.store.changes import Change, Delete, Insert, Put, UnitOfWork
from nanocore.store.errors import Conflict, DamagedStore, NotFound, StillReferenced, StoreError
from nanocore.store.tables import (
    ADDRESS_ALLOCATION,
    ADDRESS_RANGE,
    BY_KIND,
    BY_NAME,
    RULE_COLUMNS,
    TABLES,
    Row,
    Table,
    rule_from_row,
    rule_rows,
)

#: kind -> key -> entity, in the table's order.
State = dict[type, dict[Hashable, Any]]


@frozen
class ForeignKey:
    child: str
    child_columns: tuple[str, ...]
    parent: str


def _quote(columns: Sequence[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


def _where(columns: Sequence[str]) -> str:
    return " AND ".join(f'"{c}" = ?' for c in columns)


class _Statements:
    """The SQL of one table, built once."""

    def __init__(self, table: Table) -> None:
        columns, marks = _quote(table.columns), ", ".join("?" for _ in table.columns)
        updates = ", ".join(
            f'"{c}" = excluded."{c}"' for c in table.columns if c not in table.key_columns
        )
        self.insert = f"INSERT INTO {table.name} ({columns}) VALUES ({marks})"
        self.upsert = (
            f"{self.insert} ON CONFLICT ({_quote(table.key_columns)}) DO UPDATE SET {updates}"
            if updates
            else f"{self.insert} ON CONFLICT DO NOTHING"
        )
        self.delete = f"DELETE FROM {table.name} WHERE {_where(table.key_columns)}"
        self.select_all = f"SELECT {columns} FROM {table.name} ORDER BY {table.order_by}"


class Writer:
    """Applies units of work in one transaction per batch, one savepoint per unit."""

    def __init__(self, connection: sqlite3.Connection, *, guard_io_thread: bool = True) -> None:
        """``guard_io_thread=False`` only for synchronous tools without a reactor (import)."""
        self._connection = connection
        self._guard_io_thread = guard_io_thread
        self._statements = {table.kind: _Statements(table) for table in TABLES}
        self._foreign_keys = self._read_foreign_keys()
        #: names of the threads that ran SQL, so tests can prove it was never the reactor's.
        self.threads_seen: set[str] = set()

    def _read_foreign_keys(self) -> list[ForeignKey]:
        keys = []
        for table in TABLES:
            grouped: dict[int, list[Any]] = {}
            for row in self._connection.execute(f"PRAGMA foreign_key_list({table.name})"):
                grouped.setdefault(row[0], []).append(row)
            for rows in grouped.values():
                rows.sort(key=lambda r: r[1])
                keys.append(ForeignKey(table.name, tuple(r[3] for r in rows), rows[0][2]))
        return keys

    def close(self) -> None:
        """Close the connection (checkpointing the WAL); the writer is unusable afterwards."""
        self._enter()
        self._connection.close()

    def backup(self, folder: Path, seconds: float, keep: int) -> Backup:
        """A backup of the committed database in ``folder`` (between two batches: whole
        units; :func:`~nanocore.store.backup.make_backup`)."""
        self._enter()
        return make_backup(self._connection, folder, seconds, keep)

    def _enter(self) -> None:
        if self._guard_io_thread and isInIOThread():
            raise RuntimeError("store SQL must never run on the reactor thread")
        self.threads_seen.add(threading.current_thread().name)

    # --- loading ---------------------------------------------------------------------------

    def load(self) -> State:
        """The whole committed state: one SELECT per table, frozen objects built in bulk.

        The cyclic garbage collector is paused while hundreds of thousands of long-lived
        objects are built (its full passes would stall the reactor thread too), and the
        result is then frozen out of future collections.
        """
        self._enter()
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._load()
        finally:
            if collecting:
                gc.enable()
            gc.freeze()

    def _load(self) -> State:
        state: State = {}
        for table in TABLES:
            rows = self._connection.execute(self._statements[table.kind].select_all).fetchall()
            try:
                entities = [table.from_row(row) for row in rows]
            except (ValueError, TypeError) as error:
                raise DamagedStore(
                    f"a {table.description} row in the store is invalid: "
                    f"{m.validation_message(error)}"
                ) from None
            state[table.kind] = {entity.key: entity for entity in entities}
        groups = state[m.SecurityPolicyGroup]
        rules: dict[str, list[m.SecurityPolicyRule]] = {}
        query = f"SELECT {_quote(RULE_COLUMNS)} FROM security_policy_rule ORDER BY 1, 2"
        for row in self._connection.execute(query):
            rules.setdefault(row[0], []).append(rule_from_row(row[2:]))
        for group_id, group_rules in rules.items():
            groups[group_id] = evolve(groups[group_id], rules=tuple(group_rules))
        return state

    # --- committing ------------------------------------------------------------------------

    def apply_batch(self, units: Sequence[UnitOfWork]) -> list[StoreError | None]:
        """Commit every unit that can be applied; return each unit's refusal or None.

        Raises (failing the whole batch) only when the transaction itself cannot commit.
        """
        self._enter()
        connection = self._connection
        outcomes: list[StoreError | None] = []
        connection.execute("BEGIN IMMEDIATE")
        try:
            for unit in units:
                connection.execute("SAVEPOINT unit")
                try:
                    for change in unit.changes:
                        self._apply(change)
                except StoreError as refusal:
                    connection.execute("ROLLBACK TO unit")
                    connection.execute("RELEASE unit")
                    outcomes.append(refusal)
                else:
                    connection.execute("RELEASE unit")
                    outcomes.append(None)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return outcomes

    def _apply(self, change: Change) -> None:
        if isinstance(change, Delete):
            self._delete(BY_KIND[change.kind], change.key, missing_ok=change.missing_ok)
            return
        entity = change.entity
        table = BY_KIND[type(entity)]
        row = table.to_row(entity)
        if isinstance(entity, m.AddressRange):
            self._check_range(entity)
        elif isinstance(entity, m.AddressAllocation):
            self._check_allocation(entity)
        statements = self._statements[table.kind]
        sql = statements.insert if isinstance(change, Insert) else statements.upsert
        try:
            self._connection.execute(sql, row)
            if isinstance(entity, m.SecurityPolicyGroup):
                self._write_rules(entity)
        except sqlite3.IntegrityError as error:
            raise self._explain_write(table, entity, row, error) from None

    def _write_rules(self, group: m.SecurityPolicyGroup) -> None:
        self._connection.execute(
            "DELETE FROM security_policy_rule WHERE group_id = ?", (group.id,)
        )
        self._connection.executemany(
            f"INSERT INTO security_policy_rule ({_quote(RULE_COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in RULE_COLUMNS)})",
            rule_rows(group),
        )

    def _delete(self, table: Table, key: Hashable, *, missing_ok: bool = False) -> None:
        try:
            values = table.key_values(key)
        except ValueError as error:
            raise NotFound(f"{table.description} key {key!r} is malformed: {error}") from None
        try:
            cursor = self._connection.execute(self._statements[table.kind].delete, values)
        except sqlite3.IntegrityError:
            raise self._explain_delete(table, key, values) from None
        if cursor.rowcount == 0 and not missing_ok:
            raise NotFound(f"{table.describe(key)} does not exist")

    # --- rules the schema cannot express -------------------------------------------------

    def _check_range(self, new: m.AddressRange) -> None:
        others = self._connection.execute(
            'SELECT start, "end" FROM address_range WHERE pool = ? AND start != ?',
            (new.pool, new.start),
        ).fetchall()
        for start, end in others:
            if (
                new.first <= ipaddress.IPv4Address(end)
                and ipaddress.IPv4Address(start) <= new.last
            ):
                raise Conflict(
                    f"address range {new.start}-{new.end} overlaps range {start}-{end} "
                    f"of address pool '{new.pool}'"
                )
        outside = [
            address
            for (address,) in self._connection.execute(
                "SELECT address FROM address_allocation WHERE pool = ? AND range_start = ?",
                (new.pool, new.start),
            )
            if address not in new
        ]
        if outside:
            raise Conflict(
                f"address range {new.start}-{new.end} of address pool '{new.pool}' would leave "
                f"allocated address {outside[0]} outside it"
            )

    def _check_allocation(self, new: m.AddressAllocation) -> None:
        found = self._connection.execute(
            'SELECT "end", netmask, kind FROM address_range WHERE pool = ? AND start = ?',
            (new.pool, new.range_start),
        ).fetchone()
        if found is None:
            raise NotFound(f"{ADDRESS_RANGE.describe((new.pool, new.range_start))} does not exist")
        span = m.AddressRange(new.pool, new.range_start, found[0], found[1], found[2])
        if new.address not in span:
            raise Conflict(
                f"address {new.address} is outside address range "
                f"{span.start}-{span.end} of address pool '{new.pool}'"
            )
        holder = self._connection.execute(
            "SELECT instance FROM address_allocation WHERE pool = ? AND address = ?",
            (new.pool, new.address),
        ).fetchone()
        if holder is not None and holder[0] != new.instance:
            raise Conflict(
                f"{ADDRESS_ALLOCATION.describe(new.key)} is already allocated to "
                f"instance '{holder[0]}'"
            )

    # --- turning sqlite errors into sentences ---------------------------------------------

    def _explain_write(
        self, table: Table, entity: Any, row: Row, error: sqlite3.IntegrityError
    ) -> StoreError:
        text = str(error)
        subject = table.describe(entity.key)
        if text.startswith("UNIQUE constraint failed:"):
            columns = [c.strip().split(".", 1)[1] for c in text.split(":", 1)[1].split(",")]
            if tuple(columns) == table.key_columns:
                return Conflict(f"{subject} already exists")
            values = dict(zip(table.columns, row, strict=True))
            described = " and ".join(f"{c} '{values.get(c)}'" for c in columns)
            return Conflict(f"another {table.description} already has {described}")
        if "FOREIGN KEY" in text:
            values = dict(zip(table.columns, row, strict=True))
            for key in self._foreign_keys:
                if key.child != table.name:
                    continue
                parent_key = tuple(values[c] for c in key.child_columns)
                if any(v is None for v in parent_key):
                    continue
                parent = BY_NAME[key.parent]
                found = self._connection.execute(
                    f"SELECT 1 FROM {parent.name} WHERE {_where(parent.key_columns)}",
                    parent_key,
                ).fetchone()
                if found is None:
                    shown = parent_key[0] if len(parent_key) == 1 else parent_key
                    return NotFound(
                        f"{subject} refers to {parent.describe(shown)}, which does not exist"
                    )
            return NotFound(f"{subject} refers to an entity that does not exist")
        return Conflict(f"{subject} breaks a rule of the store ({text})")

    def _explain_delete(self, table: Table, key: Hashable, values: Row) -> StoreError:
        for foreign_key in self._foreign_keys:
            if foreign_key.parent != table.name:
                continue
            child = BY_NAME.get(foreign_key.child)
            if child is None:
                continue
            where = _where(foreign_key.child_columns)
            (count,) = self._connection.execute(
                f"SELECT COUNT(*) FROM {child.name} WHERE {where}", values
            ).fetchone()
            if count:
                example = self._connection.execute(
                    f"SELECT {_quote(child.key_columns)} FROM {child.name} WHERE {where} LIMIT 1",
                    values,
                ).fetchone()
                shown = example[0] if len(example) == 1 else tuple(example)
                more = f" and {count - 1} more" if count > 1 else ""
                return StillReferenced(
                    f"{table.describe(key)} is still used by {child.describe(shown)}{more}"
                )
        return StillReferenced(f"{table.describe(key)} is still referenced")


def apply_to_state(state: State, unit: UnitOfWork) -> None:
    """Mirror a committed unit in the in-memory state (same semantics as the SQL)."""
    for change in unit.changes:
        if isinstance(change, Delete):
            state[change.kind].pop(change.key, None)
        elif isinstance(change, Put | Insert):
            entity = change.entity
            state[type(entity)][entity.key] = entity
