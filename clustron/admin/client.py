"""
A small client of the admin API, used by the C{clustron} command.

It uses L{twisted.web.client.Agent} (any L{IAgent} can be injected, e.g.
C{treq.testing.RequestTraversalAgent} in tests), reads every answer with a
size limit, and turns error answers into L{AdminRequestError}.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import quote

from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from clustron.admin.events import EventDecoder

#: The most bytes of one (non-streaming) answer the client reads.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024

_USER_AGENT = b"clustron-admin-client"


class AdminRequestError(Exception):
    """
    The admin API answered with an error.

    @ivar status: the HTTP status.
    @ivar code: the error code from the answer (C{"unauthorized"},
        C{"unknown_member"}, ...), or C{"http_<status>"} when the answer had
        none.
    @ivar message: the error message.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@implementer(IBodyProducer)
class _BytesProducer:
    """
    A request body known in full.
    """

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:  # noqa: N802
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


@implementer(IPolicyForHTTPS)
class _TrustRoot:
    """
    Verify the admin API's certificate against one CA certificate.
    """

    def __init__(self, ca_pem: bytes) -> None:
        self._ca = Certificate.loadPEM(ca_pem)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:  # noqa: N802
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._ca)


class _BoundedBody(Protocol):
    """
    Collects a response body, up to a limit.
    """

    def __init__(self, status: int, limit: int) -> None:
        self._status = status
        self._finished: Deferred[bytes] = Deferred(self._cancel)
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def finished(self) -> Deferred[bytes]:
        """
        Fires with the body, or fails.
        """
        return self._finished

    def _cancel(self, d: Deferred[bytes]) -> None:
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._finished.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._parts = []
            self._finished.errback(
                AdminRequestError(
                    self._status,
                    "response_too_large",
                    f"the answer is larger than {self._limit} bytes",
                )
            )
            cast(IPushProducer, self.transport).stopProducing()
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        if self._finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._parts))
        else:
            self._finished.errback(reason)


class _EventBody(Protocol):
    """
    Decodes an event stream and hands each event to a callback.
    """

    def __init__(self, callback: Callable[[dict[str, Any]], object]) -> None:
        self._callback = callback
        self._decoder = EventDecoder()
        self.finished: Deferred[None] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[None]) -> None:
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.finished.called:
            return
        try:
            for event in self._decoder.feed(data):
                self._callback(_event_dict(event.type, event.data))
        except Exception:
            self.finished.errback(Failure())
            cast(IPushProducer, self.transport).stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(None)
        else:
            self.finished.errback(reason)


