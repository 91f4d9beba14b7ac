"""Listening ports: bound when the service starts, so that a port in use fails the start.

Like `twisted.application.internet.TCPServer`, a `ListeningService` binds in
`privilegedStartService` (or `startService`, when started alone), synchronously: twistd
calls both before it reports a successful start through its daemonize pipe, so `nanocore
start` can report a port in use. Unlike `TCPServer` it tells which port it got, so a port of 0
(any free port) can be used and reported in a file (`PortFile`) for whoever starts the Core.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanocore import start_report
from nanocore.atomicfile import write_file

log = Logger()


def check_local_address(address: str, port: int) -> None:
    """Raise the `CannotListenError` a listener on `address`:`port` would meet if `address`
    is not one of this host's, without binding `port` (a port in use is the listeners' to
    tell). A start that would fail there is refused before it changes anything."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((address, 0))
    except OSError as error:
        raise CannotListenError(address, port, error) from None
    finally:
        probe.close()


def port_of(listening: IListeningPort) -> int:
    """The port number a listening port got (the answer to port 0)."""
    host = listening.getHost()
    if not isinstance(host, IPv4Address):
        raise TypeError(f"not an IPv4 port: {host!r}")
    return host.port


class ListeningService(Service):
    """Holds one listening port from start to stop; `listen` binds it (or raises)."""

    def __init__(self, listen: Callable[[], IListeningPort]) -> None:
        self._listen = listen
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._bind()

    def startService(self) -> None:
        super().startService()
        self._bind()

    def _bind(self) -> None:
        if self.port is not None:
            return
        try:
            self.port = self._listen()
        except Exception:
            # twistd's report of this to `nanocore start` is cut short; the log line is whole.
            start_report.log_failure(log, Failure())
            raise
        host = self.port.getHost()
        log.info("{name} listening on {host}", name=self.name, host=host)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        stopped = port.stopListening()
        return stopped if isinstance(stopped, Deferred) else None


class PortFile(Service):
    """While running, `path` holds the port `listening` got, as decimal text and a newline.

    Written when the service starts (after `listening`, which binds first), replaced
    atomically so a reader never sees half of it, and removed at stop. Mode 0600, as every
    other file nanocore writes: it is data, not a program.
    """

    def __init__(self, path: Path, listening: ListeningService) -> None:
        self._path = path
        self._listening = listening

    def startService(self) -> None:
        super().startService()
        if self._listening.port is None:
            raise RuntimeError(f"{self._listening.name} is not listening: no port to report")
        number = port_of(self._listening.port)
        write_file(self._path, f"{number}\n".encode("ascii"), mode=0o600)

    def stopService(self) -> None:
        super().stopService()
        self._path.unlink(missing_ok=True)


def read_port(path: Path) -> int | None:
    """The port a `PortFile` wrote, or None when there is no such file or no port in it."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        number = int(text.strip())
    except ValueError:
        return None
    return number if 0 < number < 65536 else None
