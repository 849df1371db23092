"""
Tests for L{clustron.testkit.simnet} and the C{sim} transport plugin.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from twisted.internet import error
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import (
    IConnector,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IListeningPort,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import (
    ClientFactory,
    Factory,
    Protocol,
    ReconnectingClientFactory,
)
from twisted.internet.task import Clock, LoopingCall
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from clustron.errors import ConfigError
from clustron.interfaces import ITransportPlugin
from clustron.testkit.simnet import (
    LinkParams,
    SimConnector,
    SimDelayedCall,
    SimHost,
    SimListeningPort,
    SimNetwork,
    SimTransport,
)
from clustron.transport.sim import SimTransportPlugin, sim_transport

# RFC 5737 documentation addresses: names only, nothing is ever sent.
A, B, C = "192.0.2.1", "192.0.2.2", "192.0.2.3"
PORT = 7101


class Recorder(Protocol):
    """
    Records what happens to it, with the host's time.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.times: list[float] = []
        self.made_at: float | None = None
        self.lost: list[Failure] = []
        self.lost_at: float | None = None

    def connectionMade(self) -> None:
        self.made_at = self.factory.host.seconds()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self.times.append(self.factory.host.seconds())

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)
        self.lost_at = self.factory.host.seconds()

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class Echo(Recorder):
    """
    Sends back what it receives.
    """

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.write(data)


class RecordingFactory(ClientFactory):
    """
    Builds one protocol class, keeps every instance, records client events.
    """

    def __init__(self, host: SimHost, protocol: type[Protocol] = Recorder) -> None:
        self.host = host
        self.protocol = protocol
        self.built: list[Protocol] = []
        self.failed: list[Failure] = []
        self.failed_at: float | None = None
        self.client_lost: list[Failure] = []
        self.starts = 0
        self.stops = 0

    def buildProtocol(self, addr):
        proto = super().buildProtocol(addr)
        proto.address = addr
        self.built.append(proto)
        return proto

    def doStart(self) -> None:
        self.starts += 1

    def doStop(self) -> None:
        self.stops += 1

    def clientConnectionFailed(self, connector, reason: Failure) -> None:
        self.failed.append(reason)
        self.failed_at = self.host.seconds()

    def clientConnectionLost(self, connector, reason: Failure) -> None:
        self.client_lost.append(reason)


class NetworkTestCase(SynchronousTestCase):
    """
    A network of three hosts with an echo server on B.
    """

    seed = 1

    def setUp(self) -> None:
        self.clock = Clock()
        self.net = SimNetwork(self.clock, self.seed)
        self.a = self.net.host(A)
        self.b = self.net.host(B)
        self.c = self.net.host(C)

    def serve(self, host: SimHost, protocol: type[Protocol] = Echo, port: int = PORT):
        factory = RecordingFactory(host, protocol)
        listening = host.listenTCP(port, factory)
        return factory, listening

    def dial(self, client: SimHost, server: SimHost, port: int = PORT, **kw):
        factory = RecordingFactory(client)
        connector = client.connectTCP(server.address, port, factory, **kw)
        return factory, connector

    def pair(self, server_protocol: type[Protocol] = Echo):
        """
        Connect A to B and return (client protocol, server protocol).
        """
        server_factory, _ = self.serve(self.b, server_protocol)
        client_factory, _ = self.dial(self.a, self.b)
        self.net.run_until(lambda: client_factory.built and server_factory.built, 1)
        self.assertEqual(len(client_factory.built), 1)
        self.assertEqual(len(server_factory.built), 1)
        return client_factory.built[0], server_factory.built[0]


class InterfaceTests(NetworkTestCase):
    """
    Every implementation provides its interfaces.
    """

    def test_host(self) -> None:
        self.assertTrue(verifyObject(IReactorTime, self.a))
        self.assertTrue(verifyObject(IReactorTCP, self.a))

    def test_delayed_call(self) -> None:
        call = self.a.callLater(1, lambda: None)
        self.assertIsInstance(call, SimDelayedCall)
        self.assertTrue(verifyObject(IDelayedCall, call))

    def test_port_and_connector(self) -> None:
        _, listening = self.serve(self.b)
        _, connector = self.dial(self.a, self.b)
        self.assertIsInstance(listening, SimListeningPort)
        self.assertIsInstance(connector, SimConnector)
        self.assertTrue(verifyObject(IListeningPort, listening))
        self.assertTrue(verifyObject(IConnector, connector))

    def test_transport(self) -> None:
        client, server = self.pair()
        for transport in (client.transport, server.transport):
            self.assertIsInstance(transport, SimTransport)
            self.assertTrue(verifyObject(ITransport, transport))
            self.assertTrue(verifyObject(ITCPTransport, transport))
            self.assertTrue(verifyObject(IConsumer, transport))
            self.assertTrue(verifyObject(IPushProducer, transport))

    def test_plugin(self) -> None:
        self.assertTrue(verifyObject(ITransportPlugin, sim_transport))
        self.assertEqual(sim_transport.name, "sim")


