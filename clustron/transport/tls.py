"""
The ``tls`` transport: Clustron's byte stream over mutual TLS.

Both sides present a certificate and verify the other's against the cluster
CA (C{tls.ca}) only; the system's trusted authorities play no part. TLS 1.2 is
the minimum. Host names are not checked, since nodes dial addresses, not
names: a peer's identity is its node id, which its certificate must name in a
DNS subjectAltName, checked after the Clustron HELLO with
L{clustron.security.tls_identity.check_peer_identity}.

A connection refused in the TLS handshake (no certificate, another CA, an
expired certificate, an old protocol version) is logged with its reason and
counted in C{clustron_tls_handshake_failures_total{reason}} (see
L{clustron.security.tls_metrics}).
"""

from __future__ import annotations

import ipaddress
import os
import weakref
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import (
    IHandshakeListener,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
)
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from clustron.errors import ConfigError
from clustron.interfaces import ITransportPlugin
from clustron.security import tls_metrics
from clustron.security.tls_identity import names_in_certificate

log = Logger()

#: How many distinct TLS settings (file paths and modification times) keep a
#: ready-made set of options; more than one only when several nodes with
#: different certificates share a process, or the files changed.
_OPTIONS_CACHE_SIZE = 8


def _read(key: str, path: str) -> bytes:
    """
    @raise ConfigError: naming C{key} when C{path} cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError([(key, f"cannot read {path}: {e.strerror or e}")]) from None


def _load_certificates(key: str, path: str) -> list[x509.Certificate]:
    """
    @return: every certificate in the PEM file at C{path}, in file order.
    @raise ConfigError: naming C{key} when there is none or the file is
        unreadable or malformed.
    """
    data = _read(key, path)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ConfigError([(key, f"{path} holds no valid PEM certificate: {e}")]) from None
    return certificates


def _load_private_key(key: str, path: str) -> Any:
    """
    @return: the unencrypted private key in the PEM file at C{path}.
    @raise ConfigError: naming C{key} when it cannot be loaded.
    """
    data = _read(key, path)
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError([(key, f"{path} is not an unencrypted PEM private key: {e}")]) from None
    supported = (
        ec.EllipticCurvePrivateKey,
        rsa.RSAPrivateKey,
        ed25519.Ed25519PrivateKey,
        ed448.Ed448PrivateKey,
    )
    if not isinstance(private_key, supported):
        raise ConfigError([(key, f"{path} holds an unsupported kind of private key")])
    return private_key


def _issued_by_any(certificate: x509.Certificate, authorities: list[x509.Certificate]) -> bool:
    """
    @return: whether one of C{authorities} signed C{certificate} directly.
    """
    for authority in authorities:
        try:
            certificate.verify_directly_issued_by(authority)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


#: Descriptions of the OpenSSL certificate verification errors (X509_V_ERR_*)
#: a misconfigured cluster meets most.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain (the chain ends at a CA that is not trusted)",
    20: "unable to get local issuer certificate (not issued by the cluster CA)",
    21: "unable to verify the first certificate",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
    28: "certificate rejected",
}

#: Why certificate verification failed, by TLS connection, kept only as long
#: as the connection object lives.
_verify_failures: weakref.WeakKeyDictionary[SSL.Connection, str] = weakref.WeakKeyDictionary()


def _record_verify_result(
    connection: SSL.Connection, certificate: X509, errno: int, depth: int, ok: int
) -> bool:
    """
    OpenSSL's verification callback: keep OpenSSL's verdict, and remember
    why the first refused certificate was refused, for the log.
    """
    if not ok and connection not in _verify_failures:
        why = _VERIFY_ERRORS.get(errno, f"verify error {errno}")
        refused = certificate.to_cryptography()
        _verify_failures[connection] = (
            f"{why} (depth {depth}: subject={refused.subject.rfc4514_string()} "
            f"issuer={refused.issuer.rfc4514_string()})"
        )
    return bool(ok)


def build_certificate_options(tls: Any, node_id: str) -> CertificateOptions:
    """
    Load a node's TLS files and build its mutual-TLS settings.

    @param tls: the node's L{clustron.config.TlsConfig} (C{ca}, C{cert} and
        C{key} paths). C{cert} may hold intermediate certificates after the
        node's own.
    @param node_id: the node's id, which its certificate must name.
    @return: options usable on both sides of a connection: they present the
        node's certificate, require one from the peer, trust only the CA
        certificates in C{tls.ca}, and accept TLS 1.2 and newer.
    @raise ConfigError: naming the key (C{tls.ca}, C{tls.cert}, C{tls.key})
        and the reason when a file is missing, malformed, or does not fit the
        others.
    """
    authorities = _load_certificates("tls.ca", tls.ca)
    chain = _load_certificates("tls.cert", tls.cert)
    private_key = _load_private_key("tls.key", tls.key)
    leaf = chain[0]
    names = names_in_certificate(leaf)
    if node_id not in names:
        listed = ", ".join(sorted(names)) or "none"
        raise ConfigError(
            [
                (
                    "tls.cert",
                    f"{tls.cert} does not name this node's id {node_id!r} in a DNS "
                    f"subjectAltName (names: {listed}); peers would refuse it",
                )
            ]
        )
    if private_key.public_key() != leaf.public_key():
        raise ConfigError(
            [("tls.key", f"{tls.key} is not the private key of the certificate in {tls.cert}")]
        )
    if len(chain) == 1 and not _issued_by_any(leaf, authorities):
        raise ConfigError(
            [("tls.cert", f"{tls.cert} was not issued by a CA in {tls.ca}; peers would refuse it")]
        )
    # cryptography objects, not pyOpenSSL ones: OpenSSL.SSL.Context accepts
    # both, and pyOpenSSL deprecates its own (Twisted's annotations name
    # only the pyOpenSSL types).
    options = CertificateOptions(
        privateKey=private_key,
        certificate=cast(X509, leaf),
        extraCertChain=cast("list[X509]", chain[1:]),
        trustRoot=trustRootFromCertificates(
            [Certificate(X509.from_cryptography(c)) for c in authorities]
        ),
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
    # Every connection made with these options uses this one context; keep
    # its verification mode and add a callback that records why a peer's
    # certificate was refused.
    context = options.getContext()
    context.set_verify(context.get_verify_mode(), _record_verify_result)
    return options


def _verify_failure(transport: Any) -> str | None:
    """
    @return: why this side refused the peer's certificate on C{transport},
        or None when it did not.
    """
    try:
        connection = transport.getHandle()
    except Exception:
        return None
    if connection is None:
        return None
    return _verify_failures.get(connection)


def _describe_certificate(transport: Any) -> str | None:
    """
    @return: a one-line description of the certificate the peer presented on
        C{transport}, or None when there is none or it was refused.
    """
    try:
        peer = transport.getPeerCertificate()
    except Exception:
        return None
    if peer is None:
        return None
    certificate = peer.to_cryptography()
    names = ",".join(sorted(names_in_certificate(certificate))) or "-"
    return (
        f"subject={certificate.subject.rfc4514_string()} "
        f"issuer={certificate.issuer.rfc4514_string()} names={names}"
    )


def _describe_address(transport: Any) -> str:
    """
    @return: C{host:port} of the peer on C{transport}, or its repr.
    """
    try:
        address = transport.getPeer()
    except Exception:
        return "?"
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        return str(address)
    return f"{host}:{port}"


@implementer(IHandshakeListener)
class HandshakeWatch(ProtocolWrapper):
    """
    Sits between the TLS layer and the application's protocol and reports a
    connection that ends in a TLS error before any application bytes were
    received: a refused or failed handshake.

    With TLS 1.3 a client learns that the server refused its certificate only
    after its own side of the handshake is complete, from the alert that
    follows; that refusal is reported too, since no application bytes arrive
    before it.
    """

    factory: HandshakeWatchFactory
    _received = False

    def makeConnection(self, transport: Any) -> None:  # noqa: N802
        """
        Turn Nagle's algorithm off on the TCP connection under TLS (cluster
        traffic is small messages that want low latency), then connect the
        application's protocol.
        """
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass
        ProtocolWrapper.makeConnection(self, transport)

    def handshakeCompleted(self) -> None:
        """
        Pass the notification on to the application's protocol if it wants it.
        """
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def dataReceived(self, data: bytes) -> None:
        """
        Application bytes arrived: the TLS handshake succeeded.
        """
        self._received = True
        ProtocolWrapper.dataReceived(self, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        """
        Report a TLS error that ends the connection before any application
        bytes, then tell the application's protocol.
        """
        if not self._received and reason.check(SSL.Error):
            self.factory.handshake_failed(self, reason.value)
        ProtocolWrapper.connectionLost(self, reason)


class HandshakeWatchFactory(WrappingFactory):
    """
    Wraps the application's factory so that every connection is watched by a
    L{HandshakeWatch}.

    @ivar side: C{"server"} or C{"client"}, for logs.
    @ivar node_id: this node's id, for logs.
    """

    protocol = HandshakeWatch

    def __init__(self, wrapped_factory: IProtocolFactory, *, side: str, node_id: str) -> None:
        super().__init__(wrapped_factory)
        self.side = side
        self.node_id = node_id

    def handshake_failed(self, watch: HandshakeWatch, error: SSL.Error) -> None:
        """
        Log and count one refused or failed TLS handshake.

        @param watch: the watched connection (its transport is still usable).
        @param error: the TLS error that ended it.
        """
        reason = tls_metrics.classify(error)
        tls_metrics.record_handshake_failure(reason)
        detail = "; ".join(tls_metrics.error_reasons(error)) or repr(error)
        verify_failure = _verify_failure(watch.transport)
        if verify_failure is not None:
            detail = f"{detail}: {verify_failure}"
        log.warn(
            "TLS handshake with {peer} failed ({side} side of node {node_id}): {reason}: {detail}",
            peer=_describe_address(watch.transport),
            side=self.side,
            node_id=self.node_id,
            reason=reason,
            detail=detail,
            peer_certificate=_describe_certificate(watch.transport),
        )


def _client_endpoint(
    reactor: Any, host: str, port: int, timeout: float
) -> HostnameEndpoint | TCP4ClientEndpoint | TCP6ClientEndpoint:
    """
    @return: an endpoint dialling C{host}:C{port} (an IP address literal, or
        a name resolved by the reactor).
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    if address.version == 6:
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)


