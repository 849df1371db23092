"""
Tests for the host and link faults of L{clustron.testkit.simnet}: clock
skew, slow hosts and clogged links.
"""

from __future__ import annotations

from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from clustron.testkit.simnet import LinkParams, SimClock, SimNetwork

A, B = "192.0.2.1", "192.0.2.2"
PORT = 7101


class Recorder(Protocol):
    """
    Records chunks and the time each arrived; can be told to send.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.times: list[float] = []
        self.lost: list[Failure] = []

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.chunks.append(data)
        self.times.append(self.transport.host.network.clock.seconds())

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self.lost.append(reason)


class Pair(SynchronousTestCase):
    """
    Two hosts, a server on B, a client connected from A.
    """

    def setUp(self) -> None:
        self.clock = SimClock()
        self.net = SimNetwork(self.clock, 1, link_defaults=LinkParams(delay=0.01))
        self.a = self.net.host(A)
        self.b = self.net.host(B)
        self.servers: list[Recorder] = []
        server_factory = Factory.forProtocol(Recorder)
        original = server_factory.buildProtocol

        def build(addr: object) -> Recorder:
            proto = original(addr)
            self.servers.append(proto)
            return proto

        server_factory.buildProtocol = build  # type: ignore[method-assign]
        self.b.listenTCP(PORT, server_factory)
        self.client_factory = ClientFactory.forProtocol(Recorder)
        self.connector = self.a.connectTCP(B, PORT, self.client_factory)
        self.net.run(0.1)
        self.client = self.connector.transport.protocol
        self.server = self.servers[0]


class SkewTests(Pair):
    def test_seconds_offset_delays_relative(self) -> None:
        now = self.clock.seconds()
        self.a.set_skew(-3.5)
        self.assertEqual(self.a.seconds(), now - 3.5)
        self.assertEqual(self.b.seconds(), now)
        ran: list[float] = []
        call = self.a.callLater(1, lambda: ran.append(self.clock.seconds()))
        self.assertEqual(call.getTime(), now - 3.5 + 1)
        self.net.run(1)
        self.assertEqual(ran, [now + 1])
        self.assertIn(f"skew {A} - 0 00000000 -3.5", self.net.recent_events()[-1])

    def test_bad_skew(self) -> None:
        self.assertRaises(ValueError, self.a.set_skew, float("nan"))
        self.assertRaises(ValueError, self.a.set_skew, "1")


class SlowHostTests(Pair):
    def test_deliveries_wait_and_keep_order(self) -> None:
        self.b.set_processing_delay(0.5)
        start = self.clock.seconds()
        for chunk in (b"1", b"2", b"3"):
            self.client.transport.write(chunk)
        self.net.run(0.4)
        self.assertEqual(self.server.chunks, [])
        self.net.run(0.2)
        self.assertEqual(self.server.chunks, [b"1", b"2", b"3"])
        self.assertAlmostEqual(self.server.times[0] - start, 0.51)
        # The other direction is not slowed.
        self.server.transport.write(b"back")
        self.net.run(0.02)
        self.assertEqual(self.client.chunks, [b"back"])

    def test_random_delay_and_back_to_normal(self) -> None:
        self.b.set_processing_delay(lambda rng: rng.uniform(0.1, 0.2))
        self.client.transport.write(b"x")
        self.net.run(0.05)
        self.assertEqual(self.server.chunks, [])
        self.net.run(0.2)
        self.assertEqual(self.server.chunks, [b"x"])
        self.b.set_processing_delay(0)
        self.client.transport.write(b"y")
        self.net.run(0.011)
        self.assertEqual(self.server.chunks, [b"x", b"y"])

    def test_bad_delay(self) -> None:
        self.assertRaises(ValueError, self.b.set_processing_delay, -1)
        self.assertRaises(ValueError, self.b.set_processing_delay, float("inf"))


class ClogTests(Pair):
    def test_held_then_delivered_in_order(self) -> None:
        self.net.clog(A, B, 1.0)
        self.assertTrue(self.net.clogged(A, B))
        self.assertFalse(self.net.clogged(B, A))
        for chunk in (b"1", b"2"):
            self.client.transport.write(chunk)
        self.net.run(0.5)
        self.client.transport.write(b"3")
        self.net.run(0.49)
        self.assertEqual(self.server.chunks, [])
        # The other direction flows.
        self.server.transport.write(b"pong")
        self.net.run(0.0)
        self.net.run(0.02)
        self.assertEqual(self.client.chunks, [b"pong"])
        self.net.run(0.02)
        self.assertFalse(self.net.clogged(A, B))
        self.assertEqual(self.server.chunks, [b"1", b"2", b"3"])
        self.assertEqual(self.server.lost, [])

    def test_clog_only_extends(self) -> None:
        self.net.clog(A, B, 2.0)
        self.net.clog(A, B, 0.5)
        self.client.transport.write(b"x")
        self.net.run(1.0)
        self.assertEqual(self.server.chunks, [])
        self.net.clog(A, B, 2.0)
        self.net.run(1.5)
        self.assertEqual(self.server.chunks, [])
        self.net.run(0.6)
        self.assertEqual(self.server.chunks, [b"x"])

    def test_until_unclog_and_heal(self) -> None:
        self.net.clog(A, B)
        self.client.transport.write(b"x")
        self.net.run(100)
        self.assertEqual(self.server.chunks, [])
        self.net.heal()
        self.assertEqual(self.server.chunks, [b"x"])
        self.assertFalse(self.net.clogged(A, B))
        self.net.unclog(A, B)  # not clogged: nothing happens

    def test_close_waits_behind_held_chunks(self) -> None:
        self.net.clog(A, B, 1.0)
        self.client.transport.write(b"last words")
        self.client.transport.loseConnection()
        self.net.run(0.5)
        self.assertEqual(self.server.lost, [])
        self.net.run(1.0)
        self.assertEqual(self.server.chunks, [b"last words"])
        self.assertEqual(len(self.server.lost), 1)

    def test_connection_setup_waits(self) -> None:
        self.net.clog(A, B, 1.0)
        other = self.a.connectTCP(B, PORT, ClientFactory.forProtocol(Recorder))
        self.net.run(0.5)
        self.assertEqual(other.state, "connecting")
        self.net.run(0.6)
        self.assertEqual(other.state, "connected")

    def test_clog_is_traced(self) -> None:
        self.net.clog(A, B, 1.0)
        self.assertIn("clog 192.0.2.1 192.0.2.2", self.net.recent_events()[-1])
        self.net.unclog(A, B)
        self.assertIn("unclog 192.0.2.1 192.0.2.2 0 00000000 held=0", self.net.recent_events()[-1])

    def test_bad_seconds(self) -> None:
        self.assertRaises(ValueError, self.net.clog, A, B, -1)
