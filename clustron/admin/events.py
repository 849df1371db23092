"""
Server-sent events: the framing, the server side of one stream, and a
sans-IO decoder for clients.

Each event is written as::

    event: <type>
    data: <the event as one line of JSON>
    <blank line>

and a comment line (C{": keep-alive"}) is written every
L{KEEPALIVE_INTERVAL} seconds so that proxies and clients see the
connection is alive.

A stream never buffers without bound: it registers as a streaming producer
with its request, so it learns when the client stops reading; while paused
it keeps at most C{max_buffered_bytes} of events and disconnects the client
rather than exceed that.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, cast

from attrs import frozen
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.iweb import IRequest
from zope.interface import implementer

log = Logger()

#: Seconds between keep-alive comments.
KEEPALIVE_INTERVAL = 15.0

#: Default most bytes of events held for one client that is not reading.
MAX_BUFFERED_BYTES = 256 * 1024

#: The comment written when a stream opens, so headers reach the client at once.
OPENING = b": stream open\n\n"

#: The keep-alive comment.
KEEPALIVE = b": keep-alive\n\n"

#: A subscription: takes a callback for each event, returns an unsubscribe function.
Subscribe = Callable[[Callable[[dict[str, Any]], None]], Callable[[], None]]


def _single_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def encode_event(event: Mapping[str, Any]) -> bytes:
    """
    Frame one event.

    @param event: a JSON-ready mapping; its C{"type"} key names the event
        (C{"message"} when absent).
    @return: the event's bytes, blank line included.
    @raise TypeError: when the event holds a value JSON cannot encode.
    @raise ValueError: when the event holds a circular reference.
    """
    event_type = _single_line(str(event.get("type") or "message"))
    data = json.dumps(dict(event), separators=(",", ":"))
    return f"event: {event_type}\ndata: {data}\n\n".encode()


@implementer(IPushProducer)
class EventStream:
    """
    The server side of one event stream: it subscribes to events, writes
    each to its request, writes keep-alives, and unsubscribes when the
    connection closes.
    """

    def __init__(
        self,
        request: IRequest,
        clock: IReactorTime,
        *,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        max_buffered_bytes: int = MAX_BUFFERED_BYTES,
        on_close: Callable[[EventStream], None] | None = None,
    ) -> None:
        """
        @param request: the request to stream to; its headers must not have
            been written yet.
        @param clock: schedules keep-alives.
        @param keepalive_interval: seconds between keep-alive comments.
        @param max_buffered_bytes: the most bytes held while the client is
            not reading, before it is disconnected.
        @param on_close: called once with this stream when it closes, for
            whatever reason.
        """
        self._request = request
        self._clock = clock
        self._keepalive_interval = keepalive_interval
        self._max_buffered_bytes = max_buffered_bytes
        self._on_close = on_close
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._paused = False
        self._closed = False
        self._unsubscribe: Callable[[], None] | None = None
        self._keepalive = LoopingCall(self._write, KEEPALIVE)
        self._keepalive.clock = clock

    @property
    def closed(self) -> bool:
        """
        Whether this stream has ended.
        """
        return self._closed

    @property
    def buffered_bytes(self) -> int:
        """
        The bytes held back because the client is not reading.
        """
        return self._pending_bytes

    def start(self, subscribe: Subscribe) -> None:
        """
        Write the response headers and the opening comment, subscribe to
        events and start the keep-alives.

        @param subscribe: the event source's C{subscribe}.
        """
        request = self._request
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        # IRequest does not declare the producer and finish notification
        # methods every HTTP request has.
        http_request = cast(Request, request)
        http_request.notifyFinish().addBoth(self._connection_ended)
        http_request.registerProducer(self, True)
        self._write(OPENING)
        if self._closed:
            return
        self._unsubscribe = subscribe(self.deliver)
        self._keepalive.start(self._keepalive_interval, now=False)

    def deliver(self, event: dict[str, Any]) -> None:
        """
        Send one event to the client. Never raises: an event that cannot be
        encoded is logged and skipped.

        @param event: the event (a JSON-ready dict with C{"type"}).
        """
        if self._closed:
            return
        try:
            data = encode_event(event)
        except (TypeError, ValueError):
            log.failure(
                "cannot encode event of type {event_type} for the event stream",
                event_type=event.get("type"),
            )
            return
        self._write(data)

    def close(self) -> None:
        """
        End the stream from the server side (the admin API is stopping).
        """
        if self._closed:
            return
        self._cleanup()
        cast(Request, self._request).unregisterProducer()
        self._request.finish()

    def pauseProducing(self) -> None:
        """
        The client is not reading: hold events back from now on.
        """
        self._paused = True

    def resumeProducing(self) -> None:
        """
        The client reads again: write what was held back.
        """
        self._paused = False
        while self._pending and not self._paused and not self._closed:
            data = self._pending.popleft()
            self._pending_bytes -= len(data)
            self._request.write(data)

    def stopProducing(self) -> None:
        """
        The connection is going away.
        """
        self._cleanup()

    def _write(self, data: bytes) -> None:
        if self._closed:
            return
        if not self._paused and not self._pending:
            self._request.write(data)
            return
        if self._pending_bytes + len(data) > self._max_buffered_bytes:
            self._overflow()
            return
        self._pending.append(data)
        self._pending_bytes += len(data)

    def _overflow(self) -> None:
        client = self._request.getClientAddress()
        log.warn(
            "event stream client {client} is not reading; disconnecting it with "
            "{buffered} bytes held (limit {limit})",
            client=str(client),
            buffered=self._pending_bytes,
            limit=self._max_buffered_bytes,
        )
        self._cleanup()
        transport = getattr(self._request, "transport", None)
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            cast(Request, self._request).loseConnection()

    def _connection_ended(self, result: None | Failure) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        self._pending_bytes = 0
        if self._keepalive.running:
            self._keepalive.stop()
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            try:
                unsubscribe()
            except Exception:
                log.failure("unsubscribing a closed event stream failed")
        if self._on_close is not None:
            self._on_close(self)


@frozen
class ServerSentEvent:
    """
    One decoded event.

    @ivar type: the C{event:} field, C{"message"} when absent.
    @ivar data: the C{data:} lines, joined with newlines.
    """

    type: str
    data: str


class EventStreamError(Exception):
    """
    An event stream broke the framing rules or a size limit.
    """


class EventDecoder:
    """
    A sans-IO decoder of a C{text/event-stream} body: feed it bytes, get
    back complete events. Comments, C{id:} and C{retry:} fields are
    ignored. Lines may end with CRLF, LF or CR.
    """

    def __init__(self, max_line_bytes: int = 1 << 20, max_event_bytes: int = 1 << 20) -> None:
        """
        @param max_line_bytes: the longest line accepted.
        @param max_event_bytes: the most data one event may carry.
        """
        self._max_line_bytes = max_line_bytes
        self._max_event_bytes = max_event_bytes
        self._buffer = b""
        self._type = ""
        self._data: list[str] = []
        self._data_bytes = 0

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """
        @param data: the next bytes of the stream.
        @return: the events completed by them, in order.
        @raise EventStreamError: when a line or an event is too long, or a
            line is not UTF-8.
        """
        self._buffer += data
        events: list[ServerSentEvent] = []
        while True:
            cr = self._buffer.find(b"\r")
            lf = self._buffer.find(b"\n")
            ends = [i for i in (cr, lf) if i >= 0]
            if not ends:
                break
            end = min(ends)
            if end == cr:
                if end + 1 == len(self._buffer):
                    break  # a CR at the end may be the first half of CRLF
                skip = 2 if self._buffer[end + 1 : end + 2] == b"\n" else 1
            else:
                skip = 1
            line, self._buffer = self._buffer[:end], self._buffer[end + skip :]
            if len(line) > self._max_line_bytes:
                raise self._too_long()
            event = self._line(line)
            if event is not None:
                events.append(event)
        if len(self._buffer) > self._max_line_bytes:
            raise self._too_long()
        return events

    def _too_long(self) -> EventStreamError:
        return EventStreamError(f"event stream line longer than {self._max_line_bytes} bytes")

    def _line(self, raw: bytes) -> ServerSentEvent | None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise EventStreamError(f"event stream line is not UTF-8: {e}") from None
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._type = value
        elif name == "data":
            self._data_bytes += len(value) + 1
            if self._data_bytes > self._max_event_bytes:
                raise EventStreamError(f"event larger than {self._max_event_bytes} bytes")
            self._data.append(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event_type, data = self._type or "message", self._data
        self._type, self._data, self._data_bytes = "", [], 0
        if not data:
            return None
        return ServerSentEvent(type=event_type, data="\n".join(data))
