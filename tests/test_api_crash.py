"""Durable before acknowledged, at the process level: `kill -9` nanocore during a write storm.

A real nanocore runs as a child process on a loopback port it chooses (api.cfg says 0). Several
signed clients create and delete address pools through the API while the test SIGKILLs the
process at a random moment after some acknowledgements; the core is restarted on the same data
folder, and the API must show every acknowledged create (with all its fields), no acknowledged
delete, and nothing that was never asked for. Requests that got no answer may have landed or
not, but never half-made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred

from tests.coreprocess import CoreProcess, CoreProcessCase

reactor: Any = global_reactor

ROUNDS = 5
CLIENTS = 4
#: Kill after this many acknowledgements in the round (inclusive), plus a random few ms.
ACKS_BEFORE_KILL = (5, 40)
KILL_JITTER_SECONDS = 0.03
DELETE_SHARE = 0.3
#: Share of acknowledged creates followed by a range, so that deleting the pool is a unit of
#: two rows (range and pool) that must go together.
RANGE_SHARE = 0.5
RANGE = {"start": "192.0.2.10", "end": "192.0.2.20", "netmask": "255.255.255.0"}


def pool_fields(name: str) -> dict[str, Any]:
    """The fields a pool called ``name`` is created with: distinct per name, so a pool that
    came back with another's fields, or without its own, is seen."""
    number = sum(name.encode()) % 250 + 1
    return {
        "gateway": f"198.51.100.{number}",
        "dns": [f"203.0.113.{number}", "203.0.113.254"],
        "provider": "dhcp" if number % 2 else "cloudinit",
    }


def shown_as(name: str, fields: dict[str, Any], ranges: list[dict[str, Any]]) -> dict[str, Any]:
    """The part of `GET /address_pools/<name>` the crash test compares."""
    return {"name": name, **fields, "ranges": ranges}


@define
class Ledger:
    """What the clients know about the pools on the server.

    ``present``: acknowledged creates (name -> fields), with ``ranged`` the ones whose range
    was acknowledged. ``absent``: acknowledged deletes. ``unsure`` and ``unsure_ranged``:
    requests that got no answer; after a restart each is resolved by what the server shows.
    ``busy``: names with a request in flight, so no two clients work on one pool.
    """

    present: dict[str, dict[str, Any]] = field(factory=dict)
    ranged: set[str] = field(factory=set)
    absent: set[str] = field(factory=set)
    unsure: dict[str, dict[str, Any]] = field(factory=dict)
    unsure_ranged: set[str] = field(factory=set)
    busy: set[str] = field(factory=set)
    acks: int = 0


