"""A nanocore API process for benchmarks: real store, real operations, real site on loopback.

Until ``twistd nanocore`` serves this app (the lead swaps it into ``tap.py``), the benchmark
starts this script: the same composition the daemon will do, with nothing else running.
Prints ``READY <port>`` once listening.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--credential", required=True, help="id:key")
    parser.add_argument("--profile", help="write a cProfile of the server here")
    args = parser.parse_args()

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    from nanocore.api.app import build_api_site
    from nanocore.operations.core import Operations
    from nanocore.store import Store

    credential_id, _, key = args.credential.partition(":")

    def started(store: Store) -> None:
        reactor.addSystemEventTrigger("before", "shutdown", store.close)
        operations = Operations(store, reactor)
        site = build_api_site(operations, {credential_id: key}, reactor)
        site.noisy = False
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        print(f"READY {port.getHost().port}", flush=True)

    def failed(failure: object) -> None:
        print(f"FAILED {failure}", flush=True)
        reactor.stop()

    Store.open(Path(args.data_dir), reactor).addCallbacks(started, failed)
    if args.profile:
        import cProfile

        cProfile.runctx("reactor.run()", globals(), {"reactor": reactor}, args.profile)
    else:
        reactor.run()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
