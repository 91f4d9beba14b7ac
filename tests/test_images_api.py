"""The image catalogue and the API's stream routes, through the signed in-memory client."""

from __future__ import annotations

import hashlib
import os

from nanocore.api.auth import Variant
from nanocore.operations.images import ImageKind
from tests.imagefixtures import CONTENT_TYPE, ImageTestCase, multipart

DISK = b"QFI\xfb" + os.urandom(300_000)
ISO = os.urandom(200_000)


class CatalogueTests(ImageTestCase):
    async def test_create_get_list_search_modify_delete_media(self) -> None:
        first = await self.h.create("media_images", "zeta", tags=["linux"])
        second = await self.h.create("media_images", "alpha", owner="bob", group="dev")
        got = await self.h.api.get(f"/media_images/{first}")
        self.assertEqual(
            got.data, {"name": "zeta", "description": "", "size": 0, "tags": ["linux"]}
        )
        listed = await self.h.api.get("/media_images/")
        self.assertEqual(
            [item["id"] for item in listed.data], [second, first]
        )  # dev.alpha, ops.zeta
        found = await self.h.api.get("/media_image_search/?owner=bob")
        self.assertEqual([item["name"] for item in found.data], ["alpha"])
        nobody = await self.h.api.get("/media_image_search/")
        self.assertEqual(nobody.data, [])
        changed = await self.h.api.put(
            f"/media_images/{first}", {"description": "new", "name": ""}
        )
        self.assertEqual(changed.data, "")
        got = await self.h.api.get(f"/media_images/{first}")
        self.assertEqual((got.data["name"], got.data["description"]), ("zeta", "new"))
        await self.h.api.delete(f"/media_images/{first}")
        gone = await self.h.api.get(f"/media_images/{first}")
        self.assertEqual(gone.error, f"invalid media image '{first}'")

    async def test_names_are_unique_per_group_also_on_rename(self) -> None:
        await self.h.create("disk_images", "base")
        other = await self.h.create("disk_images", "other")
        again = await self.h.api.post(
            "/disk_images/", {"name": "base", "owner": "admin", "group": "ops"}
        )
        self.assertEqual(again.error, "disk image 'base' already exists in group 'ops'")
        renamed = await self.h.api.put(f"/disk_images/{other}", {"name": "base"})
        self.assertEqual(renamed.error, "disk image 'base' already exists in group 'ops'")

    async def test_disk_search_by_tags(self) -> None:
        await self.h.create("disk_images", "a", tags=["x"])
        await self.h.create("disk_images", "b", tags=["y"])
        await self.h.create("disk_images", "c")
        found = await self.h.api.get("/disk_image_search/?group=ops&tags=y&tags=x")
        self.assertEqual([item["name"] for item in found.data], ["a", "b"])

    async def test_an_empty_owner_or_group_is_accepted_as_in_core(self) -> None:
        """A portal account without a group uploads ISOs and captures disks on Nano: Core
        never checked either for emptiness (api-reference §4.8, §4.9)."""
        media = await self.h.create("media_images", "tools", group="")
        disk = await self.h.create("disk_images", "base", owner="", group="")
        found = await self.h.api.get("/media_image_search/?owner=admin")
        self.assertEqual([item["id"] for item in found.data], [media])
        got = await self.h.api.get(f"/disk_images/{disk}")
        self.assertEqual(got.data["name"], "base")
        # Seen by nobody's search, as in Core: naming nobody shows nothing.
        self.assertEqual((await self.h.api.get("/disk_image_search/?group=")).data, [])
        # Still qualified when given, and still unique within the (empty) group.
        bad = await self.h.api.post("/media_images/", {"name": "x", "owner": "a b", "group": ""})
        self.assertEqual(bad.error, "invalid owner name 'a b': illegal char ' '")
        again = await self.h.api.post("/disk_images/", {"name": "base", "owner": "x"})
        self.assertEqual(again.error, "disk image 'base' already exists in group ''")

    async def test_a_blank_tag_filters_as_in_go(self) -> None:
        """``tags=`` asks for the tag "", which no image has (Go keeps blank values)."""
        await self.h.create("disk_images", "a", tags=["x"])
        self.assertEqual((await self.h.api.get("/disk_image_search/?group=ops&tags=")).data, [])
        found = await self.h.api.get("/disk_image_search/?group=ops&tags=&tags=x")
        self.assertEqual([item["name"] for item in found.data], ["a"])

    async def test_a_disk_name_with_a_slash_is_refused(self) -> None:
        answer = await self.h.api.post(
            "/disk_images/", {"name": "../etc", "owner": "admin", "group": "ops"}
        )
        self.assertEqual(answer.error, "invalid image name '../etc': illegal char '/'")
        self.assertEqual(self.h.images.all(ImageKind.DISK), [])