class ApiCrashTests(CoreProcessCase):
    """SIGKILL a real nanocore mid-storm, several rounds on one data folder."""

    timeout = 120

    # -- the storm ---------------------------------------------------------------------------

    async def client(
        self, ledger: Ledger, prefix: str, stop: Deferred[None], on_ack: Callable[[], None]
    ) -> None:
        """Create pools named ``prefix-N`` and delete some acknowledged ones until ``stop``.

        A client that fails fires ``stop`` itself, so the round ends instead of hanging.
        """
        try:
            await self.storm(ledger, prefix, stop, on_ack)
        except BaseException:
            if not stop.called:
                stop.callback(None)
            raise

    async def storm(
        self, ledger: Ledger, prefix: str, stop: Deferred[None], on_ack: Callable[[], None]
    ) -> None:
        number = 0
        while not stop.called:
            deletable = sorted(set(ledger.present) - ledger.busy)
            if deletable and self.rng.random() < DELETE_SHARE:
                name = self.rng.choice(deletable)
                ledger.busy.add(name)
                acknowledged = await self.acknowledged("DELETE", f"/address_pools/{name}")
                ledger.busy.discard(name)
                fields = ledger.present.pop(name)
                if acknowledged:
                    ledger.ranged.discard(name)
                    ledger.absent.add(name)
                else:
                    # Still ``ranged``: if the pool survives, its range must survive with it.
                    ledger.unsure[name] = fields
            else:
                number += 1
                name = f"{prefix}-{number}"
                fields = pool_fields(name)
                ledger.busy.add(name)
                acknowledged = await self.acknowledged("POST", f"/address_pools/{name}", fields)
                if not acknowledged:
                    ledger.busy.discard(name)
                    ledger.unsure[name] = fields
                    continue
                ledger.present[name] = fields
                self.acked(ledger, on_ack)
                if stop.called or self.rng.random() >= RANGE_SHARE:
                    ledger.busy.discard(name)
                    continue
                path = f"/address_pools/{name}/internal/ranges/{RANGE['start']}"
                body = {"end": RANGE["end"], "netmask": RANGE["netmask"]}
                acknowledged = await self.acknowledged("POST", path, body)
                ledger.busy.discard(name)
                if not acknowledged:
                    ledger.unsure_ranged.add(name)
                    continue
                ledger.ranged.add(name)
            self.acked(ledger, on_ack)

    def acked(self, ledger: Ledger, on_ack: Callable[[], None]) -> None:
        ledger.acks += 1
        on_ack()

    async def acknowledged(self, method: str, path: str, body: Any = None) -> bool:
        """True only for HTTP 200 with error_code 0; no answer at all counts as not."""
        try:
            document = await self.call(method, path, body)
        except Exception:  # the server was killed mid-request
            return False
        # A whole answer that refuses the request means the storm itself is wrong.
        self.assertEqual((document["http_status"], document["error_code"]), (200, 0), document)
        return True

    async def check(self, ledger: Ledger, context: str) -> None:
        """The server shows exactly the acknowledged state; unsure requests resolve either way
        but never half-way: a pool is whole, with its range or without it."""
        listed = {item["name"] for item in await self.data("GET", "/address_pools/")}
        missing = set(ledger.present) - listed
        self.assertEqual(missing, set(), f"{context}: acknowledged creates lost")
        resurrected = ledger.absent & listed
        self.assertEqual(resurrected, set(), f"{context}: acknowledged deletes undone")
        unknown = listed - set(ledger.present) - set(ledger.unsure)
        self.assertEqual(unknown, set(), f"{context}: pools nobody asked for")
        for name in sorted(listed):
            fields = ledger.present.get(name) or ledger.unsure[name]
            detail = await self.data("GET", f"/address_pools/{name}")
            ranges = [{key: item.get(key) for key in RANGE} for item in detail.get("ranges", [])]
            shown = shown_as(name, {key: detail.get(key) for key in fields}, ranges)
            allowed = [shown_as(name, fields, [RANGE] if name in ledger.ranged else [])]
            if name in ledger.unsure_ranged:
                allowed.append(shown_as(name, fields, [RANGE]))
            self.assertIn(shown, allowed, f"{context}: pool {name} is not whole")
            if ranges and name in ledger.unsure_ranged:
                ledger.ranged.add(name)
        for name, fields in ledger.unsure.items():
            if name in listed:
                ledger.present[name] = fields
            else:
                ledger.absent.add(name)
                ledger.ranged.discard(name)
        ledger.unsure.clear()
        ledger.unsure_ranged.clear()

    async def storm_and_kill(self, ledger: Ledger, process: CoreProcess, name: str) -> None:
        """Run the clients until a random moment after some acks, then SIGKILL ``process``."""
        round_acks = self.rng.randint(*ACKS_BEFORE_KILL)
        start_acks = ledger.acks
        stop: Deferred[None] = Deferred()

        def on_ack() -> None:
            if ledger.acks - start_acks == round_acks and not stop.called:
                delay = self.rng.uniform(0, KILL_JITTER_SECONDS)
                call = reactor.callLater(delay, stop.callback, None)
                self.addCleanup(lambda: call.active() and call.cancel())

        clients = [
            ensureDeferred(self.client(ledger, f"{name}c{n}", stop, on_ack))
            for n in range(CLIENTS)
        ]
        await stop
        await self.killed(process)
        for succeeded, result in await DeferredList(clients, consumeErrors=True):
            self.assertTrue(succeeded, result)
        self.assertGreaterEqual(ledger.acks - start_acks, round_acks)

    def test_acknowledged_writes_survive_sigkill(self) -> Deferred[None]:
        async def scenario() -> None:
            ledger = Ledger()
            process = self.spawn()
            await self.serving(process)
            await self.check(ledger, "fresh core")
            for round_number in range(1, ROUNDS + 1):
                await self.storm_and_kill(ledger, process, f"r{round_number}")
                process = self.spawn()
                await self.serving(process)
                await self.check(ledger, f"after kill {round_number} (seed {self.seed})")
            self.assertTrue(ledger.present and ledger.absent and ledger.ranged, ledger)
            await self.stopped(process)

        return ensureDeferred(scenario())
