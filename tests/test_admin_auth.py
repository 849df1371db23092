"""
Tests for L{clustron.admin.auth}.
"""

from __future__ import annotations

import hmac
import json
import os

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from clustron.admin import auth
from clustron.admin.auth import (
    ANONYMOUS,
    ROLES,
    AuditLog,
    AuditRecord,
    Authorizer,
    Principal,
    bearer_token,
    role_allows,
)
from tests.test_admin_api import ADMIN, OPERATOR, TOKENS, VIEWER, Token


class RoleTests(SynchronousTestCase):
    def test_order(self) -> None:
        """
        viewer < operator < admin, and every role allows itself.
        """
        self.assertEqual(ROLES, ("viewer", "operator", "admin"))
        for i, role in enumerate(ROLES):
            for j, required in enumerate(ROLES):
                self.assertEqual(role_allows(role, required), i >= j, (role, required))

    def test_unknown_role(self) -> None:
        """
        An unknown role is an error naming it.
        """
        error = self.assertRaises(ValueError, role_allows, "root", "viewer")
        self.assertIn("'root'", str(error))
        self.assertRaises(ValueError, role_allows, "admin", "superuser")


class AuthorizerTests(SynchronousTestCase):
    def test_authenticate(self) -> None:
        """
        Each token's secret authenticates as that token's name and role.
        """
        authorizer = Authorizer(TOKENS)
        for token in TOKENS:
            self.assertEqual(
                authorizer.authenticate(token.secret), Principal(token.name, token.role)
            )
        self.assertEqual(authorizer.token_names, ("dash", "oncall", "ops"))

    def test_refused(self) -> None:
        """
        No token, an empty one, a wrong one, or a prefix or extension of a
        right one authenticates nobody.
        """
        authorizer = Authorizer(TOKENS)
        for presented in [None, "", "nope", ADMIN.secret[:-1], ADMIN.secret + "x",
                          ADMIN.secret.upper()]:
            self.assertIsNone(authorizer.authenticate(presented), presented)

    def test_no_tokens(self) -> None:
        """
        With no tokens configured, nothing authenticates.
        """
        self.assertIsNone(Authorizer([]).authenticate("anything"))

    def test_compares_every_token(self) -> None:
        """
        The presented token is compared with every configured token with
        L{hmac.compare_digest}, even when the first one matches.
        """
        compared: list[tuple[bytes, bytes]] = []
        original = hmac.compare_digest

        def compare_digest(a: bytes, b: bytes) -> bool:
            compared.append((a, b))
            return original(a, b)

        self.patch(auth.hmac, "compare_digest", compare_digest)
        authorizer = Authorizer(TOKENS)
        self.assertEqual(authorizer.authenticate(VIEWER.secret).name, "dash")
        self.assertEqual(len(compared), 3)
        compared.clear()
        self.assertIsNone(authorizer.authenticate("wrong"))
        self.assertEqual(len(compared), 3)

    def test_secrets_not_kept(self) -> None:
        """
        The authorizer keeps digests, not the secrets themselves.
        """
        authorizer = Authorizer(TOKENS)
        state = repr(vars(authorizer))
        for token in TOKENS:
            self.assertNotIn(token.secret, state)

    def test_replace(self) -> None:
        """
        C{replace} swaps every token at once.
        """
        authorizer = Authorizer(TOKENS)
        authorizer.replace([Token("new", "operator", "new-secret")])
        self.assertIsNone(authorizer.authenticate(ADMIN.secret))
        self.assertEqual(authorizer.authenticate("new-secret"), Principal("new", "operator"))

    def test_replace_invalid_keeps_old(self) -> None:
        """
        When the new tokens are invalid, the old ones stay in force.
        """
        authorizer = Authorizer(TOKENS)
        self.assertRaises(ValueError, authorizer.replace, [Token("x", "god", "s")])
        self.assertEqual(authorizer.authenticate(OPERATOR.secret).name, "oncall")

    def test_invalid_tokens(self) -> None:
        """
        Invalid tokens are refused with a message naming the token and the
        problem.
        """
        cases = [
            ([Token("", "admin", "s")], "#0", "name"),
            ([Token("a", "root", "s")], "'a'", "role must be one of viewer, operator, admin"),
            ([Token("a", "admin", "")], "'a'", "secret"),
            ([Token("a", "admin", "s"), Token("a", "viewer", "t")], "'a'", "another token"),
            ([Token("a", "admin", "s"), Token("b", "viewer", "s")], "'b'", "same secret"),
        ]
        for tokens, named, reason in cases:
            error = self.assertRaises(ValueError, Authorizer, tokens)
            self.assertIn(named, str(error))
            self.assertIn(reason, str(error))


class BearerTokenTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """
        The token is taken from a C{Bearer} Authorization header only.
        """
        cases = [
            (None, None),
            (b"Bearer abc", "abc"),
            (b"bearer abc", "abc"),
            (b"BEARER  abc  ", "abc"),
            (b"Bearer", None),
            (b"Bearer ", None),
            (b"Basic abc", None),
            (b"abc", None),
            (b"Bearer \xff", None),
        ]
        for header, token in cases:
            self.assertEqual(bearer_token(header), token, header)


def _record(**changes: object) -> AuditRecord:
    fields: dict[str, object] = dict(
        time=12.5,
        token="ops",
        role="admin",
        action="member.remove",
        target="n2",
        result="ok",
        status=200,
        detail="",
        remote="127.0.0.1:4000",
    )
    fields.update(changes)
    return AuditRecord(**fields)  # type: ignore[arg-type]


class AuditLogTests(SynchronousTestCase):
    def test_file_lines(self) -> None:
        """
        Each record is appended to the file as one JSON line.
        """
        path = self.mktemp()
        audit = AuditLog(path)
        audit.record(_record())
        audit.record(_record(token=ANONYMOUS, role=None, result="denied", status=401,
                             detail="unauthorized"))
        with open(path, encoding="utf-8") as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual(lines[0], _record().as_dict())
        self.assertEqual(
            (lines[1]["token"], lines[1]["role"], lines[1]["result"], lines[1]["status"]),
            ("anonymous", None, "denied", 401),
        )
        self.assertEqual(
            set(lines[0]),
            {"time", "token", "role", "action", "target", "result", "status", "detail", "remote"},
        )

    def test_appends(self) -> None:
        """
        An existing file is appended to, not replaced.
        """
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write('{"earlier": true}\n')
        AuditLog(path).record(_record())
        with open(path, encoding="utf-8") as f:
            self.assertEqual(len(f.readlines()), 2)

    def test_log_event(self) -> None:
        """
        Each record is also a log event in the C{clustron.admin.audit}
        namespace carrying every field.
        """
        with capturedLogs() as events:
            AuditLog(None).record(_record())
        self.assertEqual(len(events), 1)
        event = events[0]
        self.assertEqual(event["log_namespace"], "clustron.admin.audit")
        for key, value in _record().as_dict().items():
            self.assertEqual(event[key], value)

    def test_unwritable(self) -> None:
        """
        A file that cannot be written is logged, not raised.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        with capturedLogs() as events:
            AuditLog(directory).record(_record())
        errors = [e for e in events if "cannot append" in e.get("log_format", "")]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["path"], directory)
