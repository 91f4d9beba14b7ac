"""A real nanocore process for tests: started on loopback ports it chooses, signalled,
restarted on the same folders, and called through the signed API over real HTTP."""

from __future__ import annotations

import json
import os
import random
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers

from nanocore.api.client import Signer
from nanocore.cli import child_environment
from nanocore.layout import Layout
from nanocore.pki import client_tls_options, issue_cell_certificate, load_or_create_ca
from nanocore.services.listen import read_port
from nanocore.testing.fakecell import FakeCell, LocatedCoreEndpoint
from tests.corefixtures import CREDENTIAL, write_config

reactor: Any = global_reactor

#: How long a (re)started core may take to answer `GET /api/v1/` with 200.
START_DEADLINE_SECONDS = 20.0
POLL_SECONDS = 0.02
_LINK = re.compile(r"Cell link \(TLS\) on 127\.0\.0\.1:(\d+)")


class CoreNotListening(Exception):
    """No Cell link port in this run's log yet; a Cell tries again."""


class CoreProcess(ProcessProtocol):
    """A nanocore child; ``ended`` fires once it is reaped, ``reason`` then says how."""

    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self.running = False

    def connectionMade(self) -> None:
        self.running = True

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        self.reason = reason
        self.ended.callback(None)


class CoreProcessCase(TestCase):
    """Each test has its own folders and config (API port 0); ``spawn`` starts a Core there."""

    def setUp(self) -> None:
        self.root = root = Path(self.mktemp()).absolute()
        self.layout = Layout(root / "config", root / "data", root / "cert", root / "log")
        # API port 0: every start takes a free port and reports it in data/api.port.
        write_config(self.layout, api_port=0)
        self.base = ""
        self.signer = Signer(*CREDENTIAL)
        # A killed server leaves cached connections dead; every request gets its own.
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        seed = int.from_bytes(os.urandom(4), "big")
        self.rng = random.Random(seed)
        self.seed = seed

    # -- the process -------------------------------------------------------------------------

    def spawn(self, runner: Sequence[str] = ("-m", "twisted")) -> CoreProcess:
        """Start nanocore in the foreground (`python -m twisted nanocore`, or another
        ``runner`` taking `twist`'s arguments), killed at cleanup."""
        layout = self.layout
        # A killed core leaves its port file behind; the next one writes its own.
        layout.api_port_file.unlink(missing_ok=True)
        arguments = [
            sys.executable,
            *runner,
            "--log-file",
            str(layout.log_dir / "crash-test.log"),
            "--log-format",
            "text",
            "nanocore",
            "--config-dir",
            str(layout.config_dir),
            "--data-dir",
            str(layout.data_dir),
            "--cert-dir",
            str(layout.cert_dir),
            "--log-dir",
            str(layout.log_dir),
        ]
        return self.spawn_python(arguments)

    def spawn_python(self, arguments: list[str]) -> CoreProcess:
        """Run ``sys.executable`` with ``arguments`` in the test's folder, killed at cleanup."""
        process = CoreProcess()
        transport = reactor.spawnProcess(
            process, sys.executable, arguments, env=child_environment(), path=str(self.root)
        )

        def kill() -> Deferred[None] | None:
            if not process.running:
                return None
            transport.signalProcess("KILL")
            return process.ended

        self.addCleanup(kill)
        return process

    async def eventually(
        self, check: Callable[[], Awaitable[Any]], what: str, deadline: float = 30.0
    ) -> Any:
        """Poll ``check`` on the reactor until it returns something true, for ``deadline`` s
        (the processes work meanwhile)."""
        for _ in range(int(deadline / POLL_SECONDS)):
            result = await check()
            if result:
                return result
            await deferLater(reactor, POLL_SECONDS, lambda: None)
        self.fail(f"not within {deadline}s: {what}")

    async def serving(self, process: CoreProcess) -> None:
        """Poll `GET /api/v1/` until it answers 200, for at most START_DEADLINE_SECONDS."""
        for _ in range(int(START_DEADLINE_SECONDS / POLL_SECONDS)):
            if not process.running:
                self.fail(f"nanocore exited before serving; see {self.log_file()}")
            port = read_port(self.layout.api_port_file)
            if port is None:  # not bound yet
                await deferLater(reactor, POLL_SECONDS, lambda: None)
                continue
            self.base = f"http://127.0.0.1:{port}/api/v1"
            try:
                response = await treq.get(f"{self.base}/", pool=self.pool)
                await treq.content(response)
                if response.code == 200:
                    return
            except Exception:  # not listening yet: poll again
                pass
            await deferLater(reactor, POLL_SECONDS, lambda: None)
        self.fail(f"nanocore did not serve within {START_DEADLINE_SECONDS}s")

    async def killed(self, process: CoreProcess) -> None:
        """SIGKILL the process and wait for it to be reaped."""
        self.assertEqual(await self.signalled(process, "KILL"), 9)

    async def stopped(self, process: CoreProcess) -> None:
        """SIGTERM the process and wait for it to shut down cleanly.

        twist re-raises the signal on itself once the reactor has stopped, so a clean stop
        ends "by signal 15" after the log says the main loop terminated.
        """
        self.assertIn(await self.signalled(process, "TERM"), (None, 15))
        self.assertIn("Main loop terminated.", self.log_file().read_text())

    async def signalled(self, process: CoreProcess, signal: str | int) -> int | None:
        """Send ``signal``; the signal that ended the process, or None for exit status 0."""
        transport = process.transport
        assert transport is not None
        transport.signalProcess(signal)
        await process.ended
        assert process.reason is not None
        value = process.reason.value
        if isinstance(value, ProcessDone):
            return None
        assert isinstance(value, ProcessTerminated), value
        ended_by: int | None = value.signal
        return ended_by

    def log_file(self) -> Path:
        return self.layout.log_dir / "crash-test.log"

    # -- Cells -------------------------------------------------------------------------------

    def link_port(self) -> Deferred[tuple[str, int]]:
        """Where Core's Cell link listens now: the newest port its log names."""
        found = _LINK.findall(self.log_file().read_text()) if self.log_file().exists() else []
        if not found:
            return fail(CoreNotListening())
        return succeed(("127.0.0.1", int(found[-1])))

    def start_fake_cells(self, names: Sequence[str], **options: Any) -> dict[str, FakeCell]:
        """FakeCells in this process (``options``: FakeCell's), each with a certificate of the
        cluster CA, dialling Core's TLS link wherever the latest start put it: they reconnect
        to a restarted Core by themselves. Stopped at cleanup."""
        ca = load_or_create_ca(self.layout.cert_dir)
        cells = {}
        for name in names:
            cell = FakeCell(name, reactor, **options)
            issued = issue_cell_certificate(ca, name)
            endpoint = LocatedCoreEndpoint(
                reactor,
                self.link_port,
                lambda host, issued=issued: client_tls_options(ca, host, issued),
            )
            service = cell.service(endpoint)
            service.startService()
            self.addCleanup(service.stopService)
            self.addCleanup(cell.close)
            cells[name] = cell
        return cells

    # -- the API -----------------------------------------------------------------------------

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """A signed request; returns the decoded envelope (any HTTP status)."""
        url = f"{self.base}{path}"
        data = b"" if body is None else json.dumps(body).encode()
        signed = self.signer.headers(method, url, data, now=reactor.seconds())
        headers = Headers({name: [value] for name, value in signed.items()})
        response = await treq.request(
            method, url, data=data or None, headers=headers, pool=self.pool
        )
        document = json.loads(await treq.content(response))
        document["http_status"] = response.code
        return document

    async def data(self, method: str, path: str) -> Any:
        document = await self.call(method, path)
        self.assertEqual((document["http_status"], document["error_code"]), (200, 0), document)
        return document["data"]
