"""
Tests for L{clustron.admin.api}, L{clustron.admin.events} and
L{clustron.admin.service}: the real L{twisted.web.server.Site} driven over
a L{StringTransport}, with a fake node and a L{Clock}.
"""

from __future__ import annotations

import datetime
import io
import json
from collections.abc import Callable
from typing import Any

import attr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, Counter
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from clustron.admin.api import (
    MAX_BODY_BYTES,
    ROUTES,
    IAdminTarget,
    build_root,
    build_site,
    describe_error,
    redact,
)
from clustron.admin.auth import AuditLog, Authorizer
from clustron.admin.events import (
    KEEPALIVE,
    OPENING,
    EventDecoder,
    EventStreamError,
    ServerSentEvent,
    encode_event,
)
from clustron.admin.service import AdminService, tls_options
from clustron.errors import (
    ConfigError,
    DeliveryFailed,
    NoQuorum,
    NotJoined,
    QueueFull,
    RequestTimeout,
    UnknownMember,
)

CLUSTER_DOC: dict[str, Any] = {
    "cluster_id": "demo",
    "node_id": "n1",
    "incarnation": 1732800000,
    "view": {
        "epoch": 3,
        "seq": 7,
        "coordinator": "n3",
        "members": [
            {
                "node_id": "n1",
                "address": "127.0.0.1:7101",
                "state": "alive",
                "incarnation": 1732800000,
                "draining": False,
                "reason": "joined",
            },
            {
                "node_id": "n3",
                "address": "127.0.0.1:7103",
                "state": "alive",
                "incarnation": 1732800005,
                "draining": False,
                "reason": "joined",
            },
        ],
    },
    "quorum": {"mode": "majority", "required": 2, "present": 2, "has_quorum": True},
    "peers": [{"node_id": "n3", "address": "127.0.0.1:7103", "connected": True}],
}


@attr.s(frozen=True)
class Token:
    """
    Stands in for the config's C{TokenConfig}.
    """

    name: str = attr.ib()
    role: str = attr.ib()
    secret: str = attr.ib()


VIEWER = Token("dash", "viewer", "viewer-secret-1")
OPERATOR = Token("oncall", "operator", "operator-secret-2")
ADMIN = Token("ops", "admin", "admin-secret-3")
TOKENS = (VIEWER, OPERATOR, ADMIN)


@implementer(IAdminTarget)
class FakeTarget:
    """
    A node that records what it is asked and answers what it is told to.

    @ivar outcomes: per method name, what it returns: a value (wrapped in a
        fired Deferred), an exception (raised synchronously), a Failure
        (a failed Deferred) or a Deferred (returned as is).
    """

    def __init__(self) -> None:
        self.metrics_registry = CollectorRegistry()
        counter = Counter(
            "clustron_test_events", "Events seen by the test", registry=self.metrics_registry
        )
        counter.inc(3)
        self.calls: list[tuple[str, Any]] = []
        self.subscribers: list[Callable[[dict[str, Any]], None]] = []
        self.health_doc: dict[str, Any] = {
            "status": "ok",
            "node_id": "n1",
            "joined": True,
            "has_quorum": True,
            "peers_connected": 2,
        }
        self.outcomes: dict[str, Any] = {
            "force_election": {"started": True, "epoch": 4},
            "remove_member": {"removed": True},
            "drain_member": {"draining": True},
            "reload_config": {"applied": ["logging.level"], "ignored": [], "errors": []},
        }

    def _outcome(self, name: str) -> Any:
        outcome = self.outcomes[name]
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, Failure):
            return fail(outcome)
        if isinstance(outcome, Deferred):
            return outcome
        return succeed(outcome)

    def status(self) -> dict[str, Any]:
        self.calls.append(("status", None))
        return CLUSTER_DOC

    def health(self) -> dict[str, Any]:
        self.calls.append(("health", None))
        return self.health_doc

    def force_election(self, prefer: str | None) -> Deferred[dict[str, Any]]:
        self.calls.append(("force_election", prefer))
        return self._outcome("force_election")

    def remove_member(self, node_id: str) -> Deferred[dict[str, Any]]:
        self.calls.append(("remove_member", node_id))
        return self._outcome("remove_member")

    def drain_member(self, node_id: str) -> Deferred[dict[str, Any]]:
        self.calls.append(("drain_member", node_id))
        return self._outcome("drain_member")

    def reload_config(self) -> Deferred[dict[str, Any]]:
        self.calls.append(("reload_config", None))
        return self._outcome("reload_config")

    def subscribe(
        self, callback: Callable[[dict[str, Any]], None]
    ) -> Callable[[], None]:
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)

    def emit(self, event: dict[str, Any]) -> None:
        for callback in list(self.subscribers):
            callback(event)


@attr.s(auto_attribs=True)
class Response:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def parse_response(raw: bytes) -> Response:
    """
    Parse an HTTP/1.0 (unchunked) response.
    """
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        headers.setdefault(name.lower(), []).append(value)
    return Response(status, headers, body)


