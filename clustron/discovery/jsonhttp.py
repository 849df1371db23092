"""
JSON over HTTP for the discovery plugins that talk to a registry (etcd,
Consul), through an injected treq C{HTTPClient} (or L{treq.testing.StubTreq}
in tests).

Bodies are read with bounded buffers and a timeout; a streamed body of JSON
documents (etcd's watch) is parsed as it arrives.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss

from clustron.errors import ConfigError

#: The largest response body read, in bytes.
MAX_BODY_BYTES = 16 * 1024 * 1024

#: The largest single document of a streamed body, in bytes.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024


class RegistryError(Exception):
    """
    A registry answered with an error, or with something unreadable.
    """


def default_client(reactor: Any, extra: str) -> Any:
    """
    A treq C{HTTPClient} on C{reactor} with a non-persistent connection
    pool.

    @param extra: the C{clustron[...]} extra that installs treq, for the
        error message.
    @raise ConfigError: when treq is not installed.
    """
    try:
        from treq.client import HTTPClient
    except ImportError:
        raise ConfigError(
            [("", f"needs the treq package, which is missing: pip install clustron[{extra}]")]
        ) from None
    from twisted.web.client import Agent, HTTPConnectionPool

    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


class _BodyReader(Protocol):
    """
    Collects a response body up to a limit.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.done: Deferred[bytes] = Deferred(lambda _: self.abort())

    def abort(self) -> None:
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self.done.errback(RegistryError(f"response body larger than {self._limit} bytes"))
            self.abort()
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


def read_body(
    response: Any, reactor: IReactorTime, timeout: float, limit: int = MAX_BODY_BYTES
) -> Deferred[bytes]:
    """
    Read a whole response body.

    @return: a Deferred firing with the bytes, or failing with
        L{RegistryError} past C{limit} bytes, or with L{CancelledError}
        when the body has not ended after C{timeout} seconds (the connection
        is then dropped).
    """
    reader = _BodyReader(limit)
    response.deliverBody(reader)
    timer = reactor.callLater(timeout, reader.done.cancel)

    def stop_timer(result: object) -> object:
        if timer.active():
            timer.cancel()
        return result

    return reader.done.addBoth(stop_timer)


async def request_json(
    http: Any,
    reactor: IReactorTime,
    method: str,
    url: str,
    body: object = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[Any, Any]:
    """
    Send a request (with a JSON body when C{body} is not C{None}) and read
    a JSON answer.

    @return: C{(response, document)}; the document is C{None} for an empty
        body.
    @raise RegistryError: on an answer that is not 2xx or not JSON; the
        message holds the method, URL, status and the start of the body.
    """
    all_headers = {"Accept": ["application/json"]}
    for name, value in (headers or {}).items():
        all_headers[name] = [value]
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        all_headers["Content-Type"] = ["application/json"]
    response = await http.request(
        method,
        url,
        data=data,
        headers=all_headers,
        unbuffered=True,
        reactor=reactor,
        timeout=timeout,
    )
    raw = await read_body(response, reactor, timeout)
    if not 200 <= response.code < 300:
        text = raw[:300].decode("utf-8", "replace").strip()
        raise RegistryError(f"{method} {url} answered HTTP {response.code}: {text}")
    if not raw.strip():
        return response, None
    try:
        return response, json.loads(raw)
    except ValueError as e:
        raise RegistryError(f"{method} {url} answered with invalid JSON: {e}") from None


class JsonStream(Protocol):
    """
    Parses a streamed response body of newline-delimited JSON documents (as
    etcd's gateway streams watch and keep-alive answers), handing each to a
    callback as soon as its line is complete.

    @ivar done: fires with C{None} when the body ends, or fails with why it
        broke (a connection error, a line over the size limit, invalid JSON,
        or an exception raised by the callback). Cancelling it drops the
        connection.
    """

    def __init__(
        self, on_document: Callable[[Any], object], limit: int = MAX_DOCUMENT_BYTES
    ) -> None:
        """
        @param on_document: called with each parsed document.
        @param limit: the longest line accepted, in bytes.
        """
        self._on_document = on_document
        self._limit = limit
        self._buffer = b""
        self.done: Deferred[None] = Deferred(lambda _: self.abort())

    def abort(self) -> None:
        """
        Drop the connection; no more documents are delivered.
        """
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def _fail(self, reason: Exception | Failure) -> None:
        if not self.done.called:
            self.done.errback(reason)
        self.abort()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > self._limit:
            self._fail(RegistryError(f"stream line longer than {self._limit} bytes"))
            return
        for line in lines:
            if not line.strip():
                continue
            try:
                document = json.loads(line)
            except ValueError as e:
                self._fail(RegistryError(f"stream holds invalid JSON: {e}"))
                return
            try:
                self._on_document(document)
            except Exception:
                self._fail(Failure())
                return
            if self.done.called:
                return

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if self.done.called:
            return
        if self._buffer.strip() and reason.check(ResponseDone, PotentialDataLoss):
            self.dataReceived(b"\n")
            if self.done.called:
                return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


def describe_failure(failure: Failure, timeout: float) -> str:
    """
    A reason, for people, for a failed request.

    @param timeout: the request timeout, named when the request timed out.
    """
    if failure.check(RegistryError):
        return str(failure.value)
    if failure.check(ResponseNeverReceived, ResponseFailed):
        reasons = [
            reason for reason in failure.value.reasons if not reason.check(ConnectionDone)
        ] or failure.value.reasons
        if reasons and all(reason.check(CancelledError) for reason in reasons):
            return f"no answer within {timeout} s"
        inner = "; ".join(
            f"{reason.type.__name__}: {reason.getErrorMessage()}" for reason in reasons
        )
        return f"{failure.type.__name__} ({inner})"
    if failure.check(CancelledError):
        return f"no answer within {timeout} s"
    return f"{failure.type.__name__}: {failure.getErrorMessage()}"