def _event_dict(event_type: str, data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {"type": event_type, "data": data}
    if not isinstance(value, dict):
        return {"type": event_type, "data": value}
    value.setdefault("type", event_type)
    return value


def stream_ended_by_server(failure: Failure) -> bool:
    """
    @param failure: how an event stream ended.
    @return: whether the server closed the connection (rather than some
        other error).
    """
    if not failure.check(ResponseFailed):
        return False
    reasons = getattr(failure.value, "reasons", [])
    return bool(reasons) and all(r.check(ConnectionDone, ConnectionLost) for r in reasons)


class AdminClient:
    """
    A client of one node's admin API.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        agent: IAgent | None = None,
        *,
        reactor: Any = None,
        ca_cert: str | None = None,
        timeout: float | None = 30.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        """
        @param base_url: the API's root, C{http://host:port} or
            C{https://host:port}.
        @param token: the bearer token, or None to send none.
        @param agent: the agent to use; by default an L{Agent} on C{reactor}.
        @param reactor: the reactor for the default agent and for timeouts;
            required unless C{agent} is given.
        @param ca_cert: a PEM CA certificate file to verify an https API
            against, instead of the system's trust store (default agent only).
        @param timeout: seconds to wait for a (non-streaming) answer, or
            None; applies only when a reactor is known.
        @param max_response_bytes: the most bytes of one answer read.
        @raise ValueError: when C{base_url} is not http(s) or C{ca_cert}
            cannot be read.
        """
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"admin URL {base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self._token = token
        if agent is None:
            if reactor is None:
                raise TypeError("AdminClient needs a reactor (or an agent)")
            if ca_cert is not None:
                try:
                    with open(ca_cert, "rb") as f:
                        policy: Any = _TrustRoot(f.read())
                except (OSError, ValueError) as e:
                    raise ValueError(f"CA certificate {ca_cert}: cannot load it: {e}") from None
                agent = Agent(reactor, contextFactory=policy)
            else:
                agent = Agent(reactor)
        self._agent = agent
        self._reactor = reactor
        self._timeout = timeout
        self._max_response_bytes = max_response_bytes

    # -- API ---------------------------------------------------------------

    def cluster(self) -> Deferred[dict[str, Any]]:
        """
        @return: a Deferred firing with the C{GET /v1/cluster} document.
        """
        return self._call(b"GET", "/v1/cluster")

    def health(self) -> Deferred[dict[str, Any]]:
        """
        @return: a Deferred firing with the health document, whether the
            node is healthy (200) or degraded (503).
        """
        return self._call(b"GET", "/v1/health", accept=(200, 503))

    def elect(self, prefer: str | None = None) -> Deferred[dict[str, Any]]:
        """
        Force an election.

        @param prefer: the node id to favour, or None.
        """
        body = {"prefer": prefer} if prefer is not None else {}
        return self._call(b"POST", "/v1/election", body)

    def remove(self, node_id: str) -> Deferred[dict[str, Any]]:
        """
        Remove a member.
        """
        return self._call(b"POST", f"/v1/members/{quote(node_id, safe='')}/remove", {})

    def drain(self, node_id: str) -> Deferred[dict[str, Any]]:
        """
        Drain a member.
        """
        return self._call(b"POST", f"/v1/members/{quote(node_id, safe='')}/drain", {})

    def reload(self) -> Deferred[dict[str, Any]]:
        """
        Reload the node's configuration.

        @return: a Deferred firing with C{{"applied", "ignored", "errors"}}.
        """
        return self._call(b"POST", "/v1/config/reload", {})

    def metrics(self) -> Deferred[str]:
        """
        @return: a Deferred firing with the Prometheus text.
        """
        d = self._request(b"GET", "/metrics", None, b"text/plain")
        read = d.addCallback(self._read, (200,))
        read.addCallback(lambda result: result[1].decode("utf-8"))
        return self._limit_time(read)

    def events(self, callback: Callable[[dict[str, Any]], object]) -> Deferred[None]:
        """
        Follow the event stream.

        @param callback: called with each event (a dict with at least
            C{"type"}); an exception from it ends the stream with that
            failure.
        @return: a Deferred firing with None when the server ends the stream,
            failing when it breaks; cancel it to stop following.
        """
        d = self._request(b"GET", "/v1/events", None, b"text/event-stream")

        def got(response: IResponse) -> Deferred[Any]:
            if response.code != 200:
                return self._read(response, ()).addCallback(lambda _: None)
            body = _EventBody(callback)
            response.deliverBody(body)
            return body.finished

        return d.addCallback(got)

    # -- plumbing ----------------------------------------------------------

    def _request(
        self,
        method: bytes,
        path: str,
        body: dict[str, Any] | None,
        accept: bytes,
    ) -> Deferred[IResponse]:
        headers = Headers({b"Accept": [accept], b"User-Agent": [_USER_AGENT]})
        if self._token is not None:
            headers.addRawHeader(b"Authorization", b"Bearer " + self._token.encode("utf-8"))
        producer = None
        if body is not None:
            headers.addRawHeader(b"Content-Type", b"application/json")
            producer = _BytesProducer(json.dumps(body).encode("utf-8"))
        url = (self.base_url + path).encode("utf-8")
        d: Deferred[IResponse] = self._agent.request(method, url, headers, producer)
        return d

    def _limit_time(self, d: Deferred[Any]) -> Deferred[Any]:
        """
        Cancel C{d} when it has not fired within the timeout, and fail it
        then with L{TimeoutError} (the agent reports a cancellation in its
        own wrapping, so L{Deferred.addTimeout} cannot be used as is).
        """
        if self._timeout is None or self._reactor is None:
            return d
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            d.cancel()

        call = self._reactor.callLater(self._timeout, expire)

        def done(result: Any) -> Any:
            if call.active():
                call.cancel()
            if expired and isinstance(result, Failure):
                raise TimeoutError(f"no answer within {self._timeout} seconds")
            return result

        return d.addBoth(done)

    def _call(
        self,
        method: bytes,
        path: str,
        body: dict[str, Any] | None = None,
        accept: tuple[int, ...] = (200,),
    ) -> Deferred[Any]:
        d = self._request(method, path, body, b"application/json")
        read = d.addCallback(self._read, accept)

        def decode(result: tuple[int, bytes]) -> Any:
            status, raw = result
            try:
                return json.loads(raw)
            except ValueError:
                raise AdminRequestError(
                    status, "bad_response", "the answer is not JSON"
                ) from None

        read.addCallback(decode)
        return self._limit_time(read)

    def _read(self, response: IResponse, accept: tuple[int, ...]) -> Deferred[tuple[int, bytes]]:
        body = _BoundedBody(response.code, self._max_response_bytes)
        finished = body.finished
        response.deliverBody(body)

        def check(raw: bytes) -> tuple[int, bytes]:
            error = _error_of(raw) if response.code >= 400 else None
            if response.code in accept and error is None:
                return response.code, raw
            if error is None:
                phrase = response.phrase.decode("latin-1") if response.phrase else ""
                error = (f"http_{response.code}", phrase or "unexpected answer")
            raise AdminRequestError(response.code, *error)

        return finished.addCallback(check)


def _error_of(raw: bytes) -> tuple[str, str] | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), dict):
        return None
    error = doc["error"]
    return str(error.get("code", "error")), str(error.get("message", ""))