class UploadDownloadTests(ImageTestCase):
    async def test_disk_round_trip_through_the_signed_api(self) -> None:
        image_id = await self.h.create("disk_images")
        answer = await self.h.upload("disk_images", image_id, multipart(("image", DISK)))
        self.assertEqual(answer.envelope(), {"error_code": 0, "message": "", "data": ""})
        got = await self.h.api.get(f"/disk_images/{image_id}")
        self.assertEqual(
            (got.data["created"], got.data["size"], got.data["progress"]), (True, len(DISK), 0)
        )
        self.assertEqual(self.h.files("disk_images"), [f"{image_id}_v1.qcow2"])
        download = await self.h.api.get(f"/disk_images/{image_id}/file/", variant=Variant.STREAM)
        self.assertEqual(download.status, 200)
        self.assertEqual(download.body, DISK)
        self.assertEqual(download.header(b"signature"), hashlib.sha1(DISK).hexdigest().encode())
        self.assertEqual(download.header(b"accept-ranges"), b"bytes")
        ranged = await self.h.api.get(
            f"/disk_images/{image_id}/file/",
            variant=Variant.STREAM,
            headers={b"Range": b"bytes=10-19"},
        )
        self.assertEqual((ranged.status, ranged.body), (206, DISK[10:20]))

    async def test_a_second_upload_replaces_the_version_and_removes_the_first(self) -> None:
        image_id = await self.h.create("media_images")
        await self.h.upload("media_images", image_id, multipart(("image", ISO)))
        await self.h.upload("media_images", image_id, multipart(("image", b"v2" * 1000)))
        self.assertEqual(self.h.files("media_images"), [f"{image_id}_v2.iso"])
        got = await self.h.api.get(f"/media_images/{image_id}")
        self.assertEqual(got.data["size"], 2000)

    async def test_declared_checksums_are_enforced(self) -> None:
        image_id = await self.h.create("disk_images")
        good = hashlib.sha256(DISK).hexdigest().encode()
        ok = await self.h.upload(
            "disk_images", image_id, multipart(("checksum", good), ("image", DISK))
        )
        self.assertEqual(ok.envelope()["error_code"], 0)
        before = self.h.images.get(ImageKind.DISK, image_id)
        wrong = "0" * 40
        refused = await self.h.upload(
            "disk_images", image_id, multipart(("checksum", wrong.encode()), ("image", b"x" * 10))
        )
        self.assertEqual(
            refused.error,
            f"checksum mismatch: declared {wrong}, received {hashlib.sha1(b'x' * 10).hexdigest()}",
        )
        self.assertEqual(self.h.files("disk_images"), [f"{image_id}_v1.qcow2"])
        self.assertEqual(
            self.h.images.get(ImageKind.DISK, image_id),
            before,
        )

    async def test_a_checksum_after_the_image_is_enforced_too(self) -> None:
        """It was ignored, and a wrong one let the image in (QA pass 20, F6)."""
        image_id = await self.h.create("disk_images")
        ok = await self.h.upload(
            "disk_images",
            image_id,
            multipart(("image", DISK), ("checksum", hashlib.sha1(DISK).hexdigest().encode())),
        )
        self.assertEqual(ok.envelope()["error_code"], 0)
        before = self.h.images.get(ImageKind.DISK, image_id)
        wrong, sent = "0" * 40, hashlib.sha1(b"x" * 10).hexdigest()
        after = (("image", b"x" * 10), ("checksum", wrong.encode()))
        twice = (("checksum", sent.encode()), *after)
        for parts, error in (
            (after, f"checksum mismatch: declared {wrong}, received {sent}"),
            (twice, "malformed multipart body: part 'checksum' given twice, differently"),
        ):
            refused = await self.h.upload("disk_images", image_id, multipart(*parts))
            self.assertEqual(refused.error, error)
            self.assertEqual(self.h.files("disk_images"), [f"{image_id}_v1.qcow2"])
            self.assertEqual(self.h.images.get(ImageKind.DISK, image_id), before)

    async def test_an_empty_image_is_refused(self) -> None:
        """A 0-byte image replaced a good one (QA pass 20, F7)."""
        image_id = await self.h.create("media_images")
        await self.h.upload("media_images", image_id, multipart(("image", ISO)))
        before = self.h.images.get(ImageKind.MEDIA, image_id)
        refused = await self.h.upload("media_images", image_id, multipart(("image", b"")))
        self.assertEqual(refused.error, "the image part is empty")
        self.assertEqual(self.h.images.get(ImageKind.MEDIA, image_id), before)
        self.assertEqual(self.h.files("media_images"), [f"{image_id}_v1.iso"])

    async def test_refusals_leave_nothing(self) -> None:
        image_id = await self.h.create("disk_images")
        no_part = await self.h.upload("disk_images", image_id, multipart(("other", b"1")))
        self.assertEqual(no_part.error, "no more part available")
        truncated = await self.h.upload(
            "disk_images", image_id, multipart(("image", DISK), close=False)[:-100]
        )
        self.assertIn("malformed multipart body", truncated.error)
        not_multipart = await self.h.api.post(
            f"/disk_images/{image_id}/file/", raw=b"{}", variant=Variant.STREAM
        )
        self.assertEqual(not_multipart.error, "not a multipart/form-data body")
        self.assertEqual(self.h.files("disk_images"), [])
        got = await self.h.api.get(f"/disk_images/{image_id}")
        self.assertEqual((got.data["created"], got.data["size"]), (False, 0))

    async def test_path_like_and_unknown_ids_are_refused(self) -> None:
        for image_id in ("..", "a.b", "%2E%2E"):
            answer = await self.h.upload("disk_images", image_id, multipart(("image", b"x")))
            self.assertIn("invalid disk image", answer.error)
        self.assertEqual(self.h.files("disk_images"), [])

    async def test_unsigned_and_wrongly_signed_streams_are_refused(self) -> None:
        image_id = await self.h.create("disk_images")
        unsigned = await self.h.api.post(
            f"/disk_images/{image_id}/file/",
            raw=multipart(("image", DISK)),
            signed=False,
            headers={b"Content-Type": CONTENT_TYPE},
        )
        self.assertEqual(unsigned.error, "unauthorized stream: authorization required")
        request_signed = await self.h.api.post(
            f"/disk_images/{image_id}/file/",
            raw=multipart(("image", DISK)),
            headers={b"Content-Type": CONTENT_TYPE},
        )
        self.assertEqual(request_signed.error, "unauthorized stream: signature corrupted")
        download = await self.h.api.get(f"/disk_images/{image_id}/file/", signed=False)
        self.assertEqual(download.error, "unauthorized stream: authorization required")
        self.assertEqual(self.h.files("disk_images"), [])

    async def test_no_content_yet_and_locked_images(self) -> None:
        image_id = await self.h.create("disk_images")
        empty = await self.h.api.get(f"/disk_images/{image_id}/file/", variant=Variant.STREAM)
        self.assertEqual(empty.error, f"no content available for disk image '{image_id}'")
        kind = ImageKind.DISK
        upload = self.h.images.begin_upload(kind, image_id, 100)
        upload.progress.received = 50
        got = await self.h.api.get(f"/disk_images/{image_id}")
        self.assertEqual(got.data["progress"], 50)
        locked = await self.h.api.delete(f"/disk_images/{image_id}")
        self.assertEqual(locked.error, f"disk image '{image_id}' is locked for update")
        second = await self.h.upload("disk_images", image_id, multipart(("image", b"x")))
        self.assertEqual(second.error, f"disk image '{image_id}' locked")
        self.h.images.abort_upload(upload)
        self.assertEqual((await self.h.api.delete(f"/disk_images/{image_id}")).data, "")


