"""Crash test: a real child process committing to the store is SIGKILLed 20 times.

After every kill the store must open (integrity and foreign keys checked), every unit the
child acknowledged must be there, and no unit may be half there.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.error import ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from nanocore.store import Store
from nanocore.store.schema import DB_NAME

CHILD = Path(__file__).with_name("store_crash_child.py")
ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 20
IN_FLIGHT = 16


class KillAfterAcks(ProcessProtocol):
    """Sends SIGKILL once the child has acknowledged ``target`` units (0 = while opening)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.acks = 0
        self.buffer = b""
        self.stderr = b""
        self.killed = False
        self.reason: Failure | None = None
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line != b"starting":
                self.acks += 1
            if self.acks >= self.target and not self.killed:
                self.killed = True
                self.transport.signalProcess("KILL")  # type: ignore[union-attr]

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        self.reason = reason
        self.ended.callback(None)


class CrashTests(TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def test_sigkill_during_commits(self) -> Any:
        seed = int.from_bytes(os.urandom(4), "big")
        rng = random.Random(seed)
        data_dir = Path(self.mktemp())
        ack_log = Path(self.mktemp())
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        total_acked = 0
        for round_ in range(ROUNDS):
            target = 0 if round_ % 7 == 3 else rng.randint(1, 300)
            child = KillAfterAcks(target)
            reactor.spawnProcess(
                child,
                sys.executable,
                [
                    sys.executable,
                    str(CHILD),
                    str(data_dir),
                    str(ack_log),
                    str(round_ * 1_000_000),
                    str(IN_FLIGHT),
                ],
                env=env,
            )
            yield child.ended
            reason = child.reason
            assert reason is not None
            context = (
                f"seed {seed}, round {round_}, target {target}: {child.stderr.decode()[-2000:]}"
            )
            self.assertTrue(child.killed, context)
            reason.trap(ProcessTerminated)
            self.assertEqual(reason.value.signal, signal.SIGKILL, context)

            store = yield Store.open(data_dir, reactor)
            try:
                acked = (
                    {int(line) for line in ack_log.read_text().split()}
                    if ack_log.exists()
                    else set()
                )
                pools = {name[1:] for name in store.view.compute_pools if name.startswith("p")}
                cells = {cell.name[1:] for cell in store.view.cells.values()}
                missing = {str(n) for n in acked} - pools
                self.assertEqual(missing, set(), context)
                self.assertEqual(pools, cells, f"half-committed unit: {context}")
                self.assertGreaterEqual(len(acked), child.acks, context)
                total_acked = len(acked)
            finally:
                yield store.close()
            connection = sqlite3.connect(data_dir / DB_NAME)
            try:
                self.assertEqual(
                    connection.execute("PRAGMA integrity_check").fetchall(), [("ok",)]
                )
            finally:
                connection.close()
        self.assertGreater(total_acked, ROUNDS)
