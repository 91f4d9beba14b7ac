"""Instance status lists and both guest searches, end to end through the signed API.

FakeCells over loopback TLS create the guests (api-reference §4.5, §4.7, §4.18, §6 points
5-7); the owner/group fix and the ``total`` fix are in docs/compatibility.md.
"""

from __future__ import annotations

from typing import Any

from nanocore.cluster.message import MessageID
from tests.guestfixtures import GuestClusterCase

CELL_A, CELL_B = GuestClusterCase.CELLS


class ListCase(GuestClusterCase):
    """Three guests: ``team.vm-b`` (alice, running), ``team.vm-a`` (bob, stopped) and
    ``other.vm-c`` (carol, still being created)."""

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        self.ids: dict[str, str] = {}
        for name, owner, group in (("vm-b", "alice", "team"), ("vm-a", "bob", "team")):
            body = self.guest_body(name, owner=owner, group=group)
            self.ids[name] = (await self.ok("POST", "/guests/", body, status=202))["id"]
        created = [self.events.until(MessageID.GuestCreatedEvent, i) for i in self.ids.values()]
        self.cell_clock.advance(1.0)
        for guest, waiting in zip(self.ids.values(), created, strict=True):
            await self.applied(waiting, guest)
        started = self.events.until(MessageID.GuestStartedEvent, self.ids["vm-b"])
        await self.ok("POST", f"/instances/{self.ids['vm-b']}", {})
        await self.applied(started, self.ids["vm-b"])
        body = self.guest_body("vm-c", owner="carol", group="other")
        self.ids["vm-c"] = (await self.ok("POST", "/guests/", body, status=202))["id"]

    def names(self, listed: list[dict[str, Any]]) -> list[str]:
        return [item["name"] for item in listed]


class InstanceStatusListTests(ListCase):
    async def test_pool_list_sorted_with_creations_and_host(self) -> None:
        listed = await self.ok("GET", "/instance_status/default")
        self.assertEqual(self.names(listed), ["other.vm-c", "team.vm-a", "team.vm-b"])
        self.assertEqual({item["host"] for item in listed}, {"127.0.0.1"})
        creating = listed[0]
        self.assertEqual((creating["created"], creating["progress"]), (False, 0))
        self.assertNotIn("monitor_secret", creating)  # only for one guest
        running = listed[2]
        self.assertEqual((running["id"], running["running"]), (self.ids["vm-b"], True))
        self.assertEqual(
            list(running)[:12],
            ["name", "id", "created", "progress", "running", "owner", "group", "pool", "cell",
             "host", "cores", "memory"],
        )  # fmt: skip

    async def test_cell_list(self) -> None:
        records = self.store.view.instances
        for cell in self.CELLS:
            listed = await self.ok("GET", f"/instance_status/default/{cell}")
            expected = sorted(i.full_name for i in records.values() if i.cell == cell)
            self.assertEqual(self.names(listed), expected)

    async def test_refusals_and_empty(self) -> None:
        self.assertEqual(await self.refused("GET", "/instance_status/nope"), "invalid pool 'nope'")
        await self.ok("POST", "/compute_pools/empty")
        self.assertEqual(await self.ok("GET", "/instance_status/empty"), [])
        self.assertEqual(
            await self.refused("GET", f"/instance_status/empty/{CELL_A}"),
            f"cell '{CELL_A}' not in pool 'empty'",
        )
        self.assertEqual(
            await self.refused("GET", "/instance_status/default/Cell_nope"),
            "cell 'Cell_nope' not in pool 'default'",
        )


