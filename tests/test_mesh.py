"""
Tests for L{clustron.wire.mesh.Mesh}, run over the testkit's simulated
network (L{clustron.testkit.simnet}) with the C{sim} transport: real
protocols, real endpoints, one L{Clock}, no sockets.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from clustron.config import NodeConfig, SecurityConfig, WireConfig
from clustron.errors import QueueFull, UnknownMember
from clustron.observability.metrics import NodeMetrics
from clustron.serializers.json import json_serializer
from clustron.testkit.simnet import SimHost, SimNetwork
from clustron.transport.sim import sim_transport
from clustron.wire import framing
from clustron.wire.framing import PROTOCOL_MAJOR, PROTOCOL_MINOR, Crc32, FrameDecoder
from clustron.wire.handshake import Hello, Reject
from clustron.wire.mesh import Mesh, format_address, parse_address

# RFC 5737 documentation addresses: names on the simulated network only.
A, B, C, X = "192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.99"
PORT = 7101
CLUSTER = "test"


class RecordingTransport:
    """
    The C{sim} transport plugin, recording each dial and resolving aliases
    (so a node can be made to dial itself under another name).
    """

    name = "sim"

    def __init__(self, aliases: dict[str, str] | None = None) -> None:
        self.aliases = aliases or {}
        self.dials: list[tuple[float, str, int]] = []

    def listen(self, reactor: Any, config: Any, factory: Factory) -> Deferred[Any]:
        return sim_transport.listen(reactor, config, factory)

    def connect(
        self, reactor: Any, config: Any, host: str, port: int, factory: Factory
    ) -> Deferred[Any]:
        self.dials.append((reactor.seconds(), host, port))
        return sim_transport.connect(reactor, config, self.aliases.get(host, host), port, factory)


class Node:
    """
    A mesh on a sim host, with its callbacks recorded.
    """

    def __init__(
        self,
        net: SimNetwork,
        address: str,
        node_id: str,
        *,
        incarnation: int = 1,
        cluster_id: str = CLUSTER,
        aliases: dict[str, str] | None = None,
        security: SecurityConfig | None = None,
        **wire: Any,
    ) -> None:
        self.host: SimHost = net.host(address)
        self.address = (address, PORT)
        self.config = NodeConfig(
            cluster_id=cluster_id,
            node_id=node_id,
            transport="sim",
            profile="local",
            advertise=format_address(self.address),
            wire=WireConfig(**{"reconnect_initial": 0.05, "reconnect_max": 2.0, **wire}),
            security=security or SecurityConfig(),
        )
        self.metrics = NodeMetrics()
        self.transport = RecordingTransport(aliases)
        self.mesh = Mesh(
            self.host,
            self.config,
            self.transport,
            json_serializer,
            [json_serializer],
            self.metrics,
            self.host.seeded_random(),
            incarnation,
        )
        self.ups: list[tuple[str, int]] = []
        self.downs: list[tuple[str, str]] = []
        self.frames: list[tuple[str, int, Any]] = []
        self.unreachable: list[tuple[str, tuple[str, int]]] = []
        self.mesh.on_peer_up = lambda hello: self.ups.append((hello.node_id, hello.incarnation))
        self.mesh.on_peer_down = lambda hello, reason: self.downs.append((hello.node_id, reason))
        self.mesh.on_frame = lambda node, kind, body: self.frames.append((node, kind, body))
        self.mesh.on_unreachable = lambda node, address, reason: self.unreachable.append(
            (node, address)
        )

    def start(self, *peers: Node) -> Node:
        port = []
        self.mesh.start().addCallback(port.append)
        assert port, "sim listen should succeed at once"
        if peers:
            self.mesh.set_addresses("seeds", {p.address for p in peers})
        return self

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def rejections(self, reason: str, side: str) -> float:
        return self.sample("clustron_handshake_rejections_total", reason=reason, side=side)

    def connection_id(self, peer: str) -> int:
        return self.mesh.peers[peer].transport.connection_id  # type: ignore[no-any-return]


class RawPeer(Protocol):
    """
    A hand-driven client: records what it receives and when it is closed.
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason

    def frames(self) -> list[framing.Frame]:
        return FrameDecoder(1 << 20, Crc32()).feed(self.received)


class RawFactory(ClientFactory):
    def __init__(self) -> None:
        self.protocols: list[RawPeer] = []
        self.failures: list[Failure] = []

    def buildProtocol(self, addr: Any) -> RawPeer:
        protocol = RawPeer()
        self.protocols.append(protocol)
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.failures.append(reason)


