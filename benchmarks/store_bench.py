"""Store benchmark: commit rates, group commit under 32 writers, and loading a large store.

Run from the worktree root:  python benchmarks/store_bench.py [--quick]
Prints figures; asserts nothing. A callLater(0) ticker runs throughout and the largest gap
between its ticks is reported for each phase (the reactor must stay responsive).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task, threads

from nanocore import model as m
from nanocore.store import Put, Store, UnitOfWork

CELLS, POOLS, INSTANCES, ALLOCATIONS = 1_000, 100, 50_000, 50_000
WRITERS = 32


class Ticker:
    """Measures the reactor's responsiveness: the largest gap between callLater(0) ticks."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.last = time.perf_counter()
        self.max_gap = 0.0
        self.running = True
        self.reactor.callLater(0, self.tick)

    def tick(self) -> None:
        now = time.perf_counter()
        self.max_gap = max(self.max_gap, now - self.last)
        self.last = now
        if self.running:
            self.reactor.callLater(0, self.tick)

    def reset(self) -> float:
        gap, self.max_gap = self.max_gap, 0.0
        self.last = time.perf_counter()
        return gap * 1000


def report(name: str, value: str, ticker: Ticker) -> None:
    print(f"{name:<58} {value:>22}   (max reactor gap {ticker.reset():6.1f} ms)", flush=True)


