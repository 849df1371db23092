"""
Counting refused TLS handshakes.

A refusal (no client certificate, a certificate from another CA, an expired
certificate, a protocol version too old, plain text on a TLS port) happens
inside the TLS handshake, before Clustron's own handshake can log it; the TLS
transport classifies each one with L{classify} and counts it with
L{record_handshake_failure}.

The counter belongs to no registry until L{register} adds it to one, so tests
and embedding programs choose where it is exported.
"""

from __future__ import annotations

import weakref

from OpenSSL import SSL
from prometheus_client import CollectorRegistry, Counter

#: The peer presented no certificate, or we presented none to a peer that
#: requires one.
NO_CERTIFICATE = "no_certificate"
#: We refused the peer's certificate (another CA, expired, wrong usage...).
BAD_PEER_CERTIFICATE = "bad_peer_certificate"
#: The peer refused our certificate (it does not trust our CA, ...).
CERTIFICATE_REFUSED_BY_PEER = "certificate_refused_by_peer"
#: No TLS version both sides accept, or the peer does not speak TLS at all.
PROTOCOL = "protocol"
#: Any other TLS error.
OTHER = "other"

#: Every value of the C{reason} label.
REASONS = (NO_CERTIFICATE, BAD_PEER_CERTIFICATE, CERTIFICATE_REFUSED_BY_PEER, PROTOCOL, OTHER)

#: C{clustron_tls_handshake_failures_total{reason}}.
HANDSHAKE_FAILURES = Counter(
    "clustron_tls_handshake_failures",
    "TLS connections refused or failed before any application data was exchanged.",
    ["reason"],
    registry=None,
)
for _reason in REASONS:
    HANDSHAKE_FAILURES.labels(reason=_reason)
del _reason

_registered: weakref.WeakSet[CollectorRegistry] = weakref.WeakSet()


def register(registry: CollectorRegistry) -> None:
    """
    Export the TLS metrics through C{registry}; registering twice with the
    same registry does nothing.
    """
    if registry in _registered:
        return
    registry.register(HANDSHAKE_FAILURES)
    _registered.add(registry)


#: Substrings of OpenSSL error reasons, checked in order, and the label each
#: one maps to.
_CLASSIFICATION = (
    ("peer did not return a certificate", NO_CERTIFICATE),
    ("certificate required", NO_CERTIFICATE),
    ("certificate verify failed", BAD_PEER_CERTIFICATE),
    ("alert unknown ca", CERTIFICATE_REFUSED_BY_PEER),
    ("alert bad certificate", CERTIFICATE_REFUSED_BY_PEER),
    ("alert certificate", CERTIFICATE_REFUSED_BY_PEER),
    ("alert unsupported certificate", CERTIFICATE_REFUSED_BY_PEER),
    ("alert decrypt error", CERTIFICATE_REFUSED_BY_PEER),
    ("alert access denied", CERTIFICATE_REFUSED_BY_PEER),
    ("protocol version", PROTOCOL),
    ("unsupported protocol", PROTOCOL),
    ("no protocols available", PROTOCOL),
    ("version too low", PROTOCOL),
    ("wrong version number", PROTOCOL),
    ("http request", PROTOCOL),
    ("packet length too long", PROTOCOL),
    ("record layer failure", PROTOCOL),
)


def error_reasons(error: SSL.Error) -> list[str]:
    """
    @return: the OpenSSL reason strings carried by C{error}, e.g.
        C{["peer did not return a certificate"]}.
    """
    reasons: list[str] = []
    details = error.args[0] if error.args else None
    if isinstance(details, list):
        for entry in details:
            if isinstance(entry, tuple) and entry:
                reasons.append(str(entry[-1]))
            else:
                reasons.append(str(entry))
    elif details is not None:
        reasons.append(str(details))
    return reasons


def classify(error: SSL.Error) -> str:
    """
    @return: the C{reason} label (one of L{REASONS}) for a TLS error.
    """
    text = " ".join(error_reasons(error)).lower()
    for needle, reason in _CLASSIFICATION:
        if needle in text:
            return reason
    return OTHER


def record_handshake_failure(reason: str) -> None:
    """
    Count one refused or failed TLS handshake.

    @param reason: one of L{REASONS}.
    @raise ValueError: for any other reason, so label values stay bounded.
    """
    if reason not in REASONS:
        raise ValueError(f"unknown TLS handshake failure reason {reason!r}")
    HANDSHAKE_FAILURES.labels(reason=reason).inc()