def _file_stamp(path: str) -> tuple[str, int]:
    """
    @return: C{path} and its modification time (-1 when it cannot be read,
        in which case loading reports the error).
    """
    try:
        return path, os.stat(path).st_mtime_ns
    except OSError:
        return path, -1


@implementer(IPlugin, ITransportPlugin)
class TlsTransportPlugin:
    """
    Mutual TLS over TCP. Selected with C{transport: tls}; needs C{tls.ca},
    C{tls.cert} and C{tls.key} in the node's configuration.
    """

    name = "tls"

    def __init__(self) -> None:
        self._options: dict[tuple[Any, ...], CertificateOptions] = {}

    def certificate_options(self, config: Any) -> CertificateOptions:
        """
        @return: the TLS options for C{config}'s node, loaded from its files
            the first time and again whenever one of them changes.
        @raise ConfigError: when C{config} has no C{tls} section or its files
            are unusable (see L{build_certificate_options}).
        """
        tls = config.tls
        if tls is None:
            raise ConfigError([("tls", "required when transport is 'tls' (ca, cert and key)")])
        cache_key = (
            config.node_id,
            _file_stamp(tls.ca),
            _file_stamp(tls.cert),
            _file_stamp(tls.key),
        )
        options = self._options.get(cache_key)
        if options is None:
            options = build_certificate_options(tls, config.node_id)
            while len(self._options) >= _OPTIONS_CACHE_SIZE:
                del self._options[next(iter(self._options))]
            self._options[cache_key] = options
        return options

    def listen(self, reactor: Any, config: Any, factory: IProtocolFactory) -> Deferred[Any]:
        """
        Accept mutual-TLS connections on C{config.listen}, a Twisted server
        endpoint string for a plain stream (C{tcp:...}); TLS is added here.

        @return: a Deferred firing with the
            L{twisted.internet.interfaces.IListeningPort}, or failing with
            L{ConfigError} when the TLS files or the endpoint are unusable.
        """
        try:
            options = self.certificate_options(config)
            if config.listen.lower().startswith("ssl:"):
                raise ConfigError(
                    [("listen", "use a tcp: endpoint with transport 'tls'; TLS is added to it")]
                )
            try:
                endpoint = serverFromString(reactor, config.listen)
            except (ValueError, TypeError, KeyError) as e:
                raise ConfigError(
                    [("listen", f"invalid endpoint {config.listen!r}: {e}")]
                ) from None
        except Exception:
            return fail()
        watch = HandshakeWatchFactory(factory, side="server", node_id=config.node_id)
        tls_factory = TLSMemoryBIOFactory(options, False, watch, clock=reactor)
        listening: Deferred[IListeningPort] = endpoint.listen(tls_factory)
        return listening

    def connect(
        self, reactor: Any, config: Any, host: str, port: int, factory: IProtocolFactory
    ) -> Deferred[Any]:
        """
        Open one mutual-TLS connection to C{host}:C{port}.

        The server's certificate must chain to the cluster CA; its host name
        is not checked (the peer's node id is, after HELLO).

        @return: a Deferred firing with the protocol built by C{factory} once
            the TCP connection is made (the TLS handshake follows; its failure
            reaches that protocol's C{connectionLost}), or failing when the
            connection cannot be made or the TLS files are unusable.
        """
        try:
            options = self.certificate_options(config)
        except Exception:
            return fail()
        endpoint = _client_endpoint(reactor, host, port, config.wire.handshake_timeout)
        watch = HandshakeWatchFactory(factory, side="client", node_id=config.node_id)
        tls_factory = TLSMemoryBIOFactory(options, True, watch, clock=reactor)
        connected: Deferred[Any] = endpoint.connect(tls_factory)
        connected.addCallback(_application_protocol)
        return connected


def _application_protocol(tls_protocol: Any) -> IProtocol:
    """
    @return: the application's protocol under the TLS layer and the
        L{HandshakeWatch}.
    """
    application: IProtocol = tls_protocol.wrappedProtocol.wrappedProtocol
    return application


#: The plugin instance ``twisted/plugins/clustron_builtins.py`` exposes.
tls_transport = TlsTransportPlugin()
