"""Child process of the store crash test: commits a stream of units until it is killed.

Usage: store_crash_child.py DATA_DIR ACK_LOG FIRST_ID IN_FLIGHT

Each unit ``n`` adds compute pool ``p<n>`` and cell ``c<n>`` in that pool (two rows, so a torn
unit would show). After a unit's commit has fired, ``n`` is appended to ACK_LOG and fsynced,
then printed on stdout so the parent can pick a moment to SIGKILL.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from twisted.internet import defer, task

from nanocore import model as m
from nanocore.store import Put, Store, UnitOfWork

LIMIT = 200_000  # never run forever if the parent disappears


def unit_for(n: int) -> UnitOfWork:
    return UnitOfWork.of(
        Put(m.ComputePool(name=f"p{n}")), Put(m.ComputeCell(name=f"c{n}", pool=f"p{n}"))
    )


@defer.inlineCallbacks
def main(reactor: object, data_dir: str, ack_log: str, first: str, in_flight: str) -> object:
    sys.stdout.write("starting\n")
    sys.stdout.flush()
    store = yield Store.open(Path(data_dir), reactor)
    ack = os.open(ack_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    next_id = int(first)
    stop = next_id + LIMIT

    def acknowledge(_: None, n: int) -> None:
        os.write(ack, f"{n}\n".encode())
        os.fsync(ack)
        sys.stdout.write(f"{n}\n")
        sys.stdout.flush()

    @defer.inlineCallbacks
    def writer() -> object:
        nonlocal next_id
        while next_id < stop:
            n, next_id = next_id, next_id + 1
            yield store.commit(unit_for(n)).addCallback(acknowledge, n)

    yield defer.gatherResults([writer() for _ in range(int(in_flight))])
    yield store.close()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