class LegacySearchTests(ListCase):
    async def search(self, query: str) -> list[str]:
        return self.names(await self.ok("GET", f"/guest_search/?{query}"))

    async def test_owner_or_group_then_status_and_created(self) -> None:
        self.assertEqual(await self.search("pool=default&owner=alice"), ["team.vm-b"])
        self.assertEqual(
            await self.search("pool=default&owner=carol&group=team"), ["team.vm-a", "team.vm-b"]
        )
        # Only confirmed guests: carol's creation is not listed.
        self.assertEqual(await self.search("pool=default&group=other"), [])
        self.assertEqual(await self.search("pool=default&group=team&status=1"), ["team.vm-b"])
        self.assertEqual(await self.search("pool=default&group=team&status=0"), ["team.vm-a"])
        self.assertEqual(await self.search("pool=default&group=team&status=7"), ["team.vm-a"])
        self.assertEqual(
            await self.search("pool=default&group=team&created=T"), ["team.vm-a", "team.vm-b"]
        )
        self.assertEqual(await self.search("pool=default&group=team&created=0"), [])
        cell = self.store.view.instances[self.ids["vm-a"]].cell
        self.assertEqual(
            await self.search(f"pool=ignored&cell={cell}&group=team"),
            sorted(
                i.full_name
                for i in self.store.view.instances.values()
                if i.cell == cell and i.group == "team"
            ),
        )
        # The path after the prefix is ignored, as httprouter's *filepath is by Core.
        self.assertEqual(
            self.names(await self.ok("GET", "/guest_search/any/thing?pool=default&owner=bob")),
            ["team.vm-a"],
        )

    async def test_refusals_in_cores_order(self) -> None:
        cases = [
            ("owner=alice", "must specify target pool"),
            ("status=x&created=nope", 'strconv.Atoi: parsing "x": invalid syntax'),
            ("status=1&created=yes", 'strconv.ParseBool: parsing "yes": invalid syntax'),
            ("status=99999999999999999999", 'strconv.Atoi: parsing "99999999999999999999": '
             "value out of range"),
            ("pool=default", "must specify owner or group"),
            ("pool=nope&owner=alice", "invalid pool 'nope'"),
            ("pool=default&cell=Cell_nope&owner=alice", "invalid cell 'Cell_nope'"),
        ]  # fmt: skip
        for query, message in cases:
            self.assertEqual(await self.refused("GET", f"/guest_search/?{query}"), message, query)


class SearchTests(ListCase):
    async def search(self, **body: Any) -> Any:
        return await self.ok("POST", "/search/guests/", body)

    async def test_visible_guests_paged_and_counted(self) -> None:
        page = await self.search(owner="alice", group="team", limit=1)
        self.assertEqual(
            (self.names(page["result"]), page["total"], page["limit"], page["offset"]),
            (["team.vm-a"], 2, 1, 0),
        )
        page = await self.search(owner="alice", group="team", limit=1, offset=1)
        self.assertEqual(self.names(page["result"]), ["team.vm-b"])
        # The total fix: in a pool, without a keyword, only what alice may see is counted.
        page = await self.search(owner="alice", pool="default")
        self.assertEqual(
            (self.names(page["result"]), page["total"], page["limit"]), (["team.vm-b"], 1, 20)
        )
        # Creations are searched in a pool and on a Cell alike.
        carol = self.store.view.instances[self.ids["vm-c"]]
        for scope in ({"pool": "default"}, {"cell": carol.cell}, {}):
            page = await self.search(owner="carol", **scope)
            self.assertEqual(self.names(page["result"]), ["other.vm-c"], scope)
        # The owner/group fix: a group alone is enough.
        page = await self.search(group="team")
        self.assertEqual(self.names(page["result"]), ["team.vm-a", "team.vm-b"])
        self.assertEqual((await self.search(owner="nobody"))["total"], 0)

    async def test_keyword(self) -> None:
        page = await self.search(group="team", keyword="vm-a")
        self.assertEqual((self.names(page["result"]), page["total"]), (["team.vm-a"], 1))
        # The Cell's address matches too (every Cell here is on 127.0.0.1).
        page = await self.search(owner="alice", group="other", keyword="127.0.0")
        self.assertEqual(self.names(page["result"]), ["other.vm-c", "team.vm-b"])
        self.assertEqual((await self.search(owner="alice", keyword="VM"))["total"], 0)

    async def test_refusals(self) -> None:
        self.assertEqual(
            await self.refused("POST", "/search/guests/"), "invalid request payload: EOF"
        )
        self.assertEqual(
            await self.refused("POST", "/search/guests/", {"limit": "ten"}),
            "invalid request payload: json: cannot unmarshal string into Go struct field "
            "userRequest.limit of type int64",
        )
        cases: list[tuple[dict[str, Any], str]] = [
            ({"owner": "alice", "keyword": "a b"}, "only allow one keyword"),
            ({"keyword": "vm"}, "must specify owner or group"),
            ({"owner": "alice", "offset": -1}, "invalid offset -1"),
            ({"owner": "alice", "offset": 1}, "unexpected offset 1 / 1"),
            ({"owner": "alice", "pool": "nope"}, "invalid pool 'nope'"),
            ({"owner": "alice", "cell": "Cell_nope"}, "invalid cell 'Cell_nope'"),
        ]
        for body, message in cases:
            self.assertEqual(await self.refused("POST", "/search/guests/", body), message)
        # An offset past an empty result is no error: there is nothing to skip.
        page = await self.search(owner="nobody", offset=5)
        self.assertEqual((page["result"], page["total"], page["offset"]), ([], 0, 5))


class SearchOverKCPTests(SearchTests):
    wire = "kcp"
