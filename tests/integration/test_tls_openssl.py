"""
The ``tls`` transport over real loopback sockets: node to node, and with
C{openssl s_client} as a foreign client.
"""

from __future__ import annotations

import datetime
import os
import shutil
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from clustron.config import NodeConfig
from clustron.security import tls_metrics
from clustron.security.certs import create_ca, issue_node_cert
from clustron.security.tls_identity import check_peer_identity, peer_node_ids
from clustron.transport import tls as tls_module
from clustron.transport.tls import tls_transport

METRIC = "clustron_tls_handshake_failures_total"
OPENSSL = shutil.which("openssl")


def node_config(node_id: str, ca: Path, cert: Path, key: Path) -> NodeConfig:
    """
    A validated configuration for a node on the tls transport, listening on
    an ephemeral loopback port.
    """
    return NodeConfig.from_dict(
        {
            "cluster_id": "test",
            "node_id": node_id,
            "transport": "tls",
            "listen": "tcp:0:interface=127.0.0.1",
            "advertise": "127.0.0.1:7101",
            "tls": {"ca": str(ca), "cert": str(cert), "key": str(key)},
        },
        discovery_validators={"static": lambda options: []},
        plugin_names=lambda kind: {
            "transport": ["tcp", "tls"],
            "serializer": ["json"],
            "election": ["bully"],
        }[kind],
    )


class Peer(Protocol):
    """
    Writes a greeting when connected; records what arrives, and fires
    C{received} on the first bytes and C{lost} when the connection ends
    (after setting C{reason}).
    When C{answer} is set, answers the first bytes with it and hangs up.
    """

    def __init__(self, greeting: bytes, answer: bytes | None) -> None:
        self.greeting = greeting
        self.answer = answer
        self.data = b""
        self.names: set[str] = set()
        self.received: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        first = not self.data
        self.data += data
        if first:
            self.names = peer_node_ids(self.transport)
            if self.answer is not None:
                self.transport.write(self.answer)
                self.transport.loseConnection()
            self.received.callback(None)

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self.reason = reason
        self.lost.callback(None)


class PeerFactory(Factory):
    """
    Builds L{Peer}s; C{first} fires with the first one built.
    """

    def __init__(self, greeting: bytes = b"", answer: bytes | None = None) -> None:
        self.greeting = greeting
        self.answer = answer
        self.first: Deferred[Peer] = Deferred()

    def buildProtocol(self, addr: Any) -> Peer:  # noqa: N802
        peer = Peer(self.greeting, self.answer)
        if not self.first.called:
            self.first.callback(peer)
        return peer


class SClient(ProcessProtocol):
    """
    An C{openssl s_client} run: sends one line, collects its output and
    fires C{ended} with C{(exit code, stdout, stderr)}.
    """

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[tuple[int, str, str]] = Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(b"ping\n")
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self.out += data

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.err += data

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        code = reason.value.exitCode
        self.ended.callback(
            (code, self.out.decode(errors="replace"), self.err.decode(errors="replace"))
        )


