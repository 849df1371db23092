"""
The C{sim} transport: Clustron's byte stream over the testkit's simulated
network (L{clustron.testkit.simnet}).

It only runs when the node's reactor is a L{SimHost}; the node then listens
on the port of its advertised address and dials peers with Twisted's own
L{TCP4ClientEndpoint}, exactly as the C{tcp} transport does on a real
reactor.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocol, IProtocolFactory
from twisted.plugin import IPlugin
from zope.interface import implementer

from clustron.errors import ConfigError
from clustron.interfaces import ITransportPlugin
from clustron.testkit.simnet import SimHost

__all__ = ["SimTransportPlugin", "sim_transport"]


def _sim_host(reactor: object) -> SimHost:
    """
    @return: C{reactor}, checked to be a L{SimHost}.
    @raise TypeError: when it is not.
    """
    if not isinstance(reactor, SimHost):
        raise TypeError(
            "the 'sim' transport only runs inside clustron.testkit's simulated network: "
            "the node's reactor must be a clustron.testkit.simnet.SimHost, got "
            f"{type(reactor).__module__}.{type(reactor).__qualname__}; "
            "use transport 'tcp' or 'tls' on a real reactor"
        )
    return reactor


@implementer(IPlugin, ITransportPlugin)
class SimTransportPlugin:
    """
    The C{sim} transport plugin.
    """

    name = "sim"

    def listen(
        self, reactor: Any, config: Any, factory: IProtocolFactory
    ) -> defer.Deferred[IListeningPort]:
        """
        Listen on the port of C{config.advertise_address} on the sim host.

        @raise TypeError: when C{reactor} is not a L{SimHost}.
        @raise ConfigError: when the advertised host is not the sim host's
            address (peers would dial the wrong host).
        @return: a Deferred firing with the listening port, or failing with
            L{twisted.internet.error.CannotListenError}.
        """
        host = _sim_host(reactor)
        address, port = config.advertise_address
        if address != host.address:
            raise ConfigError(
                [
                    (
                        "advertise",
                        f"the sim transport runs on sim host {host.address!r}, but the node "
                        f"advertises {address!r}; peers would dial the wrong host",
                    )
                ]
            )
        try:
            listening = host.listenTCP(port, factory)
        except CannotListenError:
            return defer.fail()
        return defer.succeed(cast(IListeningPort, listening))

    def connect(
        self, reactor: Any, config: Any, host: str, port: int, factory: IProtocolFactory
    ) -> defer.Deferred[IProtocol]:
        """
        Connect to C{host}:C{port} over the simulated network, giving up
        after C{wire.handshake_timeout} as the C{tcp} and C{tls} transports
        do (the simulated network never retransmits a lost connection
        request, so an attempt made over a cut link only ends when it times
        out, and the mesh dials again once it has).

        @raise TypeError: when C{reactor} is not a L{SimHost}.
        @return: a Deferred firing with the connected protocol, or failing
            with C{ConnectionRefusedError} or C{TimeoutError}.
        """
        sim_host = _sim_host(reactor)
        endpoint = TCP4ClientEndpoint(
            sim_host, host, port, timeout=config.wire.handshake_timeout
        )
        return endpoint.connect(factory)


#: The module-level instance the plugin system finds.
sim_transport = SimTransportPlugin()