class Connection:
    """
    One client connection to a site, over a StringTransport.
    """

    def __init__(self, site: Site, peer: IPv4Address | None = None) -> None:
        self.peer = peer or IPv4Address("TCP", "10.1.2.3", 5555)
        self.transport = StringTransport(peerAddress=self.peer)
        self.protocol = site.buildProtocol(self.peer)
        self.protocol.makeConnection(self.transport)

    def send(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: bytes = b"",
        headers: tuple[str, ...] = (),
        version: str = "HTTP/1.0",
    ) -> None:
        lines = [f"{method} {path} {version}", "Host: admin.test"]
        if token is not None:
            lines.append(f"Authorization: Bearer {token}")
        lines.extend(headers)
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        self.protocol.dataReceived("\r\n".join(lines).encode() + b"\r\n\r\n" + body)

    def response(self) -> Response:
        return parse_response(self.transport.value())

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


class Harness:
    """
    A fake node behind a real admin site.
    """

    def __init__(
        self,
        test: SynchronousTestCase,
        static_dir: FilePath | None = None,
        audit_path: str | None = None,
        **options: Any,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.target = FakeTarget()
        self.authorizer = Authorizer(TOKENS)
        self.audit_path = audit_path or test.mktemp()
        self.audit = AuditLog(self.audit_path)
        self.root = build_root(
            self.target,
            self.authorizer,
            self.clock,
            self.audit,
            static_dir=static_dir,
            **options,
        )
        self.site = build_site(self.root, self.clock)
        self.site.doStart()
        test.addCleanup(self.site.doStop)

    def request(self, method: str, path: str, token: str | None = None, **kw: Any) -> Response:
        connection = Connection(self.site)
        connection.send(method, path, token, **kw)
        return connection.response()

    def stream(self, path: str = "/v1/events", token: str | None = VIEWER.secret,
               **kw: Any) -> Connection:
        connection = Connection(self.site)
        connection.send("GET", path, token, **kw)
        return connection

    def audit_lines(self) -> list[dict[str, Any]]:
        try:
            with open(self.audit_path, encoding="utf-8") as f:
                return [json.loads(line) for line in f]
        except FileNotFoundError:
            return []


def _path_of(pattern: tuple[str, ...]) -> str:
    return "/" + "/".join("n2" if part.startswith("{") else part for part in pattern)


_RANK = {"viewer": 0, "operator": 1, "admin": 2}


class InterfaceTests(SynchronousTestCase):
    def test_fake_target(self) -> None:
        """
        The fake node used by these tests provides L{IAdminTarget}.
        """
        self.assertTrue(verifyObject(IAdminTarget, FakeTarget()))


class AuthorizationMatrixTests(SynchronousTestCase):
    """
    Every route with every kind of caller.
    """

    def check(self, route_index: int, token: Token | None, secret: str | None) -> None:
        route = ROUTES[route_index]
        harness = Harness(self)
        path = _path_of(route.pattern)
        method = route.methods[0].decode()
        connection = Connection(harness.site)
        connection.send(method, path, secret)
        response = connection.response()
        where = f"{method} {path} with {token.role if token else secret!r}"
        if token is None:
            self.assertEqual(response.status, 401, where)
            self.assertEqual(response.header("WWW-Authenticate"), 'Bearer realm="clustron"')
            self.assertEqual(response.json()["error"]["code"], "unauthorized")
            expected_audit = ("anonymous", None, "denied", 401)
        elif _RANK[token.role] < _RANK[route.role]:
            self.assertEqual(response.status, 403, where)
            error = response.json()["error"]
            self.assertEqual(error["code"], "forbidden")
            self.assertIn(repr(route.role), error["message"])
            self.assertIn(repr(token.name), error["message"])
            expected_audit = (token.name, token.role, "denied", 403)
        else:
            self.assertEqual(response.status, 200, where)
            if route.handler == "_events":
                self.assertEqual(
                    response.header("Content-Type"), "text/event-stream; charset=utf-8"
                )
                self.assertEqual(response.body, OPENING)
                connection.lose()
            elif route.handler == "_metrics":
                self.assertIn(b"clustron_test_events_total 3.0", response.body)
            else:
                self.assertIsInstance(response.json(), dict)
            expected_audit = (token.name, token.role, "ok", 200)
        lines = harness.audit_lines()
        if route.mutating:
            self.assertEqual(len(lines), 1, where)
            line = lines[0]
            self.assertEqual(
                (line["token"], line["role"], line["result"], line["status"]), expected_audit
            )
            self.assertEqual(line["action"], route.action)
            self.assertEqual(line["remote"], "10.1.2.3:5555")
            self.assertEqual(line["time"], 1000)
        else:
            self.assertEqual(lines, [], where)

    def test_matrix(self) -> None:
        """
        No token or a wrong one gets 401; a role below the route's gets 403
        naming the role needed; a sufficient role gets 200. Only mutating
        routes are audited, and every outcome of them is.
        """
        callers: list[tuple[Token | None, str | None]] = [
            (None, None),
            (None, "not-a-token"),
            (VIEWER, VIEWER.secret),
            (OPERATOR, OPERATOR.secret),
            (ADMIN, ADMIN.secret),
        ]
        for index in range(len(ROUTES)):
            for token, secret in callers:
                self.check(index, token, secret)

    def test_route_roles(self) -> None:
        """
        The route table gives the roles DESIGN section 6 and the operations
        contract name.
        """
        roles = {(r.methods[0], _path_of(r.pattern)): r.role for r in ROUTES}
        self.assertEqual(
            roles,
            {
                (b"GET", "/v1/cluster"): "viewer",
                (b"GET", "/v1/health"): "viewer",
                (b"POST", "/v1/election"): "operator",
                (b"POST", "/v1/members/n2/remove"): "admin",
                (b"POST", "/v1/members/n2/drain"): "operator",
                (b"POST", "/v1/config/reload"): "admin",
                (b"GET", "/v1/events"): "viewer",
                (b"GET", "/metrics"): "viewer",
            },
        )


class AuthenticationTests(SynchronousTestCase):
    def test_scheme_must_be_bearer(self) -> None:
        """
        A token sent with another scheme is not accepted.
        """
        harness = Harness(self)
        response = harness.request(
            "GET", "/v1/cluster", headers=(f"Authorization: Basic {ADMIN.secret}",)
        )
        self.assertEqual(response.status, 401)
        self.assertIn("Bearer", response.json()["error"]["message"])

    def test_scheme_case_insensitive(self) -> None:
        """
        The scheme name is matched case-insensitively (RFC 6750).
        """
        harness = Harness(self)
        response = harness.request(
            "GET", "/v1/cluster", headers=(f"Authorization: bearer {VIEWER.secret}",)
        )
        self.assertEqual(response.status, 200)

    def test_query_token_for_events(self) -> None:
        """
        C{GET /v1/events} accepts the token in the query string.
        """
        harness = Harness(self)
        connection = harness.stream(f"/v1/events?token={VIEWER.secret}", token=None)
        self.assertEqual(connection.response().status, 200)
        self.assertEqual(len(harness.target.subscribers), 1)
        connection.lose()

    def test_query_token_refused_elsewhere(self) -> None:
        """
        No other route accepts a token in the query string, and the answer
        says why.
        """
        harness = Harness(self)
        for method, path in [("GET", "/v1/cluster"), ("POST", "/v1/election"),
                             ("GET", "/metrics")]:
            response = harness.request(method, f"{path}?token={ADMIN.secret}")
            self.assertEqual(response.status, 401, path)
            self.assertIn("query string", response.json()["error"]["message"])
        self.assertEqual(harness.target.calls, [])

    def test_wrong_query_token_for_events(self) -> None:
        """
        A wrong token in the query string is refused.
        """
        harness = Harness(self)
        connection = harness.stream("/v1/events?token=nope", token=None)
        self.assertEqual(connection.response().status, 401)
        self.assertEqual(harness.target.subscribers, [])

    def test_replace_tokens(self) -> None:
        """
        Replacing the authorizer's tokens takes effect on the next request.
        """
        harness = Harness(self)
        fresh = Token("rotated", "admin", "brand-new-secret")
        harness.authorizer.replace([fresh])
        self.assertEqual(harness.request("GET", "/v1/cluster", ADMIN.secret).status, 401)
        self.assertEqual(harness.request("GET", "/v1/cluster", fresh.secret).status, 200)
        response = harness.request("POST", "/v1/config/reload", fresh.secret)
        self.assertEqual(response.status, 200)
        self.assertEqual(harness.audit_lines()[-1]["token"], "rotated")


class ClusterAndHealthTests(SynchronousTestCase):
    def test_cluster(self) -> None:
        """
        C{GET /v1/cluster} answers the node's status document unchanged, as
        JSON that is not cached.
        """
        response = Harness(self).request("GET", "/v1/cluster", VIEWER.secret)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json(), CLUSTER_DOC)
        self.assertEqual(response.header("Content-Type"), "application/json; charset=utf-8")
        self.assertEqual(response.header("Cache-Control"), "no-store")
        self.assertEqual(int(response.header("Content-Length") or 0), len(response.body))

    def test_head(self) -> None:
        """
        HEAD of a GET route answers headers only.
        """
        response = Harness(self).request("HEAD", "/v1/cluster", VIEWER.secret)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"")

    def test_health_ok(self) -> None:
        """
        A healthy node answers 200 with its health document.
        """
        harness = Harness(self)
        response = harness.request("GET", "/v1/health", VIEWER.secret)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json(), harness.target.health_doc)

    def test_health_degraded(self) -> None:
        """
        A degraded node answers 503 with its health document.
        """
        harness = Harness(self)
        harness.target.health_doc = {
            "status": "degraded",
            "node_id": "n1",
            "joined": True,
            "has_quorum": False,
            "peers_connected": 0,
        }
        response = harness.request("GET", "/v1/health", VIEWER.secret)
        self.assertEqual(response.status, 503)
        self.assertEqual(response.json()["has_quorum"], False)

    def test_metrics(self) -> None:
        """
        C{GET /metrics} answers the registry in Prometheus text format.
        """
        from prometheus_client import CONTENT_TYPE_LATEST

        response = Harness(self).request("GET", "/metrics", VIEWER.secret)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("Content-Type"), CONTENT_TYPE_LATEST)
        self.assertIn(b"# TYPE clustron_test_events_total counter", response.body)


