"""Cell membership and storage-path routes through StubTreq, over the real app and store."""

from __future__ import annotations

from nanocore import model as m
from nanocore.api import envelope
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.cluster.transactions import reply_to
from nanocore.store import Delete, UnitOfWork
from tests.cellfixtures import TIMEOUT, HarnessTestCase, instance, ready, status_report

CELL = "Cell_0000000000a1"
OTHER = "Cell_0000000000b2"


def pool_push_params(message: Message) -> dict[int, str]:
    return dict(message.string_params)


class CellRouteTests(HarnessTestCase):
    # -- lists --------------------------------------------------------------------------------

    async def test_unallocated_cells_exact_envelope(self) -> None:
        answer = await self.h.api.get("/compute_pool_cells/")
        self.assertEqual(answer.body, envelope.success([]))
        self.h.connect(CELL, status_report(), address="127.0.0.2")
        answer = await self.h.api.get("/compute_pool_cells/")
        self.assertEqual(answer.status, 200)
        self.assertEqual(
            answer.envelope(),
            {
                "error_code": 0,
                "message": "",
                "data": [
                    {
                        "name": CELL,
                        "address": "127.0.0.2",
                        "enabled": True,
                        "alive": True,
                        "PurgeAppending": False,
                    }
                ],
            },
        )

    async def test_cells_of_a_pool_sorted_and_unknown_pool(self) -> None:
        await self.h.member(OTHER, "shared")
        await self.h.member(CELL, "shared", enabled=False)
        answer = await self.h.api.get("/compute_pool_cells/shared")
        self.assertEqual([c["name"] for c in answer.data], [CELL, OTHER])
        self.assertEqual(
            answer.data[0],
            {
                "name": CELL,
                "address": "",
                "enabled": False,
                "alive": False,
                "PurgeAppending": False,
            },
        )
        self.assertEqual(
            (await self.h.api.get("/compute_pool_cells/local")).body, envelope.success([])
        )
        answer = await self.h.api.get("/compute_pool_cells/nope")
        self.assertEqual(answer.body, envelope.failure("invalid pool 'nope'"))

    # -- add ----------------------------------------------------------------------------------

    async def test_add_pushes_storage_and_network_with_mode_then_commits(self) -> None:
        self.h.connect(CELL, status_report())
        self.h.directory.responders[CELL] = ready
        answer = await self.h.api.post(f"/compute_pool_cells/shared/{CELL}")
        self.assertEqual(answer.body, envelope.success(""))
        push = self.h.directory.last_request(CELL)
        self.assertEqual(push.id, MessageID.ComputePoolReadyEvent)
        self.assertEqual(
            pool_push_params(push),
            {
                ParamKey.Pool: "shared",
                ParamKey.Storage: "nfs1",
                ParamKey.Type: "nfs",
                ParamKey.Host: "127.0.0.1",
                ParamKey.Target: "/exports/nano",
                ParamKey.Network: "net1",
                ParamKey.Gateway: "192.0.2.1",
                ParamKey.Mode: "cloudinit",
            },
        )
        self.assertEqual(push.string_array_params[ParamKey.Server], ("192.0.2.53",))
        self.assertEqual(self.h.store.view.cells[CELL], m.ComputeCell(name=CELL, pool="shared"))
        self.assertEqual((await self.h.api.get("/compute_pool_cells/")).data, [])
        listed = (await self.h.api.get("/compute_pool_cells/shared")).data
        self.assertEqual([c["name"] for c in listed], [CELL])

    async def test_add_to_a_local_pool_sends_empty_storage_and_network(self) -> None:
        self.h.connect(CELL)
        self.h.directory.responders[CELL] = ready
        answer = await self.h.api.post(f"/compute_pool_cells/local/{CELL}")
        self.assertEqual(answer.body, envelope.success(""))
        self.assertEqual(
            pool_push_params(self.h.directory.last_request(CELL)),
            {
                ParamKey.Pool: "local",
                ParamKey.Storage: "",
                ParamKey.Network: "",
                ParamKey.Mode: "",
            },
        )

    async def test_add_takes_in_the_reported_inventory(self) -> None:
        self.h.connect(CELL)

        def with_guest(request: Message) -> Message:
            return ready(
                request,
                uint_params={ParamKey.Count: 1},
                string_array_params={
                    ParamKey.Name: ("admin.web",),
                    ParamKey.Instance: ("guest-1",),
                    ParamKey.User: ("admin",),
                    ParamKey.Group: ("admin",),
                    ParamKey.Secret: ("s3cret",),
                    ParamKey.Address: ("192.0.2.10",),
                    ParamKey.System: ("linux",),
                    ParamKey.Create: ("2024-05-01 10:00:00",),
                    ParamKey.Internal: ("192.0.2.10/24",),
                    ParamKey.External: ("",),
                    ParamKey.Hardware: ("00:16:3e:00:00:01",),
                },
                uint_array_params={
                    ParamKey.Core: (2,),
                    ParamKey.Option: (1,),
                    ParamKey.Enable: (1,),
                    ParamKey.Progress: (0,),
                    ParamKey.Status: (1,),
                    ParamKey.Monitor: (5901,),
                    ParamKey.Memory: (1 << 30,),
                    ParamKey.Count: (2,),
                    ParamKey.Disk: (10 << 30, 20 << 30),
                    ParamKey.Priority: (1,),
                    ParamKey.Limit: (1, 2, 3, 4, 5, 6),
                },
            )

        self.h.directory.responders[CELL] = with_guest
        answer = await self.h.api.post(f"/compute_pool_cells/shared/{CELL}")
        self.assertEqual(answer.body, envelope.success(""))
        guest = self.h.store.view.instances["guest-1"]
        self.assertEqual((guest.name, guest.pool, guest.cell), ("web", "shared", CELL))
        self.assertEqual(guest.disks, (10 << 30, 20 << 30))
        self.assertTrue(guest.running)
        self.assertEqual(guest.internal.assigned_address, "192.0.2.10/24")
        self.assertEqual(guest.internal.monitor_port, 5901)
        self.assertEqual(guest.qos.send_speed, 6)
        self.assertEqual(guest.create_time, "2024-05-01 10:00:00")

    async def test_add_timeout_leaves_no_membership(self) -> None:
        self.h.connect(CELL)
        adding = self.h.api.post(f"/compute_pool_cells/shared/{CELL}")
        self.assertNoResult(adding)
        self.h.clock.advance(TIMEOUT)
        answer = await adding
        self.assertEqual(answer.body, envelope.failure("wait cell ready timeout"))
        self.assertNotIn(CELL, self.h.store.view.cells)
        # Should the Cell apply the push late, it is told to drop it.
        self.assertEqual(
            [(name, message.id) for name, message in self.h.directory.sent],
            [(CELL, MessageID.ComputeCellRemovedEvent)],
        )
        unallocated = (await self.h.api.get("/compute_pool_cells/")).data
        self.assertEqual([c["name"] for c in unallocated], [CELL])
        # The claim is gone: a later add that the Cell answers succeeds.
        self.h.directory.responders[CELL] = ready
        answer = await self.h.api.post(f"/compute_pool_cells/shared/{CELL}")
        self.assertEqual(answer.body, envelope.success(""))
        self.assertEqual(self.h.store.view.cells[CELL].pool, "shared")

    async def test_concurrent_add_of_the_same_cell_is_refused(self) -> None:
        self.h.connect(CELL)
        first = self.h.api.post(f"/compute_pool_cells/shared/{CELL}")
        second = await self.h.api.post(f"/compute_pool_cells/local/{CELL}")
        self.assertEqual(
            second.error, f"cell '{CELL}' already allocated (being added to pool 'shared')"
        )
        # While claimed it is not offered as unallocated either.
        self.assertEqual((await self.h.api.get("/compute_pool_cells/")).data, [])
        self.assertEqual(len(self.h.directory.requests), 1)
        self.h.directory.answer(ready(self.h.directory.last_request(CELL)), CELL)
        self.assertEqual((await first).body, envelope.success(""))

    async def test_cell_refusal_is_reported_and_nothing_is_committed(self) -> None:
        self.h.connect(CELL)
        self.h.directory.responders[CELL] = lambda request: reply_to(
            request, id=MessageID.ComputeCellReadyEvent, success=False, error="mount failed"
        )
        answer = await self.h.api.post(f"/compute_pool_cells/shared/{CELL}")
        self.assertEqual(answer.body, envelope.failure(f"cell '{CELL}' not ready: mount failed"))
        self.assertNotIn(CELL, self.h.store.view.cells)

    async def test_cell_dropping_during_add_commits_nothing(self) -> None:
        self.h.connect(CELL)
        adding = self.h.api.post(f"/compute_pool_cells/shared/{CELL}")
        self.h.directory.disconnect(CELL)
        answer = await adding
        self.assertEqual(answer.error, f"cell '{CELL}' is not connected")
        self.assertNotIn(CELL, self.h.store.view.cells)

    async def test_add_validation_errors(self) -> None:
        await self.h.member(OTHER, "local")
        self.h.connect(OTHER)
        self.h.directory.requests.clear()  # the rejoin push on connect
        cases = {
            f"/compute_pool_cells/nope/{CELL}": "invalid pool 'nope'",
            f"/compute_pool_cells/shared/{CELL}": f"invalid cell '{CELL}'",
            f"/compute_pool_cells/shared/{OTHER}": f"cell '{OTHER}' already allocated",
            f"/compute_pool_cells/local/{OTHER}": f"cell '{OTHER}' already in pool 'local'",
        }
        for path, message in cases.items():
            answer = await self.h.api.post(path)
            self.assertEqual(answer.body, envelope.failure(message), path)
        self.h.connect(CELL)
        self.h.directory.disconnect(CELL)
        answer = await self.h.api.post(f"/compute_pool_cells/shared/{CELL}")
        self.assertEqual(answer.body, envelope.failure(f"cell '{CELL}' is not connected"))
        self.assertEqual(self.h.directory.requests, [])

    # -- remove -------------------------------------------------------------------------------

    async def test_remove_commits_then_tells_the_cell(self) -> None:
        await self.h.member(CELL, "shared")
        self.h.connect(CELL)
        self.h.directory.requests.clear()
        answer = await self.h.api.delete(f"/compute_pool_cells/shared/{CELL}")
        self.assertEqual(answer.body, envelope.success(""))
        self.assertNotIn(CELL, self.h.store.view.cells)
        self.assertEqual(
            [(name, message.id) for name, message in self.h.directory.sent],
            [(CELL, MessageID.ComputeCellRemovedEvent)],
        )
        unallocated = (await self.h.api.get("/compute_pool_cells/")).data
        self.assertEqual([c["name"] for c in unallocated], [CELL])

    async def test_remove_of_a_disconnected_cell_still_succeeds(self) -> None:
        await self.h.member(CELL, "shared")
        answer = await self.h.api.delete(f"/compute_pool_cells/shared/{CELL}")
        self.assertEqual(answer.body, envelope.success(""))
        self.assertEqual(self.h.directory.sent, [])

    async def test_remove_refused_while_instances_left_or_not_member(self) -> None:
        await self.h.member(CELL, "shared")
        await self.h.put(instance("i1", CELL), instance("i2", CELL))
        answer = await self.h.api.delete(f"/compute_pool_cells/shared/{CELL}")
        self.assertEqual(
            answer.error,
            f"2 instance(s) left in cell '{CELL}', "
            "migrate or delete all instance(s) before remove cell",
        )
        self.assertEqual(self.h.store.view.cells[CELL].pool, "shared")
        answer = await self.h.api.delete(f"/compute_pool_cells/local/{CELL}")
        self.assertEqual(answer.error, f"cell '{CELL}' not in pool 'local'")
        answer = await self.h.api.delete(f"/compute_pool_cells/nope/{CELL}")
        self.assertEqual(answer.error, "invalid pool 'nope'")
        # A Cell Core never saw, in Core's words (observed-with-cells.md, without Cells #1).
        answer = await self.h.api.delete("/compute_pool_cells/shared/Cell_never")
        self.assertEqual(answer.error, "invalid compute cell 'Cell_never'")

    # -- enable / disable / purge -------------------------------------------------------------

    async def test_disable_enable_and_purge(self) -> None:
        await self.h.member(CELL, "shared")
        path = f"/compute_pool_cells/shared/{CELL}"
        self.assertEqual(
            (await self.h.api.put(path, {"enable": True})).error, f"cell '{CELL}' already enabled"
        )
        self.assertEqual(
            (await self.h.api.put(path, {"enable": False})).body, envelope.success("")
        )
        self.assertFalse(self.h.store.view.cells[CELL].enabled)
        self.assertEqual(
            (await self.h.api.put(path, {"enable": False})).error,
            f"cell '{CELL}' already disabled",
        )
        # Disabled already, but asking for the purge the original dropped is a change.
        answer = await self.h.api.put(path, {"enable": False, "purge": True})
        self.assertEqual(answer.body, envelope.success(""))
        self.assertEqual(
            self.h.store.view.cells[CELL],
            m.ComputeCell(name=CELL, pool="shared", enabled=False, purge_pending=True),
        )
        listed = (await self.h.api.get("/compute_pool_cells/shared")).data
        self.assertIs(listed[0]["PurgeAppending"], True)
        # Enabling cancels the pending purge.
        self.assertEqual((await self.h.api.put(path, {"enable": True})).body, envelope.success(""))
        self.assertEqual(self.h.store.view.cells[CELL], m.ComputeCell(name=CELL, pool="shared"))

    async def test_modify_validation(self) -> None:
        await self.h.member(CELL, "shared")
        path = f"/compute_pool_cells/shared/{CELL}"
        self.assertEqual((await self.h.api.put(path)).error, "EOF")
        self.assertEqual(
            (await self.h.api.put(path, {"enable": "no"})).error,
            "json: cannot unmarshal string into Go struct field request.enable of type bool",
        )
        self.assertEqual(
            (await self.h.api.put(path, {"enable": True, "purge": True})).error,
            "purge applies only when disabling a cell",
        )
        self.assertEqual(
            (await self.h.api.put(f"/compute_pool_cells/local/{CELL}", {"enable": False})).error,
            f"cell '{CELL}' not in pool 'local'",
        )
        self.assertEqual(
            (await self.h.api.put(f"/compute_pool_cells/nope/{CELL}", {"enable": False})).error,
            "invalid pool 'nope'",
        )
        never = await self.h.api.put("/compute_pool_cells/shared/Cell_never", {"enable": False})
        self.assertEqual(never.error, "invalid compute cell 'Cell_never'")
        self.assertEqual(self.h.store.view.cells[CELL], m.ComputeCell(name=CELL, pool="shared"))

    # -- get ----------------------------------------------------------------------------------

    async def test_get_asks_a_live_enabled_cell_for_its_storage(self) -> None:
        await self.h.member(CELL, "shared")
        self.h.connect(CELL, status_report())
        self.h.directory.responders[CELL] = lambda request: reply_to(
            request,
            string_array_params={
                ParamKey.Storage: ("nfs1", "nfs2"),
                ParamKey.Error: ("", "no route"),
            },
            uint_array_params={ParamKey.Attach: (1, 0)},
        )
        answer = await self.h.api.get(f"/compute_pool_cells/shared/{CELL}")
        self.assertEqual(
            answer.envelope(),
            {
                "error_code": 0,
                "message": "",
                "data": {
                    "name": CELL,
                    "address": "127.0.0.1",
                    "enabled": True,
                    "alive": True,
                    "storage": [
                        {"name": "nfs1", "attached": True},
                        {"name": "nfs2", "attached": False, "error": "no route"},
                    ],
                },
            },
        )
        request = self.h.directory.last_request(CELL)
        self.assertEqual(request.id, MessageID.GetComputePoolCellRequest)
        self.assertEqual(request.string_params[ParamKey.Cell], CELL)

    async def test_get_does_not_ask_a_disabled_or_dead_cell(self) -> None:
        await self.h.member(CELL, "shared", enabled=False)
        self.h.connect(CELL, status_report())
        self.h.directory.requests.clear()  # the rejoin push on connect
        answer = await self.h.api.get(f"/compute_pool_cells/shared/{CELL}")
        self.assertEqual(
            answer.data, {"name": CELL, "address": "127.0.0.1", "enabled": False, "alive": True}
        )
        await self.h.member(OTHER, "shared")
        answer = await self.h.api.get(f"/compute_pool_cells/shared/{OTHER}")
        self.assertEqual(
            answer.data, {"name": OTHER, "address": "", "enabled": True, "alive": False}
        )
        self.assertEqual(self.h.directory.requests, [])

    async def test_get_errors(self) -> None:
        await self.h.member(CELL, "shared")
        self.h.connect(CELL, status_report())
        getting = self.h.api.get(f"/compute_pool_cells/shared/{CELL}")
        self.h.clock.advance(TIMEOUT)
        self.assertEqual((await getting).error, "cell timeout")
        self.assertEqual(
            (await self.h.api.get(f"/compute_pool_cells/local/{CELL}")).error,
            f"cell '{CELL}' not in pool 'local'",
        )
        # Core's read never looks the pool up (observed-with-cells.md, with Cells #5).
        self.assertEqual(
            (await self.h.api.get(f"/compute_pool_cells/nope/{CELL}")).error,
            f"cell '{CELL}' not in pool 'nope'",
        )
        self.assertEqual(
            (await self.h.api.get("/compute_pool_cells/shared/Cell_never")).error,
            "invalid cell 'Cell_never'",
        )

    # -- storage paths ------------------------------------------------------------------------

    async def test_query_storage_paths(self) -> None:
        await self.h.member(CELL, "shared")
        self.h.connect(CELL)
        self.h.directory.responders[CELL] = lambda request: reply_to(
            request,
            uint_params={ParamKey.Mode: 1},
            string_array_params={ParamKey.System: ("/a",), ParamKey.Data: ("/a", "/b")},
        )
        answer = await self.h.api.get(f"/compute_cell_status/shared/{CELL}/storages/")
        self.assertEqual(
            answer.body, envelope.success({"mode": "nfs", "system": ["/a"], "data": ["/a", "/b"]})
        )
        self.assertEqual(self.h.directory.last_request(CELL).id, MessageID.QueryCellStorageRequest)

    async def test_change_storage_path(self) -> None:
        await self.h.member(CELL, "shared")
        self.h.connect(CELL)
        self.h.directory.responders[CELL] = lambda request: reply_to(request)
        path = f"/compute_cell_status/shared/{CELL}/storages/"
        answer = await self.h.api.put(path, {"default": "/srv/vm"})
        self.assertEqual(answer.body, envelope.success(""))
        request = self.h.directory.last_request(CELL)
        self.assertEqual(request.id, MessageID.ModifyCellStorageRequest)
        self.assertEqual(
            dict(request.string_params), {ParamKey.Cell: CELL, ParamKey.Path: "/srv/vm"}
        )

    async def test_storage_path_errors(self) -> None:
        await self.h.member(CELL, "shared")
        path = f"/compute_cell_status/shared/{CELL}/storages/"
        self.assertEqual((await self.h.api.put(path, {})).error, "target path required")
        self.assertEqual(
            (await self.h.api.put(path, {"default": 7})).error,
            "json: cannot unmarshal number 7 into Go struct field request.default of type string",
        )
        self.assertEqual((await self.h.api.get(path)).error, f"cell '{CELL}' is not connected")
        self.assertEqual(
            (await self.h.api.get(f"/compute_cell_status/local/{CELL}/storages/")).error,
            f"cell '{CELL}' not in pool 'local'",
        )
        self.h.connect(CELL)
        self.h.directory.responders[CELL] = lambda request: reply_to(
            request, success=False, error="no such path"
        )
        self.assertEqual(
            (await self.h.api.put(path, {"default": "/x"})).error, f"cell '{CELL}': no such path"
        )
        self.h.directory.responders.clear()
        querying = self.h.api.get(path)
        self.h.clock.advance(TIMEOUT)
        self.assertEqual((await querying).error, "cell timeout")

    async def test_pool_changed_or_deleted_during_the_wait_refuses_the_add(self) -> None:
        self.h.connect(CELL)
        adding = self.h.api.post(f"/compute_pool_cells/local/{CELL}")
        await self.h.put(m.ComputePool(name="local", storage="nfs1"))
        self.h.directory.answer(ready(self.h.directory.last_request(CELL)), CELL)
        answer = await adding
        self.assertEqual(answer.error, f"pool 'local' changed while adding cell '{CELL}', retry")
        self.assertNotIn(CELL, self.h.store.view.cells)
        self.assertEqual(
            [message.id for _, message in self.h.directory.sent],
            [MessageID.ComputeCellRemovedEvent],
        )

        adding = self.h.api.post(f"/compute_pool_cells/local/{CELL}")
        await self.h.store.commit(UnitOfWork.of(Delete(m.ComputePool, "local")))
        self.h.directory.answer(ready(self.h.directory.last_request(CELL)), CELL)
        self.assertEqual((await adding).error, "invalid pool 'local'")
        self.assertNotIn(CELL, self.h.store.view.cells)
        self.assertEqual([v.name for v in self.h.cells.unallocated()], [CELL])