def hello_bytes(node_id: str, address: str, **changes: Any) -> bytes:
    hello = Hello(
        cluster_id=CLUSTER,
        node_id=node_id,
        incarnation=1,
        protocol=(PROTOCOL_MAJOR, PROTOCOL_MINOR),
        app_version="",
        address=f"{address}:{PORT}",
        serializer="json",
        nonce="raw",
    )
    hello = attrs.evolve(hello, **changes)
    return framing.encode_frame(
        framing.HELLO, json_serializer.dumps(hello.to_dict()), 1, Crc32()
    )


class MeshTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.net = SimNetwork(self.clock, seed=7)

    def node(self, address: str, node_id: str, **kwargs: Any) -> Node:
        return Node(self.net, address, node_id, **kwargs)

    def capture_logs(self) -> list[dict[str, Any]]:
        """
        Collect the log events emitted from now on, for this test.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    def assertLogged(self, events: list[dict[str, Any]], text: str, **fields: Any) -> None:
        """
        Some warning's format contains C{text} and has the given fields.
        """
        for event in events:
            if (
                event.get("log_level") == LogLevel.warn
                and text in event.get("log_format", "")
                and all(event.get(k) == v for k, v in fields.items())
            ):
                return
        self.fail(f"no warning with {text!r} and {fields!r} among {len(events)} events")

    def run_until(self, predicate: Any, timeout: float = 10.0) -> None:
        self.assertTrue(self.net.run_until(predicate, timeout), "condition not reached")

    def assertOneConnection(self, x: Node, y: Node) -> None:
        """
        Each of C{x} and C{y} keeps exactly one open connection to the other,
        and it is the same connection.
        """
        x_id, y_id = x.config.node_id, y.config.node_id
        self.assertEqual(x.connection_id(y_id), y.connection_id(x_id))
        for node, other in ((x, y), (y, x)):
            open_to_other = [
                t for t in node.host.connections() if t.peer.host is other.host
            ]
            self.assertEqual(len(open_to_other), 1, node.host.connections())


class ConnectTests(MeshTestCase):
    """
    Meshes find each other and keep one connection per pair.
    """

    def test_two_meshes(self) -> None:
        """
        When one node knows the other, both see the other come up once, and
        frames flow both ways.
        """
        a = self.node(A, "a")
        b = self.node(B, "b")
        b.start()
        a.start(b)
        self.run_until(lambda: a.mesh.peers and b.mesh.peers)
        self.net.run(5)
        self.assertEqual(a.ups, [("b", 1)])
        self.assertEqual(b.ups, [("a", 1)])
        self.assertOneConnection(a, b)
        self.assertEqual(a.sample("clustron_peer_connections"), 1)
        self.assertEqual(a.mesh.address_of("b"), (B, PORT))
        self.assertEqual(b.mesh.address_of("a"), (A, PORT))
        a.mesh.send("b", framing.MESSAGE, {"hi": [1, 2]})
        b.mesh.send("a", framing.CONTROL, "back", priority=True)
        self.net.run(1)
        self.assertEqual(b.frames, [("a", framing.MESSAGE, {"hi": [1, 2]})])
        self.assertEqual(a.frames, [("b", framing.CONTROL, "back")])
        self.assertEqual(a.downs + b.downs, [])

    def test_two_signed_meshes(self) -> None:
        """
        Two nodes of a cluster that signs its frames connect and exchange
        frames the same way.
        """
        signed = SecurityConfig(signing="hmac-sha256", keys=(b"k" * 32,))
        a = self.node(A, "a", security=signed)
        b = self.node(B, "b", security=signed).start()
        a.start(b)
        self.run_until(lambda: a.mesh.peers and b.mesh.peers)
        a.mesh.send("b", framing.MESSAGE, {"signed": True})
        self.net.run(1)
        self.assertEqual(b.frames, [("a", framing.MESSAGE, {"signed": True})])
        self.assertEqual((a.ups, b.ups), ([("b", 1)], [("a", 1)]))
        self.assertOneConnection(a, b)

    def test_three_meshes(self) -> None:
        """
        Three nodes that all know each other end with one connection per
        pair and one C{on_peer_up} per peer.
        """
        nodes = [self.node(A, "a"), self.node(B, "b"), self.node(C, "c")]
        for node in nodes:
            node.start(*[n for n in nodes if n is not node])
        self.run_until(lambda: all(len(n.mesh.peers) == 2 for n in nodes))
        self.net.run(5)
        for node in nodes:
            others = sorted(n.config.node_id for n in nodes if n is not node)
            self.assertEqual(sorted(up[0] for up in node.ups), others)
            self.assertEqual(node.downs, [])
        for i, x in enumerate(nodes):
            for y in nodes[i + 1 :]:
                self.assertOneConnection(x, y)

    def test_simultaneous_dial(self) -> None:
        """
        When both nodes dial each other at once, both keep the same
        connection (the one dialled by the smaller id) and announce each
        other once, whatever the ids, the hosts and the link delays.
        """
        delays = [0.001, 0.01, lambda rng: rng.uniform(0.001, 0.05)]
        for seed in range(10):
            for delay in delays:
                for ids in (("a", "b"), ("b", "a")):
                    with self.subTest(seed=seed, delay=delay, ids=ids):
                        self.clock = Clock()
                        self.net = SimNetwork(self.clock, seed=seed)
                        self.net.link_defaults.delay = delay
                        x = self.node(A, ids[0])
                        y = self.node(B, ids[1])
                        x.start(y)
                        y.start(x)
                        self.run_until(lambda x=x, y=y: x.mesh.peers and y.mesh.peers)
                        self.net.run(5)
                        self.assertOneConnection(x, y)
                        kept = x.mesh.peers[ids[1]]
                        self.assertEqual(kept.initiated, ids[0] < ids[1])
                        self.assertEqual(x.ups, [(ids[1], 1)])
                        self.assertEqual(y.ups, [(ids[0], 1)])
                        self.assertEqual(x.downs + y.downs, [])

    def test_simultaneous_dial_three_jittered(self) -> None:
        """
        Three nodes dialling each other at once over links with jittered
        delays (so the handshakes of the two connections of a pair finish in
        any order) each keep one connection per pair, the same one at both
        ends, and never see a peer go down.
        """
        for seed in range(40):
            with self.subTest(seed=seed):
                self.clock = Clock()
                self.net = SimNetwork(self.clock, seed=seed)
                self.net.link_defaults.delay = lambda rng: rng.uniform(0.0005, 0.08)
                ids = ["c", "a", "b"] if seed % 2 else ["a", "b", "c"]
                nodes = [self.node(h, i) for h, i in zip((A, B, C), ids, strict=True)]
                for node in nodes:
                    node.start(*[n for n in nodes if n is not node])
                self.net.run(10)
                for node in nodes:
                    self.assertEqual(len(node.ups), 2, node.ups)
                    self.assertEqual(node.downs, [])
                for i, x in enumerate(nodes):
                    for y in nodes[i + 1 :]:
                        self.assertOneConnection(x, y)

    def test_deterministic(self) -> None:
        """
        The same seed gives the same network trace.
        """

        def trace() -> str:
            clock = Clock()
            net = SimNetwork(clock, seed=3)
            net.link_defaults.delay = lambda rng: rng.uniform(0.001, 0.02)
            nodes = [Node(net, A, "a"), Node(net, B, "b"), Node(net, C, "c")]
            for node in nodes:
                node.start(*[n for n in nodes if n is not node])
            net.run(3)
            return net.trace_hash()

        self.assertEqual(trace(), trace())

    def test_own_address_never_dialled(self) -> None:
        """
        A node's own advertised address among its seeds is skipped.
        """
        a = self.node(A, "a")
        a.start(a)
        self.net.run(10)
        self.assertEqual(a.transport.dials, [])
        self.assertEqual(a.mesh.wanted_addresses(), set())

    def test_set_addresses_removes_dialers(self) -> None:
        """
        An address no source wants any more stops being dialled.
        """
        a = self.node(A, "a").start()
        a.mesh.set_addresses("seeds", {(B, PORT)})
        self.net.run(1)
        dials = len(a.transport.dials)
        self.assertGreater(dials, 0)
        a.mesh.set_addresses("seeds", set())
        self.net.run(10)
        self.assertEqual(len(a.transport.dials), dials)

    def test_addresses_given_before_start(self) -> None:
        """
        Addresses set before C{start} are dialled once it starts.
        """
        a = self.node(A, "a")
        b = self.node(B, "b").start()
        a.mesh.set_addresses("seeds", {b.address})
        self.net.run(1)
        self.assertEqual(a.transport.dials, [])
        a.start()
        self.run_until(lambda: a.mesh.peers)


class ReconnectTests(MeshTestCase):
    """
    Lost peers are dialled again, with backoff.
    """

    def test_reconnect_after_restart(self) -> None:
        """
        When a peer crashes, the survivor sees it go down, keeps dialling its
        address with capped exponential backoff (never faster, never slower
        than the bounds), reports it unreachable, and reconnects to its next
        incarnation once it is back.
        """
        a = self.node(A, "a", reconnect_initial=0.05, reconnect_max=1.0)
        b = self.node(B, "b").start()
        a.start(b)
        self.run_until(lambda: a.mesh.peers)
        first_dials = len(a.transport.dials)
        b.host.crash()
        self.run_until(lambda: a.downs)
        self.assertEqual(a.downs[0][0], "b")
        self.net.run(20)
        dials = a.transport.dials[first_dials:]
        times = [t for t, _, _ in dials]
        gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
        # Capped: never more than reconnect_max apart (plus the link delay of
        # the refusal); jittered, with a floor: never a busy loop.
        self.assertTrue(all(gap <= 1.0 + 0.01 for gap in gaps), gaps)
        self.assertTrue(all(gap >= 0.005 for gap in gaps), gaps)
        self.assertGreater(len(dials), 10)
        self.assertLess(len(dials), 20 / 0.25)
        # Every dial but the one in flight has failed.
        failed = a.sample("clustron_connection_attempts_total", result="failed")
        self.assertIn(failed, (len(dials) - 1, len(dials)))
        self.assertIn(("b", (B, PORT)), a.unreachable)

        b.host.restart()
        b2 = Node(self.net, B, "b", incarnation=2).start()
        self.run_until(lambda: "b" in a.mesh.peers, timeout=2.0)
        self.assertEqual(a.ups, [("b", 1), ("b", 2)])
        self.assertEqual(a.mesh.peers["b"].peer.incarnation, 2)  # type: ignore[union-attr]
        self.assertEqual(b2.ups, [("a", 1)])

    def test_backoff_resets_after_success(self) -> None:
        """
        After a connection was up, losing it dials again at once.
        """
        a = self.node(A, "a")
        b = self.node(B, "b").start()
        a.start(b)
        self.run_until(lambda: a.mesh.peers)
        self.net.run(1)
        lost_at = self.clock.seconds()
        # The peer closes the connection (it stays up and listening).
        b.mesh.peers["a"].close("testing")
        self.run_until(lambda: a.downs)
        self.run_until(lambda: len(a.ups) == 2, timeout=1.0)
        self.assertLess(self.clock.seconds() - lost_at, 0.1)
        self.assertEqual(a.downs, [("b", "peer said bye: testing")])


    def test_dial_lost_in_a_partition_retried_after_healing(self) -> None:
        """
        A dial whose connection request a cut link swallowed does not hang:
        it gives up after C{wire.handshake_timeout} and is dialled again
        with backoff, so the peers connect soon after the link heals (well
        before the reliable messages waiting for the connection time out).
        """
        a = self.node(A, "a", handshake_timeout=2.0, reconnect_max=1.0)
        b = self.node(B, "b").start()
        self.net.cut_one_way(B, A)
        a.start(b)
        self.net.run(0.5)
        self.assertEqual(len(a.transport.dials), 1)
        self.net.heal()
        self.run_until(lambda: a.mesh.peers, timeout=10.0)
        # The first dial timed out at 2 s; the next came within reconnect_max.
        self.assertLessEqual(self.clock.seconds(), 2.0 + 1.0 + 0.1)
        self.assertEqual(len(a.transport.dials), 2)
        self.assertEqual(a.sample("clustron_connection_attempts_total", result="failed"), 1)


class RefusalTests(MeshTestCase):
    """
    Handshakes the mesh refuses, or that are refused to it.
    """

    def test_cluster_id_mismatch(self) -> None:
        """
        Nodes of different clusters refuse each other: neither announces the
        other, both count the refusal, and the dialling side keeps trying
        only with backoff.
        """
        events = self.capture_logs()
        a = self.node(A, "a", cluster_id="blue")
        b = self.node(B, "b", cluster_id="green").start()
        a.start(b)
        self.net.run(10)
        self.assertLogged(events, "refused handshake", peer_node="a", reason="cluster_id_mismatch")
        self.assertLogged(events, "refused handshake", peer_node="b", reason="cluster_id_mismatch")
        self.assertEqual(a.mesh.peers, {})
        self.assertEqual(b.mesh.peers, {})
        self.assertEqual(a.ups + b.ups, [])
        self.assertGreaterEqual(a.rejections("cluster_id_mismatch", "local"), 1)
        self.assertGreaterEqual(b.rejections("cluster_id_mismatch", "local"), 1)
        self.assertEqual(
            a.rejections("cluster_id_mismatch", "local"),
            b.rejections("cluster_id_mismatch", "local"),
        )
        # Each side refused the other's HELLO; both ends closed every
        # connection.
        self.assertEqual(a.host.connections(), [])
        self.assertEqual(b.host.connections(), [])
        self.assertLess(len(a.transport.dials), 10 / 0.25)

    def test_rejected_by_peer_counted(self) -> None:
        """
        A REJECT received before the peer's HELLO is counted on the
        C{peer} side, and the connection closes.
        """
        events = self.capture_logs()
        a = self.node(A, "a").start()
        factory = RawFactory()
        self.net.host(X).connectTCP(A, PORT, factory)
        self.net.run(0.1)
        raw = factory.protocols[0]
        raw.transport.write(
            framing.encode_frame(
                framing.REJECT,
                json_serializer.dumps(Reject("cluster_id_mismatch", "not yours").to_dict()),
                1,
                Crc32(),
            )
        )
        self.net.run(0.1)
        self.assertEqual(a.rejections("cluster_id_mismatch", "peer"), 1)
        self.assertIsNotNone(raw.lost)
        self.assertLogged(
            events, "refused our handshake", reason="cluster_id_mismatch", detail="not yours"
        )

    def test_refused_hello_gets_reject(self) -> None:
        """
        A refused peer receives the REJECT with the reason before the
        connection closes.
        """
        a = self.node(A, "a").start()
        factory = RawFactory()
        self.net.host(X).connectTCP(A, PORT, factory)
        self.net.run(0.1)
        raw = factory.protocols[0]
        raw.transport.write(hello_bytes("x", X, cluster_id="other"))
        self.net.run(0.1)
        self.assertIsNotNone(raw.lost)
        kinds = [f.frame_type for f in raw.frames()]
        self.assertEqual(kinds, [framing.HELLO, framing.REJECT])
        reject = Reject.from_dict(json_serializer.loads(raw.frames()[1].payload))
        self.assertEqual(reject.reason, "cluster_id_mismatch")
        self.assertEqual(a.rejections("cluster_id_mismatch", "local"), 1)

    def test_duplicate_node_id(self) -> None:
        """
        Two running nodes with the same id refuse each other as duplicates,
        even when they share an incarnation; neither mistakes the other for
        itself (so neither stops dialling the other's address).
        """
        a1 = self.node(A, "a")
        a2 = self.node(B, "a").start()
        a1.start(a2)
        self.net.run(3)
        self.assertEqual(a1.mesh.peers, {})
        self.assertGreaterEqual(a1.rejections("duplicate_node_id", "local"), 1)
        self.assertGreaterEqual(a2.rejections("duplicate_node_id", "local"), 1)
        self.assertEqual(a1.mesh.wanted_addresses(), {(B, PORT)})

    def test_self_connection(self) -> None:
        """
        Dialling its own address under another name, a node recognises
        itself, stops dialling that address, and counts no refusal.
        """
        a = self.node(A, "a", aliases={"me.example": A})
        a.start()
        a.mesh.set_addresses("seeds", {("me.example", PORT)})
        self.net.run(30)
        self.assertEqual(len(a.transport.dials), 1)
        self.assertEqual(a.mesh.wanted_addresses(), set())
        self.assertEqual(a.mesh.peers, {})
        self.assertEqual(a.ups, [])
        self.assertEqual(a.host.connections(), [])
        self.assertEqual(
            self.net.clock.getDelayedCalls(), [], "something is still scheduled"
        )

    def test_self_connection_signed(self) -> None:
        """
        The same holds in a cluster that signs its frames (where each
        connection's HELLO carries a fresh nonce).
        """
        signed = SecurityConfig(signing="hmac-sha256", keys=(b"k" * 32,))
        a = self.node(A, "a", aliases={"me.example": A}, security=signed)
        a.start()
        a.mesh.set_addresses("seeds", {("me.example", PORT)})
        self.net.run(30)
        self.assertEqual(len(a.transport.dials), 1)
        self.assertEqual(a.mesh.wanted_addresses(), set())
        self.assertEqual(a.ups, [])

    def test_duplicate_node_id_signed(self) -> None:
        """
        And two signed nodes with one id are still duplicates, not selves.
        """
        signed = SecurityConfig(signing="hmac-sha256", keys=(b"k" * 32,))
        a1 = self.node(A, "a", security=signed)
        a2 = self.node(B, "a", security=signed).start()
        a1.start(a2)
        self.net.run(3)
        self.assertGreaterEqual(a1.rejections("duplicate_node_id", "local"), 1)
        self.assertEqual(a1.mesh.wanted_addresses(), {(B, PORT)})

    def test_newer_incarnation_replaces(self) -> None:
        """
        A newer incarnation of a connected peer replaces the old connection
        (announced as a restart); the old incarnation is then refused.
        """
        a = self.node(A, "a").start()
        old = self.node(B, "b", incarnation=1)
        old.start(a)
        self.run_until(lambda: a.mesh.peers)
        new = self.node(C, "b", incarnation=2)
        new.start(a)
        self.run_until(lambda: a.mesh.peers["b"].peer.incarnation == 2)  # type: ignore[union-attr]
        self.net.run(3)
        self.assertEqual(a.ups, [("b", 1), ("b", 2)])
        self.assertEqual(a.downs, [("b", "restarted")])
        self.assertEqual(a.mesh.address_of("b"), (C, PORT))
        self.assertEqual(new.ups, [("a", 1)])
        self.assertEqual(new.downs, [])
        # The old incarnation lost its connection and is refused when it
        # dials again.
        self.assertIn(("a", "peer said bye: replaced by newer incarnation"), old.downs)
        self.assertGreaterEqual(a.rejections("duplicate_node_id", "local"), 1)
        self.assertGreaterEqual(old.rejections("duplicate_node_id", "peer"), 1)
        self.assertEqual(a.mesh.peers["b"].peer.incarnation, 2)  # type: ignore[union-attr]
        self.assertEqual(len(a.mesh.peers), 1)


class DuplicateByeTests(MeshTestCase):
    """
    A peer closing our kept connection as a duplicate: it keeps another one,
    which is expected to finish its handshake here shortly.
    """

    def connect_raw(self, a: Node, node_id: str = "x") -> RawPeer:
        factory = RawFactory()
        self.net.host(X).connectTCP(A, PORT, factory)
        self.net.run(0.1)
        raw = factory.protocols[0]
        raw.transport.write(hello_bytes(node_id, X))
        self.net.run(0.1)
        return raw

    def bye(self, raw: RawPeer, reason: str) -> None:
        raw.transport.write(
            framing.encode_frame(
                framing.BYE, json_serializer.dumps({"reason": reason}), 1, Crc32()
            )
        )

    def test_replacement_arrives(self) -> None:
        """
        When the other connection completes in time, nothing is announced.
        """
        a = self.node(A, "a", handshake_timeout=1.0).start()
        first = self.connect_raw(a)
        self.assertEqual(a.ups, [("x", 1)])
        self.bye(first, "duplicate connection")
        self.net.run(0.5)
        self.assertNotIn("x", a.mesh.peers)
        self.connect_raw(a)
        self.net.run(5)
        self.assertIn("x", a.mesh.peers)
        self.assertEqual(a.ups, [("x", 1)])
        self.assertEqual(a.downs, [])

    def test_replacement_of_new_incarnation(self) -> None:
        """
        When what arrives is a new incarnation, it is a restart.
        """
        a = self.node(A, "a", handshake_timeout=1.0).start()
        first = self.connect_raw(a)
        self.bye(first, "duplicate connection")
        self.net.run(0.5)
        factory = RawFactory()
        self.net.host(X).connectTCP(A, PORT, factory)
        self.net.run(0.1)
        factory.protocols[0].transport.write(hello_bytes("x", X, incarnation=2))
        self.net.run(5)
        self.assertEqual(a.ups, [("x", 1), ("x", 2)])
        self.assertEqual(a.downs, [("x", "restarted")])

    def test_replacement_missing(self) -> None:
        """
        When it does not come within the handshake timeout, the peer is
        announced down after all.
        """
        a = self.node(A, "a", handshake_timeout=1.0).start()
        first = self.connect_raw(a)
        self.bye(first, "duplicate connection")
        self.net.run(0.99)
        self.assertEqual(a.downs, [])
        self.net.run(0.02)
        self.assertEqual(a.downs, [("x", "peer said bye: duplicate connection")])
        self.assertEqual(a.mesh.peers, {})

    def test_other_reasons_announced_at_once(self) -> None:
        """
        Any other BYE is a peer going away, announced at once.
        """
        a = self.node(A, "a").start()
        first = self.connect_raw(a)
        self.bye(first, "node stopping")
        self.net.run(0.1)
        self.assertEqual(a.downs, [("x", "peer said bye: node stopping")])

    def test_stop_while_waiting(self) -> None:
        """
        Stopping the mesh while it waits announces the peer down and leaves
        nothing scheduled.
        """
        a = self.node(A, "a").start()
        first = self.connect_raw(a)
        self.bye(first, "duplicate connection")
        self.net.run(0.1)
        a.mesh.stop()
        self.assertEqual(a.downs, [("x", "peer said bye: duplicate connection")])
        self.net.run(1)
        self.assertEqual(self.net.clock.getDelayedCalls(), [])


    def test_refused_after_handshake_backs_off(self) -> None:
        """
        A node that takes its peer's HELLO but is then refused by it (here:
        an old incarnation, after the new one connected) dials again with
        backoff, not in a tight loop.
        """
        a = self.node(A, "a").start()
        old = self.node(B, "b", incarnation=1)
        old.start(a)
        self.run_until(lambda: a.mesh.peers)
        self.node(C, "b", incarnation=2).start(a)
        self.run_until(lambda: a.mesh.peers["b"].peer.incarnation == 2)  # type: ignore[union-attr]
        before = len(old.transport.dials)
        self.net.run(20)
        refused = len(old.transport.dials) - before
        self.assertGreater(refused, 3)
        # Backoff capped at reconnect_max (2 s): about one dial a second.
        self.assertLess(refused, 40)
        self.assertEqual(
            a.rejections("duplicate_node_id", "local"), old.rejections("duplicate_node_id", "peer")
        )


class InboundLimitTests(MeshTestCase):
    """
    Connections that have not finished their handshake are limited per
    remote host.
    """

    def test_pending_limit(self) -> None:
        """
        Beyond C{max_connections_per_address} silent connections from one
        host, more are closed at once and counted; other hosts are not
        affected; once the silent ones time out, the host may connect again.
        """
        a = self.node(A, "a", max_connections_per_address=2, handshake_timeout=1.0).start()
        silent = RawFactory()
        for _ in range(3):
            self.net.host(X).connectTCP(A, PORT, silent)
        self.net.run(0.1)
        self.assertEqual(
            [p.lost is None for p in silent.protocols], [True, True, False]
        )
        self.assertEqual(
            a.sample("clustron_protocol_violations_total", reason="too_many_connections"), 1
        )
        other = self.node(B, "b").start(a)
        self.run_until(lambda: "b" in a.mesh.peers, timeout=1.0)
        self.net.run(1.0)
        self.assertEqual([p.lost is None for p in silent.protocols], [False, False, False])
        self.assertEqual(
            a.sample("clustron_protocol_violations_total", reason="handshake_timeout"), 2
        )
        later = RawFactory()
        self.net.host(X).connectTCP(A, PORT, later)
        self.net.run(0.1)
        self.assertIsNone(later.protocols[0].lost)
        self.assertEqual([f.frame_type for f in later.protocols[0].frames()], [framing.HELLO])
        self.assertEqual(other.downs, [])

    def test_completed_handshake_frees_slot(self) -> None:
        """
        A connection that completes its handshake no longer counts as
        pending.
        """
        a = self.node(A, "a", max_connections_per_address=1).start()
        factory = RawFactory()
        self.net.host(X).connectTCP(A, PORT, factory)
        self.net.run(0.1)
        factory.protocols[0].transport.write(hello_bytes("x", X))
        self.net.run(0.1)
        self.assertIn("x", a.mesh.peers)
        second = RawFactory()
        self.net.host(X).connectTCP(A, PORT, second)
        self.net.run(0.1)
        self.assertIsNone(second.protocols[0].lost)


class BadPeerTests(MeshTestCase):
    """
    A mesh facing hostile bytes.
    """

    def test_garbage_then_good_peer(self) -> None:
        """
        A client sending garbage is cut off and counted; a good peer still
        connects afterwards.
        """
        a = self.node(A, "a").start()
        cases = [
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "oversized"),
            (b"\x00\x00\x00\x02xx", "undersized"),
            (b"\x00\x00\x00\x10" + b"PK" + b"\x00" * 14, "bad_magic"),
        ]
        for data, reason in cases:
            factory = RawFactory()
            self.net.host(X).connectTCP(A, PORT, factory)
            self.net.run(0.1)
            factory.protocols[0].transport.write(data)
            self.net.run(0.1)
            self.assertIsNotNone(factory.protocols[0].lost, reason)
            self.assertEqual(a.sample("clustron_frame_errors_total", reason=reason), 1)
        self.node(B, "b").start(a)
        self.run_until(lambda: "b" in a.mesh.peers, timeout=1.0)
        self.assertEqual(a.ups, [("b", 1)])


class SendTests(MeshTestCase):
    """
    L{Mesh.send} and L{Mesh.try_send}.
    """

    def test_unknown_member(self) -> None:
        """
        Sending to a node with no established connection raises
        L{UnknownMember}; C{try_send} says False.
        """
        a = self.node(A, "a").start()
        self.assertRaises(UnknownMember, a.mesh.send, "nobody", framing.MESSAGE, {})
        self.assertFalse(a.mesh.try_send("nobody", framing.MESSAGE, {}))

    def test_send_message_and_frame_handlers(self) -> None:
        """
        L{Mesh.send_message} sends a MESSAGE frame (raising
        L{UnknownMember} without a connection); a frame type with an entry
        in C{frame_handlers} goes there instead of C{on_frame}.
        """
        a = self.node(A, "a")
        b = self.node(B, "b").start()
        a.start(b)
        self.run_until(lambda: a.mesh.peers and b.mesh.peers)
        handled: list[tuple[str, int, Any]] = []
        b.mesh.frame_handlers = {
            framing.MESSAGE: lambda node, kind, body: handled.append((node, kind, body))
        }
        a.mesh.send_message("b", {"m": 1})
        a.mesh.send("b", framing.CONTROL, {"c": 2})
        self.net.run(1)
        self.assertEqual(handled, [("a", framing.MESSAGE, {"m": 1})])
        self.assertEqual(b.frames, [("a", framing.CONTROL, {"c": 2})])
        self.assertRaises(UnknownMember, a.mesh.send_message, "nobody", {})

    def test_after_peer_down(self) -> None:
        """
        Once a peer is down, sending to it raises L{UnknownMember}.
        """
        a = self.node(A, "a")
        b = self.node(B, "b").start()
        a.start(b)
        self.run_until(lambda: a.mesh.peers)
        self.assertTrue(a.mesh.try_send("b", framing.MESSAGE, 1))
        b.host.crash()
        self.run_until(lambda: a.downs)
        self.assertRaises(UnknownMember, a.mesh.send, "b", framing.MESSAGE, 1)

    def test_back_pressure(self) -> None:
        """
        When the receiver stops reading, the sender's transport pushes back,
        its bounded queue fills and sends fail with L{QueueFull}; everything
        accepted arrives, in order, once the receiver resumes.
        """
        a = self.node(A, "a", send_queue_frames=8)
        b = self.node(B, "b").start()
        a.start(b)
        self.run_until(lambda: a.mesh.peers and b.mesh.peers)
        b.host.pause()
        accepted = []
        for n in range(500):
            try:
                a.mesh.send("b", framing.MESSAGE, {"n": n, "pad": "x" * 1000})
            except QueueFull:
                break
            accepted.append(n)
            self.net.run(0.001)
        else:
            self.fail("the queue never filled")
        self.assertEqual(a.mesh.peers["b"].queued_frames, 8)
        self.assertFalse(a.mesh.try_send("b", framing.MESSAGE, {"n": -1}))
        self.assertGreaterEqual(a.sample("clustron_send_queue_full_total"), 2)
        b.host.resume()
        self.net.run(2)
        self.assertEqual([body["n"] for _, _, body in b.frames], accepted)
        self.assertEqual(a.sample("clustron_send_queue_frames"), 0)


class StopTests(MeshTestCase):
    """
    L{Mesh.stop}.
    """

    def test_stop(self) -> None:
        """
        Stopping closes every connection (peers see it go), stops dialling
        and listening.
        """
        a = self.node(A, "a")
        b = self.node(B, "b").start()
        a.start(b)
        self.run_until(lambda: a.mesh.peers)
        a.mesh.stop()
        self.net.run(5)
        self.assertEqual(b.downs, [("a", "peer said bye: node stopping")])
        self.assertEqual(a.host.connections(), [])
        self.assertIsNone(a.mesh.listening_port)
        self.assertIsNone(a.host.listening_port(PORT))
        self.assertEqual(self.net.clock.getDelayedCalls(), [])

    def test_stop_during_handshake(self) -> None:
        """
        A connection still in its handshake when the mesh stops is closed
        too: a stopped mesh never announces a peer.
        """
        a = self.node(A, "a")
        b = self.node(B, "b").start()
        a.start(b)
        # The connection is made (after one link delay) but the HELLOs are
        # still in flight.
        self.run_until(lambda: a.host.connections())
        a.mesh.stop()
        self.net.run(5)
        self.assertEqual(a.ups, [])
        self.assertEqual(a.mesh.peers, {})
        self.assertEqual(a.host.connections(), [])

    def test_stop_while_dialling(self) -> None:
        """
        A dial still in flight when the mesh stops does not become a
        connection.
        """
        a = self.node(A, "a")
        b = self.node(B, "b").start()
        a.start(b)
        self.net.run(0)
        self.assertEqual(len(a.transport.dials), 1)
        a.mesh.stop()
        self.net.run(5)
        self.assertEqual(a.ups, [])
        self.assertEqual(a.host.connections(), [])
        self.assertEqual(b.ups, [])


class AddressTests(SynchronousTestCase):
    """
    L{parse_address} and L{format_address}.
    """

    def test_roundtrip(self) -> None:
        for address in (("10.0.0.1", 7101), ("::1", 1), ("node.example", 65535)):
            self.assertEqual(parse_address(format_address(address)), address)
        self.assertEqual(format_address(("::1", 80)), "[::1]:80")

    def test_bad(self) -> None:
        for text in ("", "host", ":80", "host:", "host:0", "host:65536", "host:\u00b2", "h:x"):
            self.assertRaises(ValueError, parse_address, text)