class RoutingTests(SynchronousTestCase):
    def test_unknown_route(self) -> None:
        """
        An unknown path answers a JSON 404.
        """
        harness = Harness(self)
        for path in ["/v1/nope", "/v2/cluster", "/v1/members/n1", "/v1/members//remove",
                     "/metrics/more", "/favicon.ico"]:
            response = harness.request("GET", path, ADMIN.secret)
            self.assertEqual(response.status, 404, path)
            self.assertEqual(response.json()["error"]["code"], "not_found")

    def test_wrong_method(self) -> None:
        """
        A known path with the wrong method answers a JSON 405 with Allow.
        """
        harness = Harness(self)
        cases = [
            ("POST", "/v1/cluster", "GET, HEAD"),
            ("GET", "/v1/election", "POST"),
            ("DELETE", "/v1/members/n2/remove", "POST"),
            ("POST", "/v1/events", "GET"),
            ("PUT", "/metrics", "GET, HEAD"),
        ]
        for method, path, allow in cases:
            response = harness.request(method, path, ADMIN.secret)
            self.assertEqual(response.status, 405, path)
            self.assertEqual(response.header("Allow"), allow)
            self.assertEqual(response.json()["error"]["code"], "method_not_allowed")
        self.assertEqual(harness.target.calls, [])

    def test_idle_timeout(self) -> None:
        """
        A connection that sends nothing is closed after the idle timeout; an
        open event stream is not.
        """
        harness = Harness(self)
        idle = Connection(harness.site)
        stream = harness.stream()
        harness.clock.advance(59)
        self.assertFalse(idle.transport.disconnecting)
        harness.clock.advance(1)
        self.assertTrue(idle.transport.disconnecting)
        harness.clock.advance(600)
        self.assertFalse(stream.transport.disconnecting)
        stream.lose()

    def test_trailing_slash(self) -> None:
        """
        One trailing slash is ignored.
        """
        response = Harness(self).request("GET", "/v1/cluster/", VIEWER.secret)
        self.assertEqual(response.status, 200)

    def test_node_id_decoded(self) -> None:
        """
        The node id in a member path is percent-decoded.
        """
        harness = Harness(self)
        response = harness.request("POST", "/v1/members/n%2F1%20x/drain", OPERATOR.secret)
        self.assertEqual(response.status, 200)
        self.assertEqual(harness.target.calls, [("drain_member", "n/1 x")])
        self.assertEqual(harness.audit_lines()[0]["target"], "n/1 x")


