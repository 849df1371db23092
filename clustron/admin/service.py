"""
The admin API as a Twisted service: listens on start, stops on stop.
"""

from __future__ import annotations

import re
from typing import Any, cast

from OpenSSL.crypto import FILETYPE_PEM
from OpenSSL.crypto import Error as OpenSSLError
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.ssl import Certificate, CertificateOptions, KeyPair
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from clustron.admin.api import STATIC_DIR, AdminRoot, IAdminTarget, build_root, build_site
from clustron.admin.auth import AuditLog, Authorizer

log = Logger()

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"admin TLS {what} {path}: cannot read it: {e.strerror}") from None


def tls_options(cert_path: str, key_path: str) -> CertificateOptions:
    """
    Load a server certificate (optionally followed by its chain) and its
    private key.

    @param cert_path: a PEM file: the certificate, then any intermediates.
    @param key_path: a PEM file holding the private key.
    @return: TLS options for the admin listener.
    @raise ValueError: naming the file, when one cannot be read or parsed,
        or the key does not match the certificate.
    """
    cert_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "key")
    blocks = _PEM_CERTIFICATE.findall(cert_pem)
    if not blocks:
        raise ValueError(f"admin TLS certificate {cert_path}: no PEM certificate in it")
    try:
        certificates = [Certificate.loadPEM(block) for block in blocks]
    except OpenSSLError as e:
        raise ValueError(f"admin TLS certificate {cert_path}: cannot parse it: {e}") from None
    try:
        key = KeyPair.load(key_pem, FILETYPE_PEM)
    except OpenSSLError as e:
        raise ValueError(f"admin TLS key {key_path}: cannot parse it: {e}") from None
    if key.keyHash() != certificates[0].getPublicKey().keyHash():
        raise ValueError(
            f"admin TLS key {key_path}: does not match the certificate in {cert_path}"
        )
    return CertificateOptions(
        privateKey=key.original,
        certificate=certificates[0].original,
        extraCertChain=[c.original for c in certificates[1:]],
    )


def _tls_paths(tls: Any) -> tuple[str, str]:
    if isinstance(tls, (tuple, list)) and len(tls) == 2:
        return str(tls[0]), str(tls[1])
    cert, key = getattr(tls, "cert", None), getattr(tls, "key", None)
    if not cert or not key:
        raise ValueError(
            f"admin TLS settings must give a certificate and a key path, got {tls!r}"
        )
    return str(cert), str(key)


class AdminService(Service):
    """
    Serves the admin API (see L{clustron.admin.api}) on one endpoint.

    @ivar port: the listening port once listening (its C{getHost()} gives the
        bound address, useful with port 0), else None.
    @ivar root: the resource tree.
    """

    def __init__(
        self,
        reactor: Any,
        listen: str,
        target: IAdminTarget,
        authorizer: Authorizer,
        audit_log_path: str | None = None,
        tls: Any = None,
        *,
        static_dir: FilePath | None = STATIC_DIR,
    ) -> None:
        """
        @param reactor: the reactor to listen with.
        @param listen: a Twisted server endpoint string
            (C{"tcp:8101:interface=127.0.0.1"}).
        @param target: the node.
        @param authorizer: checks tokens; keep a reference to replace them.
        @param audit_log_path: a file to append audit records to, or None.
        @param tls: None for plain HTTP, or C{(cert_path, key_path)}, or an
            object with C{cert} and C{key} paths: serve HTTPS.
        @param static_dir: the dashboard directory, or None.
        @raise ValueError: when C{listen} is not a valid endpoint string or
            the TLS files cannot be loaded (naming the file and why).
        """
        self._reactor = reactor
        self.listen = listen
        try:
            self._endpoint = serverFromString(reactor, listen)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"admin listen {listen!r}: not a valid endpoint: {e}") from None
        self.root: AdminRoot = build_root(
            target, authorizer, reactor, AuditLog(audit_log_path), static_dir=static_dir
        )
        self.site = build_site(self.root, reactor)
        if not authorizer.token_names:
            log.warn(
                "the admin API on {listen} has no tokens: it will refuse every request "
                "but the dashboard page",
                listen=listen,
            )
        self._factory: IProtocolFactory = self.site
        if tls is not None:
            cert, key = _tls_paths(tls)
            self._factory = TLSMemoryBIOFactory(tls_options(cert, key), False, self.site)
        self.scheme = "http" if tls is None else "https"
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None
        self._failure: Failure | None = None
        self._waiting: list[Deferred[IListeningPort]] = []

    def startService(self) -> None:  # noqa: N802
        """
        Start listening. A failure is logged and reported by
        L{when_listening}.
        """
        super().startService()
        self._failure = None
        d = self._endpoint.listen(self._factory)
        self._listening = d
        d.addCallbacks(self._listened, self._listen_failed)

    def _listened(self, port: IListeningPort) -> None:
        self._listening = None
        self.port = port
        address = port.getHost()
        log.info(
            "admin API listening on {scheme}://{host}:{port}",
            scheme=self.scheme,
            host=getattr(address, "host", address),
            port=getattr(address, "port", ""),
        )
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(port)

    def _listen_failed(self, failure: Failure) -> None:
        self._listening = None
        self._failure = failure
        if failure.check(CancelledError) and not self.running:
            log.info("admin API stopped before it was listening on {listen}", listen=self.listen)
        else:
            log.failure("admin API cannot listen on {listen}", failure, listen=self.listen)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure)

    def when_listening(self) -> Deferred[IListeningPort]:
        """
        @return: a Deferred firing with the listening port once listening,
            or failing with the reason listening failed.
        """
        if self.port is not None:
            return succeed(self.port)
        if self._failure is not None:
            return fail(self._failure)
        d: Deferred[IListeningPort] = Deferred()
        self._waiting.append(d)
        return d

    def stopService(self) -> Deferred[None]:  # noqa: N802
        """
        End every event stream and stop listening.

        @return: a Deferred firing when the port is closed.
        """
        super().stopService()
        self.root.api.close_streams()
        if self._listening is not None:
            self._listening.cancel()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        # stopListening returns a Deferred or None; maybeDeferred fires with
        # None either way (its overloads type a union result as nested).
        return cast("Deferred[None]", maybeDeferred(port.stopListening))