class ConnectionTests(NetworkTestCase):
    """
    Connecting, exchanging data and closing.
    """

    def test_echo(self) -> None:
        """
        Both sides connect after one link delay; data crosses each way in one
        link delay.
        """
        client, server = self.pair()
        self.assertEqual(client.made_at, 0.001)
        self.assertEqual(server.made_at, 0.001)
        self.assertEqual(client.transport.getPeer().host, B)
        self.assertEqual(client.transport.getPeer().port, PORT)
        self.assertEqual(server.transport.getPeer(), client.transport.getHost())
        self.assertEqual(server.address, client.transport.getHost())
        self.assertEqual(client.address.host, B)
        self.net.run(0.5)
        client.transport.write(b"hello")
        self.net.run(1)
        self.assertEqual(server.data, b"hello")
        self.assertEqual(client.data, b"hello")
        self.assertAlmostEqual(server.times[0], 0.502)
        self.assertAlmostEqual(client.times[0], 0.503)

    def test_fixed_delays_per_direction(self) -> None:
        self.net.set_link(A, B, delay=0.05)
        self.net.set_link(B, A, delay=0.02)
        client, server = self.pair()
        self.assertEqual(server.made_at, 0.05)
        start = self.clock.seconds()
        client.transport.write(b"x")
        self.net.run(1)
        self.assertAlmostEqual(server.times[0] - start, 0.05)
        self.assertAlmostEqual(client.times[0] - start, 0.07)

    def test_write_sequence_is_one_chunk(self) -> None:
        client, server = self.pair()
        client.transport.writeSequence([b"ab", b"cd"])
        client.transport.write(b"")
        self.net.run(1)
        self.assertEqual(server.chunks, [b"abcd"])

    def test_write_requires_bytes(self) -> None:
        client, _ = self.pair()
        self.assertRaises(TypeError, client.transport.write, "text")
        self.assertRaises(TypeError, client.transport.writeSequence, [b"a", "b"])

    def test_refused(self) -> None:
        """
        Nothing listening: C{ConnectionRefusedError} after one link delay.
        """
        factory, connector = self.dial(self.a, self.b)
        self.net.run(1)
        self.assertEqual(len(factory.failed), 1)
        factory.failed[0].trap(error.ConnectionRefusedError)
        self.assertEqual(factory.failed_at, 0.001)
        self.assertEqual(connector.state, "disconnected")
        self.assertEqual((factory.starts, factory.stops), (1, 1))

    def test_unknown_host_refused(self) -> None:
        factory, _ = self.dial(self.a, self.net.host("192.0.2.99"), port=1)
        self.net.run(1)
        factory.failed[0].trap(error.ConnectionRefusedError)

    def test_timeout_under_cut(self) -> None:
        self.serve(self.b)
        self.net.cut_one_way(A, B)
        factory, _ = self.dial(self.a, self.b, timeout=5)
        self.net.run(10)
        self.assertEqual(len(factory.failed), 1)
        factory.failed[0].trap(error.TimeoutError)
        self.assertEqual(factory.failed_at, 5)

    def test_timeout_when_reply_direction_cut(self) -> None:
        """
        A connection needs both directions.
        """
        server_factory, _ = self.serve(self.b)
        self.net.cut_one_way(B, A)
        factory, _ = self.dial(self.a, self.b, timeout=2)
        self.net.run(3)
        factory.failed[0].trap(error.TimeoutError)
        self.assertEqual(server_factory.built, [])

    def test_stop_connecting(self) -> None:
        server_factory, _ = self.serve(self.b)
        factory, connector = self.dial(self.a, self.b)
        connector.stopConnecting()
        factory.failed[0].trap(error.UserError)
        self.net.run(1)
        self.assertEqual(server_factory.built, [])
        self.assertRaises(error.NotConnectingError, connector.stopConnecting)

    def test_reconnect(self) -> None:
        """
        A connector connects again after failing, as reconnecting factories
        do.
        """
        factory, connector = self.dial(self.a, self.b)
        self.net.run(1)
        factory.failed[0].trap(error.ConnectionRefusedError)
        server_factory, _ = self.serve(self.b)
        connector.connect()
        self.net.run(1)
        self.assertEqual(connector.state, "connected")
        self.assertEqual(len(server_factory.built), 1)
        self.assertRaises(RuntimeError, connector.connect)
        connector.disconnect()
        self.net.run(1)
        self.assertEqual(connector.state, "disconnected")
        factory.client_lost[0].trap(error.ConnectionDone)

    def test_lose_connection_flushes(self) -> None:
        """
        Chunks written before loseConnection arrive, then the peer sees
        C{ConnectionDone}; both sides see connectionLost once.
        """
        self.net.set_link(A, B, delay=lambda rng: rng.uniform(0.001, 0.05))
        client, server = self.pair(Recorder)
        for index in range(5):
            client.transport.write(b"%d" % index)
        client.transport.loseConnection()
        client.transport.write(b"late")
        self.assertTrue(client.transport.disconnecting)
        self.net.run(1)
        self.assertEqual(server.chunks, [b"0", b"1", b"2", b"3", b"4"])
        self.assertEqual(len(server.lost), 1)
        server.lost[0].trap(error.ConnectionDone)
        self.assertGreaterEqual(server.lost_at, server.times[-1])
        self.assertEqual(len(client.lost), 1)
        client.lost[0].trap(error.ConnectionDone)
        self.assertEqual(self.a.connections(), [])
        self.assertEqual(self.b.connections(), [])

    def test_abort(self) -> None:
        client, server = self.pair(Recorder)
        client.transport.abortConnection()
        self.net.run(1)
        client.lost[0].trap(error.ConnectionAborted)
        server.lost[0].trap(error.ConnectionLost)
        self.assertEqual(len(client.lost), 1)

    def test_data_after_peer_closed_is_dropped(self) -> None:
        client, server = self.pair(Recorder)
        server.transport.loseConnection()
        client.transport.write(b"racing the close")
        self.net.run(1)
        self.assertEqual(server.chunks, [])
        self.assertTrue(any("drop" in line and "closed" in line
                            for line in self.net.recent_events()))
        client.lost[0].trap(error.ConnectionDone)

    def test_server_build_protocol_none(self) -> None:
        """
        A server factory that returns None: the client connects, then sees
        the connection closed.
        """

        class Refusing(Factory):
            def buildProtocol(self, addr):
                return None

        self.b.listenTCP(PORT, Refusing())
        factory, _ = self.dial(self.a, self.b)
        self.net.run(1)
        client = factory.built[0]
        client.lost[0].trap(error.ConnectionDone)
        factory.client_lost[0].trap(error.ConnectionDone)

    def test_data_received_error_closes(self) -> None:
        class Broken(Recorder):
            def dataReceived(self, data: bytes) -> None:
                raise ZeroDivisionError("broken")

        client, server = self.pair(Broken)
        client.transport.write(b"boom")
        self.net.run(1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        server.lost[0].trap(ZeroDivisionError)
        client.lost[0].trap(error.ConnectionDone)

    def test_half_close(self) -> None:
        """
        A half-closeable peer gets readConnectionLost and may still write;
        a plain peer closes the whole connection.
        """

        @implementer(IHalfCloseableProtocol)
        class HalfCloser(Recorder):
            read_lost_at: float | None = None
            write_lost = False

            def readConnectionLost(self) -> None:
                self.read_lost_at = self.factory.host.seconds()
                self.transport.write(b"bye")
                self.transport.loseWriteConnection()

            def writeConnectionLost(self) -> None:
                self.write_lost = True

        server_factory, _ = self.serve(self.b, HalfCloser)
        factory = RecordingFactory(self.a, HalfCloser)
        self.a.connectTCP(B, PORT, factory)
        self.net.run(0.01)
        client, server = factory.built[0], server_factory.built[0]
        client.transport.write(b"hi")
        client.transport.loseWriteConnection()
        client.transport.write(b"ignored")
        self.net.run(1)
        self.assertEqual(server.data, b"hi")
        self.assertIsNotNone(server.read_lost_at)
        self.assertEqual(client.data, b"bye")
        self.assertTrue(client.write_lost)
        self.assertTrue(server.write_lost)
        client.lost[0].trap(error.ConnectionDone)
        server.lost[0].trap(error.ConnectionDone)

        plain_client, plain_server = self.pairOn(self.c, Recorder)
        plain_client.transport.loseWriteConnection()
        self.net.run(1)
        plain_server.lost[0].trap(error.ConnectionDone)
        plain_client.lost[0].trap(error.ConnectionDone)

    def pairOn(self, server: SimHost, protocol: type[Protocol]):
        server_factory, _ = self.serve(server, protocol, port=PORT + 1)
        factory, _ = self.dial(self.a, server, port=PORT + 1)
        self.net.run(0.01)
        return factory.built[0], server_factory.built[0]

    def test_listen(self) -> None:
        _, listening = self.serve(self.b)
        self.assertEqual(listening.getHost().port, PORT)
        self.assertRaises(error.CannotListenError, self.b.listenTCP, PORT, Factory())
        self.assertRaises(
            error.CannotListenError, self.b.listenTCP, 1, Factory(), interface="192.0.2.77"
        )
        ephemeral = self.b.listenTCP(0, Factory())
        self.assertGreaterEqual(ephemeral.getHost().port, 49152)
        self.assertEqual(self.successResultOf(listening.stopListening()), None)
        self.b.listenTCP(PORT, Factory(), interface=B)

    def test_stop_listening_keeps_connections(self) -> None:
        server_factory, listening = self.serve(self.b)
        factory, _ = self.dial(self.a, self.b)
        self.net.run(0.01)
        listening.stopListening()
        self.assertEqual(server_factory.stops, 1)
        client = factory.built[0]
        client.transport.write(b"still here")
        self.net.run(1)
        self.assertEqual(client.data, b"still here")
        refused, _ = self.dial(self.a, self.b)
        self.net.run(1)
        refused.failed[0].trap(error.ConnectionRefusedError)

    def test_self_connection(self) -> None:
        server_factory, _ = self.serve(self.a)
        factory, _ = self.dial(self.a, self.a)
        self.net.run(0.01)
        factory.built[0].transport.write(b"me")
        self.net.run(1)
        self.assertEqual(server_factory.built[0].data, b"me")


class LinkTests(NetworkTestCase):
    """
    Delay, reordering, loss, duplication and cuts.
    """

    def send_numbered(self, client, count: int) -> list[bytes]:
        sent = [b"%04d" % index for index in range(count)]
        for chunk in sent:
            client.transport.write(chunk)
        self.net.run(10)
        return sent

    def test_fifo_without_reorder(self) -> None:
        self.net.set_link(A, B, delay=lambda rng: rng.uniform(0.001, 0.1))
        client, server = self.pair(Recorder)
        sent = self.send_numbered(client, 100)
        self.assertEqual(server.chunks, sent)
        self.assertEqual(server.times, sorted(server.times))

    def test_reorder(self) -> None:
        self.net.set_link(A, B, delay=lambda rng: rng.uniform(0.001, 0.1), reorder=True)
        client, server = self.pair(Recorder)
        sent = self.send_numbered(client, 100)
        self.assertNotEqual(server.chunks, sent)
        self.assertEqual(sorted(server.chunks), sent)

    def test_close_after_reordered_data(self) -> None:
        self.net.set_link(A, B, delay=lambda rng: rng.uniform(0.001, 0.1), reorder=True)
        client, server = self.pair(Recorder)
        for index in range(20):
            client.transport.write(b"%02d" % index)
        client.transport.loseConnection()
        self.net.run(1)
        self.assertEqual(len(server.chunks), 20)
        self.assertGreaterEqual(server.lost_at, max(server.times))

    def test_loss(self) -> None:
        self.net.set_link(A, B, loss=0.5)
        client, server = self.pair(Recorder)
        sent = self.send_numbered(client, 200)
        self.assertTrue(0 < len(server.chunks) < 200, len(server.chunks))
        positions = [sent.index(chunk) for chunk in server.chunks]
        self.assertEqual(positions, sorted(positions))
        self.assertEqual(client.transport.in_flight, 0)

    def test_total_loss(self) -> None:
        self.net.set_link(A, B, loss=1.0)
        client, server = self.pair(Recorder)
        self.send_numbered(client, 10)
        self.assertEqual(server.chunks, [])

    def test_duplicate(self) -> None:
        self.net.set_link(A, B, duplicate=1.0)
        client, server = self.pair(Recorder)
        self.send_numbered(client, 3)
        self.assertEqual(server.chunks, [b"0000", b"0000", b"0001", b"0001", b"0002", b"0002"])

    def test_some_duplicates(self) -> None:
        self.net.set_link(A, B, duplicate=0.3)
        client, server = self.pair(Recorder)
        sent = self.send_numbered(client, 200)
        self.assertTrue(200 < len(server.chunks) < 400, len(server.chunks))
        self.assertEqual(sorted(set(server.chunks)), sent)

    def test_partition_and_heal(self) -> None:
        client, server = self.pair()
        self.net.partition([[A], [B, C]])
        self.assertTrue(self.net.link(A, B).cut)
        self.assertTrue(self.net.link(B, A).cut)
        self.assertFalse(self.net.link(B, C).cut)
        client.transport.write(b"lost")
        self.net.run(1)
        self.assertEqual(server.chunks, [])
        factory, _ = self.dial(self.a, self.b, timeout=3)
        c_factory, _ = self.dial(self.c, self.b)
        self.net.run(5)
        factory.failed[0].trap(error.TimeoutError)
        self.assertEqual(len(c_factory.built), 1)
        self.net.heal()
        self.assertFalse(self.net.link(A, B).cut)
        client.transport.write(b"found")
        self.net.run(1)
        self.assertEqual(server.chunks, [b"found"])
        self.assertEqual(client.chunks, [b"found"])

    def test_partition_rejects_overlap(self) -> None:
        self.assertRaises(ValueError, self.net.partition, [[A, B], [B]])

    def test_partition_bridge(self) -> None:
        """
        A host named in no group keeps every link.
        """
        self.net.partition([[A], [B]])
        self.assertTrue(self.net.link(A, B).cut)
        self.assertFalse(self.net.link(A, C).cut)
        self.assertFalse(self.net.link(C, B).cut)

    def test_cut_in_flight(self) -> None:
        self.net.set_link(A, B, delay=0.5)
        client, server = self.pair(Recorder)
        client.transport.write(b"in flight")
        self.net.run(0.1)
        self.net.cut_one_way(A, B)
        self.net.run(1)
        self.assertEqual(server.chunks, [])
        self.assertEqual(client.transport.in_flight, 0)

    def test_cut_one_way(self) -> None:
        client, server = self.pair(Recorder)
        self.net.cut_one_way(A, B)
        client.transport.write(b"a to b")
        server.transport.write(b"b to a")
        self.net.run(1)
        self.assertEqual(server.chunks, [])
        self.assertEqual(client.chunks, [b"b to a"])

    def test_isolate(self) -> None:
        self.net.isolate(B)
        for other in (A, C):
            self.assertTrue(self.net.link(B, other).cut)
            self.assertTrue(self.net.link(other, B).cut)
        self.assertFalse(self.net.link(A, C).cut)

    def test_close_crosses_cut(self) -> None:
        client, server = self.pair(Recorder)
        self.net.partition([[A], [B]])
        client.transport.loseConnection()
        self.net.run(1)
        server.lost[0].trap(error.ConnectionDone)

    def test_link_validation(self) -> None:
        self.assertRaises(ValueError, self.net.set_link, A, B, loss=1.5)
        self.assertRaises(ValueError, self.net.set_link, A, B, delay=-1)
        self.assertRaises(ValueError, self.net.set_link, A, B, reorder="yes")
        with self.assertRaises(TypeError) as raised:
            self.net.set_link(A, B, jitter=0.1)
        self.assertIn("jitter", str(raised.exception))
        with self.assertRaises(ValueError) as raised:
            self.net.link(A, B).duplicate = 2
        self.assertIn("duplicate", str(raised.exception))
        self.net.set_link(A, B, loss=0.1, delay=1.0)
        self.assertRaises(ValueError, self.net.set_link, A, B, loss=0.2, cut=3)
        self.assertEqual(self.net.link(A, B).loss, 0.1)

    def test_bad_delay_callable(self) -> None:
        self.net.set_link(A, B, delay=lambda rng: -1)
        self.serve(self.b)
        self.assertRaises(ValueError, self.dial, self.a, self.b)

    def test_link_defaults(self) -> None:
        net = SimNetwork(Clock(), 1, link_defaults=LinkParams(delay=0.2))
        self.assertEqual(net.link(A, B).delay, 0.2)
        net.set_link(A, B, delay=1.0)
        net.heal()
        self.assertEqual(net.link(A, B).delay, 0.2)


class TimerTests(NetworkTestCase):
    """
    Each host is an IReactorTime on the shared clock.
    """

    def test_call_later(self) -> None:
        seen: list[tuple[str, float]] = []
        self.a.callLater(2, lambda tag: seen.append((tag, self.a.seconds())), "a")
        call = self.b.callLater(1, seen.append, ("b", 1.0))
        self.assertEqual(self.a.getDelayedCalls()[0].getTime(), 2)
        self.assertEqual(self.b.getDelayedCalls(), [call])
        self.net.run(3)
        self.assertEqual(seen, [("b", 1.0), ("a", 2.0)])
        self.assertEqual(self.a.getDelayedCalls(), [])
        self.assertFalse(call.active())
        self.assertTrue(call.called)
        self.assertRaises(error.AlreadyCalled, call.cancel)

    def test_cancel_reset_delay(self) -> None:
        seen: list[float] = []
        record = lambda: seen.append(self.a.seconds())  # noqa: E731
        cancelled = self.a.callLater(1, record)
        cancelled.cancel()
        self.assertTrue(cancelled.cancelled)
        self.assertRaises(error.AlreadyCancelled, cancelled.cancel)
        moved = self.a.callLater(1, record)
        moved.reset(3)
        delayed = self.a.callLater(1, record)
        delayed.delay(1)
        self.assertEqual(delayed.getTime(), 2)
        self.net.run(5)
        self.assertEqual(seen, [2.0, 3.0])
        self.assertRaises(ValueError, self.a.callLater, -1, record)

    def test_looping_call(self) -> None:
        ticks: list[float] = []
        loop = LoopingCall(lambda: ticks.append(self.a.seconds()))
        loop.clock = self.a
        loop.start(1.0)
        self.net.run(3.5)
        loop.stop()
        self.assertEqual(ticks, [0.0, 1.0, 2.0, 3.0])

    def test_timer_error_is_logged(self) -> None:
        self.a.callLater(1, lambda: 1 / 0)
        after: list[int] = []
        self.a.callLater(2, after.append, 1)
        self.net.run(3)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(after, [1])

    def test_run_until(self) -> None:
        fired: list[int] = []
        self.a.callLater(1, fired.append, 1)
        self.a.callLater(2, fired.append, 2)
        self.assertTrue(self.net.run_until(lambda: fired, 10))
        self.assertEqual(self.clock.seconds(), 1)
        self.assertFalse(self.net.run_until(lambda: len(fired) > 5, 4))
        self.assertEqual(self.clock.seconds(), 5)

    def test_run_steps_in_order(self) -> None:
        """
        Calls scheduled while running see their own time.
        """
        seen: list[float] = []

        def chain(depth: int) -> None:
            seen.append(self.b.seconds())
            if depth:
                self.b.callLater(0.25, chain, depth - 1)

        self.b.callLater(0.5, chain, 3)
        self.net.run(2)
        self.assertEqual(seen, [0.5, 0.75, 1.0, 1.25])
        self.assertEqual(self.clock.seconds(), 2)

    def test_seeded_random(self) -> None:
        other = SimNetwork(Clock(), self.seed)
        first = self.a.seeded_random().random()
        self.assertEqual(first, other.host(A).seeded_random().random())
        self.assertNotEqual(first, self.b.seeded_random().random())
        self.assertNotEqual(first, self.a.seeded_random().random())
        self.assertNotEqual(first, SimNetwork(Clock(), 2).host(A).seeded_random().random())


class HostFaultTests(NetworkTestCase):
    """
    Crash, restart, pause and resume.
    """

    def test_crash(self) -> None:
        """
        The peer sees C{ConnectionLost} after the link delay; the crashed
        host's protocols, timers and factories get nothing more.
        """
        self.net.set_link(B, A, delay=0.2)
        server_factory, listening = self.serve(self.b, Recorder)
        client_factory, _ = self.dial(self.a, self.b)
        self.net.run(0.5)
        client, server = client_factory.built[0], server_factory.built[0]
        fired: list[int] = []
        self.b.callLater(1, fired.append, 1)
        crashed_at = self.clock.seconds()
        self.b.crash()
        self.assertEqual(self.b.state, "crashed")
        self.assertEqual(self.b.getDelayedCalls(), [])
        self.assertNotIn(crashed_at + 1, [call.getTime() for call in self.clock.getDelayedCalls()])
        self.assertFalse(listening.listening)
        client.transport.write(b"anyone?")
        self.net.run(2)
        self.assertEqual(fired, [])
        self.assertEqual(server.lost, [])
        self.assertEqual(server.chunks, [])
        self.assertEqual(server_factory.stops, 0)
        client.lost[0].trap(error.ConnectionLost)
        self.assertAlmostEqual(client.lost_at - crashed_at, 0.2)
        again, _ = self.dial(self.a, self.b)
        self.net.run(1)
        again.failed[0].trap(error.ConnectionRefusedError)
        self.assertRaises(error.CannotListenError, self.b.listenTCP, PORT, Factory())

    def test_crash_delivers_data_already_sent(self) -> None:
        client, server = self.pair(Recorder)
        server.transport.write(b"last words")
        self.b.crash()
        self.net.run(1)
        self.assertEqual(client.chunks, [b"last words"])
        client.lost[0].trap(error.ConnectionLost)

    def test_restart(self) -> None:
        client, server = self.pair(Recorder)
        old = self.b.incarnation
        fired: list[int] = []
        self.b.callLater(1, fired.append, 1)
        self.b.restart()
        self.assertEqual(self.b.state, "up")
        self.assertGreater(self.b.incarnation, old)
        self.assertEqual(self.b.getDelayedCalls(), [])
        self.b.callLater(0.5, fired.append, 2)
        server_factory, _ = self.serve(self.b, Echo)
        factory, _ = self.dial(self.a, self.b)
        self.net.run(2)
        self.assertEqual(fired, [2])
        self.assertEqual(server.lost, [])
        client.lost[0].trap(error.ConnectionLost)
        factory.built[0].transport.write(b"new life")
        self.net.run(1)
        self.assertEqual(factory.built[0].data, b"new life")

    def test_pause_resume(self) -> None:
        """
        While paused, timers and data wait; on resume they run late, in the
        order they became due.
        """
        client, server = self.pair(Recorder)
        events: list[tuple[str, float]] = []
        self.b.callLater(0.5, lambda: events.append(("timer", self.b.seconds())))
        self.b.pause()
        self.assertEqual(self.b.state, "paused")
        self.net.run(0.2)
        client.transport.write(b"one")
        client.transport.write(b"two")
        self.net.run(2)
        self.assertEqual(events, [])
        self.assertEqual(server.chunks, [])
        self.assertEqual(client.transport.in_flight, 6)
        resumed_at = self.clock.seconds()
        self.b.resume()
        self.assertEqual(events, [("timer", resumed_at)])
        self.assertEqual(server.chunks, [b"one", b"two"])
        self.assertEqual(server.times, [resumed_at, resumed_at])
        self.assertEqual(client.transport.in_flight, 0)

    def test_pause_accepts_later(self) -> None:
        server_factory, _ = self.serve(self.b, Recorder)
        self.b.pause()
        factory, _ = self.dial(self.a, self.b)
        self.net.run(1)
        client = factory.built[0]
        client.transport.write(b"queued")
        self.net.run(1)
        self.assertEqual(server_factory.built, [])
        self.b.resume()
        server = server_factory.built[0]
        self.assertEqual(server.made_at, 2.0)
        self.assertEqual(server.chunks, [b"queued"])

    def test_timer_due_while_paused(self) -> None:
        """
        A call that fell due while paused is still active; cancelling or
        moving it works.
        """
        seen: list[tuple[str, float]] = []
        kept = self.b.callLater(1, lambda: seen.append(("kept", self.b.seconds())))
        dropped = self.b.callLater(1, lambda: seen.append(("dropped", self.b.seconds())))
        moved = self.b.callLater(1, lambda: seen.append(("moved", self.b.seconds())))
        self.b.pause()
        self.net.run(2)
        self.assertEqual(self.b.getDelayedCalls(), [kept, dropped, moved])
        self.assertTrue(all(call.active() for call in (kept, dropped, moved)))
        dropped.cancel()
        moved.reset(1)
        self.b.resume()
        self.assertEqual(seen, [("kept", 2.0)])
        self.net.run(2)
        self.assertEqual(seen, [("kept", 2.0), ("moved", 3.0)])

    def test_client_paused_while_connecting(self) -> None:
        server_factory, _ = self.serve(self.b)
        self.a.pause()
        factory, connector = self.dial(self.a, self.b, timeout=5)
        self.net.run(10)
        self.assertEqual(len(server_factory.built), 1)
        self.assertEqual(factory.built, [])
        self.a.resume()
        self.assertEqual(connector.state, "connected")
        self.assertEqual(factory.failed, [])
        self.assertEqual(factory.built[0].made_at, 10.0)

    def test_crash_while_paused(self) -> None:
        client, server = self.pair(Recorder)
        self.b.pause()
        client.transport.write(b"never")
        self.net.run(1)
        self.b.crash()
        self.net.run(1)
        self.assertEqual(server.chunks, [])
        client.lost[0].trap(error.ConnectionLost)
        self.assertRaises(RuntimeError, self.b.pause)
        self.assertRaises(RuntimeError, self.b.resume)


class Lines(LineReceiver):
    """
    A line protocol answering each line in upper case.
    """

    def connectionMade(self) -> None:
        self.factory.lines.append(("made", self.transport.getPeer().host))

    def lineReceived(self, line: bytes) -> None:
        self.factory.lines.append(("line", line))
        if line.islower():
            self.sendLine(line.upper())


class ReconnectingLines(ReconnectingClientFactory):
    """
    A stock reconnecting factory on a sim host's clock.
    """

    protocol = Lines
    initialDelay = 0.1
    maxDelay = 1.0
    jitter = 0  # its jitter draws from the global random module

    def __init__(self, host: SimHost) -> None:
        self.clock = host
        self.lines: list[tuple[str, object]] = []


class StockTwistedTests(NetworkTestCase):
    """
    Twisted's own protocols and factories run unchanged.
    """

    def test_reconnecting_line_client(self) -> None:
        server_factory = Factory.forProtocol(Lines)
        server_factory.lines = []
        self.b.listenTCP(PORT, server_factory)
        client_factory = ReconnectingLines(self.a)
        self.a.connectTCP(B, PORT, client_factory)
        self.net.run(0.1)
        self.assertEqual(client_factory.lines, [("made", B)])
        self.b.crash()
        self.net.run(5)
        self.assertGreater(client_factory.retries, 2)
        self.b.restart()
        server_factory.lines = []
        self.b.listenTCP(PORT, server_factory)
        self.assertTrue(self.net.run_until(lambda: len(client_factory.lines) == 2, 5))
        client_factory.resetDelay()
        proto = self.a.connections()[0]
        proto.write(b"hello\r\n")
        self.net.run(1)
        self.assertEqual(server_factory.lines, [("made", A), ("line", b"hello")])
        self.assertEqual(client_factory.lines[-1], ("line", b"HELLO"))
        client_factory.stopTrying()
        proto.loseConnection()
        self.net.run(1)
        self.assertEqual(self.a.connections(), [])
        self.assertEqual(self.b.connections(), [])


class Producer:
    """
    A streaming producer writing fixed chunks while not paused.
    """

    def __init__(self, transport: SimTransport, size: int) -> None:
        self.transport = transport
        self.size = size
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1
        self.fill()

    def stopProducing(self) -> None:
        self.stopped = True

    def fill(self) -> None:
        for _ in range(1000):
            if self.paused or self.stopped:
                return
            self.transport.write(b"x" * self.size)


class ProducerTests(NetworkTestCase):
    """
    Back-pressure through in-flight bytes.
    """

    def test_streaming_producer(self) -> None:
        client, server = self.pair(Recorder)
        server.transport.pauseProducing()
        producer = Producer(client.transport, 10000)
        client.transport.registerProducer(producer, True)
        producer.fill()
        self.assertTrue(producer.paused)
        self.assertEqual(client.transport.in_flight, 70000)
        self.net.run(1)
        self.assertTrue(producer.paused)
        self.assertEqual(server.chunks, [])
        server.transport.resumeProducing()
        self.net.run_until(lambda: producer.resumes, 1)
        self.assertEqual(producer.resumes, 1)
        self.assertLessEqual(client.transport.in_flight, self.net.high_water + 10000)
        client.transport.unregisterProducer()
        producer.stopped = True
        self.net.run(1)
        self.assertGreaterEqual(len(server.data), 70000)
        self.assertEqual(client.transport.in_flight, 0)

    def test_producer_stopped_on_close(self) -> None:
        client, server = self.pair(Recorder)
        producer = Producer(client.transport, 10)
        client.transport.registerProducer(producer, True)
        self.assertRaises(RuntimeError, client.transport.registerProducer, producer, True)
        server.transport.loseConnection()
        self.net.run(1)
        self.assertTrue(producer.stopped)

    def test_lose_connection_waits_for_producer(self) -> None:
        client, server = self.pair(Recorder)
        producer = Producer(client.transport, 10)
        producer.paused = True
        client.transport.registerProducer(producer, True)
        client.transport.loseConnection()
        client.transport.write(b"while closing")
        self.net.run(1)
        self.assertEqual(server.lost, [])
        self.assertEqual(server.chunks, [b"while closing"])
        client.transport.unregisterProducer()
        self.net.run(1)
        server.lost[0].trap(error.ConnectionDone)

    def test_pull_producer(self) -> None:
        client, server = self.pair(Recorder)

        class Pull:
            def __init__(self) -> None:
                self.left = 3

            def resumeProducing(self) -> None:
                if self.left:
                    self.left -= 1
                    client.transport.write(b"pull%d" % self.left)
                else:
                    client.transport.unregisterProducer()

            def stopProducing(self) -> None:
                pass

        client.transport.registerProducer(Pull(), False)
        self.net.run(1)
        self.assertEqual(server.chunks, [b"pull2", b"pull1", b"pull0"])
        self.assertIsNone(client.transport.producer)

    def test_resume_keeps_backlog_order(self) -> None:
        """
        What a resumed host's own code triggers runs after what already
        waited (here: a loopback producer resumed by the first delivery runs
        after the remaining queued chunks).
        """
        net = SimNetwork(self.clock, 1, high_water=10, low_water=10, max_in_flight=1000)
        host = net.host("sim-loop")
        order: list[str] = []

        class Logged(Recorder):
            def dataReceived(self, data: bytes) -> None:
                order.append(data.decode())

        server_factory = RecordingFactory(host, Logged)
        host.listenTCP(PORT, server_factory)
        factory = RecordingFactory(host)
        host.connectTCP("sim-loop", PORT, factory)
        net.run(0.01)
        transport = factory.built[0].transport
        producer = Producer(transport, 1)
        producer.resumeProducing = lambda: order.append("resumed")  # type: ignore[method-assign]
        transport.registerProducer(producer, True)
        host.pause()
        for name in (b"d1", b"d2", b"d3", b"d4", b"d5", b"d6"):
            transport.write(name)
        self.assertTrue(producer.paused)
        net.run(1)
        host.resume()
        self.assertEqual(order, ["d1", "d2", "d3", "d4", "d5", "d6", "resumed"])

    def test_overflow_aborts(self) -> None:
        net = SimNetwork(self.clock, 1, high_water=10, low_water=5, max_in_flight=100)
        a, b = net.host("sim-a"), net.host("sim-b")
        server_factory = RecordingFactory(b)
        b.listenTCP(PORT, server_factory)
        factory = RecordingFactory(a)
        a.connectTCP("sim-b", PORT, factory)
        net.run(0.01)
        client = factory.built[0]
        for _ in range(11):
            client.transport.write(b"y" * 10)
        net.run(1)
        self.assertTrue(any("overflow" in line for line in net.recent_events()))
        client.lost[0].trap(error.ConnectionLost)
        server_factory.built[0].lost[0].trap(error.ConnectionLost)


def run_scenario(seed: int) -> str:
    """
    A small busy scenario with every kind of randomness; returns the trace
    hash. Also run in a subprocess by L{DeterminismTests}.
    """
    clock = Clock()
    net = SimNetwork(clock, seed)
    hosts = [net.host(f"192.0.2.{index}") for index in range(1, 5)]
    for src in hosts:
        for dst in hosts:
            net.set_link(
                src.address, dst.address,
                delay=lambda rng: rng.uniform(0.001, 0.02), loss=0.1, duplicate=0.1,
                reorder=src.address < dst.address,
            )
    servers: list[RecordingFactory] = []
    for host in hosts:
        factory = RecordingFactory(host, Echo)
        host.listenTCP(PORT, factory)
        servers.append(factory)
    clients: list[RecordingFactory] = []
    for host in hosts:
        for peer in hosts:
            if peer is not host:
                factory = RecordingFactory(host, Recorder)
                host.connectTCP(peer.address, PORT, factory, timeout=1)
                clients.append(factory)
    net.run(0.1)
    jitter = hosts[0].seeded_random()
    for round_ in range(5):
        for factory in clients:
            for proto in factory.built:
                proto.transport.write(b"r%d:%s" % (round_, factory.host.address.encode()))
        net.run(jitter.uniform(0.01, 0.05))
    net.partition([[hosts[0].address], [h.address for h in hosts[1:]]])
    hosts[1].pause()
    net.run(0.5)
    hosts[1].resume()
    hosts[2].crash()
    net.run(0.5)
    net.heal()
    hosts[2].restart()
    net.run(1)
    return net.trace_hash()


class DeterminismTests(SynchronousTestCase):
    """
    Same seed, same trace; whatever C{PYTHONHASHSEED} is.
    """

    def test_same_seed_same_hash(self) -> None:
        self.assertEqual(run_scenario(11), run_scenario(11))

    def test_different_seed_different_hash(self) -> None:
        self.assertNotEqual(run_scenario(11), run_scenario(12))

    def test_trace_lines(self) -> None:
        clock = Clock()
        net = SimNetwork(clock, 3, trace_keep=5)
        before = net.trace_hash()
        for index in range(10):
            net.host(f"h{index}")
        self.assertNotEqual(net.trace_hash(), before)
        self.assertEqual(net.event_count, 10)
        self.assertEqual(len(net.recent_events()), 5)
        self.assertEqual(net.recent_events()[-1], "0.0 host h9 - 0 00000000 created")

    def test_independent_of_hash_seed(self) -> None:
        root = Path(__file__).resolve().parent.parent
        script = "from tests.test_simnet import run_scenario; print(run_scenario(11))"
        hashes = []
        for hash_seed in ("0", "4242"):
            env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(root))
            result = subprocess.run(
                [sys.executable, "-c", script], cwd=root, env=env,
                capture_output=True, text=True, timeout=120, check=False,
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            hashes.append(result.stdout.strip())
        self.assertEqual(hashes[0], hashes[1])
        self.assertEqual(hashes[0], run_scenario(11))


class PluginTests(NetworkTestCase):
    """
    The C{sim} transport plugin.
    """

    def config(
        self, host: str, port: int = PORT, handshake_timeout: float = 5.0
    ) -> SimpleNamespace:
        return SimpleNamespace(
            advertise_address=(host, port),
            wire=SimpleNamespace(handshake_timeout=handshake_timeout),
        )

    def test_listen_and_connect(self) -> None:
        server_factory = RecordingFactory(self.b, Echo)
        listened = sim_transport.listen(self.b, self.config(B), server_factory)
        listening = self.successResultOf(listened)
        self.assertEqual(listening.getHost().port, PORT)
        client_factory = RecordingFactory(self.a, Recorder)
        connected = sim_transport.connect(self.a, self.config(A), B, PORT, client_factory)
        self.assertNoResult(connected)
        self.net.run(0.01)
        proto = self.successResultOf(connected)
        self.assertIs(proto, client_factory.built[0])
        proto.transport.write(b"via plugin")
        self.net.run(1)
        self.assertEqual(proto.data, b"via plugin")

    def test_connect_refused(self) -> None:
        connected = SimTransportPlugin().connect(
            self.a, self.config(A), B, PORT, RecordingFactory(self.a)
        )
        self.net.run(1)
        self.failureResultOf(connected, error.ConnectionRefusedError)

    def test_connect_cancel(self) -> None:
        server_factory, _ = self.serve(self.b)
        connected = sim_transport.connect(self.a, self.config(A), B, PORT, RecordingFactory(self.a))
        connected.cancel()
        self.failureResultOf(connected, error.ConnectingCancelledError)
        self.net.run(1)
        self.assertEqual(server_factory.built, [])

    def test_connect_timeout(self) -> None:
        """
        An attempt whose connection request is lost gives up after the
        node's C{wire.handshake_timeout}, as the C{tcp} transport does, so
        that the mesh dials again soon after a cut link heals.
        """
        self.serve(self.b)
        self.net.cut_one_way(A, B)
        config = self.config(A, handshake_timeout=3.0)
        connected = sim_transport.connect(self.a, config, B, PORT, RecordingFactory(self.a))
        self.net.run(2.9)
        self.assertNoResult(connected)
        self.net.heal()
        self.net.run(0.2)
        self.failureResultOf(connected, error.TimeoutError)
        retried = sim_transport.connect(self.a, config, B, PORT, RecordingFactory(self.a))
        self.net.run(0.01)
        self.successResultOf(retried)

    def test_listen_port_taken(self) -> None:
        self.serve(self.b)
        listened = sim_transport.listen(self.b, self.config(B), Factory())
        self.failureResultOf(listened, error.CannotListenError)

    def test_not_a_sim_host(self) -> None:
        for reactor in (MemoryReactorClock(), Clock()):
            with self.assertRaises(TypeError) as raised:
                sim_transport.listen(reactor, self.config(B), Factory())
            self.assertIn("'sim'", str(raised.exception))
            self.assertIn("clustron.testkit", str(raised.exception))
            self.assertRaises(
                TypeError, sim_transport.connect, reactor, self.config(A), B, PORT, Factory()
            )

    def test_advertise_mismatch(self) -> None:
        with self.assertRaises(ConfigError) as raised:
            sim_transport.listen(self.b, self.config(A), Factory())
        self.assertEqual(raised.exception.errors[0][0], "advertise")

    def test_endpoint_directly(self) -> None:
        self.serve(self.b)
        connected = TCP4ClientEndpoint(self.a, B, PORT).connect(Factory.forProtocol(Protocol))
        self.net.run(0.01)
        self.assertIsInstance(self.successResultOf(connected), Protocol)