class ActionTests(SynchronousTestCase):
    def test_election(self) -> None:
        """
        C{POST /v1/election} with C{prefer} asks for an election toward
        that node and answers the node's result.
        """
        harness = Harness(self)
        response = harness.request(
            "POST", "/v1/election", OPERATOR.secret, body=b'{"prefer": "n2"}'
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json(), {"started": True, "epoch": 4})
        self.assertEqual(harness.target.calls, [("force_election", "n2")])
        line = harness.audit_lines()[0]
        self.assertEqual(line["target"], "n2")
        self.assertEqual(line["action"], "election")

    def test_election_without_body(self) -> None:
        """
        The body of C{POST /v1/election} is optional.
        """
        harness = Harness(self)
        for body in [b"", b"{}", b'{"prefer": null}']:
            response = harness.request("POST", "/v1/election", OPERATOR.secret, body=body)
            self.assertEqual(response.status, 200, body)
        self.assertEqual(harness.target.calls, [("force_election", None)] * 3)

    def test_election_bad_body(self) -> None:
        """
        A malformed election body answers 400 saying what is wrong, is
        audited, and asks nothing of the node.
        """
        harness = Harness(self)
        cases = [
            (b"{nope", "not valid JSON"),
            (b"[1]", "JSON object"),
            (b'{"prefer": 3}', "prefer"),
            (b'{"prefer": ""}', "prefer"),
            (b'{"prefer": "n2", "force": true}', "force"),
        ]
        for body, words in cases:
            response = harness.request("POST", "/v1/election", OPERATOR.secret, body=body)
            self.assertEqual(response.status, 400, body)
            error = response.json()["error"]
            self.assertEqual(error["code"], "bad_request")
            self.assertIn(words, error["message"])
        self.assertEqual(harness.target.calls, [])
        results = {(line["result"], line["status"]) for line in harness.audit_lines()}
        self.assertEqual(results, {("error", 400)})

    def test_body_too_large(self) -> None:
        """
        A request body above the limit answers 413.
        """
        harness = Harness(self)
        body = b'{"prefer": "' + b"x" * MAX_BODY_BYTES + b'"}'
        response = harness.request("POST", "/v1/election", OPERATOR.secret, body=body)
        self.assertEqual(response.status, 413)
        self.assertEqual(harness.target.calls, [])

    def test_remove(self) -> None:
        """
        C{POST /v1/members/{id}/remove} removes that member.
        """
        harness = Harness(self)
        response = harness.request("POST", "/v1/members/n2/remove", ADMIN.secret)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json(), {"removed": True})
        self.assertEqual(harness.target.calls, [("remove_member", "n2")])

    def test_drain(self) -> None:
        """
        C{POST /v1/members/{id}/drain} drains that member.
        """
        harness = Harness(self)
        response = harness.request("POST", "/v1/members/n3/drain", OPERATOR.secret)
        self.assertEqual(response.json(), {"draining": True})
        self.assertEqual(harness.target.calls, [("drain_member", "n3")])

    def test_reload(self) -> None:
        """
        C{POST /v1/config/reload} answers what was applied, ignored and wrong.
        """
        harness = Harness(self)
        response = harness.request("POST", "/v1/config/reload", ADMIN.secret)
        self.assertEqual(
            response.json(), {"applied": ["logging.level"], "ignored": [], "errors": []}
        )

    def test_answer_waits_for_deferred(self) -> None:
        """
        The answer is written when the node's Deferred fires, and audited
        then.
        """
        harness = Harness(self)
        pending: Deferred[dict[str, Any]] = Deferred()
        harness.target.outcomes["remove_member"] = pending
        connection = Connection(harness.site)
        connection.send("POST", "/v1/members/n2/remove", ADMIN.secret)
        self.assertEqual(connection.transport.value(), b"")
        self.assertEqual(harness.audit_lines(), [])
        pending.callback({"removed": "later"})
        self.assertEqual(connection.response().json(), {"removed": "later"})
        self.assertEqual(harness.audit_lines()[0]["result"], "ok")

    def test_client_gone_before_answer(self) -> None:
        """
        When the client disconnects before the node answers, nothing is
        written, and the action is still audited.
        """
        harness = Harness(self)
        pending: Deferred[dict[str, Any]] = Deferred()
        harness.target.outcomes["remove_member"] = pending
        connection = Connection(harness.site)
        connection.send("POST", "/v1/members/n2/remove", ADMIN.secret)
        connection.lose()
        pending.callback({"removed": True})
        self.assertEqual(connection.transport.value(), b"")
        self.assertEqual(harness.audit_lines()[0]["result"], "ok")


