"""FairShare: bounded places, shared so that a flood from one source starves no other."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from nanocore.cluster.admission import Decision, FairShare


class FairShareTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.share: FairShare[str] = FairShare(4)

    def fill(self, source: str, *connections: str) -> None:
        for connection in connections:
            self.assertTrue(self.share.make_room(source).admitted)
            self.share.add(source, connection)

    def test_everyone_gets_in_while_there_is_room(self) -> None:
        self.fill("a", "a1", "a2", "a3", "a4")
        self.assertEqual(len(self.share), 4)

    def test_when_full_the_largest_source_gives_up_its_oldest_place(self) -> None:
        self.fill("a", "a1", "a2", "a3")
        self.fill("b", "b1")
        self.assertEqual(self.share.make_room("c"), Decision(True, "a1", "a"))
        self.assertEqual((len(self.share), self.share.held_by("a")), (3, 2))

    def test_the_oldest_idle_place_is_given_up_before_a_busy_one(self) -> None:
        busy = {"a1", "a3"}
        self.share = FairShare(4, busy=busy.__contains__)
        self.fill("a", "a1", "a2", "a3")
        self.fill("b", "b1")
        self.assertEqual(self.share.make_room("c"), Decision(True, "a2", "a"))
        self.share.add("c", "c1")
        # Only busy places left with "a": its oldest goes.
        self.assertEqual(self.share.make_room("d"), Decision(True, "a1", "a"))

    def test_without_room_elsewhere_a_newcomer_gets_in_only_in_anothers_place(self) -> None:
        self.fill("a", "a1", "a2")
        self.assertEqual(self.share.make_room("b", full=True), Decision(True, "a1", "a"))
        self.share.add("b", "b1")
        self.assertEqual(self.share.make_room("a", full=True), Decision(False))
        self.assertEqual(FairShare[str](4).make_room("a", full=True), Decision(False))

    def test_a_newcomer_from_the_largest_source_is_refused(self) -> None:
        self.fill("a", "a1", "a2", "a3", "a4")
        self.assertEqual(self.share.make_room("a"), Decision(False))

    def test_equal_shares_are_kept(self) -> None:
        self.fill("a", "a1", "a2")
        self.fill("b", "b1", "b2")
        self.assertFalse(self.share.make_room("a").admitted)
        self.assertFalse(self.share.make_room("b").admitted)
        self.assertTrue(self.share.make_room("c").admitted)

    def test_remove_frees_a_place_once(self) -> None:
        self.fill("a", "a1", "a2", "a3", "a4")
        self.share.remove("a2")
        self.share.remove("a2")
        self.assertEqual(len(self.share), 3)
        self.assertEqual(self.share.make_room("a"), Decision(True))

    def test_a_limit_below_one_is_refused(self) -> None:
        self.assertRaises(ValueError, FairShare, 0)

    def test_many_sources_with_one_place_each_do_not_take_each_others(self) -> None:
        for source in "abcd":
            self.fill(source, source + "1")
        self.assertEqual(self.share.make_room("e"), Decision(False))
        self.assertEqual(len(self.share), 4)