class TlsLoopbackTestCase(TestCase):
    """
    Certificates from two unrelated CAs, a server node n1 listening on
    loopback, a private metrics registry and captured log events.
    """

    timeout = 30

    def setUp(self) -> None:
        base = Path(self.mktemp())
        self.main = base / "main"
        self.other = base / "other"
        create_ca(self.main)
        create_ca(self.other, common_name="Other CA")
        for node in ("n1", "n2"):
            issue_node_cert(self.main, node)
        issue_node_cert(self.other, "n2")
        issue_node_cert(
            self.main,
            "n9",
            days=1,
            now=datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC),
        )
        self.both = base / "both.crt"
        self.both.write_bytes(
            (self.main / "ca.crt").read_bytes() + (self.other / "ca.crt").read_bytes()
        )
        self.registry = CollectorRegistry()
        tls_metrics.register(self.registry)
        self.baseline = {r: self.failures(r) for r in tls_metrics.REASONS}
        self.events: list[dict[str, Any]] = []
        self.patch(tls_module, "log", Logger(observer=self.events.append))

    def failures(self, reason: str) -> float:
        value = self.registry.get_sample_value(METRIC, {"reason": reason})
        assert value is not None
        return value

    def counted(self) -> dict[str, float]:
        counts = {r: self.failures(r) - self.baseline[r] for r in tls_metrics.REASONS}
        return {r: n for r, n in counts.items() if n}

    def config(self, node_id: str, directory: Path, ca: Path | None = None) -> NodeConfig:
        return node_config(
            node_id,
            ca or directory / "ca.crt",
            directory / f"{node_id}.crt",
            directory / f"{node_id}.key",
        )

    @inlineCallbacks
    def listen(self, config: NodeConfig, factory: Factory) -> Any:
        """
        Listen with C{config}, stop at the end of the test.

        @return: a Deferred firing with the port number.
        """
        port = yield tls_transport.listen(reactor, config, factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def assert_tls_failure(self, peer: Peer) -> None:
        """
        C{peer}'s connection ended with a TLS error and no application bytes.
        """
        self.assertIsNotNone(peer.reason)
        assert peer.reason is not None
        self.assertTrue(peer.reason.check(SSL.Error), peer.reason)
        self.assertEqual(peer.data, b"")


class NodeToNodeTests(TlsLoopbackTestCase):
    """
    Two nodes through the plugin on both sides.
    """

    @inlineCallbacks
    def connect_nodes(self, server_config: NodeConfig, client_config: NodeConfig) -> Any:
        """
        @return: a Deferred firing with the server's and the client's
            L{Peer} once the client is connected at the TCP level.
        """
        server_factory = PeerFactory(b"from server")
        port = yield self.listen(server_config, server_factory)
        client = yield tls_transport.connect(
            reactor, client_config, "127.0.0.1", port, PeerFactory(b"from client")
        )
        server = yield server_factory.first
        return server, client

    @inlineCallbacks
    def test_accepted(self) -> Any:
        """
        Nodes with certificates from the cluster CA exchange bytes; each sees
        the other's node id, and the name check passes for the right id only.
        """
        server, client = yield self.connect_nodes(
            self.config("n1", self.main), self.config("n2", self.main)
        )
        yield gatherResults([server.received, client.received])
        self.assertEqual((server.data, client.data), (b"from client", b"from server"))
        self.assertEqual(server.names, {"n2", "localhost"})
        self.assertEqual(client.names, {"n1", "localhost"})
        self.assertIsNone(check_peer_identity(server.transport, "n2"))
        self.assertIsNone(check_peer_identity(client.transport, "n1"))
        self.assertEqual(
            check_peer_identity(server.transport, "n3"),
            "certificate does not name node 'n3' (names: localhost, n2)",
        )
        client.transport.loseConnection()
        yield gatherResults([server.lost, client.lost])
        self.assertEqual(self.counted(), {})

    @inlineCallbacks
    def test_client_cert_from_other_ca(self) -> Any:
        """
        The server refuses a client whose certificate another CA issued.
        """
        server, client = yield self.connect_nodes(
            self.config("n1", self.main), self.config("n2", self.other, ca=self.both)
        )
        yield gatherResults([server.lost, client.lost])
        self.assert_tls_failure(server)
        self.assert_tls_failure(client)
        self.assertEqual(
            self.counted(),
            {tls_metrics.BAD_PEER_CERTIFICATE: 1, tls_metrics.CERTIFICATE_REFUSED_BY_PEER: 1},
        )
        [server_event] = [e for e in self.events if e["side"] == "server"]
        self.assertIn("issuer=CN=Other CA", server_event["detail"])
        self.assertTrue(server_event["peer"].startswith("127.0.0.1:"))

    @inlineCallbacks
    def test_server_cert_from_other_ca(self) -> Any:
        """
        The client refuses a server whose certificate another CA issued.
        """
        server, client = yield self.connect_nodes(
            self.config("n2", self.other, ca=self.both), self.config("n1", self.main)
        )
        yield gatherResults([server.lost, client.lost])
        self.assert_tls_failure(server)
        self.assert_tls_failure(client)
        [client_event] = [e for e in self.events if e["side"] == "client"]
        self.assertEqual(client_event["reason"], tls_metrics.BAD_PEER_CERTIFICATE)

    @inlineCallbacks
    def test_expired_cert(self) -> Any:
        """
        An expired certificate from the cluster CA is refused.
        """
        server, client = yield self.connect_nodes(
            self.config("n1", self.main), self.config("n9", self.main)
        )
        yield gatherResults([server.lost, client.lost])
        self.assert_tls_failure(server)
        [server_event] = [e for e in self.events if e["side"] == "server"]
        self.assertIn("certificate has expired", server_event["detail"])


class OpensslClientTests(TlsLoopbackTestCase):
    """
    C{openssl s_client} against a node: a foreign TLS implementation must be
    refused without a valid certificate and accepted with one.
    """

    if OPENSSL is None:
        skip = "openssl is not installed"

    @inlineCallbacks
    def s_client(self, *arguments: str, ca: Path | None = None) -> Any:
        """
        Run C{openssl s_client} against a fresh n1 listener.

        @return: a Deferred firing with the server's L{Peer} (once its
            connection ended) and C{(exit code, stdout, stderr)}.
        """
        server_factory = PeerFactory(answer=b"pong\n")
        port = yield self.listen(self.config("n1", self.main), server_factory)
        run = SClient()
        argv = [
            OPENSSL,
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-CAfile",
            str(ca or self.main / "ca.crt"),
            "-verify_return_error",
            "-brief",
            "-ign_eof",
            *arguments,
        ]
        reactor.spawnProcess(run, OPENSSL, argv, env={"PATH": os.environ.get("PATH", "")})
        server = yield server_factory.first
        _, result = yield gatherResults([server.lost, run.ended])
        return server, result

    def cert_arguments(self, directory: Path, node_id: str) -> tuple[str, ...]:
        return (
            "-cert",
            str(directory / f"{node_id}.crt"),
            "-key",
            str(directory / f"{node_id}.key"),
        )

    @inlineCallbacks
    def test_valid_certificate(self) -> Any:
        """
        With a certificate from the cluster CA the handshake succeeds: the
        node sees the client's names, s_client verifies the node against the
        CA and gets its answer.
        """
        server, (code, out, err) = yield self.s_client(*self.cert_arguments(self.main, "n2"))
        self.assertEqual(server.data, b"ping\n")
        self.assertEqual(server.names, {"n2", "localhost"})
        assert server.reason is not None
        self.assertFalse(server.reason.check(SSL.Error), server.reason)
        self.assertEqual(code, 0, err)
        self.assertIn("Verification: OK", err)
        self.assertIn("pong", out)
        self.assertEqual(self.counted(), {})

    @inlineCallbacks
    def test_no_certificate(self) -> Any:
        """
        Without a client certificate the node refuses the handshake.
        """
        server, (code, _, err) = yield self.s_client()
        self.assert_tls_failure(server)
        self.assertNotEqual(code, 0)
        self.assertIn("certificate required", err)
        self.assertEqual(self.counted(), {tls_metrics.NO_CERTIFICATE: 1})

    @inlineCallbacks
    def test_no_certificate_tls_1_2(self) -> Any:
        """
        Without a client certificate over TLS 1.2, the refusal happens inside
        the handshake.
        """
        server, (code, _, _) = yield self.s_client("-tls1_2")
        self.assert_tls_failure(server)
        self.assertNotEqual(code, 0)
        self.assertEqual(self.counted(), {tls_metrics.NO_CERTIFICATE: 1})

    @inlineCallbacks
    def test_wrong_ca(self) -> Any:
        """
        A client certificate from another CA is refused.
        """
        server, (code, _, err) = yield self.s_client(*self.cert_arguments(self.other, "n2"))
        self.assert_tls_failure(server)
        self.assertNotEqual(code, 0)
        self.assertIn("unknown ca", err)
        self.assertEqual(self.counted(), {tls_metrics.BAD_PEER_CERTIFICATE: 1})

    @inlineCallbacks
    def test_client_distrusts_node(self) -> Any:
        """
        A client that trusts another CA refuses the node's certificate; the
        node logs and counts that its certificate was refused.
        """
        server, (code, _, err) = yield self.s_client(
            *self.cert_arguments(self.main, "n2"), ca=self.other / "ca.crt"
        )
        self.assert_tls_failure(server)
        self.assertNotEqual(code, 0)
        self.assertIn("certificate verify failed", err)
        self.assertEqual(self.counted(), {tls_metrics.CERTIFICATE_REFUSED_BY_PEER: 1})

    @inlineCallbacks
    def test_tls_1_1_refused(self) -> Any:
        """
        TLS 1.1 is refused even with a valid certificate: 1.2 is the minimum.
        """
        server, (code, _, _) = yield self.s_client(
            "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", *self.cert_arguments(self.main, "n2")
        )
        self.assert_tls_failure(server)
        self.assertNotEqual(code, 0)
        self.assertEqual(self.counted(), {tls_metrics.PROTOCOL: 1})