class ErrorMappingTests(SynchronousTestCase):
    def test_describe_error(self) -> None:
        """
        Node errors map to HTTP statuses and codes.
        """
        cases = [
            (UnknownMember("no member n9"), 404, "unknown_member"),
            (NoQuorum("no quorum"), 409, "no_quorum"),
            (NotJoined("not joined"), 409, "not_joined"),
            (ConfigError([("admin.listen", "bad endpoint")]), 409, "invalid_config"),
            (QueueFull("full"), 503, "busy"),
            (RequestTimeout("slow"), 504, "timeout"),
            (DeliveryFailed("gone"), 409, "delivery_failed"),
            (ValueError("prefer must be a member"), 400, "bad_request"),
            (RuntimeError("secret internals"), 500, "internal_error"),
        ]
        for error, status, code in cases:
            got = describe_error(error)
            self.assertEqual(got[:2], (status, code), error)
        self.assertEqual(describe_error(UnknownMember("no member n9"))[2], "no member n9")
        self.assertNotIn("secret internals", describe_error(RuntimeError("secret internals"))[2])

    def test_failed_deferred(self) -> None:
        """
        A failed Deferred from the node becomes a JSON error and an audit
        line with the error code.
        """
        harness = Harness(self)
        harness.target.outcomes["remove_member"] = Failure(UnknownMember("no member n9"))
        response = harness.request("POST", "/v1/members/n9/remove", ADMIN.secret)
        self.assertEqual(response.status, 404)
        self.assertEqual(
            response.json(), {"error": {"code": "unknown_member", "message": "no member n9"}}
        )
        line = harness.audit_lines()[0]
        self.assertEqual((line["result"], line["status"], line["detail"]),
                         ("error", 404, "unknown_member"))

    def test_synchronous_exception(self) -> None:
        """
        An exception raised by the node's method is mapped the same way.
        """
        harness = Harness(self)
        harness.target.outcomes["force_election"] = NoQuorum("minority side")
        response = harness.request("POST", "/v1/election", OPERATOR.secret)
        self.assertEqual(response.status, 409)
        self.assertEqual(response.json()["error"]["code"], "no_quorum")

    def test_value_error(self) -> None:
        """
        A ValueError from the node answers 400 with its message.
        """
        harness = Harness(self)
        harness.target.outcomes["force_election"] = Failure(ValueError("n7 cannot coordinate"))
        response = harness.request("POST", "/v1/election", OPERATOR.secret,
                                   body=b'{"prefer": "n7"}')
        self.assertEqual(response.status, 400)
        self.assertEqual(response.json()["error"]["message"], "n7 cannot coordinate")

    def test_unexpected_error(self) -> None:
        """
        Any other exception answers 500 without detail and is logged.
        """
        harness = Harness(self)
        harness.target.outcomes["reload_config"] = RuntimeError("secret internals")
        response = harness.request("POST", "/v1/config/reload", ADMIN.secret)
        self.assertEqual(response.status, 500)
        self.assertNotIn(b"secret internals", response.body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class AuditTests(SynchronousTestCase):
    def test_secret_never_logged(self) -> None:
        """
        Neither the audit file, nor log events, nor the access log carry a
        token, whether it was valid or not.
        """
        harness = Harness(self)
        access = io.StringIO()
        harness.site.logFile = access
        with capturedLogs() as events:
            harness.request("POST", "/v1/election", ADMIN.secret)
            harness.request("POST", "/v1/election", "guessed-secret")
            harness.request("POST", "/v1/election", VIEWER.secret)
            harness.request("GET", f"/v1/cluster?token={ADMIN.secret}")
            harness.stream(f"/v1/events?token={VIEWER.secret}", token=None,
                           headers=(f"Referer: http://x/?token={ADMIN.secret}",))
            harness.root.api.close_streams()
        with open(harness.audit_path, encoding="utf-8") as f:
            audit_text = f.read()
        log_text = repr(events)
        self.assertIn("audit", log_text)
        self.assertIn("/v1/cluster?token=REDACTED", access.getvalue())
        self.assertIn("/v1/events?token=REDACTED", access.getvalue())
        self.assertIn("http://x/?token=REDACTED", access.getvalue())
        for secret in (ADMIN.secret, VIEWER.secret, "guessed-secret"):
            self.assertNotIn(secret, audit_text)
            self.assertNotIn(secret, log_text)
            self.assertNotIn(secret, access.getvalue())
        tokens = [line["token"] for line in harness.audit_lines()]
        self.assertEqual(tokens, ["ops", "anonymous", "dash"])

    def test_audit_event_fields(self) -> None:
        """
        Each audit record is also a structured log event with every field.
        """
        harness = Harness(self)
        with capturedLogs() as events:
            harness.request("POST", "/v1/members/n2/drain", OPERATOR.secret)
        audits = [e for e in events if e.get("log_namespace") == "clustron.admin.audit"]
        self.assertEqual(len(audits), 1)
        event = audits[0]
        self.assertEqual(
            {k: event[k] for k in ("token", "role", "action", "target", "result", "remote")},
            {
                "token": "oncall",
                "role": "operator",
                "action": "member.drain",
                "target": "n2",
                "result": "ok",
                "remote": "10.1.2.3:5555",
            },
        )

    def test_redact(self) -> None:
        """
        C{redact} hides every C{token} query parameter.
        """
        self.assertEqual(
            redact(b"/v1/events?a=1&token=abc&TOKEN=def#x"),
            b"/v1/events?a=1&token=REDACTED&TOKEN=REDACTED#x",
        )
        self.assertEqual(redact(b"/v1/cluster"), b"/v1/cluster")


def make_static(directory: FilePath) -> FilePath:
    """
    Write a small dashboard directory.
    """
    directory.makedirs()
    directory.child("index.html").setContent(b"<html>dashboard</html>")
    directory.child("app.js").setContent(b"console.log('hi');")
    directory.child("img").makedirs()
    return directory


class StaticTests(SynchronousTestCase):
    """
    Errors from the dashboard files (serving them needs a running reactor,
    see tests.integration.test_admin_live).
    """

    def make_static(self) -> FilePath:
        return make_static(FilePath(self.mktemp()))

    def test_missing_asset(self) -> None:
        """
        A missing file, a directory or a path escaping the directory answer
        a JSON 404; directories are never listed.
        """
        harness = Harness(self, static_dir=self.make_static())
        for path in ["/static/nope.js", "/static/img/", "/static/img/x.png", "/static/../api.py"]:
            response = harness.request("GET", path)
            self.assertEqual(response.status, 404, path)
            self.assertEqual(response.json()["error"]["code"], "not_found")

    def test_wrong_method(self) -> None:
        """
        Only GET and HEAD are allowed on static files.
        """
        harness = Harness(self, static_dir=self.make_static())
        response = harness.request("POST", "/static/app.js")
        self.assertEqual(response.status, 405)
        self.assertEqual(response.header("Allow"), "GET, HEAD")

    def test_no_dashboard(self) -> None:
        """
        Without the dashboard directory, C{/} and C{/static/} answer a JSON
        404.
        """
        harness = Harness(self, static_dir=FilePath(self.mktemp()))
        for path in ["/", "/static/app.js"]:
            response = harness.request("GET", path)
            self.assertEqual(response.status, 404, path)
            self.assertEqual(response.json()["error"]["message"], "the dashboard is not installed")


class EventStreamTests(SynchronousTestCase):
    def test_framing(self) -> None:
        """
        Each event is written as C{event:}, C{data:} (one line of JSON) and a
        blank line.
        """
        harness = Harness(self)
        connection = harness.stream()
        event = {"type": "member_suspect", "time": 1000.5, "node_id": "n2", "reason": "x"}
        harness.target.emit(event)
        raw = connection.transport.value()
        response = parse_response(raw)
        self.assertEqual(response.header("Cache-Control"), "no-store")
        self.assertEqual(
            response.body,
            OPENING
            + b"event: member_suspect\n"
            + b'data: {"type":"member_suspect","time":1000.5,"node_id":"n2","reason":"x"}\n\n',
        )
        connection.lose()

    def test_chunked(self) -> None:
        """
        Over HTTP/1.1 the stream is chunked, one chunk per event.
        """
        harness = Harness(self)
        connection = harness.stream(version="HTTP/1.1")
        connection.transport.clear()
        harness.target.emit({"type": "view", "time": 1.0})
        data = encode_event({"type": "view", "time": 1.0})
        self.assertEqual(connection.transport.value(), b"%x\r\n%s\r\n" % (len(data), data))
        connection.lose()

    def test_keepalive(self) -> None:
        """
        A keep-alive comment is written every 15 seconds.
        """
        harness = Harness(self)
        connection = harness.stream()
        connection.transport.clear()
        harness.clock.advance(14.9)
        self.assertEqual(connection.transport.value(), b"")
        harness.clock.advance(0.1)
        self.assertEqual(connection.transport.value(), KEEPALIVE)
        harness.clock.advance(15)
        self.assertEqual(connection.transport.value(), KEEPALIVE * 2)
        connection.lose()

    def test_unsubscribe_on_disconnect(self) -> None:
        """
        When the client goes away, the stream unsubscribes and stops its
        keep-alives.
        """
        harness = Harness(self)
        connection = harness.stream()
        self.assertEqual(len(harness.target.subscribers), 1)
        self.assertEqual(harness.root.api.open_streams, 1)
        calls_before = len(harness.clock.getDelayedCalls())
        connection.lose()
        self.assertEqual(harness.target.subscribers, [])
        self.assertEqual(harness.root.api.open_streams, 0)
        self.assertEqual(len(harness.clock.getDelayedCalls()), calls_before - 1)

    def test_close_streams(self) -> None:
        """
        C{close_streams} ends every stream from the server side.
        """
        harness = Harness(self)
        connections = [harness.stream(), harness.stream()]
        harness.root.api.close_streams()
        self.assertEqual(harness.target.subscribers, [])
        for connection in connections:
            self.assertTrue(connection.transport.disconnecting)

    def test_slow_client_buffered_then_flushed(self) -> None:
        """
        While the client is not reading, events are held (in order) and
        written when it reads again.
        """
        harness = Harness(self, max_stream_buffer=1000)
        connection = harness.stream()
        connection.transport.clear()
        connection.transport.producer.pauseProducing()
        events = [{"type": "e", "time": float(i)} for i in range(5)]
        for event in events:
            harness.target.emit(event)
        self.assertEqual(connection.transport.value(), b"")
        connection.transport.producer.resumeProducing()
        self.assertEqual(connection.transport.value(), b"".join(map(encode_event, events)))
        connection.lose()

    def test_slow_client_disconnected(self) -> None:
        """
        A client that does not read is disconnected once its buffer would
        exceed the limit, rather than buffering more.
        """
        harness = Harness(self, max_stream_buffer=1000)
        connection = harness.stream()
        connection.transport.producer.pauseProducing()
        event = {"type": "e", "time": 1.0, "pad": "x" * 200}
        sent = 0
        with capturedLogs() as logged:
            while not connection.transport.disconnecting:
                harness.target.emit(event)
                sent += 1
                self.assertLess(sent, 10)
        self.assertEqual(sent, 1000 // len(encode_event(event)) + 1)
        self.assertEqual(harness.target.subscribers, [])
        self.assertEqual(harness.root.api.open_streams, 0)
        self.assertTrue(any("not reading" in e.get("log_format", "") for e in logged))

    def test_stream_limit(self) -> None:
        """
        Beyond the most streams allowed, a new stream is refused with 503.
        """
        harness = Harness(self, max_streams=2)
        first, second = harness.stream(), harness.stream()
        third = harness.stream()
        response = third.response()
        self.assertEqual(response.status, 503)
        self.assertEqual(response.json()["error"]["code"], "too_many_streams")
        first.lose()
        fourth = harness.stream()
        self.assertEqual(fourth.response().status, 200)
        second.lose()
        fourth.lose()

    def test_unencodable_event_skipped(self) -> None:
        """
        An event that cannot be encoded is logged and skipped; the stream
        goes on.
        """
        harness = Harness(self)
        connection = harness.stream()
        connection.transport.clear()
        harness.target.emit({"type": "bad", "time": 1.0, "value": object()})
        harness.target.emit({"type": "good", "time": 2.0})
        self.assertEqual(connection.transport.value(), encode_event({"type": "good", "time": 2.0}))
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        connection.lose()

    def test_encode_event_single_line_type(self) -> None:
        """
        An event type cannot break the framing.
        """
        data = encode_event({"type": "a\nevent: b", "time": 1})
        self.assertTrue(data.startswith(b"event: a event: b\ndata: "))
        self.assertEqual(data.count(b"\n"), 3)


class EventDecoderTests(SynchronousTestCase):
    def test_round_trip_bytewise(self) -> None:
        """
        Events survive being fed one byte at a time.
        """
        events = [{"type": "a", "time": 1.0}, {"type": "b", "time": 2.0, "x": "ü"}]
        stream = OPENING + b"".join(map(encode_event, events)) + KEEPALIVE
        decoder = EventDecoder()
        got: list[ServerSentEvent] = []
        for i in range(len(stream)):
            got.extend(decoder.feed(stream[i : i + 1]))
        self.assertEqual([(e.type, json.loads(e.data)) for e in got],
                         [("a", events[0]), ("b", events[1])])

    def test_line_endings_and_fields(self) -> None:
        """
        CRLF, CR and LF all end lines; data lines join with newlines; the
        type defaults to C{message}; C{id} and C{retry} are ignored.
        """
        decoder = EventDecoder()
        got = decoder.feed(b"data: one\r\ndata:two\rid: 5\nretry: 10\n\nevent: x\r")
        self.assertEqual(got, [ServerSentEvent("message", "one\ntwo")])
        self.assertEqual(decoder.feed(b"\ndata: 3\r\n\r\n"), [ServerSentEvent("x", "3")])

    def test_blank_without_data(self) -> None:
        """
        A blank line with no data dispatches nothing and resets the type.
        """
        decoder = EventDecoder()
        self.assertEqual(decoder.feed(b"event: x\n\ndata: y\n\n"),
                         [ServerSentEvent("message", "y")])

    def test_line_too_long(self) -> None:
        """
        A line longer than the limit is an error, even before it ends.
        """
        decoder = EventDecoder(max_line_bytes=10)
        self.assertRaises(EventStreamError, decoder.feed, b"data: " + b"x" * 10)
        decoder = EventDecoder(max_line_bytes=10)
        self.assertRaises(EventStreamError, decoder.feed, b"data: 12345678\n")

    def test_event_too_large(self) -> None:
        """
        An event larger than the limit is an error.
        """
        decoder = EventDecoder(max_line_bytes=100, max_event_bytes=20)
        self.assertRaises(EventStreamError, decoder.feed, b"data: 1234567890\n" * 3)

    def test_not_utf8(self) -> None:
        """
        A line that is not UTF-8 is an error.
        """
        self.assertRaises(EventStreamError, EventDecoder().feed, b"data: \xff\n")


# ---------------------------------------------------------------------------
# the service


def make_certificate(directory: FilePath, name: str = "localhost") -> tuple[str, str]:
    """
    Write a self-signed certificate for C{name} (and 127.0.0.1) and its key.

    @return: the certificate and key paths.
    """
    import ipaddress

    directory.makedirs(ignoreExistingDirectory=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory.child(f"{name}.crt")
    key_path = directory.child(f"{name}.key")
    cert_path.setContent(cert.public_bytes(serialization.Encoding.PEM))
    key_path.setContent(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path.path, key_path.path


class ServiceTests(SynchronousTestCase):
    def make(self, listen: str = "tcp:8101:interface=127.0.0.1", **kw: Any) -> AdminService:
        self.reactor = MemoryReactorClock()
        return AdminService(
            self.reactor, listen, FakeTarget(), Authorizer(TOKENS), static_dir=None, **kw
        )

    def test_listen_and_stop(self) -> None:
        """
        Starting listens on the endpoint and sets C{port}; stopping closes
        the port and ends event streams.
        """
        service = self.make()
        service.startService()
        self.assertEqual(len(self.reactor.tcpServers), 1)
        port, factory, _, interface = self.reactor.tcpServers[0]
        self.assertEqual((port, interface), (8101, "127.0.0.1"))
        self.assertIs(factory, service.site)
        self.assertIsNotNone(service.port)
        self.assertIs(self.successResultOf(service.when_listening()), service.port)
        stopped: list[bool] = []
        service.port.stopListening = lambda: stopped.append(True)  # type: ignore[union-attr]
        connection = Connection(service.site)
        connection.send("GET", "/v1/events", VIEWER.secret)
        self.assertEqual(service.root.api.open_streams, 1)
        self.successResultOf(service.stopService())
        self.assertIsNone(service.port)
        self.assertFalse(service.running)
        self.assertEqual(service.root.api.open_streams, 0)
        self.assertTrue(connection.transport.disconnecting)
        self.assertEqual(stopped, [True])

    def test_listen_failure(self) -> None:
        """
        A failure to listen is logged and reported by C{when_listening}.
        """
        from twisted.internet.error import CannotListenError
        from twisted.internet.testing import RaisingMemoryReactor

        reactor = RaisingMemoryReactor(listenException=CannotListenError("", 8101, "in use"))
        service = AdminService(
            reactor, "tcp:8101", FakeTarget(), Authorizer(TOKENS), static_dir=None
        )
        service.startService()
        self.failureResultOf(service.when_listening(), CannotListenError)
        self.assertIsNone(service.port)
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1)
        self.successResultOf(service.stopService())

    def test_stop_before_listening(self) -> None:
        """
        Stopping while the endpoint is still starting cancels it quietly.
        """

        class SlowEndpoint:
            def listen(self, factory: Any) -> Deferred[Any]:
                return Deferred()

        service = self.make()
        service._endpoint = SlowEndpoint()  # type: ignore[assignment]
        service.startService()
        waiting = service.when_listening()
        self.assertNoResult(waiting)
        self.successResultOf(service.stopService())
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_bad_listen(self) -> None:
        """
        A malformed endpoint string is refused at construction, naming it.
        """
        error = self.assertRaises(ValueError, self.make, "nonsense:1:2")
        self.assertIn("nonsense:1:2", str(error))

    def test_tls(self) -> None:
        """
        With a certificate and key the service listens with TLS.
        """
        cert, key = make_certificate(FilePath(self.mktemp()))
        service = self.make(tls=(cert, key))
        self.assertEqual(service.scheme, "https")
        service.startService()
        factory = self.reactor.tcpServers[0][1]
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        self.assertIs(factory.wrappedFactory, service.site)
        self.successResultOf(service.stopService())

    def test_tls_config_object(self) -> None:
        """
        The TLS settings may be an object with C{cert} and C{key}.
        """

        @attr.s
        class TlsSettings:
            cert: str = attr.ib()
            key: str = attr.ib()

        cert, key = make_certificate(FilePath(self.mktemp()))
        self.assertEqual(self.make(tls=TlsSettings(cert, key)).scheme, "https")

    def test_tls_errors(self) -> None:
        """
        Unreadable, malformed or mismatched TLS files are refused, naming
        the file and the reason.
        """
        directory = FilePath(self.mktemp())
        cert, key = make_certificate(directory, "one")
        other_cert, other_key = make_certificate(directory, "two")
        junk = directory.child("junk.pem")
        junk.setContent(b"not pem")
        missing = directory.child("missing.pem").path
        cases = [
            ((missing, key), missing, "cannot read"),
            ((cert, missing), missing, "cannot read"),
            ((junk.path, key), junk.path, "no PEM certificate"),
            ((cert, junk.path), junk.path, "cannot parse"),
            ((cert, other_key), other_key, "does not match"),
        ]
        for paths, named, reason in cases:
            error = self.assertRaises(ValueError, tls_options, *paths)
            self.assertIn(named, str(error))
            self.assertIn(reason, str(error))
        error = self.assertRaises(ValueError, self.make, tls=object())
        self.assertIn("certificate and a key", str(error))
