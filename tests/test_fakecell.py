"""FakeCell against the real registry and transactions, linked in memory and driven by a Clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.test.iosim import FakeTransport, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from nanocore.cluster.cells import CellLiveness, CellObserver, CellRegistry, CellStatus
from nanocore.cluster.discovery import ServiceEntry, SonarEcho
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.cluster.transactions import CellError, Transactions, TransactionTimeout
from nanocore.cluster.transport import CellLinkFactory, LinkState
from nanocore.pki import load_or_create_ca
from nanocore.testing import simtap
from nanocore.testing.fakecell import (
    Capacity,
    FakeCell,
    Fault,
    NoCoreService,
    create_guest_request,
    discover_core,
)
from nanocore.testing.guests import GuestState, SimulatedGuest
from nanocore.testing.sharedstorage import SharedStorage

CELL = "Cell_fake0001"
GiB = 1 << 30


@implementer(CellObserver)
class Events:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.disconnected: list[bool] = []

    def cell_available(self, name: str, address: str) -> None:
        pass

    def cell_status(self, name: str, status: CellStatus) -> None:
        pass

    def cell_event(self, name: str, message: Message) -> None:
        self.messages.append(message)

    def cell_disconnected(self, name: str, gracefully: bool) -> None:
        self.disconnected.append(gracefully)

    def cell_answered_late(self, name: str, request: Message, reply: Message) -> None:
        pass

    def ids(self) -> list[int]:
        return [m.id for m in self.messages]


class FakeCellTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.transactions = Transactions(self.clock, timeout=10.0)
        self.registry = CellRegistry(self.clock, self.transactions)
        self.events = Events()
        self.registry.subscribe(self.events)
        self.cell = FakeCell(
            CELL, self.clock, capacity=Capacity(cores=4, memory=8 * GiB, disk=100 * GiB)
        )
        factory = CellLinkFactory(self.registry, self.clock, "Core_test", lambda t: CELL)
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: factory.buildProtocol(None),
            self.cell.protocol,
            serverTransportFactory=lambda p: FakeTransport(
                p, isServer=True, peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)
            ),
            greet=False,
        )
        self.pump.flush()

    def advance(self, seconds: float) -> None:
        """Move time forward in 0.1 s steps, letting the link carry what each step sends."""
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(min(0.1, end - self.clock.seconds()))
            self.pump.flush()

    def call(self, message_id: int, **params: Any) -> Deferred[Message]:
        d = self.registry.request(CELL, Message(id=message_id, **params))
        self.pump.flush()
        return d

    def ok(self, message_id: int, **params: Any) -> Message:
        return self.successResultOf(self.call(message_id, **params))

    def refused(self, message_id: int, **params: Any) -> str:
        return str(self.failureResultOf(self.call(message_id, **params), CellError).value)

    def create(self, guest: str = "g1", **options: Any) -> Message:
        request = create_guest_request(guest, **options)
        d = self.registry.request(CELL, request)
        self.pump.flush()
        reply = self.successResultOf(d)
        self.advance(1.0)
        return reply

    # -- link and status ----------------------------------------------------------------------

    def test_connects_and_reports(self) -> None:
        self.assertIs(self.registry.state(CELL), CellLiveness.ALIVE)
        self.assertEqual(
            self.registry.status(CELL),
            CellStatus(4, 5.0, 8 * GiB, 8 * GiB, 100 * GiB, 100 * GiB),
        )
        self.assertTrue(self.successResultOf(self.cell.connected()).connected)

    def test_reports_every_two_seconds_with_load(self) -> None:
        self.create()
        self.cell.usage = 42.0
        self.advance(2.0)
        status = self.registry.status(CELL)
        assert status is not None
        self.assertEqual(status.usage, 42.0)
        self.assertEqual(status.memory_available, 6 * GiB)
        self.assertEqual(status.disk_free, 70 * GiB)

    def test_stays_linked_for_a_minute(self) -> None:
        self.advance(60)
        self.assertIs(self.registry.state(CELL), CellLiveness.ALIVE)

    def test_graceful_close(self) -> None:
        self.cell.close()
        self.pump.flush()
        self.assertEqual(self.events.disconnected, [True])
        self.assertIs(self.registry.state(CELL), CellLiveness.DISCONNECTED)

    # -- pool membership ----------------------------------------------------------------------

    def test_pool_ready_answers_cell_ready_with_inventory(self) -> None:
        self.create("g1")
        self.create("g2")
        reply = self.ok(
            MessageID.ComputePoolReadyEvent,
            string_params={
                ParamKey.Pool: "default",
                ParamKey.Storage: "",
                ParamKey.Network: "net1",
                ParamKey.Gateway: "192.0.2.1",
                ParamKey.Mode: "dhcp",
            },
            string_array_params={ParamKey.Server: ("192.0.2.53",)},
        )
        self.assertEqual(reply.id, MessageID.ComputeCellReadyEvent)
        self.assertEqual(reply.uint_params[ParamKey.Count], 2)
        self.assertEqual(reply.string_array_params[ParamKey.Instance], ("g1", "g2"))
        self.assertEqual(reply.uint_array_params[ParamKey.Count], (2, 2))
        self.assertEqual(len(reply.uint_array_params[ParamKey.Disk]), 4)
        self.assertEqual(len(reply.uint_array_params[ParamKey.Limit]), 12)
        self.assertEqual(self.cell.pool, "default")
        self.assertEqual(self.cell.network["mode"], "dhcp")

    def test_pool_ready_without_mode_fails(self) -> None:
        error = self.refused(
            MessageID.ComputePoolReadyEvent,
            string_params={
                ParamKey.Pool: "default",
                ParamKey.Storage: "",
                ParamKey.Network: "net1",
                ParamKey.Gateway: "192.0.2.1",
            },
        )
        self.assertIn("Mode", error)

    # -- guest lifecycle ----------------------------------------------------------------------

    def test_create_with_progress_then_created(self) -> None:
        reply = self.create(image="img1")
        # As a stock Cell: not created yet, events follow.
        self.assertEqual(reply.bool_params, {ParamKey.Enable: False})
        self.assertEqual(reply.string_params, {ParamKey.Instance: "g1"})
        self.assertEqual(
            self.events.ids(),
            [MessageID.GuestUpdatedEvent] * 3 + [MessageID.GuestCreatedEvent],
        )
        self.assertEqual(
            [m.uint_params[ParamKey.Progress] for m in self.events.messages[:3]], [25, 50, 75]
        )
        created = self.events.messages[-1]
        self.assertEqual(created.string_params[ParamKey.Instance], "g1")
        self.assertIn(ParamKey.Monitor, created.uint_params)
        self.assertIs(self.cell.guests["g1"].state, GuestState.STOPPED)

    def test_create_with_auto_start(self) -> None:
        self.create(auto_start=True)
        self.assertEqual(
            self.events.ids(), [MessageID.GuestCreatedEvent, MessageID.GuestStartedEvent]
        )
        self.assertIs(self.cell.guests["g1"].state, GuestState.RUNNING)

    def test_create_missing_parameter(self) -> None:
        error = self.refused(MessageID.CreateGuestRequest, string_params={ParamKey.Instance: "x"})
        self.assertIn("missing", error)
        full = create_guest_request("y")
        for key in (ParamKey.Template, ParamKey.Mode, ParamKey.Limit):
            arrays = {k: v for k, v in full.uint_array_params.items() if k != key}
            error = self.refused(
                MessageID.CreateGuestRequest,
                string_params=full.string_params,
                uint_params=full.uint_params,
                bool_params=full.bool_params,
                uint_array_params=arrays,
                string_array_params=full.string_array_params,
            )
            self.assertIn(key.name, error)
        self.assertEqual(self.cell.guests, {})

    def test_a_creation_can_be_made_to_fail(self) -> None:
        self.cell.creation_failures.append("disk full")
        self.create("g1")
        failed = self.events.messages[-1]
        self.assertEqual((failed.id, failed.success, failed.error),
                         (MessageID.GuestUpdatedEvent, False, "disk full"))  # fmt: skip
        self.assertEqual(self.cell.guests, {})
        self.create("g2")
        self.assertEqual(self.events.ids()[-1], MessageID.GuestCreatedEvent)

    def test_start_stop_delete(self) -> None:
        self.create()
        instance = {ParamKey.Instance: "g1"}
        boot = {ParamKey.Option: 0}
        self.ok(MessageID.StartInstanceRequest, string_params=instance, uint_params=boot)
        # A stock Cell's words for what a race of two clients makes Core relay.
        self.assertEqual(
            self.refused(MessageID.DeleteGuestRequest, string_params=instance),
            "instance 'g1' is running",
        )
        self.assertEqual(
            self.refused(MessageID.StartInstanceRequest, string_params=instance, uint_params=boot),
            "instance 'g1' already started",
        )
        status = self.ok(MessageID.GetInstanceStatusRequest, string_params=instance)
        self.assertEqual(status.uint_params[ParamKey.Status], 1)
        self.ok(
            MessageID.StopInstanceRequest,
            string_params=instance,
            uint_array_params={ParamKey.Option: (0, 0)},
        )
        # Stopped at once when asked live; the event follows about a second later.
        status = self.ok(MessageID.GetInstanceStatusRequest, string_params=instance)
        self.assertEqual(status.uint_params[ParamKey.Status], 0)
        self.assertNotIn(MessageID.GuestStoppedEvent, self.events.ids())
        self.advance(1.0)
        self.assertEqual(
            self.refused(
                MessageID.StopInstanceRequest,
                string_params=instance,
                uint_array_params={ParamKey.Option: (0, 0)},
            ),
            "instance 'g1' alreay stopped",  # the stock Cell's spelling
        )
        self.ok(MessageID.DeleteGuestRequest, string_params=instance)
        self.assertEqual(
            self.events.ids()[1:],
            [
                MessageID.GuestStartedEvent,
                MessageID.GuestStoppedEvent,
                MessageID.GuestDeletedEvent,
            ],
        )
        self.assertEqual(self.cell.guests, {})

    def test_start_from_media(self) -> None:
        self.create()
        self.ok(
            MessageID.StartInstanceRequest,
            string_params={ParamKey.Instance: "g1", ParamKey.Source: "iso1",
                           ParamKey.Host: "127.0.0.1"},
            uint_params={ParamKey.Option: 1, ParamKey.Port: 5801},
        )  # fmt: skip
        self.assertEqual(self.events.ids()[-1], MessageID.MediaAttachedEvent)
        self.assertEqual(self.cell.guests["g1"].media, "iso1")

    def test_unknown_guest(self) -> None:
        error = self.refused(
            MessageID.GetInstanceStatusRequest, string_params={ParamKey.Instance: "nope"}
        )
        self.assertEqual(error, "invalid instance 'nope'")
        error = self.refused(MessageID.GetAuthRequest, string_params={ParamKey.Guest: "nope"})
        self.assertEqual(error, "invalid guest 'nope'")

    # -- modification -------------------------------------------------------------------------

    def test_modify(self) -> None:
        self.create()
        guest = {ParamKey.Guest: "g1"}
        self.ok(MessageID.ModifyCoreRequest, string_params=guest, uint_params={ParamKey.Core: 8})
        self.ok(MessageID.ModifyGuestNameRequest, string_params={**guest, ParamKey.Name: "g.new"})
        self.ok(
            MessageID.ModifyDiskThresholdRequest,
            string_params=guest,
            uint_array_params={ParamKey.Limit: (1, 2, 3, 4)},
        )
        self.ok(
            MessageID.ModifyNetworkThresholdRequest,
            string_params=guest,
            uint_array_params={ParamKey.Limit: (5, 6)},
        )
        self.assertEqual(
            self.refused(
                MessageID.ModifyCoreRequest, string_params=guest, uint_params={ParamKey.Core: 8}
            ),
            "no need to change",
        )
        self.assertEqual(
            self.refused(
                MessageID.ModifyNetworkThresholdRequest,
                string_params=guest,
                uint_array_params={ParamKey.Limit: (5, 6)},
            ),
            "no need to change",
        )
        self.assertEqual(
            self.refused(MessageID.ModifyAuthRequest, string_params={**guest, ParamKey.User: "a"}),
            "guest g1 is stopped, must be running",
        )
        self.ok(
            MessageID.StartInstanceRequest,
            string_params={ParamKey.Instance: "g1"},
            uint_params={ParamKey.Option: 0},
        )
        auth = self.ok(MessageID.ModifyAuthRequest, string_params={**guest, ParamKey.User: "adm"})
        self.assertEqual(auth.string_params[ParamKey.User], "adm")
        self.assertTrue(auth.string_params[ParamKey.Secret])
        secret = self.ok(MessageID.ResetSecretRequest, string_params=guest)
        g = self.cell.guests["g1"]
        self.assertEqual((g.cores, g.name, g.limits), (8, "g.new", [1, 2, 3, 4, 5, 6]))
        self.assertEqual(secret.string_params[ParamKey.Secret], g.monitor_secret)

    def test_resize_and_shrink(self) -> None:
        self.create()
        guest = {ParamKey.Guest: "g1"}
        self.ok(
            MessageID.ResizeDiskRequest,
            string_params=guest,
            uint_params={ParamKey.Disk: 1, ParamKey.Size: 40 * GiB},
        )
        for disk, size, error in (
            (1, GiB, "must larger than current volume size 40 GB"),
            (2, 50 * GiB, "invalid disk index 2"),
        ):
            self.assertEqual(
                self.refused(
                    MessageID.ResizeDiskRequest,
                    string_params=guest,
                    uint_params={ParamKey.Disk: disk, ParamKey.Size: size},
                ),
                error,
            )
        reply = self.ok(
            MessageID.ShrinkDiskRequest, string_params=guest, uint_params={ParamKey.Disk: 1}
        )
        self.assertEqual(reply.id, MessageID.ResizeDiskResponse)  # the real Cell's quirk
        self.cell.shrink_answer = MessageID.ShrinkDiskResponse
        reply = self.ok(
            MessageID.ShrinkDiskRequest, string_params=guest, uint_params={ParamKey.Disk: 1}
        )
        self.assertEqual(reply.id, MessageID.ShrinkDiskResponse)
        # A shrink compacts: the virtual size stays.
        self.assertEqual(self.cell.guests["g1"].disks, [10 * GiB, 40 * GiB])
        self.ok(
            MessageID.StartInstanceRequest,
            string_params={ParamKey.Instance: "g1"},
            uint_params={ParamKey.Option: 0},
        )
        for message_id in (MessageID.ResizeDiskRequest, MessageID.ShrinkDiskRequest):
            self.assertEqual(
                self.refused(
                    message_id,
                    string_params=guest,
                    uint_params={ParamKey.Disk: 0, ParamKey.Size: 90 * GiB},
                ),
                "instance 'g1' not stopped",
            )

    def reset(self) -> Message:
        return self.ok(
            MessageID.ResetSystemRequest,
            string_params={ParamKey.Guest: "g1", ParamKey.Image: "i", ParamKey.Host: "127.0.0.1"},
            uint_params={ParamKey.Port: 5801, ParamKey.Size: GiB},
        )

    def test_reset_system(self) -> None:
        self.create()
        self.assertIn(
            "missing string parameter Host",
            self.refused(
                MessageID.ResetSystemRequest,
                string_params={ParamKey.Guest: "g1", ParamKey.Image: "i"},
            ),
        )
        self.reset()
        guest = self.cell.guests["g1"]
        self.assertIs(guest.state, GuestState.RESETTING)
        self.assertIn(
            "cannot start",
            self.refused(
                MessageID.StartInstanceRequest,
                string_params={ParamKey.Instance: "g1"},
                uint_params={ParamKey.Option: 0},
            ),
        )
        seen = len(self.events.messages)
        self.advance(1.0)
        events = self.events.messages[seen:]
        self.assertEqual(
            [(m.id, m.uint_params.get(ParamKey.Progress)) for m in events],
            [(MessageID.GuestUpdatedEvent, 25), (MessageID.GuestUpdatedEvent, 50),
             (MessageID.GuestUpdatedEvent, 75), (MessageID.SystemResetEvent, None)],
        )  # fmt: skip
        self.assertEqual(
            (events[-1].success, events[-1].string_params), (True, {ParamKey.Guest: "g1"})
        )
        self.assertIs(guest.state, GuestState.STOPPED)

    def test_reset_system_failure(self) -> None:
        self.create()
        self.cell.reset_failures.append("qemu-img: image corrupt")
        self.reset()
        self.advance(1.0)
        end = self.events.messages[-1]
        self.assertEqual(
            (end.id, end.success, end.error),
            (MessageID.SystemResetEvent, False, "qemu-img: image corrupt"),
        )
        self.assertIs(self.cell.guests["g1"].state, GuestState.STOPPED)

    def test_live_status_grows_while_running(self) -> None:
        self.create()
        instance = {ParamKey.Instance: "g1"}
        stopped = self.ok(MessageID.GetInstanceStatusRequest, string_params=instance)
        self.assertEqual(
            (stopped.float_params[ParamKey.Usage], stopped.uint_array_params[ParamKey.IO]),
            (0.0, (0, 0, 0, 0)),
        )
        self.ok(
            MessageID.StartInstanceRequest,
            string_params=instance,
            uint_params={ParamKey.Option: 0},
        )
        self.advance(10.0)
        running = self.ok(MessageID.GetInstanceStatusRequest, string_params=instance)
        self.assertGreater(running.float_params[ParamKey.Usage], 0.0)
        read, written, received, sent = running.uint_array_params[ParamKey.IO]
        self.assertEqual((read, written, received, sent), (40960, 20480, 10240, 5120))
        memory, _ = running.uint_array_params[ParamKey.Available]
        self.assertLess(memory, self.cell.guests["g1"].memory)

    # -- media, snapshots ---------------------------------------------------------------------

    def test_media(self) -> None:
        self.create(auto_start=True)
        insert = {
            "string_params": {
                ParamKey.Instance: "g1", ParamKey.Media: "m1", ParamKey.Host: "127.0.0.1"
            },
            "uint_params": {ParamKey.Port: 5801},
        }  # fmt: skip
        self.ok(MessageID.InsertMediaRequest, **insert)
        self.assertEqual(
            self.refused(MessageID.InsertMediaRequest, **insert),
            "instance 'g1' already has media attached",
        )
        self.ok(MessageID.EjectMediaRequest, string_params={ParamKey.Instance: "g1"})
        self.assertEqual(
            self.events.ids()[-2:], [MessageID.MediaAttachedEvent, MessageID.MediaDetachedEvent]
        )
        self.assertEqual(
            self.refused(MessageID.EjectMediaRequest, string_params={ParamKey.Instance: "g1"}),
            "no media attached with instance 'g1'",
        )

    def test_snapshots(self) -> None:
        self.create()
        snap = {ParamKey.Instance: "g1", ParamKey.Name: "s1"}
        self.ok(MessageID.CreateSnapshotRequest, string_params={**snap, ParamKey.Description: "d"})
        self.ok(MessageID.CreateSnapshotRequest, string_params={**snap, ParamKey.Name: "s2"})
        listing = self.ok(MessageID.QuerySnapshotRequest, string_params={ParamKey.Instance: "g1"})
        self.assertEqual(listing.string_array_params[ParamKey.Name], ("s1", "s2"))
        self.assertEqual(listing.string_array_params[ParamKey.Previous], ("", "s1"))
        self.assertEqual(listing.uint_array_params[ParamKey.Current], (0, 1))
        detail = self.ok(MessageID.GetSnapshotRequest, string_params=snap)
        self.assertEqual(detail.string_params[ParamKey.Description], "d")
        self.assertEqual(
            self.refused(MessageID.CreateSnapshotRequest, string_params=snap),
            "snapshot 'g1.s1' exists",
        )
        self.ok(MessageID.RestoreSnapshotRequest, string_params=snap)
        # s1 is current and s2 depends on it.
        self.assertEqual(
            self.refused(MessageID.DeleteSnapshotRequest, string_params=snap),
            "can't delete current snapshot when backed by snapshot 's2'",
        )
        self.ok(MessageID.CreateSnapshotRequest, string_params={**snap, ParamKey.Name: "s3"})
        self.assertEqual(
            self.refused(MessageID.DeleteSnapshotRequest, string_params=snap),
            "more than one snapshot depend on 's1', can not delete",
        )
        self.ok(MessageID.DeleteSnapshotRequest, string_params={**snap, ParamKey.Name: "s2"})
        self.assertEqual(list(self.cell.guests["g1"].snapshots), ["s1", "s3"])
        self.assertEqual(self.cell.guests["g1"].current_snapshot, "s3")
        # s1 has one dependant left: deleting it backs s3 by what backed s1 (nothing).
        self.ok(MessageID.DeleteSnapshotRequest, string_params=snap)
        self.assertEqual(self.cell.guests["g1"].snapshots["s3"].parent, "")
        self.assertEqual(
            self.refused(MessageID.GetSnapshotRequest, string_params=snap),
            "invalid snapshot 's1'",
        )
        self.ok(
            MessageID.StartInstanceRequest,
            string_params={ParamKey.Instance: "g1"},
            uint_params={ParamKey.Option: 0},
        )
        self.assertEqual(
            self.refused(MessageID.CreateSnapshotRequest, string_params=snap),
            "live snapshot not supported yes, shutdown instance first",
        )

    # -- migration ----------------------------------------------------------------------------

    NFS = {ParamKey.Type: "nfs", ParamKey.Host: "192.0.2.9", ParamKey.Target: "/export"}

    def on_nfs(self) -> dict[str, SimulatedGuest]:
        """The Cell joins a pool on NFS; the export holds g7 and g8, made by another Cell."""
        self.ok(
            MessageID.ComputePoolReadyEvent,
            string_params={ParamKey.Pool: "shared", ParamKey.Storage: "nfs1",
                           ParamKey.Network: "", **self.NFS},
        )  # fmt: skip
        export = self.cell.shared.export("192.0.2.9", "/export")
        for guest in ("g7", "g8"):
            export[guest] = SimulatedGuest(id=guest, name=f"team.{guest}",
                                           state=GuestState.STOPPED)  # fmt: skip
        return export

    def test_what_the_cell_changes_is_on_the_export_before_it_answers(self) -> None:
        """On a folder that simulators share, a Cell killed right after a change leaves its
        guest as changed, for the Cell that takes it over (QA: the old name and cores)."""
        folder = Path(self.mktemp())
        self.cell.shared = SharedStorage(folder)
        self.on_nfs()
        self.create("g1")
        self.ok(MessageID.ModifyGuestNameRequest,
                string_params={ParamKey.Guest: "g1", ParamKey.Name: "team.renamed"})  # fmt: skip
        self.ok(MessageID.ModifyCoreRequest, string_params={ParamKey.Guest: "g1"},
                uint_params={ParamKey.Core: 3})  # fmt: skip
        reply = self.ok(MessageID.ResetSecretRequest, string_params={ParamKey.Guest: "g1"})
        seen = SharedStorage(folder).export("192.0.2.9", "/export")["g1"]
        self.assertEqual(
            (seen.name, seen.cores, seen.monitor_secret),
            ("team.renamed", 3, reply.string_params[ParamKey.Secret]),
        )

    def attach(self, *guests: str) -> Message:
        return self.ok(
            MessageID.AttachInstanceRequest,
            bool_params={ParamKey.Immediate: False},
            string_array_params={ParamKey.Instance: guests},
        )

    def migrate(self, session: int, *guests: str) -> None:
        # One-way: delivered into the Cell's still-open attach transaction.
        self.registry.send(
            CELL,
            Message(
                id=MessageID.MigrateInstanceRequest,
                to_session=session,
                string_params={ParamKey.Migration: "m1"},
                string_array_params={ParamKey.Instance: guests},
            ),
        )
        self.pump.flush()

    def test_attach_then_migrate(self) -> None:
        export = self.on_nfs()
        reply = self.attach("g7", "g8")
        self.assertNotEqual(reply.from_session, 0)
        self.assertEqual((self.cell.prepared(), self.cell.guests), ({"g7", "g8"}, {}))
        self.migrate(reply.from_session, "g7", "g8")
        migrated = self.events.messages[-1]
        self.assertEqual(migrated.id, MessageID.InstanceMigratedEvent)
        self.assertEqual(migrated.string_params[ParamKey.Migration], "m1")
        self.assertFalse(migrated.bool_params[ParamKey.Immediate])
        self.assertEqual(len(migrated.uint_array_params[ParamKey.Monitor]), 2)
        self.assertEqual(self.cell.guests, {"g7": export["g7"], "g8": export["g8"]})
        self.assertEqual(self.cell.prepared(), set())
        # Its guests now: it reports them, and their volumes stay on the export.
        listed = self.ok(
            MessageID.ComputePoolReadyEvent,
            string_params={
                ParamKey.Pool: "shared",
                ParamKey.Storage: "nfs1",
                ParamKey.Network: "",
                **self.NFS,
            },
        )
        self.assertEqual(set(listed.string_array_params[ParamKey.Instance]), {"g7", "g8"})
        self.ok(MessageID.DetachInstanceRequest, string_array_params={ParamKey.Instance: ("g7",)})
        self.assertEqual((set(self.cell.guests), set(export)), ({"g8"}, {"g7", "g8"}))

    def test_a_prepared_migration_is_undone(self) -> None:
        self.on_nfs()
        reply = self.attach("g7")
        again = self.refused(
            MessageID.AttachInstanceRequest,
            bool_params={ParamKey.Immediate: False},
            string_array_params={ParamKey.Instance: ("g7",)},
        )
        self.assertEqual(again, "instance 'g7' already attaching")
        # Without Core's Migrate within the Cell's timeout, the attach undoes itself.
        self.advance(10.0)
        self.assertEqual(self.cell.prepared(), set())
        self.migrate(reply.from_session, "g7")
        self.assertEqual(self.cell.guests, {})
        # Core cancels a prepared attach by detaching.
        reply = self.attach("g8")
        self.ok(MessageID.DetachInstanceRequest, string_array_params={ParamKey.Instance: ("g8",)})
        self.assertEqual(self.cell.prepared(), set())
        self.migrate(reply.from_session, "g8")
        self.assertEqual(self.cell.guests, {})

    def test_attach_refusals(self) -> None:
        immediate = {ParamKey.Immediate: False}
        self.assertEqual(
            self.refused(MessageID.AttachInstanceRequest, bool_params=immediate,
                         string_array_params={ParamKey.Instance: ("g7",)}),
            "instance storage is not shared, can not attach",
        )  # fmt: skip
        self.on_nfs()
        self.assertEqual(
            self.refused(MessageID.AttachInstanceRequest, bool_params=immediate,
                         string_array_params={ParamKey.Instance: ("g7", "nope")}),
            "invalid instance 'nope'",
        )  # fmt: skip
        self.assertEqual(self.cell.prepared(), set())

    def test_a_failed_activation_says_nothing(self) -> None:
        self.on_nfs()
        reply = self.attach("g7")
        self.cell.inject(MessageID.MigrateInstanceRequest, Fault(drop=True))
        seen = len(self.events.messages)
        self.migrate(reply.from_session, "g7")
        self.assertEqual((self.cell.guests, self.cell.prepared()), ({}, set()))
        self.assertEqual(len(self.events.messages), seen)

    def test_guests_made_here_are_on_the_export(self) -> None:
        export = self.on_nfs()
        self.create("g1")
        self.assertIs(export["g1"], self.cell.guests["g1"])
        self.ok(MessageID.DeleteGuestRequest, string_params={ParamKey.Instance: "g1"})
        self.assertNotIn("g1", export)

    def attach_at_once(self, guest: str) -> None:
        """Core's failover attach of ``guest``, lost with ``Cell_dead``, answered at once."""
        self.registry.send(
            CELL,
            Message(
                id=MessageID.AttachInstanceRequest,
                bool_params={ParamKey.Immediate: True},
                string_params={ParamKey.Cell: "Cell_dead"},
                string_array_params={ParamKey.Instance: (guest,)},
            ),
        )
        self.pump.flush()

    def test_immediate_attach_for_failover(self) -> None:
        self.on_nfs()
        self.attach_at_once("g7")
        migrated = self.events.messages[-1]
        self.assertTrue(migrated.bool_params[ParamKey.Immediate])
        self.assertEqual(migrated.string_params[ParamKey.Cell], "Cell_dead")
        self.assertEqual(list(self.cell.guests), ["g7"])

    def test_immediate_attach_failure_answers_the_requests_from(self) -> None:
        """As a stock Cell: its refusal's ``to`` is the attach's ``from`` (Nano's failover
        attach carried none, so the refusal named no request)."""
        self.on_nfs()
        refusal = self.refused(
            MessageID.AttachInstanceRequest,
            bool_params={ParamKey.Immediate: True},
            string_params={ParamKey.Cell: "Cell_dead"},
            string_array_params={ParamKey.Instance: ("gone",)},
        )
        self.assertEqual(refusal, "invalid instance 'gone'")

    def test_detach_and_purge(self) -> None:
        self.create("g1")
        self.create("g2")
        self.ok(MessageID.DetachInstanceRequest, string_array_params={ParamKey.Instance: ("g1",)})
        self.assertEqual(list(self.cell.guests), ["g2"])
        self.ok(MessageID.DetachInstanceRequest)
        self.assertEqual(self.cell.guests, {})

    # -- storage, rules, images ---------------------------------------------------------------

    def test_storage_paths(self) -> None:
        self.ok(
            MessageID.ModifyCellStorageRequest,
            string_params={ParamKey.Cell: CELL, ParamKey.Path: "/data"},
        )
        reply = self.ok(MessageID.QueryCellStorageRequest, string_params={ParamKey.Cell: CELL})
        self.assertEqual(reply.string_array_params[ParamKey.System], ("/data",))
        self.assertEqual(reply.uint_params[ParamKey.Mode], 0)
        self.assertEqual(
            self.refused(
                MessageID.ModifyCellStorageRequest,
                string_params={ParamKey.Cell: CELL, ParamKey.Path: "/data"},
            ),
            "no need to change storage path",
        )

    def test_storage_path_of_an_nfs_cell_cannot_change(self) -> None:
        """As a real Cell: its volumes live on the NFS pool, there is no local path."""
        nfs = {ParamKey.Type: "nfs", ParamKey.Host: "192.0.2.9", ParamKey.Target: "/export"}
        self.ok(
            MessageID.ComputePoolReadyEvent,
            string_params={
                ParamKey.Pool: "shared",
                ParamKey.Storage: "nfs1",
                ParamKey.Network: "",
                **nfs,
            },
        )
        reply = self.ok(MessageID.QueryCellStorageRequest, string_params={ParamKey.Cell: CELL})
        self.assertEqual(reply.uint_params[ParamKey.Mode], 1)
        error = self.refused(
            MessageID.ModifyCellStorageRequest,
            string_params={ParamKey.Cell: CELL, ParamKey.Path: "/data"},
        )
        self.assertEqual(error, "must running in local mode")
        self.assertEqual(self.cell.storage_paths, ["/var/lib/libvirt/images"])

    def test_security_rules(self) -> None:
        self.create()
        instance = {ParamKey.Instance: "g1"}

        def rule(port: int) -> dict[str, Any]:
            return {
                "string_params": instance,
                "bool_params": {ParamKey.Action: True},
                "uint_params": {
                    ParamKey.Protocol: 0,
                    ParamKey.From: 0,
                    ParamKey.To: 0,
                    ParamKey.Port: port,
                },
            }

        self.ok(MessageID.AddGuestRuleRequest, **rule(22))
        self.ok(MessageID.AddGuestRuleRequest, **rule(80))
        self.ok(MessageID.ModifyGuestRuleRequest, int_params={ParamKey.Index: 1}, **rule(443))
        self.ok(
            MessageID.ChangeGuestRuleOrderRequest,
            string_params=instance,
            int_params={ParamKey.Index: 1, ParamKey.Mode: 1},
        )
        self.ok(
            MessageID.ChangeGuestRuleDefaultActionRequest,
            string_params=instance,
            bool_params={ParamKey.Action: False},
        )
        rules = self.ok(MessageID.GetGuestRuleRequest, string_params=instance)
        self.assertEqual(rules.uint_array_params[ParamKey.Port], (443, 22))
        self.assertEqual(rules.uint_array_params[ParamKey.Action], (0, 0, 1))
        self.ok(
            MessageID.RemoveGuestRuleRequest,
            string_params=instance,
            int_params={ParamKey.Index: 0},
        )
        self.assertEqual(
            self.refused(
                MessageID.RemoveGuestRuleRequest,
                string_params=instance,
                int_params={ParamKey.Index: 5},
            ),
            "invalid rule index 5 for instance 'group.vm'",
        )
        for params, error in (
            (rule(22), "tcp:->:22 already defined on 0th rule of instance 'group.vm'"),
            (rule(0), "invalid target port 0"),
        ):
            self.assertEqual(self.refused(MessageID.AddGuestRuleRequest, **params), error)
        self.assertEqual(
            self.refused(
                MessageID.ChangeGuestRuleOrderRequest,
                string_params=instance,
                int_params={ParamKey.Index: 0, ParamKey.Mode: 1},
            ),
            "already on top",
        )
        self.assertEqual(
            self.refused(
                MessageID.ChangeGuestRuleDefaultActionRequest,
                string_params=instance,
                bool_params={ParamKey.Action: False},
            ),
            "no need to change",
        )
        self.assertEqual([r.port for r in self.cell.guests["g1"].rules], [22])

    def test_create_disk_image_progress(self) -> None:
        self.create()
        progress: list[Message] = []
        d = self.registry.request(
            CELL,
            Message(
                id=MessageID.CreateDiskImageRequest,
                string_params={ParamKey.Guest: "g1", ParamKey.Image: "img"},
            ),
            is_reply=lambda m: (
                m.id == MessageID.DiskImageUpdatedEvent
                and m.bool_params.get(ParamKey.Enable, False)
            ),
            on_progress=progress.append,
        )
        self.pump.flush()
        self.advance(1.0)
        final = self.successResultOf(d)
        self.assertEqual(final.uint_params[ParamKey.Size], 10 * GiB)
        ids = [m.id for m in progress]
        self.assertEqual(ids, [MessageID.CreateDiskImageResponse, MessageID.DiskImageUpdatedEvent])

    # -- faults -------------------------------------------------------------------------------

    def test_fault_error(self) -> None:
        self.cell.inject(MessageID.GetAuthRequest, Fault(error="injected"))
        self.create()
        self.assertEqual(
            self.refused(MessageID.GetAuthRequest, string_params={ParamKey.Guest: "g1"}),
            "injected",
        )
        self.ok(MessageID.GetAuthRequest, string_params={ParamKey.Guest: "g1"})

    def test_fault_drop_times_out(self) -> None:
        self.cell.inject(MessageID.QueryCellStorageRequest, Fault(drop=True, times=None))
        d = self.call(MessageID.QueryCellStorageRequest, string_params={ParamKey.Cell: CELL})
        self.advance(10.0)
        self.failureResultOf(d, TransactionTimeout)
        self.assertIn(MessageID.QueryCellStorageRequest, self.cell.faults)

    def test_fault_delay(self) -> None:
        self.cell.inject(MessageID.QueryCellStorageRequest, Fault(delay=5.0))
        d = self.call(MessageID.QueryCellStorageRequest, string_params={ParamKey.Cell: CELL})
        self.advance(4.9)
        self.assertNoResult(d)
        self.advance(0.2)
        self.successResultOf(d)

    def test_fault_disconnect(self) -> None:
        self.cell.inject(MessageID.QueryCellStorageRequest, Fault(disconnect=True))
        d = self.call(MessageID.QueryCellStorageRequest, string_params={ParamKey.Cell: CELL})
        self.pump.flush()
        self.failureResultOf(d)
        self.assertEqual(self.events.disconnected, [False])
        self.assertIsNone(self.cell.link)
        self.assertIs(self.registry.state(CELL), CellLiveness.DISCONNECTED)

    def test_kill_is_not_graceful(self) -> None:
        link = self.cell.link
        assert link is not None
        self.cell.kill()
        self.pump.flush()
        self.assertIs(link.state, LinkState.CLOSED)
        self.assertEqual(self.events.disconnected, [False])


