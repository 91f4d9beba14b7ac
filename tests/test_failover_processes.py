"""Failover by hand, as an operator tries it: a real nanocore and two ``nanocell-sim``
processes whose Cells share simulated NFS exports through a folder (``--shared-storage``).

A guest lives on the Cell of simulator A; A is killed (SIGKILL: no goodbye) and Core fails the
guest over to the Cell of simulator B, which finds its volumes in the folder. Stopping B
(SIGTERM) then says goodbye for its Cell: Core sees a stop, not a crash, and fails nothing
over. Everything listens and dials on 127.0.0.1.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from tests.coreprocess import CoreProcess, CoreProcessCase

GiB = 1 << 30
_LINK = re.compile(r"Cell link \(TLS\) on (127\.0\.0\.1:\d+)")
A, B = "Cell_a000000", "Cell_b000000"


class FailoverAcrossProcessesTests(CoreProcessCase):
    timeout = 120

    def link_address(self) -> str:
        found = _LINK.findall(self.log_file().read_text())
        self.assertTrue(found, "the started Core logged no Cell link address")
        return str(found[-1])

    def simulator(self, prefix: str) -> CoreProcess:
        """One ``nanocell-sim`` with one Cell, in the foreground, killed at cleanup."""
        log = self.root / f"sim-{prefix}.log"
        arguments = [
            sys.executable, "-m", "twisted", "--log-file", str(log), "--log-format", "text",
            "nanocell-sim", "--core", self.link_address(), "--cert-dir", str(self.layout.cert_dir),
            "--count", "1", "--prefix", prefix, "--creation-time", "0", "--stop-time", "0",
            "--disks", str(self.root / "sim-disks"), "--shared-storage", str(self.shared),
        ]  # fmt: skip
        return self.spawn_python(arguments)

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        document = await self.call(method, path, body)
        self.assertEqual(document["error_code"], 0, document)
        return document["data"]

    async def guest(self, guest: str) -> dict[str, Any]:
        shown: dict[str, Any] = await self.ok("GET", f"/guests/{guest}")
        return shown

    async def test_killing_one_simulator_fails_its_guest_over_to_another(self) -> None:
        core = self.spawn()
        await self.serving(core)
        self.shared = Path(self.root / "nfs")
        sim_a, sim_b = self.simulator("Cell_a"), self.simulator("Cell_b")

        async def both_linked() -> bool:
            listed = await self.ok("GET", "/compute_pool_cells/")
            return {A, B} <= {cell["name"] for cell in listed or []}

        await self.eventually(both_linked, "both simulated Cells linked")
        template = (await self.ok("GET", "/templates/"))[0]["id"]
        await self.ok("POST", "/storage_pools/nfs",
                      {"type": "nfs", "host": "192.0.2.9", "target": "/export"})  # fmt: skip
        await self.ok("POST", "/compute_pools/shared", {"storage": "nfs", "failover": True})
        await self.ok("POST", f"/compute_pool_cells/shared/{A}")
        created = await self.ok("POST", "/guests/", {
            "name": "vm1", "owner": "demo", "group": "demo", "pool": "shared",
            "template": template, "cores": 1, "memory": GiB, "disks": [10 * GiB],
        })  # fmt: skip
        guest = created["id"]

        async def is_created() -> bool:
            return bool((await self.guest(guest)).get("created"))

        await self.eventually(is_created, "the guest created on A")
        self.assertEqual((await self.guest(guest))["cell"], A)
        # Its volumes are in the folder both simulators share.
        (export,) = self.shared.iterdir()
        self.assertEqual([p.name for p in export.iterdir()], [f"{guest}.json"])
        await self.ok("POST", f"/compute_pool_cells/shared/{B}")

        await self.killed(sim_a)

        async def failed_over() -> dict[str, Any] | None:
            shown = await self.guest(guest)
            moved = shown["cell"] == B and not shown.get("lost") and not shown.get("migrating")
            return shown if moved else None

        await self.eventually(failed_over, "the guest failed over to B")
        (record,) = await self.ok("GET", "/migrations/")
        self.assertEqual((record["finished"], record.get("error", "")), (True, ""), record)
        cells = {cell["name"]: cell for cell in await self.ok("GET", "/compute_pool_cells/shared")}
        self.assertFalse(cells[A]["enabled"])
        # B serves it: the live view asks B itself.
        live = await self.ok("GET", f"/instances/{guest}")
        self.assertEqual(live["cell"], B)

        # A graceful stop of B is a goodbye, not a crash: the guest is shown lost on B, and
        # no failover is tried (A is disabled: it would leave a record naming the guest).
        await self.signalled(sim_b, "TERM")

        async def lost_on_b() -> bool:
            shown = await self.guest(guest)
            return bool(shown.get("lost")) and shown["cell"] == B

        await self.eventually(lost_on_b, "the guest shown lost once B stopped")
        self.assertIn(f"{B} (127.0.0.1) closed the link", self.log_file().read_text())
        self.assertEqual([m["id"] for m in await self.ok("GET", "/migrations/")], [record["id"]])