class SyncTests(ImageTestCase):
    async def test_sync_adopts_prunes_and_cleans(self) -> None:
        kept = await self.h.create("disk_images", "kept")
        await self.h.upload("disk_images", kept, multipart(("image", DISK)))
        waiting = await self.h.create("disk_images", "waiting")
        folder = self.h.folders.folder(ImageKind.DISK)
        (folder / "centos 7.qcow2").write_bytes(b"imported")
        (folder / f"{kept}_v7.qcow2").write_bytes(b"crash leftover")
        (folder / "notes.txt").write_bytes(b"ignored")
        answer = await self.h.api.request(
            "PATCH", "/disk_images/", {"owner": "admin", "group": "ops"}
        )
        self.assertEqual(answer.data, "")
        images = {i.name: i for i in self.h.images.all(ImageKind.DISK)}
        self.assertNotIn("waiting", images)
        self.assertIn("kept", images)
        adopted = images[f"centos_7_{int(self.h.clock.seconds())}"]
        self.assertEqual(
            (adopted.created, adopted.size, adopted.check_sum, adopted.sha256, adopted.version),
            (True, 8, hashlib.sha1(b"imported").hexdigest(),
             hashlib.sha256(b"imported").hexdigest(), 1),
        )  # fmt: skip
        self.assertEqual(
            sorted(os.listdir(folder)),
            sorted([f"{kept}_v1.qcow2", f"{adopted.id}_v1.qcow2", "notes.txt"]),
        )
        self.assertNotEqual(waiting, adopted.id)

    async def test_a_start_removes_versions_no_record_names_and_nothing_else(self) -> None:
        """QA: a kill between an upload's rename and its commit left ``<id>_v<n+1>`` (up to an
        image's size of disk) until a sync or the image's next upload."""
        kept = await self.h.create("media_images", "kept")
        await self.h.upload("media_images", kept, multipart(("image", DISK)))
        folder = self.h.folders.folder(ImageKind.MEDIA)
        leftover = f"{kept}_v2.iso"
        (folder / leftover).write_bytes(b"placed, never recorded")
        (folder / "centos 7.iso").write_bytes(b"not an image of ours yet")
        await self.h.images.tidy()
        self.assertEqual(sorted(os.listdir(folder)), sorted([f"{kept}_v1.iso", "centos 7.iso"]))
        self.assertEqual(self.h.images.get(ImageKind.MEDIA, kept).version, 1)

    async def test_sync_requires_owner_and_group(self) -> None:
        answer = await self.h.api.request("PATCH", "/media_images/", {"owner": "admin"})
        self.assertEqual(answer.error, "group required")
