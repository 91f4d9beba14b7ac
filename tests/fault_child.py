"""A Core (`python -m twisted nanocore …`) that crashes in C code when sent SIGUSR2.

For the test that a crash in C code leaves every thread's traceback in log/core-fault.log:
the crash is `faulthandler._sigsegv()`, a real SIGSEGV, asked for from here only, so no
production path holds a way to crash. The handler is installed before nanocore starts, so
nanocore leaves SIGUSR2 to it.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
from types import FrameType

from twisted.application.twist._twist import Twist


def crash_in_c(signum: int, frame: FrameType | None) -> None:
    faulthandler._sigsegv()


def main() -> None:
    signal.signal(signal.SIGUSR2, crash_in_c)
    Twist.main(["twist", *sys.argv[1:]])


if __name__ == "__main__":
    main()
