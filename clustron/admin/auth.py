"""
Authentication, authorization and audit for the admin API.

Callers present a bearer token (C{Authorization: Bearer <token>}). Each
configured token has a name, a role and a secret; roles are ordered
C{viewer} < C{operator} < C{admin}, and a route names the least role it
needs. The set of tokens can be replaced at runtime
(L{Authorizer.replace}) when the configuration is reloaded.

Every mutating action, and every refusal of one, is written to the audit
trail (L{AuditLog}): a structured log event and, when configured, one JSON
line appended to a file. The token itself is never logged, only its name.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from typing import Any, Protocol

from attrs import frozen
from twisted.logger import Logger

#: Audit events are emitted in their own namespace so they can be routed apart.
audit_log = Logger(namespace="clustron.admin.audit")

#: The roles, least privileged first.
ROLES: tuple[str, ...] = ("viewer", "operator", "admin")

_RANK = {role: rank for rank, role in enumerate(ROLES)}

#: The name audit events give a caller without a valid token.
ANONYMOUS = "anonymous"


class TokenLike(Protocol):
    """
    What L{Authorizer} needs of a configured token; the config's
    C{TokenConfig} provides it.
    """

    name: str
    role: str
    secret: str


@frozen
class Principal:
    """
    An authenticated caller.

    @ivar name: the name of the token it presented.
    @ivar role: that token's role, one of L{ROLES}.
    """

    name: str
    role: str


def role_allows(role: str, required: str) -> bool:
    """
    @param role: the caller's role.
    @param required: the least role an action needs.
    @return: whether C{role} is at least C{required}.
    @raise ValueError: when either is not one of L{ROLES}.
    """
    for value in (role, required):
        if value not in _RANK:
            raise ValueError(f"unknown role {value!r}; roles are {', '.join(ROLES)}")
    return _RANK[role] >= _RANK[required]


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


@frozen
class _Entry:
    name: str
    role: str
    digest: bytes


def _entries(tokens: Iterable[TokenLike]) -> tuple[_Entry, ...]:
    entries: list[_Entry] = []
    names: set[str] = set()
    digests: dict[bytes, str] = {}
    for index, token in enumerate(tokens):
        where = f"admin token #{index}"
        name = getattr(token, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: name must be a non-empty string, got {name!r}")
        where = f"admin token {name!r}"
        if name in names:
            raise ValueError(f"{where}: the name is used by another token")
        role = getattr(token, "role", None)
        if role not in _RANK:
            raise ValueError(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
        secret = getattr(token, "secret", None)
        if not isinstance(secret, str) or not secret:
            raise ValueError(f"{where}: secret must be a non-empty string")
        digest = _digest(secret)
        if digest in digests:
            raise ValueError(f"{where}: has the same secret as token {digests[digest]!r}")
        names.add(name)
        digests[digest] = name
        entries.append(_Entry(name=name, role=role, digest=digest))
    return tuple(entries)


class Authorizer:
    """
    Maps presented bearer tokens to L{Principal}s.

    Secrets are kept only as SHA-256 digests; a presented token is hashed
    and compared with every configured digest using
    L{hmac.compare_digest}, without stopping at the first match, so the
    time taken does not reveal which token (if any) matched, nor how much
    of it.
    """

    def __init__(self, tokens: Iterable[TokenLike]) -> None:
        """
        @param tokens: the configured tokens (objects with C{name}, C{role}
            and C{secret}).
        @raise ValueError: naming the token, when a name is empty or
            repeated, a role unknown, a secret empty or shared by two tokens.
        """
        self._entries = _entries(tokens)

    def replace(self, tokens: Iterable[TokenLike]) -> None:
        """
        Replace every token at once (on configuration reload). When the new
        tokens are invalid, the old ones stay in force.

        @param tokens: the new tokens.
        @raise ValueError: as for the constructor.
        """
        self._entries = _entries(tokens)

    @property
    def token_names(self) -> tuple[str, ...]:
        """
        @return: the names of the configured tokens, in configuration order.
        """
        return tuple(entry.name for entry in self._entries)

    def authenticate(self, presented: str | None) -> Principal | None:
        """
        @param presented: the token the caller presented, or None.
        @return: the matching principal, or None when nothing (or nothing
            valid) was presented.
        """
        if not presented:
            return None
        digest = _digest(presented)
        found: _Entry | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        if found is None:
            return None
        return Principal(name=found.name, role=found.role)


def bearer_token(authorization: bytes | None) -> str | None:
    """
    Extract the token from an C{Authorization} header value.

    @param authorization: the raw header value, or None when absent.
    @return: the token, or None when the header is absent, not of the
        C{Bearer} scheme (case-insensitive), empty or not UTF-8.
    """
    if authorization is None:
        return None
    try:
        text = authorization.decode("utf-8")
    except UnicodeDecodeError:
        return None
    scheme, _, token = text.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


@frozen
class AuditRecord:
    """
    One audited action.

    @ivar time: POSIX time of the decision.
    @ivar token: the token's name, or L{ANONYMOUS}.
    @ivar role: the token's role, or None for an anonymous caller.
    @ivar action: what was asked (C{"election"}, C{"member.remove"}, ...).
    @ivar target: what it was asked of (a node id), or None.
    @ivar result: C{"ok"}, C{"denied"} or C{"error"}.
    @ivar status: the HTTP status of the answer.
    @ivar detail: the error code when C{result} is not C{"ok"}, else "".
    @ivar remote: the caller's address, C{"host:port"}.
    """

    time: float
    token: str
    role: str | None
    action: str
    target: str | None
    result: str
    status: int
    detail: str
    remote: str

    def as_dict(self) -> dict[str, Any]:
        """
        @return: the record as a JSON-ready dict.
        """
        return {
            "time": self.time,
            "token": self.token,
            "role": self.role,
            "action": self.action,
            "target": self.target,
            "result": self.result,
            "status": self.status,
            "detail": self.detail,
            "remote": self.remote,
        }


class AuditLog:
    """
    The audit trail: every record is emitted as a structured log event in
    the C{clustron.admin.audit} namespace and, when a path is configured,
    appended to that file as one JSON line.

    The file is opened for each record (so rotating it needs no signal)
    and written with one C{write} call.
    """

    def __init__(self, path: str | None = None) -> None:
        """
        @param path: the file to append JSON lines to, or None for log
            events only.
        """
        self.path = path

    def record(self, record: AuditRecord) -> None:
        """
        Write one record. A failure to write the file is logged and does
        not affect the caller.

        @param record: what to write.
        """
        audit_log.info(
            "audit: {token} (role {role}) {action} {target} from {remote}: "
            "{result} {status} {detail}",
            **record.as_dict(),
        )
        if self.path is None:
            return
        line = json.dumps(record.as_dict(), sort_keys=True) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as e:
            audit_log.error(
                "cannot append to audit log {path}: {error}", path=self.path, error=str(e)
            )
