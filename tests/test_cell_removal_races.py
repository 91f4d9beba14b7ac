"""Removing a Cell from its pool while guests are placed on it or move to it.

Nano refused the removal while the Cell had instances or pending creations
(``Instances`` + ``Pending``) in its own words; a creation or migration placed on the Cell
counts as the guest it will be. A creation whose Cell left the pool before its record was
committed is told so, never the store's sentence naming an id the client never received, and
leaves no claim, address or name behind.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import gatherResults

from nanocore import model as m
from nanocore.operations.claims import ClaimKind
from nanocore.operations.guests.placement import ADDRESS, CAPACITY, GUEST_NAME, Share, move_key
from nanocore.store import Delete, Put, UnitOfWork
from tests.cellfixtures import instance
from tests.guestfixtures import GiB, GuestClusterCase
from tests.test_migrations_api import POOL, A, B, MigrationCase

CELL = "Cell_0000000000a1"


def left(count: int, cell: str) -> str:
    return (
        f"{count} instance(s) left in cell '{cell}', "
        "migrate or delete all instance(s) before remove cell"
    )


class RemovalWhilePlacedTests(GuestClusterCase):
    """One Cell in pool ``default`` (``netted`` once ``use_network`` moved it)."""

    CELLS = (CELL,)

    async def at_once(self, *calls: tuple[str, str, Any]) -> list[tuple[int, str]]:
        """Fire ``calls`` without waiting for any answer: (error code, message) of each."""
        answers = await gatherResults(
            [self.client.request(method, path, body) for method, path, body in calls]
        )
        return [(a.envelope()["error_code"], a.envelope()["message"]) for a in answers]

    def assert_nothing_held(self) -> None:
        claims = self.ops.context.claims
        kinds: tuple[ClaimKind[Any], ...] = (CAPACITY, GUEST_NAME, ADDRESS)
        self.assertEqual([c.key for kind in kinds for c in claims.live(kind)], [])

    async def test_creation_placed_on_the_cell_is_counted(self) -> None:
        """The create was placed (claimed) before the removal checked: it counts, with the
        guest already recorded there, in Nano's sentence; the creation goes on."""
        await self.created(name="first")
        answers = await self.at_once(
            ("POST", "/guests/", self.guest_body("second")),
            ("DELETE", f"/compute_pool_cells/default/{CELL}", None),
        )
        self.assertEqual(answers, [(0, ""), (500, left(2, CELL))])
        self.assertEqual(len(self.store.view.instances_on_cell(CELL)), 2)
        self.assertEqual(self.store.view.cells[CELL].pool, "default")

    async def test_creation_placed_while_the_removal_commits_is_refused(self) -> None:
        """The removal checked first: a creation deciding before its commit is applied is
        refused in words the client can act on, and leaves nothing behind."""
        await self.use_network()
        answers = await self.at_once(
            ("DELETE", f"/compute_pool_cells/netted/{CELL}", None),
            ("POST", "/guests/", self.guest_body(pool="netted")),
        )
        self.assertEqual(answers, [(0, ""), (500, f"cell '{CELL}' left pool 'netted', retry")])
        self.assertNotIn(CELL, self.store.view.cells)
        self.assertEqual((dict(self.store.view.instances), self.store.view.allocations), ({}, {}))
        self.assert_nothing_held()
        # The name is free again: once the Cell is back the same guest is made.
        await self.ok("POST", f"/compute_pool_cells/netted/{CELL}")
        await self.created(pool="netted")

    async def test_creation_whose_cell_is_gone_at_commit(self) -> None:
        """However the Cell's record went between placement and commit (here straight through
        the store), the create answers what happened, not the store's integrity sentence."""
        await self.use_network()
        removing = self.store.commit(UnitOfWork((Delete(m.ComputeCell, CELL),)))
        refused = await self.refused("POST", "/guests/", self.guest_body(pool="netted"))
        await removing
        self.assertEqual(refused, f"cell '{CELL}' left pool 'netted', retry")
        self.assertEqual((dict(self.store.view.instances), self.store.view.allocations), ({}, {}))
        self.assert_nothing_held()

    async def test_creation_whose_address_range_is_gone_at_commit(self) -> None:
        await self.use_network()
        view = self.store.view
        (address_range,) = view.address_ranges.values()
        removing = self.store.commit(UnitOfWork((Delete(m.AddressRange, address_range.key),)))
        refused = await self.refused("POST", "/guests/", self.guest_body(pool="netted"))
        await removing
        self.assertEqual(refused, "address pool 'net' changed while the guest was placed, retry")
        self.assertEqual(dict(self.store.view.instances), {})
        self.assert_nothing_held()

    async def test_guest_recorded_on_the_cell_while_the_removal_commits(self) -> None:
        """A guest committed on the Cell after the removal checked (as a rejoining Cell's
        inventory is) makes the removal answer Nano's sentence, not the store's."""
        adopting = self.store.commit(UnitOfWork((Put(instance("adopted", CELL, "default")),)))
        refused = await self.refused("DELETE", f"/compute_pool_cells/default/{CELL}")
        await adopting
        self.assertEqual(refused, left(1, CELL))

    async def test_concurrent_removals_of_one_cell_answer_in_turn(self) -> None:
        answers = await self.at_once(
            ("DELETE", f"/compute_pool_cells/default/{CELL}", None),
            ("DELETE", f"/compute_pool_cells/default/{CELL}", None),
        )
        self.assertEqual(answers, [(0, ""), (500, f"cell '{CELL}' not in pool 'default'")])


class RemovalWhileMovingTests(MigrationCase):
    async def test_guests_moving_to_the_cell_are_counted(self) -> None:
        guest = await self.guest_on(A, "moving")
        answers = await self.at_once(
            ("POST", "/migrations/", self.body(guest)),
            ("DELETE", f"/compute_pool_cells/{POOL}/{B}", None),
        )
        self.assertEqual([code for code, _ in answers], [0, 500])
        self.assertEqual(answers[1][1], left(1, B))

    async def test_growth_of_a_guest_there_is_not_one_more_guest(self) -> None:
        """Counted by guest, not by claim: a guest on the Cell that also moves or grows there
        is one guest (a moving claim alone is one)."""
        guest = await self.guest_on(B, "there")
        placement = self.ops.guests.placement
        before = placement.bound_for(B)  # its creation's claim, until B's next report
        placement.claim_growth(("growth", guest, "memory"), Share(B, 0, GiB, 0))
        self.assertEqual(placement.bound_for(B), before)
        placement.claim_move(move_key("elsewhere"), Share(B, 1, GiB, 0))
        refused = await self.refused("DELETE", f"/compute_pool_cells/{POOL}/{B}")
        self.assertEqual(refused, left(2, B))

    at_once = RemovalWhilePlacedTests.at_once
