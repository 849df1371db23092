"""
The ``tcp`` transport: plain TCP through Twisted endpoints.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, serverFromString
from twisted.internet.protocol import Factory
from twisted.plugin import IPlugin
from zope.interface import implementer

from clustron.interfaces import ITransportPlugin


@implementer(IPlugin, ITransportPlugin)
class TcpTransport:
    """
    Listens on C{config.listen} (a Twisted server endpoint string such as
    C{tcp:7101:interface=127.0.0.1}) and dials peers with a
    L{HostnameEndpoint}. Nagle's algorithm is turned off on every connection:
    cluster traffic is small messages that want low latency.
    """

    name = "tcp"

    def listen(self, reactor: Any, config: Any, factory: Factory) -> Deferred[Any]:
        """
        Listen on C{config.listen}.
        """
        return serverFromString(reactor, config.listen).listen(_NoDelay(factory))

    def connect(
        self, reactor: Any, config: Any, host: str, port: int, factory: Factory
    ) -> Deferred[Any]:
        """
        Dial C{host}:C{port}, giving up after C{wire.handshake_timeout}.
        """
        endpoint = HostnameEndpoint(reactor, host, port, timeout=config.wire.handshake_timeout)
        return endpoint.connect(_NoDelay(factory))


class _NoDelay(Factory):
    noisy = False

    def __init__(self, wrapped: Factory) -> None:
        self.wrapped = wrapped

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        protocol = self.wrapped.buildProtocol(addr)
        if protocol is None:
            return None
        original = protocol.makeConnection

        def make_connection(transport: Any) -> None:
            set_no_delay = getattr(transport, "setTcpNoDelay", None)
            if set_no_delay is not None:
                try:
                    set_no_delay(True)
                except OSError:
                    pass
            original(transport)

        protocol.makeConnection = make_connection  # type: ignore[method-assign]
        return protocol


tcp_transport = TcpTransport()
