"""Instance media and snapshots end to end: the signed API, the real store, FakeCells over
loopback TLS (api-reference §4.10-4.11, cell-protocol.md §5.5-5.6, observed-with-cells)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from nanocore import model as m
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.operations.cells import CellRefused
from nanocore.operations.errors import InvalidRequest
from nanocore.operations.imagesite import media_site
from nanocore.operations.snapshots import SnapshotNode, _tree
from nanocore.store import Put, UnitOfWork
from nanocore.testing.fakecell import Fault
from tests.guestfixtures import SITE, GiB, GuestClusterCase


class MediaTests(GuestClusterCase):
    creation_time = 0.0

    async def images(self) -> None:
        await self.store.commit(
            UnitOfWork.of(
                Put(m.MediaImage(id="iso-1", name="install", owner="alice", group="team",
                                 size=GiB, version=1)),
                Put(m.MediaImage(id="iso-0", name="empty", owner="alice", group="team")),
            )
        )  # fmt: skip

    async def test_insert_and_eject(self) -> None:
        await self.images()
        guest = await self.created()
        path = f"/instances/{guest}/media"
        self.assertEqual(await self.refused("POST", path, {"source": "iso-1"}),
                         f"instance '{guest}' is stopped")  # fmt: skip
        self.assertEqual(await self.refused("DELETE", path), f"instance '{guest}' is stopped")
        await self.started(guest)
        for body, message in (
            (None, "EOF"),
            ({}, "media image required"),
            ({"source": "nope"}, "invalid media image 'nope'"),
            ({"source": "iso-0"}, "media image 'iso-0' has no file yet"),
        ):
            self.assertEqual(await self.refused("POST", path, body), message)
        self.assertEqual(await self.refused("POST", "/instances/nope/media", {"source": "iso-1"}),
                         "invalid instance 'nope'")  # fmt: skip

        self.assertEqual(await self.ok("POST", path, {"source": "iso-1", "type": 0}), "")
        cell = self.cells[self.store.view.instances[guest].cell]
        insert = [r for r in cell.received if r.id == MessageID.InsertMediaRequest][-1]
        self.assertEqual(
            (insert.string_params, insert.uint_params),
            ({ParamKey.Instance: guest, ParamKey.Media: "iso-1", ParamKey.Host: SITE.host},
             {ParamKey.Port: SITE.port}),
        )  # fmt: skip
        # Answered once the record shows it (MediaAttachedEvent came before the answer).
        self.assertTrue((await self.ok("GET", f"/guests/{guest}"))["media_attached"])
        self.assertEqual(self.store.view.instances[guest].media_source, "iso-1")
        self.assertEqual(await self.refused("POST", path, {"source": "iso-1"}),
                         f"instance '{guest}' already has media attached")  # fmt: skip

        self.assertEqual(await self.ok("DELETE", path), "")
        record = self.store.view.instances[guest]
        self.assertEqual((record.media_attached, record.media_source), (False, ""))
        self.assertEqual(await self.refused("DELETE", path),
                         f"no media attached with instance '{guest}'")  # fmt: skip

    async def test_the_record_follows_the_answer_when_no_event_comes(self) -> None:
        await self.images()
        guest = await self.created()
        await self.started(guest)
        cell = self.cells[self.store.view.instances[guest].cell]
        cell.link = _Muted(cell.link, MessageID.MediaAttachedEvent)  # type: ignore[assignment]
        await self.ok("POST", f"/instances/{guest}/media", {"source": "iso-1"})
        record = self.store.view.instances[guest]
        self.assertEqual((record.media_attached, record.media_source), (True, "iso-1"))


class MediaSiteTests(TestCase):
    """What start from media and insert media both check before a Cell is asked."""

    def test_refusals(self) -> None:
        images = {
            "iso-1": m.MediaImage(id="iso-1", name="i", owner="o", group="g", size=1, version=1)
        }
        self.assertEqual(media_site("iso-1", images, lambda: SITE), SITE)
        with self.assertRaises(InvalidRequest) as refused:
            media_site("iso-1", images, lambda: None)
        self.assertEqual(refused.exception.message, "no image server available")


class _Muted:
    """A link that drops one kind of message, as a Cell that never sends an event."""

    def __init__(self, link: object, muted: int) -> None:
        self._link, self._muted = link, muted

    def send(self, message: Message) -> None:
        if message.id != self._muted:
            self._link.send(message)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._link, name)


class SnapshotTests(GuestClusterCase):
    creation_time = 0.0

    async def test_create_list_get_restore_delete(self) -> None:
        guest = await self.created()
        base = f"/instances/{guest}/snapshots/"
        self.assertEqual(await self.ok("GET", base), {})
        await self.ok("POST", base, {"name": "base", "description": "clean install"})
        await self.ok("POST", base, {"name": "v1.0"})
        self.assertEqual(
            await self.ok("GET", base),
            {"base": {"is_root": True}, "v1.0": {"is_current": True, "backing": "base"}},
        )
        detail = await self.ok("GET", base + "base")
        cell = self.cells[self.store.view.instances[guest].cell]
        self.assertEqual(
            detail,
            {"running": False, "description": "clean install",
             "create_time": cell.guests[guest].snapshots["base"].created},
        )  # fmt: skip
        self.assertEqual(list(await self.ok("GET", base + "v1.0")), ["running", "create_time"])
        await self.ok("PUT", base, {"target": "base"})
        self.assertEqual(
            (await self.ok("GET", base))["base"], {"is_root": True, "is_current": True}
        )
        self.assertEqual(
            await self.refused("DELETE", base + "base"),
            "can't delete current snapshot when backed by snapshot 'v1.0'",
        )
        await self.ok("DELETE", base + "v1.0")
        self.assertEqual(
            await self.ok("GET", base), {"base": {"is_root": True, "is_current": True}}
        )

    async def test_refusals(self) -> None:
        guest = await self.created()
        base = f"/instances/{guest}/snapshots/"
        for method, path, body, message in (
            ("POST", base, None, "EOF"),
            ("POST", base, {}, "snapshot name required"),
            ("POST", base, {"name": "a/b"}, "invalid snapshot name 'a/b': illegal char '/'"),
            ("POST", base, {"name": "x" * 256},
             f"invalid snapshot name '{'x' * 64}…': longer than 255 characters"),
            ("PUT", base, {}, "snapshot name required"),
            ("PUT", base, {"target": "nope"}, "invalid snapshot 'nope'"),
            ("GET", base + "nope", None, "invalid snapshot 'nope'"),
            ("GET", base + "b%20d", None, "invalid snapshot name 'b d': illegal char ' '"),
            ("DELETE", base + "nope", None, "invalid snapshot 'nope'"),
            ("GET", "/instances/nope/snapshots/", None, "invalid instance 'nope'"),
            # The name is checked before the guest is looked up, as Nano does.
            ("GET", "/instances/nope/snapshots/a%20b", None,
             "invalid snapshot name 'a b': illegal char ' '"),
        ):  # fmt: skip
            self.assertEqual(await self.refused(method, path, body), message, (method, path))
        await self.ok("POST", base, {"name": "s1"})
        self.assertEqual(await self.refused("POST", base, {"name": "s1"}),
                         f"snapshot '{guest}.s1' exists")  # fmt: skip
        await self.started(guest)
        live = "live snapshot not supported yes, shutdown instance first"  # the Cell's words
        self.assertEqual(await self.refused("POST", base, {"name": "s2"}), live)
        self.assertEqual(await self.refused("PUT", base, {"target": "s1"}), live)
        self.assertEqual(list(await self.ok("GET", base)), ["s1"])

    async def test_a_cell_timeout(self) -> None:
        guest = await self.created()
        cell = self.cells[self.store.view.instances[guest].cell]
        cell.inject(MessageID.QuerySnapshotRequest, Fault(drop=True))
        asking = Deferred.fromCoroutine(self.refused("GET", f"/instances/{guest}/snapshots/"))
        self.core_clock.advance(2.0)
        self.assertEqual(await asking, "cell timeout")

    def test_a_tree_that_does_not_add_up_is_refused(self) -> None:
        good = Message(
            id=MessageID.QuerySnapshotResponse,
            string_array_params={ParamKey.Name: ("a",), ParamKey.Previous: ("",)},
            uint_array_params={ParamKey.Source: (1,), ParamKey.Current: (1,)},
        )
        self.assertEqual(_tree("c", good), [SnapshotNode("a", True, True, "")])
        bad = Message(
            id=MessageID.QuerySnapshotResponse,
            string_array_params={ParamKey.Name: ("a", "b"), ParamKey.Previous: ("",)},
        )
        with self.assertRaises(CellRefused) as refused:
            _tree("c", bad)
        self.assertEqual(
            refused.exception.message,
            "cell 'c' sent 2 snapshot names with 1 backings, 0 root and 0 current flags",
        )


class OverKCPTests(GuestClusterCase):
    """Media and snapshots over the link stock Cells use."""

    wire = "kcp"
    creation_time = 0.0

    async def test_snapshot_then_media(self) -> None:
        await self.store.commit(
            UnitOfWork.of(Put(m.MediaImage(id="iso-1", name="install", owner="alice",
                                           group="team", size=GiB, version=1)))
        )  # fmt: skip
        guest = await self.created()
        await self.ok("POST", f"/instances/{guest}/snapshots/", {"name": "s1"})
        self.assertEqual(
            await self.ok("GET", f"/instances/{guest}/snapshots/"),
            {"s1": {"is_root": True, "is_current": True}},
        )
        await self.started(guest)
        await self.ok("POST", f"/instances/{guest}/media", {"source": "iso-1"})
        self.assertTrue(self.store.view.instances[guest].media_attached)
