"""Listening for TLS without losing a factory's refusal: ``listenTCP`` on this factory, not
``listenSSL``.

A factory refuses a connection by returning None from ``buildProtocol``, and the port closes
the socket at once. ``listenSSL`` wraps the factory in Twisted's ``TLSMemoryBIOFactory``, which
wraps whatever the inner factory returns, None too: the connection then stays open with no
protocol, and every event on it logs an ``Unhandled Error`` (``'NoneType' object has no
attribute 'makeConnection'``). A refused connection is also never built a TLS state here.

This module imports nothing of ours, so that every room that listens may use it.
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol


class _RefusingTLSFactory(TLSMemoryBIOFactory):
    """Twisted's server TLS factory, but a refusal of the factory it wraps stays one."""

    def buildProtocol(self, addr: IAddress | None) -> TLSMemoryBIOProtocol | None:  # type: ignore[override]
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None  # the port closes the socket at once
        return self.protocol(self, wrapped)


def tls_server_factory(
    options: IOpenSSLServerConnectionCreator, factory: IProtocolFactory
) -> TLSMemoryBIOFactory:
    """``factory`` behind TLS with ``options``, for ``listenTCP``."""
    return _RefusingTLSFactory(options, False, factory)
