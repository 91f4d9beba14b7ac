"""Simulated NFS exports: in memory for one process, or in a folder several processes share."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from nanocore.testing.guests import GuestState, Rule, SimulatedGuest, Snapshot
from nanocore.testing.sharedstorage import (
    FolderExport,
    SharedStorage,
    decode_guest,
    encode_guest,
)


def a_guest(guest_id: str = "g1") -> SimulatedGuest:
    guest = SimulatedGuest(id=guest_id, name="team.vm1", state=GuestState.STOPPED)
    guest.snapshots["s1"] = Snapshot("s1", "first", "2026-01-02 03:04:05", False, "")
    guest.current_snapshot = "s1"
    guest.rules = [Rule(True, 0, 0, 167772161, 22)]
    guest.default_accept = False
    return guest


class SharedStorageTests(SynchronousTestCase):
    def test_in_memory_by_default(self) -> None:
        storage = SharedStorage()
        export = storage.export("192.0.2.9", "/export")
        self.assertIsInstance(export, dict)
        self.assertIs(storage.export("192.0.2.9", "/export"), export)
        self.assertIsNot(storage.export("192.0.2.9", "/other"), export)

    def test_two_storages_on_one_folder_share_their_exports(self) -> None:
        """As two simulator processes given the same ``--shared-storage``."""
        folder = Path(self.mktemp())
        mine = SharedStorage(folder).export("192.0.2.9", "/export")
        theirs = SharedStorage(folder).export("192.0.2.9", "/export")
        elsewhere = SharedStorage(folder).export("192.0.2.9", "/other")
        guest = a_guest()
        mine["g1"] = guest
        self.assertEqual((list(theirs), "g1" in theirs, len(theirs)), (["g1"], True, 1))
        self.assertEqual(theirs["g1"], guest)
        self.assertIsNot(theirs["g1"], guest)
        self.assertEqual(list(elsewhere), [])
        del theirs["g1"]
        self.assertNotIn("g1", mine)
        self.assertRaises(KeyError, mine.__getitem__, "g1")
        self.assertRaises(KeyError, mine.__delitem__, "g1")

    def test_names_stay_inside_the_folder(self) -> None:
        folder = Path(self.mktemp())
        export = SharedStorage(folder).export("..", "/../../x")
        export["../g"] = a_guest("../g")
        self.assertEqual(list(export), ["../g"])
        (inside,) = folder.iterdir()
        self.assertEqual([p.name for p in inside.iterdir()], ["..%2Fg.json"])

    def test_a_guest_reads_back_as_the_object_this_process_wrote(self) -> None:
        """So a Cell sees its own guest as in memory; another process's write is read
        afresh."""
        folder = Path(self.mktemp())
        export, other = FolderExport(folder), FolderExport(folder)
        guest = a_guest()
        export["g1"] = guest
        self.assertIs(export["g1"], guest)
        changed = other["g1"]
        changed.cores = 4
        other["g1"] = changed
        self.assertIsNot(export["g1"], guest)
        self.assertEqual(export["g1"].cores, 4)

    def test_an_unchanged_guest_is_not_written_again(self) -> None:
        folder = Path(self.mktemp())
        export = FolderExport(folder)
        guest = a_guest()
        export["g1"] = guest
        path = folder / "g1.json"
        before = path.stat().st_ino
        export["g1"] = guest
        self.assertEqual(path.stat().st_ino, before)
        guest.memory = 2 << 30
        export["g1"] = guest
        self.assertNotEqual(path.stat().st_ino, before)  # replaced by a new file, atomically
        self.assertEqual(FolderExport(folder)["g1"].memory, 2 << 30)
        self.assertEqual([p.name for p in folder.iterdir()], ["g1.json"])  # no temporary left

    def test_every_field_round_trips(self) -> None:
        guest = a_guest()
        self.assertEqual(decode_guest(encode_guest(guest)), guest)
