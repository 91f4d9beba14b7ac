"""Instructions per unit of work under valgrind: the figure a shared machine does not move."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable


def instructions_per(child_arguments: Callable[[int], list[str]], count: int) -> float:
    """Instructions per unit: callgrind runs of ``python <child_arguments(n)>`` for ``count``
    and ``4 * count`` units, the difference divided (start-up and set-up cancel out)."""
    totals = []
    for each in (count, 4 * count):
        ran = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
             *child_arguments(each)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        found = re.search(r"Collected : (\d+)", ran.stderr)
        if found is None:
            raise SystemExit(f"valgrind said no total:\n{ran.stderr[-2000:]}")
        totals.append(int(found.group(1)))
    return (totals[1] - totals[0]) / (3 * count)
