"""
Tests for the ``tls`` transport (L{clustron.transport.tls}), TLS peer
identity (L{clustron.security.tls_identity}) and TLS metrics
(L{clustron.security.tls_metrics}).

Connections are made in memory (L{twisted.test.iosim}) with real
certificates and real OpenSSL handshakes; no sockets, no global reactor.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from OpenSSL import SSL
from OpenSSL.crypto import X509
from prometheus_client import CollectorRegistry
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, CertificateOptions, TLSVersion
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, formatEvent
from twisted.plugin import IPlugin
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import (
    ConnectionCompleter,
    FakeTransport,
    connect,
    makeFakeClient,
    makeFakeServer,
)
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from clustron import plugins
from clustron.config import NodeConfig
from clustron.errors import ConfigError
from clustron.interfaces import ITransportPlugin
from clustron.security import tls_metrics
from clustron.security.certs import create_ca, issue_node_cert
from clustron.security.tls_identity import check_peer_identity, peer_node_ids
from clustron.transport import tls as tls_module
from clustron.transport.tls import (
    HandshakeWatch,
    TlsTransportPlugin,
    _client_endpoint,
    tls_transport,
)

METRIC = "clustron_tls_handshake_failures_total"


def node_config(node_id: str, ca: Path, cert: Path, key: Path, **extra: Any) -> NodeConfig:
    """
    A validated configuration for a node on the tls transport.
    """
    return NodeConfig.from_dict(
        {
            "cluster_id": "test",
            "node_id": node_id,
            "transport": "tls",
            "listen": "tcp:0:interface=127.0.0.1",
            "advertise": "127.0.0.1:7101",
            "tls": {"ca": str(ca), "cert": str(cert), "key": str(key)},
            **extra,
        },
        discovery_validators={"static": lambda options: []},
        plugin_names=lambda kind: {
            "transport": ["tcp", "tls"],
            "serializer": ["json"],
            "election": ["bully"],
        }[kind],
    )


class Recorder(Protocol):
    """
    Greets its peer, and records what it receives and how it ends.
    """

    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting
        self.received = b""
        self.names_seen: set[str] | None = None
        self.lost: Failure | None = None

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data
        self.names_seen = peer_node_ids(self.transport)

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self.lost = reason


class RecorderFactory(Factory):
    """
    Builds L{Recorder}s and keeps them.
    """

    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:  # noqa: N802
        protocol = Recorder(self.greeting)
        self.built.append(protocol)
        return protocol


class Certificates:
    """
    Two unrelated CAs in temporary directories: C{main} with nodes n1, n2
    and an expired n9, C{other} with n2; C{both} trusts both CAs.
    """

    def __init__(self, base: Path) -> None:
        self.main = base / "main"
        self.other = base / "other"
        create_ca(self.main)
        create_ca(self.other, common_name="Other CA")
        for node in ("n1", "n2"):
            issue_node_cert(self.main, node)
        issue_node_cert(
            self.main,
            "n9",
            days=1,
            now=datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC),
        )
        issue_node_cert(self.other, "n2")
        self.both = base / "both.crt"
        self.both.write_bytes(
            (self.main / "ca.crt").read_bytes() + (self.other / "ca.crt").read_bytes()
        )

    def config(self, node_id: str, directory: Path, ca: Path | None = None) -> NodeConfig:
        return node_config(
            node_id,
            ca or directory / "ca.crt",
            directory / f"{node_id}.crt",
            directory / f"{node_id}.key",
        )


class TlsTestCase(SynchronousTestCase):
    """
    Certificates, a private metrics registry and captured log events.
    """

    def setUp(self) -> None:
        self.certs = Certificates(Path(self.mktemp()))
        self.registry = CollectorRegistry()
        tls_metrics.register(self.registry)
        self.baseline = {reason: self.failures(reason) for reason in tls_metrics.REASONS}
        self.events: list[dict[str, Any]] = []
        self.patch(tls_module, "log", Logger(observer=self.events.append))

    def failures(self, reason: str) -> float:
        value = self.registry.get_sample_value(METRIC, {"reason": reason})
        assert value is not None
        return value

    def counted(self) -> dict[str, float]:
        """
        @return: the failures counted since C{setUp}, by reason (only
            reasons that were counted).
        """
        counts = {r: self.failures(r) - self.baseline[r] for r in tls_metrics.REASONS}
        return {r: n for r, n in counts.items() if n}

    def logged(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def connect_nodes(
        self, server_config: NodeConfig, client_config: NodeConfig
    ) -> tuple[Recorder, Recorder]:
        """
        Listen with C{server_config}, connect with C{client_config} through
        the plugin, and run the connection until it is idle.

        @return: the server's and the client's protocol.
        """
        reactor = MemoryReactorClock()
        server_factory = RecorderFactory(b"from server")
        self.successResultOf(tls_transport.listen(reactor, server_config, server_factory))
        client_factory = RecorderFactory(b"from client")
        connected = tls_transport.connect(reactor, client_config, "127.0.0.1", 0, client_factory)
        pump = ConnectionCompleter(reactor).succeedOnce()
        assert pump is not None
        pump.flush()
        client = self.successResultOf(connected)
        self.assertEqual(client_factory.built, [client])
        [server] = server_factory.built
        return server, client

    def connect_foreign_client(
        self, server_config: NodeConfig, client: Protocol, client_options: Any = None
    ) -> Recorder:
        """
        Connect C{client} (over TLS with C{client_options}, or in plain text
        when None) to a server listening through the plugin.

        @return: the server's protocol.
        """
        reactor = MemoryReactorClock()
        server_factory = RecorderFactory(b"from server")
        self.successResultOf(tls_transport.listen(reactor, server_config, server_factory))
        [(_, tls_factory, _, _)] = reactor.tcpServers
        server_side = tls_factory.buildProtocol(None)
        if client_options is not None:
            client_factory = TLSMemoryBIOFactory(
                client_options, True, Factory.forProtocol(lambda: client), clock=reactor
            )
            client_side = client_factory.buildProtocol(None)
        else:
            client_side = client
        pump = connect(
            server_side,
            makeFakeServer(server_side),
            client_side,
            makeFakeClient(client_side),
            greet=False,
            clock=reactor,
        )
        pump.flush()
        [server] = server_factory.built
        return server


class PluginTests(SynchronousTestCase):
    """
    The plugin object.
    """

    def test_interfaces(self) -> None:
        """
        The module-level instance provides the plugin interfaces and is
        named C{tls}.
        """
        self.assertTrue(verifyObject(IPlugin, tls_transport))
        self.assertTrue(verifyObject(ITransportPlugin, tls_transport))
        self.assertIsInstance(tls_transport, TlsTransportPlugin)
        self.assertEqual(tls_transport.name, "tls")

    def test_discoverable(self) -> None:
        """
        Twisted's plugin system finds the plugin by its name.
        """
        self.assertIs(plugins.find("transport", "tls"), tls_transport)

    def test_handshake_listener(self) -> None:
        """
        L{HandshakeWatch} provides L{IHandshakeListener}.
        """
        watch = HandshakeWatch(None, Protocol())  # type: ignore[arg-type]
        self.assertTrue(verifyObject(IHandshakeListener, watch))

    def test_client_endpoints(self) -> None:
        """
        IP address literals are dialled directly, IPv4 or IPv6; names are
        resolved.
        """
        reactor = MemoryReactorClock()
        self.assertEqual(
            type(_client_endpoint(reactor, "127.0.0.1", 1, 2.0)).__name__, "TCP4ClientEndpoint"
        )
        self.assertEqual(
            type(_client_endpoint(reactor, "::1", 1, 2.0)).__name__, "TCP6ClientEndpoint"
        )
        self.assertEqual(
            type(_client_endpoint(reactor, "node.example", 1, 2.0)).__name__, "HostnameEndpoint"
        )

    def test_connect_timeout(self) -> None:
        """
        The TCP connection attempt gives up after C{wire.handshake_timeout},
        and dials the address asked for.
        """
        certs = Certificates(Path(self.mktemp()))
        config = node_config(
            "n1",
            certs.main / "ca.crt",
            certs.main / "n1.crt",
            certs.main / "n1.key",
            wire={"handshake_timeout": 1.5},
        )
        reactor = MemoryReactorClock()
        tls_transport.connect(reactor, config, "10.0.0.2", 7102, Factory.forProtocol(Protocol))
        [(host, port, _, timeout, _)] = reactor.tcpClients
        self.assertEqual((host, port, timeout), ("10.0.0.2", 7102, 1.5))


class AcceptedTests(TlsTestCase):
    """
    Nodes with certificates from the cluster CA connect.
    """

    def test_both_sides_see_peer_ids(self) -> None:
        """
        Application bytes flow both ways, and each side's certificate names
        are visible to the other through L{peer_node_ids}.
        """
        server, client = self.connect_nodes(
            self.certs.config("n1", self.certs.main), self.certs.config("n2", self.certs.main)
        )
        self.assertEqual(server.received, b"from client")
        self.assertEqual(client.received, b"from server")
        self.assertEqual(server.names_seen, {"n2", "localhost"})
        self.assertEqual(client.names_seen, {"n1", "localhost"})
        self.assertIsNone(server.lost)
        self.assertIsNone(client.lost)
        self.assertEqual(self.counted(), {})
        self.assertEqual(self.events, [])

    def test_identity_check(self) -> None:
        """
        L{check_peer_identity} accepts the node id the certificate names and
        explains why it refuses another.
        """
        server, client = self.connect_nodes(
            self.certs.config("n1", self.certs.main), self.certs.config("n2", self.certs.main)
        )
        self.assertIsNone(check_peer_identity(server.transport, "n2"))
        self.assertIsNone(check_peer_identity(client.transport, "n1"))
        self.assertEqual(
            check_peer_identity(server.transport, "n3"),
            "certificate does not name node 'n3' (names: localhost, n2)",
        )

    def test_tls_1_2(self) -> None:
        """
        A peer limited to TLS 1.2 is accepted.
        """
        client_config = self.certs.config("n2", self.certs.main)
        options = tls_transport.certificate_options(client_config)
        limited = CertificateOptions(
            privateKey=options.privateKey,
            certificate=options.certificate,
            trustRoot=Certificate.loadPEM((self.certs.main / "ca.crt").read_bytes()),
            lowerMaximumSecurityTo=TLSVersion.TLSv1_2,
        )
        client = Recorder(b"from old client")
        server = self.connect_foreign_client(
            self.certs.config("n1", self.certs.main), client, limited
        )
        self.assertEqual(server.received, b"from old client")
        self.assertEqual(client.received, b"from server")
        self.assertEqual(server.transport.getHandle().get_protocol_version_name(), "TLSv1.2")
        self.assertEqual(server.names_seen, {"n2", "localhost"})


class RefusedTests(TlsTestCase):
    """
    Peers without a certificate from the cluster CA are refused in the TLS
    handshake, and every refusal is logged and counted.
    """

    def assert_refused(self, *protocols: Recorder) -> None:
        for protocol in protocols:
            self.assertEqual(protocol.received, b"")
            self.assertIsNotNone(protocol.lost)
            assert protocol.lost is not None
            self.assertTrue(protocol.lost.check(SSL.Error), protocol.lost)

    def test_client_cert_from_other_ca(self) -> None:
        """
        A client whose certificate comes from another CA is refused by the
        server; the client learns its certificate was refused.
        """
        server, client = self.connect_nodes(
            self.certs.config("n1", self.certs.main),
            self.certs.config("n2", self.certs.other, ca=self.certs.both),
        )
        self.assert_refused(server, client)
        self.assertEqual(
            self.counted(),
            {tls_metrics.BAD_PEER_CERTIFICATE: 1, tls_metrics.CERTIFICATE_REFUSED_BY_PEER: 1},
        )
        by_side = {event["side"]: event for event in self.events}
        self.assertEqual(by_side["server"]["reason"], tls_metrics.BAD_PEER_CERTIFICATE)
        self.assertEqual(by_side["server"]["node_id"], "n1")
        self.assertIn("certificate verify failed", by_side["server"]["detail"])
        self.assertIn("issuer=CN=Other CA", by_side["server"]["detail"])
        self.assertEqual(by_side["client"]["reason"], tls_metrics.CERTIFICATE_REFUSED_BY_PEER)
        self.assertIn("alert unknown ca", by_side["client"]["detail"])
        self.assertIn("names=localhost,n1", by_side["client"]["peer_certificate"])

    def test_server_cert_from_other_ca(self) -> None:
        """
        A client refuses a server whose certificate comes from another CA.
        """
        server, client = self.connect_nodes(
            self.certs.config("n2", self.certs.other, ca=self.certs.both),
            self.certs.config("n1", self.certs.main),
        )
        self.assert_refused(server, client)
        by_side = {event["side"]: event for event in self.events}
        self.assertEqual(by_side["client"]["reason"], tls_metrics.BAD_PEER_CERTIFICATE)
        self.assertIn("issuer=CN=Other CA", by_side["client"]["detail"])
        self.assertEqual(by_side["server"]["reason"], tls_metrics.CERTIFICATE_REFUSED_BY_PEER)

    def test_expired_client_cert(self) -> None:
        """
        An expired certificate from the cluster CA is refused, and the log
        says it expired.
        """
        server, client = self.connect_nodes(
            self.certs.config("n1", self.certs.main), self.certs.config("n9", self.certs.main)
        )
        self.assert_refused(server, client)
        by_side = {event["side"]: event for event in self.events}
        self.assertEqual(by_side["server"]["reason"], tls_metrics.BAD_PEER_CERTIFICATE)
        self.assertIn("certificate has expired", by_side["server"]["detail"])
        self.assertIn("subject=CN=n9", by_side["server"]["detail"])
        self.assertIn("certificate has expired", "\n".join(self.logged()))

    def test_client_without_certificate(self) -> None:
        """
        A client presenting no certificate is refused.
        """
        client = Recorder(b"anonymous")
        server = self.connect_foreign_client(
            self.certs.config("n1", self.certs.main),
            client,
            CertificateOptions(
                trustRoot=Certificate.loadPEM((self.certs.main / "ca.crt").read_bytes())
            ),
        )
        self.assert_refused(server, client)
        self.assertEqual(self.counted(), {tls_metrics.NO_CERTIFICATE: 1})
        [event] = self.events
        self.assertEqual(event["side"], "server")
        self.assertIn("peer did not return a certificate", formatEvent(event))

    def test_client_without_certificate_tls_1_2(self) -> None:
        """
        With TLS 1.2 the refusal of a client without a certificate happens
        within the handshake too.
        """
        client = Recorder(b"anonymous")
        server = self.connect_foreign_client(
            self.certs.config("n1", self.certs.main),
            client,
            CertificateOptions(
                trustRoot=Certificate.loadPEM((self.certs.main / "ca.crt").read_bytes()),
                lowerMaximumSecurityTo=TLSVersion.TLSv1_2,
            ),
        )
        self.assert_refused(server, client)
        self.assertEqual(self.counted(), {tls_metrics.NO_CERTIFICATE: 1})

    def test_plain_text(self) -> None:
        """
        A peer that does not speak TLS is refused, for a protocol reason.
        """
        client = Recorder(b"HELLO in plain text, not TLS\r\n" * 4)
        server = self.connect_foreign_client(self.certs.config("n1", self.certs.main), client)
        self.assert_refused(server)
        self.assertEqual(self.counted(), {tls_metrics.PROTOCOL: 1})

    def test_name_mismatch(self) -> None:
        """
        A certificate from the cluster CA passes the TLS handshake whatever
        node it names; the node id claimed afterwards is checked with
        L{check_peer_identity}.
        """
        server, client = self.connect_nodes(
            self.certs.config("n1", self.certs.main), self.certs.config("n2", self.certs.main)
        )
        self.assertEqual(
            check_peer_identity(server.transport, "n1"),
            "certificate does not name node 'n1' (names: localhost, n2)",
        )
        self.assertEqual(self.counted(), {})


class ConfigurationErrorTests(TlsTestCase):
    """
    Unusable TLS settings fail C{listen} and C{connect} with a
    L{ConfigError} naming the key.
    """

    def assert_config_error(self, config: Any, key: str, fragment: str) -> None:
        for attempt in (
            tls_transport.listen(MemoryReactorClock(), config, Factory.forProtocol(Protocol)),
            tls_transport.connect(
                MemoryReactorClock(), config, "127.0.0.1", 1, Factory.forProtocol(Protocol)
            ),
        ):
            error = self.failureResultOf(attempt, ConfigError).value
            [(bad_key, reason)] = error.errors
            self.assertEqual(bad_key, key)
            self.assertIn(fragment, reason)

    def test_no_tls_section(self) -> None:
        """
        A configuration without C{tls} is refused.
        """
        config = node_config(
            "n1", self.certs.main / "ca.crt", self.certs.main / "n1.crt", self.certs.main / "n1.key"
        )
        self.assert_config_error(attrs.evolve(config, tls=None), "tls", "required")

    def test_missing_file(self) -> None:
        """
        A file that disappeared since the configuration was loaded is
        reported with its key.
        """
        config = self.certs.config("n1", self.certs.main)
        os.unlink(self.certs.main / "n1.key")
        self.assert_config_error(config, "tls.key", "cannot read")

    def test_not_a_certificate(self) -> None:
        """
        A CA file holding no certificate is reported.
        """
        (self.certs.main / "ca.crt").write_bytes(b"not PEM")
        self.assert_config_error(
            self.certs.config("n1", self.certs.main), "tls.ca", "no valid PEM certificate"
        )

    def test_certificate_for_another_node(self) -> None:
        """
        A certificate that does not name this node's id is refused before
        any peer could refuse it.
        """
        config = node_config(
            "n1", self.certs.main / "ca.crt", self.certs.main / "n2.crt", self.certs.main / "n2.key"
        )
        self.assert_config_error(config, "tls.cert", "does not name this node's id 'n1'")

    def test_key_of_another_certificate(self) -> None:
        """
        A key that does not belong to the certificate is refused.
        """
        config = node_config(
            "n1", self.certs.main / "ca.crt", self.certs.main / "n1.crt", self.certs.main / "n2.key"
        )
        self.assert_config_error(config, "tls.key", "is not the private key")

    def test_certificate_from_another_ca(self) -> None:
        """
        A certificate that the configured CA did not issue is refused.
        """
        config = node_config(
            "n2",
            self.certs.main / "ca.crt",
            self.certs.other / "n2.crt",
            self.certs.other / "n2.key",
        )
        self.assert_config_error(config, "tls.cert", "was not issued by a CA in")

    def test_ssl_listen_endpoint(self) -> None:
        """
        An C{ssl:} listen endpoint is refused: the transport adds TLS itself.
        """
        config = self.certs.config("n1", self.certs.main)
        d = tls_transport.listen(
            MemoryReactorClock(),
            attrs.evolve(config, listen="ssl:7101:privateKey=x.pem"),
            Factory.forProtocol(Protocol),
        )
        [(key, reason)] = self.failureResultOf(d, ConfigError).value.errors
        self.assertEqual(key, "listen")
        self.assertIn("tcp:", reason)


class OptionsCacheTests(TlsTestCase):
    """
    TLS files are loaded once, and again when they change.
    """

    def test_reused(self) -> None:
        """
        The same options serve every connection while the files are
        unchanged.
        """
        plugin = TlsTransportPlugin()
        config = self.certs.config("n1", self.certs.main)
        self.assertIs(plugin.certificate_options(config), plugin.certificate_options(config))

    def test_reloaded(self) -> None:
        """
        A replaced certificate is loaded on the next connection.
        """
        plugin = TlsTransportPlugin()
        config = self.certs.config("n1", self.certs.main)
        first = plugin.certificate_options(config)
        issue_node_cert(self.certs.main, "n1", force=True)
        stamp = os.stat(self.certs.main / "n1.crt").st_mtime_ns + 1_000_000_000
        for name in ("n1.crt", "n1.key"):
            os.utime(self.certs.main / name, ns=(stamp, stamp))
        second = plugin.certificate_options(config)
        self.assertIsNot(first, second)
        self.assertNotEqual(first.certificate, second.certificate)

    def test_bounded(self) -> None:
        """
        At most a few sets of options are kept.
        """
        plugin = TlsTransportPlugin()
        config = self.certs.config("n1", self.certs.main)
        for step in range(20):
            stamp = 1_000_000_000 * (step + 1)
            os.utime(self.certs.main / "n1.crt", ns=(stamp, stamp))
            plugin.certificate_options(config)
        self.assertLessEqual(len(plugin._options), 8)


@implementer(IHandshakeListener)
class ListeningRecorder(Recorder):
    """
    A L{Recorder} that wants to know when the TLS handshake completes.
    """

    handshakes = 0

    def handshakeCompleted(self) -> None:  # noqa: N802
        self.handshakes += 1


class HandshakeWatchTests(TlsTestCase):
    """
    L{HandshakeWatch} passes everything on to the application's protocol.
    """

    def test_handshake_completed_passed_on(self) -> None:
        """
        An application protocol providing L{IHandshakeListener} hears of the
        completed handshake once, on both sides; C{connect} fires with the
        application's protocol.
        """
        reactor = MemoryReactorClock()
        servers: list[ListeningRecorder] = []

        def build_server() -> ListeningRecorder:
            servers.append(ListeningRecorder(b"from server"))
            return servers[-1]

        self.successResultOf(
            tls_transport.listen(
                reactor, self.certs.config("n1", self.certs.main), Factory.forProtocol(build_server)
            )
        )
        d = tls_transport.connect(
            reactor,
            self.certs.config("n2", self.certs.main),
            "127.0.0.1",
            0,
            Factory.forProtocol(lambda: ListeningRecorder(b"from client")),
        )
        pump = ConnectionCompleter(reactor).succeedOnce()
        assert pump is not None
        pump.flush()
        client = self.successResultOf(d)
        self.assertIsInstance(client, ListeningRecorder)
        [server] = servers
        self.assertEqual((client.handshakes, server.handshakes), (1, 1))
        self.assertEqual((client.received, server.received), (b"from server", b"from client"))

    def test_transport_is_tls(self) -> None:
        """
        The application's transport answers C{getPeerCertificate} and
        C{getHandle} like the TLS transport under it.
        """
        server, client = self.connect_nodes(
            self.certs.config("n1", self.certs.main), self.certs.config("n2", self.certs.main)
        )
        self.assertIsInstance(server.transport.getPeerCertificate(), X509)
        self.assertIsInstance(client.transport.getHandle(), SSL.Connection)

    def test_no_delay(self) -> None:
        """
        Nagle's algorithm is turned off on the TCP connection on both sides.
        """
        calls: list[tuple[FakeTransport, bool]] = []
        self.patch(
            FakeTransport, "setTcpNoDelay", lambda transport, on: calls.append((transport, on))
        )
        self.connect_nodes(
            self.certs.config("n1", self.certs.main), self.certs.config("n2", self.certs.main)
        )
        self.assertEqual([on for _, on in calls], [True, True])
        self.assertEqual(len({id(transport) for transport, _ in calls}), 2)

    def test_error_after_data_not_counted(self) -> None:
        """
        A TLS error once application bytes have arrived is not a handshake
        failure.
        """
        server, client = self.connect_nodes(
            self.certs.config("n1", self.certs.main), self.certs.config("n2", self.certs.main)
        )
        watch = server.transport
        watch.connectionLost(Failure(SSL.Error([("SSL routines", "", "bad record mac")])))
        self.assertTrue(server.lost.check(SSL.Error))  # type: ignore[union-attr]
        self.assertEqual(self.counted(), {})


class PeerIdentityTests(SynchronousTestCase):
    """
    L{peer_node_ids} and L{check_peer_identity} with stand-in transports.
    """

    def setUp(self) -> None:
        directory = Path(self.mktemp())
        create_ca(directory)
        issue_node_cert(directory, "n3", hosts=["10.0.0.3", "node3.example"])
        pem = (directory / "n3.crt").read_bytes()
        self.certificate = X509.from_cryptography(x509.load_pem_x509_certificate(pem))

    def transport(self, certificate: Any) -> Any:
        class Transport:
            def getPeerCertificate(self) -> Any:  # noqa: N802
                return certificate

        return Transport()

    def test_names(self) -> None:
        """
        The DNS names of the certificate's subjectAltName are the node ids
        it vouches for; IP addresses are not.
        """
        self.assertEqual(peer_node_ids(self.transport(self.certificate)), {"n3", "node3.example"})

    def test_no_certificate(self) -> None:
        """
        No certificate, or a transport that is not TLS, vouches for nothing.
        """
        self.assertEqual(peer_node_ids(self.transport(None)), set())
        self.assertEqual(peer_node_ids(object()), set())
        self.assertEqual(
            check_peer_identity(object(), "n2"),
            "peer claiming node 'n2' presented no certificate",
        )

    def test_check(self) -> None:
        """
        The claimed node id must be among the names.
        """
        transport = self.transport(self.certificate)
        self.assertIsNone(check_peer_identity(transport, "n3"))
        self.assertEqual(
            check_peer_identity(transport, "n2"),
            "certificate does not name node 'n2' (names: n3, node3.example)",
        )

    def test_certificate_without_names(self) -> None:
        """
        A certificate without a subjectAltName names nothing.
        """
        directory = Path(self.mktemp())
        create_ca(directory)
        ca = X509.from_cryptography(
            x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        )
        self.assertEqual(peer_node_ids(self.transport(ca)), set())
        self.assertEqual(
            check_peer_identity(self.transport(ca), "n1"),
            "certificate does not name node 'n1' (names: none)",
        )


class MetricsTests(SynchronousTestCase):
    """
    L{tls_metrics}: classification and the counter.
    """

    def error(self, reason: str) -> SSL.Error:
        return SSL.Error([("SSL routines", "", reason)])

    def test_classify(self) -> None:
        """
        OpenSSL's reasons map to a few label values.
        """
        cases = {
            "peer did not return a certificate": tls_metrics.NO_CERTIFICATE,
            "tlsv13 alert certificate required": tls_metrics.NO_CERTIFICATE,
            "certificate verify failed": tls_metrics.BAD_PEER_CERTIFICATE,
            "tlsv1 alert unknown ca": tls_metrics.CERTIFICATE_REFUSED_BY_PEER,
            "sslv3 alert bad certificate": tls_metrics.CERTIFICATE_REFUSED_BY_PEER,
            "sslv3 alert certificate expired": tls_metrics.CERTIFICATE_REFUSED_BY_PEER,
            "unsupported protocol": tls_metrics.PROTOCOL,
            "tlsv1 alert protocol version": tls_metrics.PROTOCOL,
            "wrong version number": tls_metrics.PROTOCOL,
            "http request": tls_metrics.PROTOCOL,
            "decryption failed or bad record mac": tls_metrics.OTHER,
        }
        for text, reason in cases.items():
            self.assertEqual(tls_metrics.classify(self.error(text)), reason, text)
        self.assertEqual(tls_metrics.classify(SSL.Error()), tls_metrics.OTHER)
        self.assertEqual(tls_metrics.classify(SSL.Error("odd")), tls_metrics.OTHER)

    def test_error_reasons(self) -> None:
        """
        The reason strings are extracted from pyOpenSSL's error list.
        """
        error = SSL.Error(
            [("SSL routines", "", "first"), ("x509 certificate routines", "", "second")]
        )
        self.assertEqual(tls_metrics.error_reasons(error), ["first", "second"])
        self.assertEqual(tls_metrics.error_reasons(SSL.Error()), [])

    def test_register(self) -> None:
        """
        The counter is exported by the registries it is registered with,
        with every reason present from the start; registering twice is
        harmless.
        """
        registry = CollectorRegistry()
        self.assertIsNone(registry.get_sample_value(METRIC, {"reason": "protocol"}))
        tls_metrics.register(registry)
        tls_metrics.register(registry)
        for reason in tls_metrics.REASONS:
            self.assertIsNotNone(registry.get_sample_value(METRIC, {"reason": reason}))
        before = registry.get_sample_value(METRIC, {"reason": "protocol"})
        assert before is not None
        tls_metrics.record_handshake_failure(tls_metrics.PROTOCOL)
        self.assertEqual(registry.get_sample_value(METRIC, {"reason": "protocol"}), before + 1)

    def test_unknown_reason(self) -> None:
        """
        Only the known reasons are counted, so labels stay bounded.
        """
        self.assertRaises(ValueError, tls_metrics.record_handshake_failure, "made up")