class SimulatorPluginTests(SynchronousTestCase):
    """``twistd nanocell-sim``: options and the service it composes."""

    def setUp(self) -> None:
        self.cert_dir = Path(self.mktemp())
        self.cert_dir.mkdir()
        load_or_create_ca(self.cert_dir)

    def parse(self, *args: str) -> simtap.Options:
        options = simtap.Options()
        options.parseOptions(["--cert-dir", str(self.cert_dir), *args])
        return options

    def test_plugin_is_found(self) -> None:
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("nanocell-sim", makers)
        self.assertIsInstance(makers["nanocell-sim"].options(), simtap.Options)

    def test_defaults(self) -> None:
        options = self.parse()
        self.assertEqual(
            (options["host"], options["port"], options["count"]), ("127.0.0.1", 5600, 10)
        )
        self.assertEqual(options.cell_names()[:2], ["Cell_sim000000", "Cell_sim000001"])

    def test_bad_options(self) -> None:
        for args in (
            ["--core", "localhost"],
            ["--core", "127.0.0.1:0"],
            ["--count", "0"],
            ["--count", "many"],
            ["--usage", "101"],
            ["--link", "quic"],
            ["--creation-time", "-1"],
            ["--stop-time", "-0.5"],
        ):
            self.assertRaises(usage.UsageError, self.parse, *args)
        self.assertRaises(
            usage.UsageError,
            simtap.Options().parseOptions,
            ["--cert-dir", str(self.cert_dir / "missing")],
        )

    def test_timing_options(self) -> None:
        options = self.parse("--count", "1", "--creation-time", "0", "--stop-time", "2.5")
        self.assertEqual((options["creation-time"], options["stop-time"]), (0.0, 2.5))

    def test_make_service(self) -> None:
        options = self.parse("--count", "3", "--prefix", "Cell_demo", "--memory", "4")
        service = simtap.makeService(options, MemoryReactorClock())
        assert isinstance(service, MultiService)
        self.assertEqual(
            sorted(s.name for s in service),
            ["Cell_demo000000", "Cell_demo000001", "Cell_demo000002"],
        )

    def test_kcp_cells_need_no_certificate(self) -> None:
        """--link kcp: Cells link as stock Cells do, with no CA anywhere; nothing is sent
        until the service starts."""
        options = simtap.Options()
        options.parseOptions(
            ["--link", "kcp", "--cert-dir", str(self.cert_dir / "missing"), "--count", "2"]
        )
        reactor = MemoryReactorClock()
        service = simtap.makeService(options, reactor)
        assert isinstance(service, MultiService)
        self.assertEqual([type(cell).__name__ for cell in service], ["KCPClientService"] * 2)
        self.assertFalse((self.cert_dir / "missing").exists())

    def test_make_service_with_discovery(self) -> None:
        """--discover builds the same Cells; nothing is sent until the service starts."""
        reactor = MemoryReactorClock()
        options = self.parse("--discover", "--count", "2")
        service = simtap.makeService(options, reactor)
        assert isinstance(service, MultiService)
        self.assertEqual(len(list(service)), 2)
        self.assertEqual(reactor.tcpClients, [])


