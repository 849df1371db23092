"""
A user-space chaos TCP proxy for real processes on loopback.

This machine's kernel has no C{netem}, so faults between real nodes are
injected by putting a L{ChaosProxy} between them: the node dials the proxy
(give the peer's advertised address as the proxy's), and the proxy relays
each connection to the real target, through faults that can be changed at
any time:

    proxy = ChaosProxy(reactor, "127.0.0.1", 7101, seed=1)
    port = await proxy.listen()               # 127.0.0.1, a free port
    proxy.set(latency=0.05, jitter=0.01)      # both directions
    proxy.downstream.bandwidth = 64_000       # bytes per second, one way
    proxy.set(loss=0.1, loss_mode="stall")    # TCP-like: loss stalls the stream
    proxy.set(blackhole=True)                 # everything vanishes
    proxy.reset()                             # RST every connection now
    await proxy.stop()

Each direction of each connection is a pipe that keeps TCP's promise of
order: a chunk read from one side is written to the other after its
L{LinkFaults} delay (latency, plus or minus jitter), never before an earlier
chunk, and no faster than the bandwidth allows. Loss comes in two kinds:
C{"drop"} throws the chunk away (the stream loses bytes, as a broken
middlebox would; framing and checksums must catch it), C{"stall"} holds it
(and everything after it) for C{stall} seconds, which is what a lost
segment does to a TCP stream while it is retransmitted. A blackhole drops
everything while connections stay open. Reset aborts both sides of a
connection.

Memory stays bounded: when a pipe holds more than C{max_buffer} bytes it
stops reading from its source (TCP back-pressure) until it drains.

Randomness comes from one C{random.Random(seed)}; the timing itself is the
real reactor's, so runs are not bit-for-bit repeatable (use the simulator
for that).
"""

from __future__ import annotations

import math
import random
import typing
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import attrs
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IListeningPort, ITransport
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["ChaosProxy", "LinkFaults"]

log = Logger()

LOSS_MODES = ("drop", "stall")


def _non_negative(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not (math.isfinite(value) and value >= 0)
    ):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _probability(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be a probability between 0 and 1, got {value!r}")


def _bandwidth(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is None:
        return
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"bandwidth must be None or bytes per second > 0, got {value!r}")


def _loss_mode(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value not in LOSS_MODES:
        raise ValueError(f"loss_mode must be one of {', '.join(LOSS_MODES)}, got {value!r}")


@attrs.define
class LinkFaults:
    """
    The faults of one direction of the proxy (mutable, and checked on
    every assignment; changes apply to chunks read from then on).

    @ivar latency: seconds every chunk waits.
    @ivar jitter: up to this many seconds more or less, drawn per chunk
        (order is kept whatever the draw).
    @ivar loss: probability that a chunk is lost.
    @ivar loss_mode: C{"drop"} (the bytes vanish) or C{"stall"} (the
        stream waits C{stall} seconds, as under TCP retransmission).
    @ivar stall: seconds a stalled chunk waits.
    @ivar bandwidth: bytes per second, or None for no limit.
    @ivar reset: probability that a chunk resets its connection instead.
    @ivar blackhole: drop every chunk.
    """

    latency: float = attrs.field(default=0.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.0, validator=_non_negative)
    loss: float = attrs.field(default=0.0, validator=_probability)
    loss_mode: str = attrs.field(default="drop", validator=_loss_mode)
    stall: float = attrs.field(default=0.2, validator=_non_negative)
    bandwidth: float | None = attrs.field(default=None, validator=_bandwidth)
    reset: float = attrs.field(default=0.0, validator=_probability)
    blackhole: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))


_FIELDS = tuple(field.name for field in attrs.fields(LinkFaults))


class _TCPTransport(typing.Protocol):
    """
    What the proxy uses of a connected TCP transport: an C{ITCPTransport}
    that is also an C{IPushProducer}.
    """

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...  # noqa: N802

    def abortConnection(self) -> None: ...  # noqa: N802

    def pauseProducing(self) -> None: ...  # noqa: N802

    def resumeProducing(self) -> None: ...  # noqa: N802


def _tcp(transport: ITransport | None) -> _TCPTransport:
    """
    @return: C{transport}, typed as what it is once a TCP protocol is
        connected (Twisted types C{Protocol.transport} as an optional
        C{ITransport}).
    """
    return cast(_TCPTransport, transport)


