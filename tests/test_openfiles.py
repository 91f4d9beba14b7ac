"""The open-file limit: raised to the hard limit at start, and shared out."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from nanocore import openfiles


class FakeResource:
    """The part of the `resource` module used, with limits a test chooses."""

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        if self.refuse:
            raise ValueError("not allowed")
        self.limits = limits


class RaiseTests(SynchronousTestCase):
    def use(self, fake: Any) -> Any:
        self.patch(openfiles, "resource", fake)
        return fake

    def test_the_soft_limit_is_raised_to_the_hard_limit(self) -> None:
        fake = self.use(FakeResource(1024, 524288))
        self.assertEqual(openfiles.raise_open_file_limit(), 524288)
        self.assertEqual(fake.limits, (524288, 524288))

    def test_an_unlimited_hard_limit_raises_to_the_usual_ceiling(self) -> None:
        fake = self.use(FakeResource(1024, FakeResource.RLIM_INFINITY))
        self.assertEqual(openfiles.raise_open_file_limit(), openfiles.UNLIMITED_TARGET)
        self.assertEqual(fake.limits[0], openfiles.UNLIMITED_TARGET)

    def test_a_refusal_keeps_the_soft_limit(self) -> None:
        self.use(FakeResource(1024, 4096, refuse=True))
        self.assertEqual(openfiles.raise_open_file_limit(), 1024)

    def test_nothing_to_raise(self) -> None:
        fake = self.use(FakeResource(20000, 20000))
        self.assertEqual(openfiles.raise_open_file_limit(), 20000)
        self.assertEqual(fake.limits, (20000, 20000))


class ShareTests(SynchronousTestCase):
    def test_a_quarter_of_the_limit_but_never_below_the_floor(self) -> None:
        self.assertEqual(openfiles.connection_share(20000), 5000)
        self.assertEqual(openfiles.connection_share(100), openfiles.MIN_SHARE)


class DescriptorsTests(SynchronousTestCase):
    def test_full_once_every_port_holds_what_the_limit_leaves_beside_the_reserve(self) -> None:
        descriptors = openfiles.Descriptors(100, reserved=90)
        api, links = [3], [6]
        descriptors.count(lambda: api[0])
        descriptors.count(lambda: links[0])
        self.assertEqual((descriptors.allowed, descriptors.in_use()), (10, 9))
        self.assertFalse(descriptors.full())
        links[0] = 7
        self.assertTrue(descriptors.full())
        api[0] = 2
        self.assertFalse(descriptors.full())

    def test_a_limit_below_the_reserve_still_allows_one(self) -> None:
        self.assertEqual(openfiles.Descriptors(10).allowed, 1)