class DiscoverCoreTests(SynchronousTestCase):
    """The Locate a FakeCell uses to find Core by discovery (with a fake query)."""

    def locate(self, echo: SonarEcho) -> tuple[list[dict[str, Any]], Deferred[tuple[str, int]]]:
        asked: list[dict[str, Any]] = []

        def find(reactor: object, clock: object, **query: Any) -> Deferred[SonarEcho]:
            asked.append(query)
            return succeed(echo)

        locate = discover_core(None, Clock(), find=find, domain="lab", interface="127.0.0.1")
        return asked, locate()

    def test_core_service_address(self) -> None:
        echo = SonarEcho(
            id=7,
            requestor="127.0.0.1",
            services=(
                ServiceEntry("image", "tls", "127.0.0.9", 5601),
                ServiceEntry("core", "tls", "127.0.0.1", 5600),
            ),
        )
        asked, d = self.locate(echo)
        self.assertEqual(self.successResultOf(d), ("127.0.0.1", 5600))
        self.assertEqual(asked, [{"domain": "lab", "interface": "127.0.0.1"}])

    def test_no_core_service(self) -> None:
        _, d = self.locate(SonarEcho(id=7, requestor="127.0.0.1"))
        self.failureResultOf(d, NoCoreService)

    def test_the_entry_of_its_own_wire(self) -> None:
        """Core advertises KCP first (for stock Cells): our TLS Cell skips it."""
        echo = SonarEcho(
            id=7,
            requestor="127.0.0.1",
            services=(
                ServiceEntry("core", "kcp", "127.0.0.1", 5600),
                ServiceEntry("core", "tls", "127.0.0.1", 5601),
            ),
        )
        _, d = self.locate(echo)
        self.assertEqual(self.successResultOf(d), ("127.0.0.1", 5601))
        only_kcp = SonarEcho(id=8, requestor="127.0.0.1", services=echo.services[:1])
        _, d = self.locate(only_kcp)
        self.failureResultOf(d, NoCoreService)
