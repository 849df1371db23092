"""
The admin HTTP API (twisted.web).

Routes (every answer under C{/v1/} and C{/metrics} is JSON or Prometheus
text; errors are always C{{"error": {"code": ..., "message": ...}}}):

    ======  =============================  ========  ==========================
    method  path                           role      answer
    ======  =============================  ========  ==========================
    GET     /v1/cluster                    viewer    L{IAdminTarget.status}
    GET     /v1/health                     viewer    200 when ok, 503 degraded
    POST    /v1/election                   operator  body C{{"prefer": "n2"}}
    POST    /v1/members/{id}/remove        admin
    POST    /v1/members/{id}/drain         operator
    POST    /v1/config/reload              admin
    GET     /v1/events                     viewer    server-sent events
    GET     /metrics                       viewer    Prometheus text
    GET     /                              none      the dashboard page
    GET     /static/...                    none      the dashboard's assets
    ======  =============================  ========  ==========================

Authentication is by bearer token in the C{Authorization} header. Because a
browser's C{EventSource} cannot set headers, C{GET /v1/events} also accepts
the token as a C{?token=} query parameter; no other route does (the
dashboard page C{GET /} needs no token at all: its script asks for one).
Query strings are redacted from the access log so such a token is never
logged.

Unknown paths answer 404, a known path with the wrong method 405 with an
C{Allow} header, a missing or invalid token 401 with
C{WWW-Authenticate: Bearer realm="clustron"}, a role too low 403 naming
the role needed. Every C{POST}, and every 401/403 refusal of one, is
audited (L{clustron.admin.auth.AuditLog}).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

from attrs import frozen
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.web.http import Request, combinedLogFormatter
from twisted.web.iweb import IAccessLogFormatter, IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.static import File
from zope.interface import Attribute, Interface, provider

from clustron.admin.auth import (
    ANONYMOUS,
    AuditLog,
    AuditRecord,
    Authorizer,
    Principal,
    bearer_token,
    role_allows,
)
from clustron.admin.events import (
    KEEPALIVE_INTERVAL,
    MAX_BUFFERED_BYTES,
    EventStream,
)
from clustron.errors import (
    ClustronError,
    ConfigError,
    NoQuorum,
    NotJoined,
    QueueFull,
    RequestTimeout,
    UnknownMember,
)

log = Logger()

#: Where the dashboard's files live: C{index.html} is served at C{/}, the
#: rest under C{/static/}.
STATIC_DIR = FilePath(__file__).sibling("static")

#: The largest request body accepted, in bytes.
MAX_BODY_BYTES = 64 * 1024

#: The most event streams open at once.
MAX_STREAMS = 64


class IAdminTarget(Interface):
    """
    What the admin API operates on: a running node. The API calls these and
    turns their results into HTTP answers; an exception (raised or in a
    Deferred) becomes a JSON error (see L{describe_error}).
    """

    metrics_registry = Attribute(
        "The node's prometheus_client CollectorRegistry, served at /metrics."
    )

    def status():
        """
        @return: the C{GET /v1/cluster} document (a JSON-ready dict: cluster_id,
            node_id, incarnation, view, quorum, peers; see DESIGN section 6).
        """

    def health():
        """
        @return: C{{"status": "ok"|"degraded", "node_id": str, "joined": bool,
            "has_quorum": bool|None, "peers_connected": int}}.
        """

    def force_election(prefer):
        """
        Start a new election.

        @param prefer: the node id to favour, or None.
        @return: a Deferred firing with a JSON-ready dict describing the outcome.
        """

    def remove_member(node_id):
        """
        Remove a member from the view.

        @return: a Deferred firing with a JSON-ready dict; fails with
            L{clustron.errors.UnknownMember} for a node not in the view.
        """

    def drain_member(node_id):
        """
        Mark a member draining (it will not coordinate and is asked to leave).

        @return: a Deferred firing with a JSON-ready dict.
        """

    def reload_config():
        """
        Re-read the configuration file and apply the reloadable settings.

        @return: a Deferred firing with C{{"applied": [...], "ignored": [...],
            "errors": [...]}}.
        """

    def subscribe(callback):
        """
        Receive membership and operations events.

        @param callback: called with each event, a JSON-ready dict with at
            least C{"type"} and C{"time"}.
        @return: a callable taking no arguments that unsubscribes.
        """


# ---------------------------------------------------------------------------
# errors


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def describe_error(error: BaseException) -> tuple[int, str, str]:
    """
    Map an exception from the node to an HTTP answer.

    @param error: the exception.
    @return: C{(status, code, message)}. Exceptions that are not Clustron's
        and not L{ValueError} are reported as a 500 without detail (the
        detail is logged instead).
    """
    message = str(error) or type(error).__name__
    if isinstance(error, UnknownMember):
        return 404, "unknown_member", message
    if isinstance(error, NoQuorum):
        return 409, "no_quorum", message
    if isinstance(error, NotJoined):
        return 409, "not_joined", message
    if isinstance(error, ConfigError):
        return 409, "invalid_config", message
    if isinstance(error, QueueFull):
        return 503, "busy", message
    if isinstance(error, RequestTimeout):
        return 504, "timeout", message
    if isinstance(error, ClustronError):
        return 409, _CAMEL.sub("_", type(error).__name__).lower(), message
    if isinstance(error, ValueError):
        return 400, "bad_request", message
    if isinstance(error, CancelledError):
        return 503, "cancelled", "the operation was cancelled"
    return 500, "internal_error", "internal error; see the node's log"


def error_body(code: str, message: str) -> bytes:
    """
    @return: the JSON body of an error answer.
    """
    return _json({"error": {"code": code, "message": message}})


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode("utf-8") + b"\n"


# ---------------------------------------------------------------------------
# routes


@frozen
class _Reply:
    status: int
    body: bytes
    content_type: bytes = b"application/json; charset=utf-8"


class _RequestError(Exception):
    """
    The request itself is unacceptable (bad body, too large).
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@frozen
class Route:
    """
    One API route.

    @ivar methods: the HTTP methods it answers.
    @ivar pattern: the path segments; C{"{id}"} matches any one segment.
    @ivar role: the least role it needs.
    @ivar action: its name in audit records and messages.
    @ivar handler: the name of the L{ApiResource} method that serves it.
    @ivar mutating: whether it changes anything (and so is audited).
    @ivar query_token: whether C{?token=} is accepted in place of the header.
    """

    methods: tuple[bytes, ...]
    pattern: tuple[str, ...]
    role: str
    action: str
    handler: str
    mutating: bool = False
    query_token: bool = False

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """
        @param segments: the request's decoded path segments.
        @return: the placeholder values when the path matches, else None.
        """
        if len(segments) != len(self.pattern):
            return None
        params: dict[str, str] = {}
        for want, got in zip(self.pattern, segments, strict=True):
            if want.startswith("{"):
                if not got:
                    return None
                params[want.strip("{}")] = got
            elif want != got:
                return None
        return params