class _Pipe:
    """
    One direction of one proxied connection: chunks read from C{source}
    are written to C{sink} after the faults say so, in order.
    """

    def __init__(self, proxy: ChaosProxy, pair: _Pair, faults: LinkFaults, name: str) -> None:
        self.proxy = proxy
        self.pair = pair
        self.faults = faults
        self.name = name
        self.source: Any = None
        self.sink: Any = None
        self._queue: deque[tuple[float, bytes]] = deque()
        self._queued_bytes = 0
        self._last = 0.0
        self._timer: IDelayedCall | None = None
        self._reading_paused = False
        self._source_done = False
        self.forwarded = 0
        self.dropped = 0

    def received(self, data: bytes) -> None:
        faults = self.faults
        rng = self.proxy.rng
        if faults.blackhole:
            self.dropped += len(data)
            return
        if faults.reset and rng.random() < faults.reset:
            self.pair.reset()
            return
        extra = 0.0
        if faults.loss and rng.random() < faults.loss:
            if faults.loss_mode == "drop":
                self.dropped += len(data)
                return
            extra = faults.stall
        now = self.proxy.reactor.seconds()
        delay = faults.latency + extra
        if faults.jitter:
            delay = max(0.0, delay + rng.uniform(-faults.jitter, faults.jitter))
        due = max(now + delay, self._last)
        if faults.bandwidth:
            due += len(data) / faults.bandwidth
        self._last = due
        self._queue.append((due, data))
        self._queued_bytes += len(data)
        if self._queued_bytes > self.proxy.max_buffer and not self._reading_paused:
            self._reading_paused = True
            self.source.pauseProducing()
        self._schedule()

    def source_closed(self) -> None:
        """
        The source is gone: close the sink once everything queued is out.
        """
        self._source_done = True
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None and self._timer.active():
            return
        if not self._queue:
            if self._source_done and self.sink is not None:
                self.sink.loseConnection()
            return
        wait = max(0.0, self._queue[0][0] - self.proxy.reactor.seconds())
        self._timer = self.proxy.reactor.callLater(wait, self._flush)

    def _flush(self) -> None:
        self._timer = None
        now = self.proxy.reactor.seconds()
        while self._queue and self._queue[0][0] <= now:
            _, data = self._queue.popleft()
            self._queued_bytes -= len(data)
            if self.sink is not None:
                self.sink.write(data)
                self.forwarded += len(data)
        if self._reading_paused and self._queued_bytes <= self.proxy.max_buffer // 2:
            self._reading_paused = False
            if not self._source_done:
                self.source.resumeProducing()
        self._schedule()

    def cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._queue.clear()
        self._queued_bytes = 0


class _Pair:
    """
    One proxied connection: the accepted client side and the dialled
    target side.
    """

    def __init__(self, proxy: ChaosProxy, client: _ClientSide) -> None:
        self.proxy = proxy
        self.client = client
        self.target: _TargetSide | None = None
        self.up = _Pipe(proxy, self, proxy.upstream, "upstream")
        self.down = _Pipe(proxy, self, proxy.downstream, "downstream")
        self.closed = False

    def reset(self) -> None:
        """
        Abort both sides now (what a TCP RST does).
        """
        if self.closed:
            return
        self.closed = True
        self.up.cancel()
        self.down.cancel()
        for side in (self.client, self.target):
            if side is not None and side.transport is not None:
                _tcp(side.transport).abortConnection()
        self.proxy._forget(self)

    def lost(self, side: str) -> None:
        """
        One side's connection closed: the other side is closed once what
        is queued towards it is written; when both are gone the pair is
        forgotten.
        """
        (self.up if side == "client" else self.down).source_closed()
        if self.client.gone and (self.target is None or self.target.gone):
            self.closed = True
            self.up.cancel()
            self.down.cancel()
            self.proxy._forget(self)


class _ClientSide(Protocol):
    def __init__(self, proxy: ChaosProxy) -> None:
        self.proxy = proxy
        self.pair: _Pair | None = None
        self.gone = False

    def connectionMade(self) -> None:  # noqa: N802
        _tcp(self.transport).pauseProducing()
        self.pair = _Pair(self.proxy, self)
        self.pair.up.source = self.transport
        self.pair.down.sink = self.transport
        self.proxy._pairs.append(self.pair)
        self.proxy._dial(self.pair)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        assert self.pair is not None
        self.pair.up.received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.gone = True
        if self.pair is not None:
            self.pair.lost("client")


class _TargetSide(Protocol):
    def __init__(self, pair: _Pair) -> None:
        self.pair = pair
        self.gone = False

    def connectionMade(self) -> None:  # noqa: N802
        pair = self.pair
        pair.target = self
        pair.up.sink = self.transport
        pair.down.source = self.transport
        if pair.closed or pair.client.gone:
            _tcp(self.transport).loseConnection()
            return
        _tcp(pair.client.transport).resumeProducing()
        pair.up._schedule()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.pair.down.received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.gone = True
        self.pair.lost("target")


