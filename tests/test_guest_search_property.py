"""``POST /search/guests/`` paging against a plain model, over random guests and queries.

Random guests (owners, groups, pools, Cells, states, addresses) are searched through the
signed API with random owners, groups, scopes, keywords, limits and offsets; every answer must
be the plain model's, and walking the pages must give every match once, in order. The
guests live in an in-memory store, so each example costs no disk and no Cell.
"""

from __future__ import annotations

import itertools
from typing import Any

from attrs import frozen
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from nanocore import model as m
from nanocore.api.app import build_api_resource
from nanocore.api.testing import TEST_CREDENTIALS, APIClient
from nanocore.operations.core import Operations
from nanocore.store import CommitStore, ReadModel, UnitOfWork

NOW = 1_714_529_472.0
#: Cell name -> (pool, address); the address is what lists show as ``host``.
CELLS = {"c1": ("p1", "10.0.0.1"), "c2": ("p1", "10.0.0.2"), "c3": ("p2", "10.0.1.3")}
OWNERS = ("alice", "bob", "carol")
GROUPS = ("team", "other", "ops")
STATES = (m.InstanceStatus.CREATING, m.InstanceStatus.STOPPED, m.InstanceStatus.RUNNING)


def empty_state() -> dict[type, dict[Any, Any]]:
    state: dict[type, dict[Any, Any]] = {kind: {} for kind in m.ENTITY_TYPES}
    state[m.Zone]["zone"] = m.Zone()
    for pool in ("p1", "p2"):
        state[m.ComputePool][pool] = m.ComputePool(pool)
    for cell, (pool, _) in CELLS.items():
        state[m.ComputeCell][cell] = m.ComputeCell(cell, pool)
    return state


@implementer(CommitStore)
class MemoryStore:
    """Committed state in memory: the search reads ``view``, which a test replaces."""

    def __init__(self) -> None:
        self.view = ReadModel(empty_state())
        self.units_committed = 0

    def commit(self, unit: UnitOfWork) -> Any:
        self.view.mirror(unit)
        self.units_committed += 1
        return succeed(None)

    def holding(self, instances: list[m.Instance]) -> None:
        state = empty_state()
        state[m.Instance] = {i.id: i for i in instances}
        self.view = ReadModel(state)


@st.composite
def guests(draw: st.DrawFn) -> list[m.Instance]:
    found: dict[tuple[str, str, str], m.Instance] = {}
    for index in range(draw(st.integers(0, 40))):
        cell = draw(st.sampled_from(sorted(CELLS)))
        pool, host = CELLS[cell]
        group = draw(st.sampled_from(GROUPS))
        name = draw(st.sampled_from(("vm", "vm1", "vm2", "web", "db", "a1", "x")))
        address = draw(st.sampled_from(("", "172.16.0.5", "172.16.1.10")))
        instance = m.Instance(
            id=f"g{index:03d}",
            name=name,
            owner=draw(st.sampled_from(OWNERS)),
            group=group,
            pool=pool,
            cell=cell,
            cores=1,
            memory=1 << 30,
            disks=(1 << 30,),
            status=draw(st.sampled_from(STATES)),
            internal=m.InstanceNetwork(instance_address=address, monitor_address=host),
        )
        found.setdefault((pool, group, name), instance)  # names are unique per pool
    return list(found.values())


@frozen
class Query:
    owner: str
    group: str
    pool: str
    cell: str
    keyword: str
    limit: int
    offset: int

    def body(self) -> dict[str, Any]:
        return {
            "owner": self.owner, "group": self.group, "pool": self.pool, "cell": self.cell,
            "keyword": self.keyword, "limit": self.limit, "offset": self.offset,
        }  # fmt: skip


#: Mostly queries that find several guests, so that order and paging are really tested.
queries = st.builds(
    Query,
    owner=st.sampled_from(("", *OWNERS, *OWNERS, "zed")),
    group=st.sampled_from(("", "", *GROUPS)),
    pool=st.sampled_from(("", "", "p1", "p2")),
    cell=st.sampled_from(("", "", "", *CELLS)),
    keyword=st.sampled_from(("", "", "", "vm", "1", "team.", "10.0.0", "172.16.1", "zz")),
    limit=st.integers(-2, 12),
    offset=st.sampled_from((0, 0, 0, 1, 2, 3, 5, 8)),
)


def model(instances: list[m.Instance], q: Query) -> tuple[list[str], int, int] | str:
    """The rules of api-reference §6 points 5-6 with nanocore's two fixes, written plainly:
    (page ids, total, limit) or the refusal."""
    if " " in q.keyword:
        return "only allow one keyword"
    if q.owner == "" and q.group == "":
        return "must specify owner or group"
    limit = 20 if q.limit <= 0 else q.limit
    if q.cell:
        scope = [i for i in instances if i.cell == q.cell]
    elif q.pool:
        scope = [i for i in instances if i.pool == q.pool]
    else:
        scope = list(instances)
    matches = []
    for i in scope:
        mine = i.owner == q.owner or (q.group != "" and i.group == q.group)
        host = CELLS[i.cell][1]
        text = f"{i.group}.{i.name}"
        hit = q.keyword in text or q.keyword in i.internal.instance_address or q.keyword in host
        if mine and hit:
            matches.append(i)
    if matches and q.offset >= len(matches):
        return f"unexpected offset {q.offset} / {len(matches)}"
    matches.sort(key=lambda i: (f"{i.group}.{i.name}", i.pool, i.id))
    return [i.id for i in matches[q.offset : q.offset + limit]], len(matches), limit


class SearchPagingProperties(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = MemoryStore()
        ops = Operations(self.store, self.clock)
        self.client = APIClient(build_api_resource(ops, TEST_CREDENTIALS, self.clock), self.clock)

    def search(self, body: dict[str, Any]) -> Any:
        answer = self.successResultOf(self.client.post("/search/guests/", body))
        return answer.envelope()

    @given(guests(), queries)
    def test_answers_as_the_model(self, instances: list[m.Instance], query: Query) -> None:
        self.store.holding(instances)
        expected = model(instances, query)
        document = self.search(query.body())
        if isinstance(expected, str):
            self.assertEqual((document["error_code"], document["message"]), (500, expected))
            return
        ids, total, limit = expected
        data = document["data"]
        self.assertEqual(
            ([r["id"] for r in data["result"]], data["total"], data["limit"], data["offset"]),
            (ids, total, limit, query.offset),
        )
        for item in data["result"]:
            self.assertEqual(item["host"], CELLS[item["cell"]][1])

    @given(guests(), queries)
    def test_the_pages_hold_every_match_once(
        self, instances: list[m.Instance], query: Query
    ) -> None:
        self.store.holding(instances)
        first = model(instances, Query(**{**query.body(), "offset": 0}))
        if isinstance(first, str):
            return
        _, total, limit = first
        seen: list[str] = []
        for offset in itertools.count(0, limit):
            if offset >= max(total, 1):
                break
            data = self.search({**query.body(), "offset": offset})["data"]
            self.assertEqual(data["total"], total)
            self.assertLessEqual(len(data["result"]), limit)
            seen.extend(r["id"] for r in data["result"])
        self.assertEqual(len(seen), total)
        self.assertEqual(len(set(seen)), total)
        by_id = {i.id: i for i in instances}
        keys = [(by_id[i].group, by_id[i].name, by_id[i].pool) for i in seen]
        self.assertEqual(keys, sorted(keys, key=lambda k: (f"{k[0]}.{k[1]}", k[2])))
