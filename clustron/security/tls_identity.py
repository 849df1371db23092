"""
Which node a TLS peer is, according to its verified certificate.

The TLS layer proves that a peer holds a certificate signed by the cluster
CA, but it cannot know which node to expect: both sides dial addresses, not
node ids. The node id arrives later, in the Clustron HELLO; the wire
handshake then calls L{check_peer_identity} to make sure the certificate
names the node id the peer claims, and refuses the connection otherwise.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509


def _peer_certificate(transport: Any) -> x509.Certificate | None:
    """
    @return: the peer's certificate on C{transport}, or None when the
        transport has none (not TLS, or the peer sent no certificate).
    """
    get_peer_certificate = getattr(transport, "getPeerCertificate", None)
    if get_peer_certificate is None:
        return None
    certificate = get_peer_certificate()
    if certificate is None:
        return None
    if isinstance(certificate, x509.Certificate):
        return certificate
    cryptography_certificate: x509.Certificate = certificate.to_cryptography()
    return cryptography_certificate


def names_in_certificate(certificate: x509.Certificate) -> set[str]:
    """
    @return: the DNS names in C{certificate}'s subjectAltName (empty when it
        has none).
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return set()
    return set(san.value.get_values_for_type(x509.DNSName))


def peer_node_ids(transport: Any) -> set[str]:
    """
    The node ids the peer's certificate vouches for.

    Call it once the TLS handshake is over (for instance when the first
    application bytes arrive): the certificate has then been verified against
    the cluster CA by the transport.

    @param transport: the connection's transport (a TLS transport, or a
        wrapper that forwards C{getPeerCertificate} to one).
    @return: the DNS subjectAltNames of the peer's certificate; empty when
        the transport is not TLS or the peer presented no certificate.
    """
    certificate = _peer_certificate(transport)
    if certificate is None:
        return set()
    return names_in_certificate(certificate)


def check_peer_identity(transport: Any, claimed_node_id: str) -> str | None:
    """
    Check that the peer's certificate names the node id the peer claims.

    @param transport: the connection's TLS transport.
    @param claimed_node_id: the node id from the peer's HELLO.
    @return: None when the certificate names C{claimed_node_id} in a DNS
        subjectAltName, else the reason it does not, for logs and the REJECT
        detail, e.g. C{"certificate does not name node 'n2' (names: n3)"}.
    """
    certificate = _peer_certificate(transport)
    if certificate is None:
        return f"peer claiming node {claimed_node_id!r} presented no certificate"
    names = names_in_certificate(certificate)
    if claimed_node_id in names:
        return None
    listed = ", ".join(sorted(names)) or "none"
    return f"certificate does not name node {claimed_node_id!r} (names: {listed})"