class _TargetFactory(ClientFactory):
    def __init__(self, pair: _Pair) -> None:
        self.pair = pair

    def buildProtocol(self, addr: Any) -> _TargetSide:  # noqa: N802
        return _TargetSide(self.pair)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:  # noqa: N802
        log.info(
            "chaos proxy could not reach its target: {reason}", reason=reason.getErrorMessage()
        )
        client = self.pair.client
        if client.transport is not None:
            client.transport.loseConnection()


class ChaosProxy:
    """
    A TCP proxy from a local port to one target, with faults in each
    direction that can change at any time.

    @ivar upstream: the faults of data from clients to the target.
    @ivar downstream: the faults of data from the target to clients.
    @ivar rng: the proxy's random generator.
    @ivar max_buffer: bytes a pipe holds before it stops reading.
    """

    def __init__(
        self,
        reactor: Any,
        target_host: str,
        target_port: int,
        seed: int = 0,
        max_buffer: int = 1024 * 1024,
        connect_timeout: float = 5.0,
    ) -> None:
        """
        @param reactor: an C{IReactorTCP} and C{IReactorTime} provider (the
            real reactor).
        @param target_host: the address connections are relayed to.
        @param target_port: its port.
        @param seed: the seed of the proxy's random generator.
        @param max_buffer: see L{max_buffer}.
        @param connect_timeout: seconds to wait for the target to accept.
        @raise ValueError: for a bad port or buffer size.
        """
        if not isinstance(target_port, int) or not 0 < target_port < 65536:
            raise ValueError(f"target_port must be a port number, got {target_port!r}")
        if not isinstance(max_buffer, int) or max_buffer < 1:
            raise ValueError(f"max_buffer must be a positive number of bytes, got {max_buffer!r}")
        self.reactor = reactor
        self.target_host = target_host
        self.target_port = target_port
        self.rng = random.Random(seed)
        self.max_buffer = max_buffer
        self.connect_timeout = connect_timeout
        self.upstream = LinkFaults()
        self.downstream = LinkFaults()
        self._pairs: list[_Pair] = []
        self._port: IListeningPort | None = None

    # -- control ----------------------------------------------------------------

    def set(self, **faults: Any) -> None:
        """
        Set fault parameters (L{LinkFaults} names) on both directions; all
        or none are applied.

        @raise TypeError: for an unknown name.
        @raise ValueError: for a bad value.
        """
        for name in faults:
            if name not in _FIELDS:
                raise TypeError(f"unknown proxy fault {name!r}; known: {', '.join(_FIELDS)}")
        attrs.evolve(self.upstream, **faults)  # validates everything first
        for direction in (self.upstream, self.downstream):
            for name, value in faults.items():
                setattr(direction, name, value)

    def clear(self) -> None:
        """
        Remove every fault, both directions.
        """
        self.set(**attrs.asdict(LinkFaults()))

    def reset(self) -> int:
        """
        Reset (abort) every proxied connection now.

        @return: how many were reset.
        """
        pairs = list(self._pairs)
        for pair in pairs:
            pair.reset()
        return len(pairs)

    @property
    def connections(self) -> int:
        """
        The number of proxied connections open now.
        """
        return len(self._pairs)

    # -- lifecycle ----------------------------------------------------------------

    def listen(self, port: int = 0, interface: str = "127.0.0.1") -> defer.Deferred[IListeningPort]:
        """
        Start accepting connections.

        @return: a Deferred firing with the listening port (see L{port}).
        """
        factory = Factory.forProtocol(lambda: _ClientSide(self))
        try:
            self._port = self.reactor.listenTCP(port, factory, interface=interface)
        except Exception:
            return defer.fail()
        return defer.succeed(self._port)

    @property
    def port(self) -> int:
        """
        The port the proxy listens on.

        @raise RuntimeError: before L{listen}.
        """
        if self._port is None:
            raise RuntimeError("the chaos proxy is not listening; call listen() first")
        return int(cast("IPv4Address | IPv6Address", self._port.getHost()).port)

    def stop(self) -> defer.Deferred[None]:
        """
        Stop listening and reset every connection.
        """
        self.reset()
        port, self._port = self._port, None
        if port is None:
            return defer.succeed(None)
        # stopListening returns a Deferred or None, which maybeDeferred's
        # overloads do not model; either way the result fires with None.
        stop_listening = cast("Callable[[], defer.Deferred[None]]", port.stopListening)
        return defer.maybeDeferred(stop_listening)

    # -- internals ------------------------------------------------------------------

    def _dial(self, pair: _Pair) -> None:
        self.reactor.connectTCP(
            self.target_host, self.target_port, _TargetFactory(pair), timeout=self.connect_timeout
        )

    def _forget(self, pair: _Pair) -> None:
        if pair in self._pairs:
            self._pairs.remove(pair)
