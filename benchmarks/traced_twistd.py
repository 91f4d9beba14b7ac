"""``twistd`` with tracemalloc on, for api_bench.py ``--profile``: where the daemon's memory is.

On SIGUSR2 it writes a tracemalloc snapshot to ``$NANOCORE_BENCH_SNAPSHOT`` (the file appears
whole: it is written beside and renamed). Arguments are twistd's.
"""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc
from typing import Any


def main() -> None:
    tracemalloc.start(int(os.environ.get("NANOCORE_BENCH_FRAMES", "12")))
    target = os.environ["NANOCORE_BENCH_SNAPSHOT"]

    def dump(signum: int, frame: Any) -> None:
        tracemalloc.take_snapshot().dump(target + ".part")
        os.replace(target + ".part", target)

    signal.signal(signal.SIGUSR2, dump)
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