_GET = (b"GET", b"HEAD")

#: Every API route.
ROUTES: tuple[Route, ...] = (
    Route(_GET, ("v1", "cluster"), "viewer", "cluster", "_cluster"),
    Route(_GET, ("v1", "health"), "viewer", "health", "_health"),
    Route((b"POST",), ("v1", "election"), "operator", "election", "_election", True),
    Route(
        (b"POST",), ("v1", "members", "{id}", "remove"), "admin", "member.remove", "_remove", True
    ),
    Route(
        (b"POST",), ("v1", "members", "{id}", "drain"), "operator", "member.drain", "_drain", True
    ),
    Route((b"POST",), ("v1", "config", "reload"), "admin", "config.reload", "_reload", True),
    Route((b"GET",), ("v1", "events"), "viewer", "events", "_events", query_token=True),
    Route(_GET, ("metrics",), "viewer", "metrics", "_metrics"),
)


def _segments(raw_path: bytes) -> list[str] | None:
    parts = raw_path.split(b"/")[1:]
    if len(parts) > 1 and parts[-1] == b"":
        parts.pop()
    try:
        return [unquote_to_bytes(part).decode("utf-8") for part in parts]
    except UnicodeDecodeError:
        return None


def _remote(request: IRequest) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    if host is None:
        return str(getattr(address, "name", None) or address)
    if ":" in host:
        return f"[{host}]:{address.port}"
    return f"{host}:{address.port}"


