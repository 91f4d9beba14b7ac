"""Timings of the foundation: config loading, service composition, and a real daemon start.

Run from the repository root: `python benchmarks/startup_bench.py`. Prints figures; asserts
nothing. The daemon listens on a free 127.0.0.1 port only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from twisted.internet.testing import MemoryReactorClock  # noqa: E402

from nanocore import config, tap  # noqa: E402


def per_call(label: str, count: int, action: object) -> None:
    assert callable(action)
    started = time.perf_counter()
    for _ in range(count):
        action()
    elapsed = time.perf_counter() - started
    print(f"{label:<44} {elapsed / count * 1e6:10.1f} us/call  ({count} calls)")


def once(label: str, action: object) -> float:
    assert callable(action)
    started = time.perf_counter()
    action()
    elapsed = time.perf_counter() - started
    print(f"{label:<44} {elapsed * 1e3:10.1f} ms")
    return elapsed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        once("ensure_config (3 files, fsync)", lambda: config.ensure_config(root / "config"))
        per_call("load_config (3 files)", 2000, lambda: config.load_config(root / "config"))

        def make(folder: str) -> None:
            options = tap.Options()
            options.parseOptions(
                [
                    f"--{name}-dir={root / folder / name}"
                    for name in ("config", "data", "cert", "log")
                ]
            )
            tap.makeService(options, MemoryReactorClock())

        once("makeService, fresh (config + CA + image cert)", lambda: make("fresh"))
        per_call("makeService, warm", 50, lambda: make("fresh"))

        daemon = root / "daemon"
        config.ensure_config(daemon / "config")
        api_file = daemon / "config" / config.API_FILE
        api = json.loads(api_file.read_text())
        api["port"] = free_port()
        api_file.write_text(json.dumps(api))
        environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))

        def nanocore(command: str) -> None:
            subprocess.run(
                [sys.executable, "-m", "nanocore", command],
                cwd=daemon,
                env=environment,
                check=True,
                capture_output=True,
            )

        for round_number in (1, 2, 3):
            once(
                f"nanocore start -> core started (round {round_number})", lambda: nanocore("start")
            )
            once(
                f"nanocore status (round {round_number})",
                lambda: subprocess.run(
                    [sys.executable, "-m", "nanocore", "status"],
                    cwd=daemon,
                    env=environment,
                    check=True,
                    capture_output=True,
                ),
            )
            once(f"nanocore stop (round {round_number})", lambda: nanocore("stop"))


if __name__ == "__main__":
    main()
