"""Replays through a real socket: what a legitimate client signs alike within one second passes,
the same signature 3 s later does not (issue #14 point 1).

The portal's ``Nano-Date`` names a whole second and the signature does not cover the method,
so each pattern below sends requests whose signatures are identical; the test checks that
they are, then that each request does what it asks.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import TestCase

from tests.loopbackapi import LoopbackAPI

POOL = {"gateway": "192.0.2.1", "dns": ["192.0.2.53"], "provider": "dhcp"}
REPLAYED = "replayed request: this signature was already used"


def signature(headers: dict[bytes, bytes]) -> bytes:
    return headers[b"Nano-Authorization"].rpartition(b"Signature=")[2]


class SameSecondWritesTests(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.api = await LoopbackAPI.start(self)

    async def test_post_then_delete_of_one_path_with_empty_bodies(self) -> None:
        post = self.api.signed("POST", "/compute_pools/p1")
        delete = self.api.signed("DELETE", "/compute_pools/p1")
        self.assertEqual(signature(post), signature(delete))
        created = await self.api.send("POST", "/compute_pools/p1", headers=post)
        self.assertEqual(created.envelope()["error_code"], 0)
        deleted = await self.api.send("DELETE", "/compute_pools/p1", headers=delete)
        self.assertEqual(deleted.envelope()["error_code"], 0)
        pools = await self.api.call("GET", "/compute_pools/")
        self.assertEqual([p["name"] for p in pools["data"]], ["default"])

        # A capture of either, sent again 3 s later, is refused and changes nothing.
        self.api.clock.advance(3)
        again = await self.api.send("POST", "/compute_pools/p1", headers=post)
        self.assertEqual(again.envelope()["message"], REPLAYED)
        pools = await self.api.call("GET", "/compute_pools/")
        self.assertEqual([p["name"] for p in pools["data"]], ["default"])

    async def test_the_same_put_twice(self) -> None:
        self.assertEqual((await self.api.call("POST", "/address_pools/a1", POOL))["error_code"], 0)
        self.api.clock.advance(1)
        body = json.dumps({**POOL, "gateway": "192.0.2.254"}).encode()
        put = self.api.signed("PUT", "/address_pools/a1", body)
        for _ in range(2):
            answer = await self.api.send("PUT", "/address_pools/a1", body, put)
            self.assertEqual(answer.envelope()["error_code"], 0)
        self.api.clock.advance(3)
        answer = await self.api.send("PUT", "/address_pools/a1", body, put)
        self.assertEqual(answer.envelope()["message"], REPLAYED)

    async def test_a_delete_retried_after_removing_what_blocked_it(self) -> None:
        self.assertEqual((await self.api.call("POST", "/address_pools/a1", POOL))["error_code"], 0)
        used = await self.api.call("POST", "/compute_pools/p2", {"network": "a1"})
        self.assertEqual(used["error_code"], 0)
        self.api.clock.advance(1)

        delete = self.api.signed("DELETE", "/address_pools/a1")
        blocked = await self.api.send("DELETE", "/address_pools/a1", headers=delete)
        self.assertEqual(
            blocked.envelope()["message"], "address pool 'a1' still used by compute pool 'p2'"
        )
        self.api.clock.advance(0.5)  # the same second of the portal's clock
        freed = await self.api.call("PUT", "/compute_pools/p2", {"network": ""})
        self.assertEqual(freed["error_code"], 0)
        retried = await self.api.send("DELETE", "/address_pools/a1", headers=delete)
        self.assertEqual(retried.envelope()["error_code"], 0)
        pools = await self.api.call("GET", "/address_pools/")
        self.assertEqual(pools["data"], [])

    async def test_a_read_signature_sent_later_as_a_delete_is_refused(self) -> None:
        self.assertEqual((await self.api.call("POST", "/compute_pools/p3"))["error_code"], 0)
        self.api.clock.advance(1)
        get = self.api.signed("GET", "/compute_pools/p3")
        first = await self.api.send("GET", "/compute_pools/p3", headers=get)
        self.assertEqual(first.envelope()["data"]["name"], "p3")
        self.api.clock.advance(3)
        read = await self.api.send("GET", "/compute_pools/p3", headers=get)
        self.assertEqual(read.envelope()["data"]["name"], "p3")  # reads may repeat
        answer = await self.api.send("DELETE", "/compute_pools/p3", headers=get)
        self.assertEqual(answer.envelope()["message"], REPLAYED)
        self.assertEqual((await self.api.call("GET", "/compute_pools/p3"))["error_code"], 0)