class ApiResource(Resource):
    """
    Serves L{ROUTES}: matches the path, checks the method, the token and
    the role, calls the target, writes JSON, audits.
    """

    isLeaf = True

    def __init__(
        self,
        target: IAdminTarget,
        authorizer: Authorizer,
        clock: IReactorTime,
        audit: AuditLog,
        *,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        max_stream_buffer: int = MAX_BUFFERED_BYTES,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        """
        @param target: the node.
        @param authorizer: checks tokens.
        @param clock: for audit times and event-stream keep-alives.
        @param audit: the audit trail.
        @param keepalive_interval: seconds between event-stream keep-alives.
        @param max_stream_buffer: the most bytes held for one event-stream
            client that is not reading.
        @param max_streams: the most event streams open at once.
        """
        super().__init__()
        self._target = target
        self._authorizer = authorizer
        self._clock = clock
        self._audit = audit
        self._keepalive_interval = keepalive_interval
        self._max_stream_buffer = max_stream_buffer
        self._max_streams = max_streams
        self._streams: set[EventStream] = set()

    @property
    def open_streams(self) -> int:
        """
        How many event streams are open.
        """
        return len(self._streams)

    def close_streams(self) -> None:
        """
        End every open event stream (the API is stopping).
        """
        for stream in list(self._streams):
            stream.close()

    def render(self, request: IRequest) -> bytes | int:
        """
        Answer one request.
        """
        segments = _segments(request.path)
        found = [] if segments is None else match_routes(segments)
        if not found:
            path = request.path.decode("utf-8", "replace")
            return self._error(request, 404, "not_found", f"no such resource: {path}")
        matching = [(r, p) for r, p in found if request.method in r.methods]
        if not matching:
            allowed = sorted({m.decode() for route, _ in found for m in route.methods})
            request.setHeader(b"Allow", ", ".join(allowed).encode())
            method = request.method.decode("ascii", "replace")
            return self._error(
                request,
                405,
                "method_not_allowed",
                f"{method} is not allowed here; allowed: {', '.join(allowed)}",
            )
        route, params = matching[0]
        target = self._prefer_of(request) if route.action == "election" else params.get("id")
        principal, refusal = self._authorize(request, route)
        if refusal is not None:
            status, code, message = refusal
            if route.mutating:
                self._record(request, principal, route, target, "denied", status, code)
            return self._error(request, status, code, message)
        assert principal is not None
        if route.handler == "_events":
            return self._events(request)
        handler: Callable[[IRequest, dict[str, str]], Any] = getattr(self, route.handler)
        finished: list[object] = []
        cast(Request, request).notifyFinish().addBoth(finished.append)
        d = maybeDeferred(handler, request, params)

        def failed(failure: Failure) -> _Reply:
            if failure.check(_RequestError):
                e = failure.value
                return _Reply(e.status, error_body(e.code, e.message))
            status, code, message = describe_error(failure.value)
            if status == 500:
                log.failure(
                    "admin action {action} failed", failure, action=route.action
                )
            return _Reply(status, error_body(code, message))

        def audit(reply: _Reply) -> _Reply:
            if route.mutating:
                result, detail = "ok", ""
                if reply.status >= 400:
                    result = "error"
                    detail = json.loads(reply.body)["error"]["code"]
                self._record(request, principal, route, target, result, reply.status, detail)
            return reply

        def write(reply: _Reply) -> None:
            if finished:
                return
            self._write(request, reply)

        d.addErrback(failed)
        d.addCallback(audit)
        d.addCallback(write)
        d.addErrback(lambda f: log.failure("writing an admin answer failed", f))
        return NOT_DONE_YET

    # -- authorization and audit -------------------------------------------

    def _authorize(
        self, request: IRequest, route: Route
    ) -> tuple[Principal | None, tuple[int, str, str] | None]:
        header = request.getHeader(b"authorization")
        token = bearer_token(header)
        in_query = parse_qs(urlsplit(request.uri).query).get(b"token")
        if token is None and in_query and route.query_token:
            token = in_query[0].decode("utf-8", "replace")
        principal = self._authorizer.authenticate(token)
        if principal is None:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="clustron"')
            if token is not None:
                message = "the bearer token is not valid"
            elif header is not None:
                message = "the Authorization header must be 'Bearer <token>'"
            elif in_query:
                message = (
                    "a token in the query string is accepted only by GET /v1/events; "
                    "send an 'Authorization: Bearer <token>' header"
                )
            else:
                message = "a bearer token is required (Authorization: Bearer <token>)"
            return None, (401, "unauthorized", message)
        if not role_allows(principal.role, route.role):
            message = (
                f"{route.action} needs role {route.role!r} or higher; "
                f"token {principal.name!r} has role {principal.role!r}"
            )
            return principal, (403, "forbidden", message)
        return principal, None

    def _record(
        self,
        request: IRequest,
        principal: Principal | None,
        route: Route,
        target: str | None,
        result: str,
        status: int,
        detail: str,
    ) -> None:
        self._audit.record(
            AuditRecord(
                time=self._clock.seconds(),
                token=principal.name if principal else ANONYMOUS,
                role=principal.role if principal else None,
                action=route.action,
                target=target,
                result=result,
                status=status,
                detail=detail,
                remote=_remote(request),
            )
        )

    # -- writing -----------------------------------------------------------

    def _error(self, request: IRequest, status: int, code: str, message: str) -> bytes:
        return self._body(request, _Reply(status, error_body(code, message)))

    def _body(self, request: IRequest, reply: _Reply) -> bytes:
        request.setResponseCode(reply.status)
        request.setHeader(b"Content-Type", reply.content_type)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Content-Length", b"%d" % (len(reply.body),))
        return reply.body

    def _write(self, request: IRequest, reply: _Reply) -> None:
        body = self._body(request, reply)
        request.write(body)
        request.finish()

    # -- handlers ----------------------------------------------------------

    def _cluster(self, request: IRequest, params: dict[str, str]) -> Deferred[_Reply]:
        d = maybeDeferred(self._target.status)
        return d.addCallback(lambda status: _Reply(200, _json(status)))

    def _health(self, request: IRequest, params: dict[str, str]) -> Deferred[_Reply]:
        def reply(health: dict[str, Any]) -> _Reply:
            return _Reply(200 if health.get("status") == "ok" else 503, _json(health))

        return maybeDeferred(self._target.health).addCallback(reply)

    def _metrics(self, request: IRequest, params: dict[str, str]) -> _Reply:
        text = generate_latest(self._target.metrics_registry)
        return _Reply(200, text, CONTENT_TYPE_LATEST.encode("ascii"))

    def _election(self, request: IRequest, params: dict[str, str]) -> Deferred[_Reply]:
        prefer = self._prefer_of(request, strict=True)
        d = maybeDeferred(self._target.force_election, prefer)
        return d.addCallback(lambda result: _Reply(200, _json(result)))

    def _remove(self, request: IRequest, params: dict[str, str]) -> Deferred[_Reply]:
        d = maybeDeferred(self._target.remove_member, params["id"])
        return d.addCallback(lambda result: _Reply(200, _json(result)))

    def _drain(self, request: IRequest, params: dict[str, str]) -> Deferred[_Reply]:
        d = maybeDeferred(self._target.drain_member, params["id"])
        return d.addCallback(lambda result: _Reply(200, _json(result)))

    def _reload(self, request: IRequest, params: dict[str, str]) -> Deferred[_Reply]:
        d = maybeDeferred(self._target.reload_config)
        return d.addCallback(lambda result: _Reply(200, _json(result)))

    def _events(self, request: IRequest) -> bytes | int:
        if len(self._streams) >= self._max_streams:
            return self._error(
                request,
                503,
                "too_many_streams",
                f"{self._max_streams} event streams are open already; try again later",
            )
        stream = EventStream(
            request,
            self._clock,
            keepalive_interval=self._keepalive_interval,
            max_buffered_bytes=self._max_stream_buffer,
            on_close=self._streams.discard,
        )
        self._streams.add(stream)
        stream.start(self._target.subscribe)
        return NOT_DONE_YET

    # -- request bodies ----------------------------------------------------

    def _prefer_of(self, request: IRequest, strict: bool = False) -> str | None:
        """
        The C{prefer} of an election request's body; None when absent or,
        unless C{strict}, unreadable.
        """
        try:
            body = _json_body(request)
        except _RequestError:
            if strict:
                raise
            return None
        unknown = sorted(set(body) - {"prefer"})
        prefer = body.get("prefer")
        if strict:
            if unknown:
                raise _RequestError(
                    400, "bad_request", f"unknown key(s) in request body: {', '.join(unknown)}"
                )
            if prefer is not None and (not isinstance(prefer, str) or not prefer):
                raise _RequestError(
                    400, "bad_request", "prefer must be a node id (a non-empty string) or null"
                )
        return prefer if isinstance(prefer, str) and prefer else None


def match_routes(segments: list[str]) -> list[tuple[Route, dict[str, str]]]:
    """
    @param segments: a request's decoded path segments.
    @return: every route whose path matches, with its placeholder values.
    """
    found = []
    for route in ROUTES:
        params = route.match(segments)
        if params is not None:
            found.append((route, params))
    return found


def _json_body(request: IRequest) -> dict[str, Any]:
    content = request.content
    if content is None:
        return {}
    content.seek(0)
    raw = content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise _RequestError(
            413, "body_too_large", f"the request body is larger than {MAX_BODY_BYTES} bytes"
        )
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise _RequestError(
            400, "bad_request", f"the request body is not valid JSON: {e}"
        ) from None
    if not isinstance(body, dict):
        raise _RequestError(400, "bad_request", "the request body must be a JSON object")
    return body


# ---------------------------------------------------------------------------
# static files and the root


class _JsonError(Resource):
    """
    Answers every request below it with one JSON error.
    """

    isLeaf = True

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__()
        self._status = status
        self._code = code
        self._message = message

    def render(self, request: IRequest) -> bytes:
        request.setResponseCode(self._status)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return error_body(self._code, self._message)


_NOT_FOUND = _JsonError(404, "not_found", "no such resource")


class _StaticFiles(File):
    """
    A L{File} that never lists directories, answers only GET and HEAD, and
    answers errors in JSON.
    """

    # File infers its attribute as the _UnsafeNoResource it is set to; any
    # resource will do.
    childNotFound = _NOT_FOUND  # type: ignore[assignment]

    def directoryListing(self) -> Resource:  # noqa: N802
        return _NOT_FOUND

    def render(self, request: IRequest) -> bytes | int:
        if request.method not in _GET:
            request.setHeader(b"Allow", b"GET, HEAD")
            return _JsonError(
                405, "method_not_allowed", "only GET and HEAD are allowed here"
            ).render(request)
        result: bytes | int = super().render(request)
        return result


class AdminRoot(Resource):
    """
    The root of the admin site: C{/} and C{/static/} from the dashboard
    directory (404 when it is absent), everything else from L{ApiResource}.
    """

    def __init__(self, api: ApiResource, static_dir: FilePath | None = STATIC_DIR) -> None:
        """
        @param api: serves the API routes.
        @param static_dir: the dashboard directory, or None for no dashboard.
        """
        super().__init__()
        self.api = api
        self._static_dir = static_dir

    def getChild(self, name: bytes, request: IRequest) -> IResource:  # noqa: N802
        """
        Route C{/}, C{/static/} and the API.
        """
        if name == b"" and not request.postpath:
            return self._dashboard_file("index.html")
        if name == b"static":
            return self._dashboard_file(None)
        return self.api

    def _dashboard_file(self, name: str | None) -> IResource:
        directory = self._static_dir
        if directory is None or not directory.isdir():
            return _JsonError(404, "not_found", "the dashboard is not installed")
        path = directory if name is None else directory.child(name)
        if not path.exists():
            return _NOT_FOUND
        return _StaticFiles(path.path)


def build_root(
    target: IAdminTarget,
    authorizer: Authorizer,
    clock: IReactorTime,
    audit: AuditLog | None = None,
    *,
    static_dir: FilePath | None = STATIC_DIR,
    keepalive_interval: float = KEEPALIVE_INTERVAL,
    max_stream_buffer: int = MAX_BUFFERED_BYTES,
    max_streams: int = MAX_STREAMS,
) -> AdminRoot:
    """
    Build the admin API's resource tree.

    @param target: the node, an L{IAdminTarget} provider.
    @param authorizer: checks tokens.
    @param clock: audit times and event-stream keep-alives.
    @param audit: the audit trail; log events only when None.
    @param static_dir: the dashboard directory, or None.
    @param keepalive_interval: seconds between event-stream keep-alives.
    @param max_stream_buffer: the most bytes held for a slow event client.
    @param max_streams: the most event streams open at once.
    @return: the root resource.
    """
    api = ApiResource(
        target,
        authorizer,
        clock,
        audit if audit is not None else AuditLog(None),
        keepalive_interval=keepalive_interval,
        max_stream_buffer=max_stream_buffer,
        max_streams=max_streams,
    )
    return AdminRoot(api, static_dir)


# ---------------------------------------------------------------------------
# the site


_TOKEN_IN_QUERY = re.compile(rb"([?&]token=)[^&#\s]*", re.IGNORECASE)


def redact(uri: bytes) -> bytes:
    """
    @param uri: a request URI or a Referer header value.
    @return: it with the value of any C{token} query parameter replaced.
    """
    return _TOKEN_IN_QUERY.sub(rb"\1REDACTED", uri)


class _RedactedRequest:
    """
    The view of a request the access log gets: tokens in the URI and the
    Referer header are redacted.
    """

    def __init__(self, request: IRequest) -> None:
        self._request = request
        self.uri = redact(request.uri)

    def getHeader(self, name: bytes) -> bytes | None:  # noqa: N802
        value = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            return redact(value)
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


@provider(IAccessLogFormatter)
def access_log_formatter(timestamp: str, request: IRequest) -> str:
    """
    The combined log format, with tokens redacted from URIs.
    """
    line: str = combinedLogFormatter(timestamp, _RedactedRequest(request))
    return line


#: Seconds a connection may stay idle (or take to send a request) before it
#: is closed; an open event stream is never idle in this sense.
IDLE_TIMEOUT = 60.0


def build_site(root: IResource, reactor: IReactorTime, idle_timeout: float = IDLE_TIMEOUT) -> Site:
    """
    @param root: the resource tree (L{build_root}).
    @param reactor: the reactor (connection timeouts, log timestamps).
    @param idle_timeout: seconds before an idle connection is closed.
    @return: the site to listen with.
    """
    site = Site(
        root, reactor=reactor, logFormatter=access_log_formatter, timeout=idle_timeout
    )
    site.displayTracebacks = False
    return site