@defer.inlineCallbacks
def single_and_batched(reactor: Any, ticker: Ticker, count: int) -> Any:
    store = yield Store.open(Path(tempfile.mkdtemp()) / "data", reactor)
    ticker.reset()
    start = time.perf_counter()
    for n in range(count):
        yield store.commit(UnitOfWork.of(Put(m.ComputePool(name=f"s{n}"))))
    elapsed = time.perf_counter() - start
    report("single-change commits, one at a time", f"{count / elapsed:,.0f} commits/s", ticker)

    batch = 1000
    start = time.perf_counter()
    for b in range(count // 50):
        yield store.commit(
            UnitOfWork([Put(m.ComputeCell(name=f"b{b}_{n}")) for n in range(batch)])
        )
    elapsed = time.perf_counter() - start
    commits = count // 50
    report(
        f"batched commits ({batch} changes per unit)",
        f"{commits / elapsed:,.0f} commits/s",
        ticker,
    )
    print(f"{'':<58} {commits * batch / elapsed:>15,.0f} changes/s")
    yield store.close()


@defer.inlineCallbacks
def concurrent_writers(reactor: Any, ticker: Ticker, seconds: float) -> Any:
    store = yield Store.open(Path(tempfile.mkdtemp()) / "data", reactor)
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    @defer.inlineCallbacks
    def writer() -> Any:
        done = 0
        while time.perf_counter() < deadline:
            yield store.commit(UnitOfWork.of(Put(m.ComputeCell(name=f"w{next(counter)}"))))
            done += 1
        return done

    ticker.reset()
    start = time.perf_counter()
    results = yield defer.gatherResults([writer() for _ in range(WRITERS)])
    elapsed = time.perf_counter() - start
    units = sum(results)
    report(
        f"{WRITERS} concurrent writers, 1 change per unit (group commit)",
        f"{units / elapsed:,.0f} units/s",
        ticker,
    )
    print(f"{'':<58} {units / store.batches_committed:>12,.1f} units/batch")
    yield store.close()


def guest(n: int, pool: str, cell: str) -> m.Instance:
    return m.Instance(
        id=str(uuid.UUID(int=n)),
        name=f"guest{n}",
        owner="admin",
        group="ops",
        pool=pool,
        cell=cell,
        cores=2,
        memory=2 << 30,
        disks=(20 << 30,),
        status="running",
        internal=m.InstanceNetwork(
            assigned_address=f"{address(n)}/16", monitor_port=5900 + n % 100
        ),
        hardware_address=f"52:54:00:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}",
        create_time="2024-05-01 12:00:00",
    )


def address(n: int) -> str:
    return f"10.{1 + n // 65000}.{(n % 65000) // 250}.{(n % 65000) % 250 + 1}"


@defer.inlineCallbacks
def build_large_store(reactor: Any, ticker: Ticker, data_dir: Path) -> Any:
    store = yield Store.open(data_dir, reactor)
    ticker.reset()
    start = time.perf_counter()
    setup: list[Any] = [m.AddressPool(name="big", gateway="10.0.0.1")]
    setup += [m.AddressRange("big", "10.1.0.1", "10.1.255.250", "255.255.0.0")]
    setup += [m.ComputePool(name=f"pool{p}", network="big") for p in range(POOLS)]
    setup += [m.ComputeCell(name=f"cell{c}", pool=f"pool{c % POOLS}") for c in range(CELLS)]
    yield store.commit(UnitOfWork([Put(e) for e in setup]))
    chunk = 5_000

    def chunk_of(first: int) -> UnitOfWork:
        changes: list[Any] = []
        for n in range(first, first + chunk):
            cell = n % CELLS
            changes.append(Put(guest(n, f"pool{cell % POOLS}", f"cell{cell}")))
            if n < ALLOCATIONS:
                allocation = m.AddressAllocation(
                    "big", "10.1.0.1", address(n), str(uuid.UUID(int=n))
                )
                changes.append(Put(allocation))
        return UnitOfWork(changes)

    for first in range(0, INSTANCES, chunk):
        # Built off the reactor thread, so the gap measured is the store's, not this script's.
        unit = yield threads.deferToThread(chunk_of, first)
        yield store.commit(unit)
    report(
        f"build: {CELLS} cells, {POOLS} pools, {INSTANCES} instances, {ALLOCATIONS} addr",
        f"{time.perf_counter() - start:,.1f} s",
        ticker,
    )
    yield store.close()


class TimerTicker:
    """Responsiveness of an otherwise idle reactor: largest interval of a 10 ms LoopingCall."""

    def __init__(self, reactor: Any) -> None:
        self.last = time.perf_counter()
        self.max_gap = 0.0
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = reactor
        self.loop.start(0.01)

    def tick(self) -> None:
        now = time.perf_counter()
        self.max_gap = max(self.max_gap, now - self.last)
        self.last = now


@defer.inlineCallbacks
def load_only(reactor: Any, data_dir: str, spin: bool) -> Any:
    """Child mode: open the large store, print seconds, peak RSS and the reactor's max gap."""
    ticker: Ticker | TimerTicker = Ticker(reactor) if spin else TimerTicker(reactor)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    store = yield Store.open(Path(data_dir), reactor)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    peak = after.ru_maxrss / 1024
    counts = (len(store.view.instances), len(store.view.allocations), len(store.view.cells))
    print(f"{elapsed:.3f} {cpu:.3f} {peak:.1f} {ticker.max_gap * 1000:.1f} {counts}")
    if isinstance(ticker, Ticker):
        ticker.running = False
    else:
        ticker.loop.stop()
    yield store.close()


def measure_load(data_dir: Path, spin: bool) -> list[str]:
    result = subprocess.run(
        [sys.executable, __file__, "--load-only", str(data_dir)] + (["--spin"] if spin else []),
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split(" ", 4)


@defer.inlineCallbacks
def main(reactor: Any, quick: bool) -> Any:
    ticker = Ticker(reactor)
    print(
        f"nanocore store benchmark (python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    yield single_and_batched(reactor, ticker, 200 if quick else 1000)
    yield concurrent_writers(reactor, ticker, 2.0 if quick else 5.0)
    data_dir = Path(tempfile.mkdtemp()) / "data"
    yield build_large_store(reactor, ticker, data_dir)
    ticker.running = False
    baseline = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resource, twisted.internet.reactor, nanocore.store;"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    size = sum(f.stat().st_size for f in data_dir.iterdir()) / 2**20
    for spin in (False, True):
        seconds, cpu, peak, gap, counts = measure_load(data_dir, spin)
        how = "callLater(0) spinning" if spin else "idle reactor, 10 ms timer"
        print(
            f"{'load in a fresh process (' + how + ')':<58} {float(seconds):>20.2f} s"
            f"   (max reactor gap {float(gap):6.1f} ms)"
        )
        print(f"{'  CPU time of that load (user + system)':<58} {float(cpu):>20.2f} s")
        print(
            f"{'  peak RSS of that process':<58} {float(peak):>19.0f} MB"
            f"   (interpreter + imports alone: {float(baseline.stdout):.0f} MB)"
        )
    print(f"{'database size':<58} {size:>19.0f} MB   loaded {counts.strip()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs for a smoke test")
    parser.add_argument("--load-only", metavar="DATA_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--spin", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.load_only:
        task.react(load_only, [options.load_only, options.spin])
    else:
        task.react(main, [options.quick])
