"""
A deterministic simulated network for running real node code in one process.

A L{SimNetwork} owns one L{twisted.internet.task.Clock}, one
C{random.Random(seed)} (the only source of randomness), the hosts and the
links between them. Each L{SimHost} is a reactor (L{IReactorTime} and
L{IReactorTCP}) that node code receives instead of the global reactor, so
Twisted protocols, factories, endpoints and C{LoopingCall}s run unchanged.

The model
=========

  - B{Chunks.} Every C{transport.write()} (or C{writeSequence()}) is one
    chunk. A chunk reaches the peer's C{dataReceived} after the link's delay.
    Loss, duplication and reordering act on whole chunks, so code that writes
    one whole frame per C{write()} keeps its framing intact under faults.
  - B{Links} are directional (C{a -> b} is not C{b -> a}); see
    L{LinkParams}. Without C{reorder}, deliveries on one connection keep FIFO
    order. A cut link drops every chunk sent on it and every chunk that
    arrives while it is cut; connection set-up over it times out.
  - B{Connection events} (set-up, close, abort, a crashed peer) are never
    lost or cut: a closed connection is always seen as closed by its peer,
    after the link delay and after every chunk sent before the close.
  - B{Crash} is a process crash: the host's protocols get no more callbacks,
    its timers are cancelled, its ports close and its peers see
    C{ConnectionLost}. Connecting to a crashed host is refused, as its
    operating system would answer. Use L{SimNetwork.isolate} for a host that
    vanishes from the network instead.
  - B{Pause} is a C{SIGSTOP}: everything meant for the host (timers, chunks,
    connection events) waits, in order, and runs late on
    L{SimHost.resume}.
  - B{Back-pressure.} Bytes written on one direction of a connection count
    as in flight until the peer's protocol has received them; a streaming
    producer is paused above C{high_water} and resumed below C{low_water}.
    A writer that ignores back-pressure and passes C{max_in_flight} bytes
    has its connection aborted, so memory stays bounded.

Every delivered or dropped chunk and every connection, host and link event
is one canonical line folded into a running SHA-256 (L{SimNetwork.trace_hash})
and kept among the last few events (L{SimNetwork.recent_events}). The same
seed and the same calls give the same hash, whatever C{PYTHONHASHSEED} is.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import attrs
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import (
    IConnector,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocolFactory,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "LinkParams",
    "SimClock",
    "SimConnector",
    "SimDelayedCall",
    "SimHost",
    "SimListeningPort",
    "SimNetwork",
    "SimTransport",
]

log = Logger()

#: A link delay: fixed seconds, or a callable drawing seconds from the
#: network's random generator.
Delay = float | Callable[[random.Random], float]

#: First port handed out for port 0 and for the client side of connections.
EPHEMERAL_FIRST = 49152
EPHEMERAL_LAST = 65535

_ANY_INTERFACE = ("", "0.0.0.0", "::")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _step_reaching(now: float, when: float) -> float:
    """
    @return: the smallest step C{s >= 0} found such that C{now + s >= when}
        in floating point (C{when - now} itself, unless rounding makes it
        fall short by an ulp).
    """
    step = max(0.0, when - now)
    while now + step < when:
        step += math.ulp(when)
    return step


def _check_delay(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if callable(value):
        return
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not (math.isfinite(value) and value >= 0)
    ):
        raise ValueError(
            f"link {attribute.name} must be a finite number of seconds >= 0 or a "
            f"callable(rng) returning one, got {value!r}"
        )


def _show_delay(delay: Delay) -> str:
    """
    @return: a canonical description of a delay (a callable's qualified
        name, or the number).
    """
    if callable(delay):
        return str(getattr(delay, "__qualname__", type(delay).__qualname__))
    return repr(float(delay))


def _check_probability(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not _is_number(value) or not 0.0 <= value <= 1.0:  # type: ignore[operator]
        raise ValueError(
            f"link {attribute.name} must be a probability between 0 and 1, got {value!r}"
        )


def _check_flag(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"link {attribute.name} must be True or False, got {value!r}")


@attrs.define
class LinkParams:
    """
    The behaviour of one direction of a link between two hosts. Mutable:
    changes apply to chunks sent (and, for C{cut}, arriving) from then on.

    @ivar delay: seconds from C{write()} to delivery: a fixed number, or a
        callable taking the network's C{random.Random} and returning one.
    @ivar loss: probability that a chunk is dropped.
    @ivar duplicate: probability that a chunk is delivered twice.
    @ivar reorder: when False, deliveries on one connection keep the order
        of the writes; when True, each chunk arrives after its own delay.
    @ivar cut: when True, every chunk is dropped and new connections over
        this link time out.
    """

    delay: Delay = attrs.field(default=0.001, validator=_check_delay)
    loss: float = attrs.field(default=0.0, validator=_check_probability)
    duplicate: float = attrs.field(default=0.0, validator=_check_probability)
    reorder: bool = attrs.field(default=False, validator=_check_flag)
    cut: bool = attrs.field(default=False, validator=_check_flag)

    def describe(self) -> str:
        """
        @return: a canonical one-line description (no memory addresses, so it
            is the same in every run).
        """
        shown = _show_delay(self.delay)
        return (
            f"delay={shown} loss={float(self.loss)!r} duplicate={float(self.duplicate)!r} "
            f"reorder={self.reorder} cut={self.cut}"
        )


_LINK_FIELDS = tuple(field.name for field in attrs.fields(LinkParams))


@attrs.define
class _Clog:
    """
    A clogged direction: until when, and what arrived meanwhile.
    """

    until: float
    held: list[Callable[[], object]] = attrs.Factory(list)
    call: DelayedCall | None = None


class SimClock(Clock):
    """
    A L{Clock} that keeps its calls in a heap: scheduling and running a call
    cost O(log n) instead of Twisted's sort of every pending call, which is
    what makes clusters of fifty nodes (thousands of pending calls) usable.

    Calls run by due time, then in the order they were scheduled (a call
    moved by C{reset} or C{delay} keeps its place among calls due at the
    same time). That is L{Clock}'s order too, except that L{Clock} may order
    a moved call differently among calls that end up due at the very same
    time.
    """

    def __init__(self) -> None:
        self.rightNow = 0.0
        self._heap: list[tuple[float, int, int, DelayedCall]] = []
        self._order: dict[int, int] = {}
        self._scheduled = 0
        self._pushes = 0
        self._active = 0

    @property
    def calls(self) -> list[DelayedCall]:  # type: ignore[override]
        """
        The pending calls, in the order they will run (as on L{Clock}).
        """
        return cast(list[DelayedCall], self.getDelayedCalls())

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> DelayedCall:
        """
        See L{twisted.internet.interfaces.IReactorTime.callLater}.
        """
        call = DelayedCall(
            self.rightNow + delay, callable, args, kw, self._cancelled, self._push, self.seconds
        )
        self._scheduled += 1
        self._order[id(call)] = self._scheduled
        self._active += 1
        self._push(call)
        return call

    def getDelayedCalls(self) -> list[DelayedCall]:  # type: ignore[override]
        """
        @return: the pending calls, in the order they will run.
        """
        unique = {id(entry[3]): entry[3] for entry in self._heap if entry[3].active()}
        return sorted(unique.values(), key=lambda c: (c.getTime(), self._order[id(c)]))

    def next_call_time(self) -> float | None:
        """
        @return: when the next pending call is due, or None when there is
            none.
        """
        top = self._top()
        return None if top is None else top.getTime()

    def advance(self, amount: float) -> None:
        """
        Move time forward by C{amount} and run every call due by then, in
        order, including calls they schedule that are due by then.
        """
        self.rightNow += amount
        while True:
            call = self._top()
            if call is None or call.getTime() > self.rightNow:
                return
            heapq.heappop(self._heap)
            self._order.pop(id(call), None)
            self._active -= 1
            call.called = 1
            call.func(*call.args, **call.kw)

    def _push(self, call: DelayedCall) -> None:
        self._pushes += 1
        heapq.heappush(self._heap, (call.time, self._order[id(call)], self._pushes, call))

    def _cancelled(self, call: DelayedCall) -> None:
        self._order.pop(id(call), None)
        self._active -= 1
        if len(self._heap) > 64 and len(self._heap) > 4 * self._active:
            live = [entry for entry in self._heap if entry[3].active() and entry[3] is not call]
            heapq.heapify(live)
            self._heap = live

    def _top(self) -> DelayedCall | None:
        """
        Drop the heap's stale entries (cancelled, run, or moved by a reset)
        until its first entry is the next call due; return that call.
        """
        heap = self._heap
        while heap:
            when, _, _, call = heap[0]
            if not call.active() or call.time != when:
                heapq.heappop(heap)
            elif call.delayed_time > 0:
                heapq.heappop(heap)
                call.activate_delay()
                self._push(call)
            else:
                return call
        return None


class SimNetwork:
    """
    The simulated network: hosts, directional links, the shared clock and
    the one random generator.

    @ivar clock: the shared L{Clock}.
    @ivar seed: the seed given at creation.
    @ivar rng: the network's C{random.Random(seed)}; the only randomness used.
    @ivar link_defaults: the parameters new links start with and
        L{heal} restores.
    @ivar high_water: in-flight bytes above which a streaming producer is
        paused.
    @ivar low_water: in-flight bytes at or below which it is resumed.
    @ivar max_in_flight: in-flight bytes on one direction of a connection
        beyond which the connection is aborted.
    """

    def __init__(
        self,
        clock: Clock,
        seed: int,
        *,
        link_defaults: LinkParams | None = None,
        high_water: int = 65536,
        low_water: int = 16384,
        max_in_flight: int = 64 * 1024 * 1024,
        trace_keep: int = 1000,
    ) -> None:
        """
        @param clock: the clock every host shares.
        @param seed: the seed of the network's random generator.
        @param link_defaults: parameters of links nobody has changed.
        @param high_water: see L{high_water}.
        @param low_water: see L{low_water}; at most C{high_water}.
        @param max_in_flight: see L{max_in_flight}; above C{high_water}.
        @param trace_keep: how many recent trace lines to keep in memory.
        """
        if not 0 <= low_water <= high_water < max_in_flight:
            raise ValueError(
                "need 0 <= low_water <= high_water < max_in_flight, got "
                f"low_water={low_water}, high_water={high_water}, max_in_flight={max_in_flight}"
            )
        if trace_keep < 0:
            raise ValueError(f"trace_keep must be >= 0, got {trace_keep}")
        self.clock = clock
        self.seed = seed
        self.rng = random.Random(seed)
        self.link_defaults = link_defaults if link_defaults is not None else LinkParams()
        self.high_water = high_water
        self.low_water = low_water
        self.max_in_flight = max_in_flight
        self._hosts: dict[str, SimHost] = {}
        self._links: dict[tuple[str, str], LinkParams] = {}
        self._trace = hashlib.sha256()
        self._recent: deque[str] = deque(maxlen=trace_keep)
        self._event_count = 0
        self._next_connection_id = 1
        self._random_streams: dict[str, int] = {}
        self._clogs: dict[tuple[str, str], _Clog] = {}

    # Hosts

    def host(self, address: str) -> SimHost:
        """
        The host at C{address}, created on first use.

        @param address: the host's name or IP address, as peers dial it.
        """
        existing = self._hosts.get(address)
        if existing is not None:
            return existing
        if not isinstance(address, str) or not address or any(c.isspace() for c in address):
            raise ValueError(
                f"a sim host address must be a non-empty string without spaces, got {address!r}"
            )
        created = SimHost(self, address)
        self._hosts[address] = created
        self._record("host", address, "-", note="created")
        return created

    def hosts(self) -> list[SimHost]:
        """
        @return: every host, in creation order.
        """
        return list(self._hosts.values())

    # Links

    def link(self, a: str, b: str) -> LinkParams:
        """
        The mutable parameters of the direction C{a -> b}.

        @param a: the sending host's address.
        @param b: the receiving host's address.
        """
        key = (a, b)
        params = self._links.get(key)
        if params is None:
            params = attrs.evolve(self.link_defaults)
            self._links[key] = params
        return params

    def set_link(self, a: str, b: str, **params: Any) -> LinkParams:
        """
        Change some parameters of the direction C{a -> b}; all or none are
        applied.

        @param params: L{LinkParams} attribute names and values.
        @raise TypeError: for an unknown parameter name.
        @raise ValueError: for an invalid value.
        @return: the link's parameters.
        """
        for name in params:
            if name not in _LINK_FIELDS:
                raise TypeError(
                    f"set_link: unknown link parameter {name!r}; known: {', '.join(_LINK_FIELDS)}"
                )
        link = self.link(a, b)
        checked = attrs.evolve(link, **params)
        for name in _LINK_FIELDS:
            setattr(link, name, getattr(checked, name))
        self._record("link", a, b, note=link.describe())
        return link

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        """
        Cut every link, both directions, between hosts of different groups.
        Links inside a group and links of hosts named in no group are left as
        they are (a host in no group can bridge the groups). Cuts add to
        earlier ones; call L{heal} first to start afresh.

        @param groups: lists of host addresses.
        @raise ValueError: when an address is in more than one group.
        """
        seen: dict[str, int] = {}
        for index, group in enumerate(groups):
            for address in group:
                if address in seen:
                    raise ValueError(
                        f"partition: host {address!r} is in group {seen[address]} and group {index}"
                    )
                seen[address] = index
        for index, group in enumerate(groups):
            for other_index, other in enumerate(groups):
                if other_index == index:
                    continue
                for a in group:
                    for b in other:
                        self.link(a, b).cut = True
        shown = " | ".join(",".join(group) for group in groups)
        self._record("partition", "-", "-", note=shown)
        log.info("sim network partitioned: {groups}", groups=shown)

    def cut_one_way(self, a: str, b: str) -> None:
        """
        Cut the direction C{a -> b} only.
        """
        self.link(a, b).cut = True
        self._record("cut", a, b)

    def isolate(self, a: str) -> None:
        """
        Cut both directions between C{a} and every other address known now
        (every host and every address a link was made for). Hosts created
        later are not cut off.
        """
        for other in self._known_addresses():
            if other != a:
                self.link(a, other).cut = True
                self.link(other, a).cut = True
        self._record("isolate", a, "-")
        log.info("sim host {host} isolated", host=a)

    def heal(self) -> None:
        """
        Put every link back to L{link_defaults} and release every clog.
        """
        for link in self._links.values():
            for name in _LINK_FIELDS:
                setattr(link, name, getattr(self.link_defaults, name))
        self._record("heal", "-", "-")
        log.info("sim network healed")
        for a, b in sorted(self._clogs):
            self.unclog(a, b)

    def clog(self, a: str, b: str, seconds: float | None = None) -> None:
        """
        Clog the direction C{a -> b}: what arrives on it (chunks, connection
        events, connection set-up) is held, in order, and delivered when the
        clog ends, as TCP delivers late what it retransmits after an outage.
        Connections stay up; nothing is lost. Clogging a clogged link again
        only ever extends the clog.

        @param seconds: how long the clog lasts; None until L{unclog} (or
            L{heal}).
        @raise ValueError: when C{seconds} is negative.
        """
        if seconds is not None and (not _is_number(seconds) or seconds < 0):
            raise ValueError(f"clog: seconds must be a number >= 0 or None, got {seconds!r}")
        key = (a, b)
        until = math.inf if seconds is None else self.clock.seconds() + seconds
        clog = self._clogs.get(key)
        if clog is None:
            clog = self._clogs[key] = _Clog(until)
        elif until <= clog.until:
            return
        else:
            clog.until = until
            if clog.call is not None and clog.call.active():
                clog.call.cancel()
            clog.call = None
        if until != math.inf:
            clog.call = self._schedule_at(until, self.unclog, a, b)
        self._record("clog", a, b, note=f"until={until!r}")

    def unclog(self, a: str, b: str) -> None:
        """
        End the clog of C{a -> b} (if any): what it held arrives now, in
        order.
        """
        clog = self._clogs.pop((a, b), None)
        if clog is None:
            return
        if clog.call is not None and clog.call.active():
            clog.call.cancel()
        self._record("unclog", a, b, note=f"held={len(clog.held)}")
        for release in clog.held:
            release()

    def clogged(self, a: str, b: str) -> bool:
        """
        @return: whether the direction C{a -> b} is clogged now.
        """
        return (a, b) in self._clogs

    def _hold(self, a: str, b: str, release: Callable[[], object]) -> bool:
        """
        If C{a -> b} is clogged, keep C{release} to call when it ends.

        @return: whether it was held.
        """
        clog = self._clogs.get((a, b))
        if clog is None:
            return False
        clog.held.append(release)
        return True

    def _known_addresses(self) -> list[str]:
        known: dict[str, None] = dict.fromkeys(self._hosts)
        for a, b in self._links:
            known.setdefault(a)
            known.setdefault(b)
        return list(known)

    # Running the clock

    def run(self, seconds: float) -> None:
        """
        Advance the clock by C{seconds}, one scheduled call at a time, so each
        call sees the time it was scheduled for and calls scheduled meanwhile
        run in order.
        """
        if not _is_number(seconds) or seconds < 0:
            raise ValueError(f"run: seconds must be a number >= 0, got {seconds!r}")
        target = self.clock.seconds() + seconds
        while True:
            when = self._next_call_time()
            if when is None or when > target:
                break
            self._advance_to(when)
        self._advance_to(target)

    def run_until(self, predicate: Callable[[], object], timeout: float) -> bool:
        """
        Advance the clock call by call until C{predicate()} is true or
        C{timeout} seconds have passed.

        @return: whether the predicate became true; the clock stops at the
            first call after which it is.
        """
        if not _is_number(timeout) or timeout < 0:
            raise ValueError(f"run_until: timeout must be a number >= 0, got {timeout!r}")
        deadline = self.clock.seconds() + timeout
        if predicate():
            return True
        while True:
            when = self._next_call_time()
            if when is None or when > deadline:
                break
            self._advance_to(when)
            if predicate():
                return True
        self._advance_to(deadline)
        return bool(predicate())

    def _next_call_time(self) -> float | None:
        if isinstance(self.clock, SimClock):
            return self.clock.next_call_time()
        calls = cast(Sequence[DelayedCall], self.clock.getDelayedCalls())
        if not calls:
            return None
        return min(call.getTime() for call in calls)

    def _advance_to(self, when: float) -> None:
        self.clock.advance(_step_reaching(self.clock.seconds(), when))

    def _schedule_at(self, when: float, func: Callable[..., object], *args: object) -> DelayedCall:
        """
        Schedule on the clock at C{when} or, float rounding aside, the
        smallest time not before it.
        """
        step = _step_reaching(self.clock.seconds(), when)
        return cast(DelayedCall, self.clock.callLater(step, func, *args))

    # Trace

    def trace_hash(self) -> str:
        """
        @return: the hex SHA-256 of every trace line so far.
        """
        return self._trace.hexdigest()

    def recent_events(self) -> list[str]:
        """
        @return: the last trace lines kept (oldest first).
        """
        return list(self._recent)

    @property
    def event_count(self) -> int:
        """
        The number of trace lines so far.
        """
        return self._event_count

    def _record(
        self, kind: str, src: str, dst: str, data: bytes | None = None, note: str = ""
    ) -> None:
        size = len(data) if data is not None else 0
        crc = zlib.crc32(data) if data is not None else 0
        line = f"{self.clock.seconds()!r} {kind} {src} {dst} {size} {crc:08x}"
        if note:
            line = f"{line} {note}"
        self._trace.update(line.encode("utf-8") + b"\n")
        self._recent.append(line)
        self._event_count += 1

    # Randomness

    def _sample_delay(self, link: LinkParams, a: str, b: str) -> float:
        delay = link.delay
        value = delay(self.rng) if callable(delay) else delay
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise ValueError(
                f"the delay of link {a} -> {b} gave {value!r}; it must give a finite "
                "number of seconds >= 0"
            )
        return float(value)

    def _seeded_random(self, address: str) -> random.Random:
        count = self._random_streams.get(address, 0)
        self._random_streams[address] = count + 1
        return random.Random(f"clustron.testkit.simnet:{self.seed!r}:{address}:{count}")

    # Connections

    def _start_connect(self, connector: SimConnector, attempt: int) -> None:
        client = connector.host
        src, dst = client.address, connector.destination_host
        local_port = connector.local_port()
        self._record("syn", f"{src}:{local_port}", f"{dst}:{connector.destination_port}")
        link = self.link(src, dst)
        if link.cut:
            self._record(
                "drop", f"{src}:{local_port}", f"{dst}:{connector.destination_port}", note="syn cut"
            )
            return
        delay = self._sample_delay(link, src, dst)
        self.clock.callLater(
            delay, self._syn_arrives, connector, attempt, client.incarnation, local_port
        )

    def _syn_arrives(
        self, connector: SimConnector, attempt: int, incarnation: int, local_port: int
    ) -> None:
        client = connector.host
        src, dst, port = client.address, connector.destination_host, connector.destination_port
        client_name, server_name = f"{src}:{local_port}", f"{dst}:{port}"
        if (
            client.incarnation != incarnation
            or client.state == "crashed"
            or not connector.attempting(attempt)
        ):
            self._record("drop", client_name, server_name, note="syn stale")
            return
        if self.link(src, dst).cut or self.link(dst, src).cut:
            self._record("drop", client_name, server_name, note="syn cut")
            return
        arrive = lambda: self._syn_arrives(connector, attempt, incarnation, local_port)  # noqa: E731
        if self._hold(src, dst, arrive):
            return
        server = self._hosts.get(dst)
        listening = server.listening_port(port) if server is not None else None
        if server is None or listening is None:
            self._record("refused", client_name, server_name)
            client._dispatch(
                incarnation,
                lambda: connector._failed(attempt, error.ConnectionRefusedError()),
            )
            return
        cid = self._next_connection_id
        self._next_connection_id += 1
        client_side = SimTransport(
            self,
            cid,
            client,
            IPv4Address("TCP", src, local_port),
            IPv4Address("TCP", dst, port),
            connector,
        )
        server_side = SimTransport(
            self,
            cid,
            server,
            IPv4Address("TCP", dst, port),
            IPv4Address("TCP", src, local_port),
            None,
        )
        client_side.peer = server_side
        server_side.peer = client_side
        client._adopt(client_side)
        server._adopt(server_side)
        self._record("connect", client_name, server_name, note=f"c{cid}")
        server._dispatch(server.incarnation, lambda: server_side._accept(listening))
        client._dispatch(incarnation, lambda: connector._connected(attempt, client_side))

    def _send_chunk(self, sender: SimTransport, data: bytes) -> None:
        receiver = sender.peer
        src, dst = sender.host.address, receiver.host.address
        names = (sender.name, receiver.name)
        link = self.link(src, dst)
        if link.cut:
            self._record("drop", *names, data=data, note="cut")
            return
        if link.loss and self.rng.random() < link.loss:
            self._record("drop", *names, data=data, note="loss")
            return
        copies = 2 if link.duplicate and self.rng.random() < link.duplicate else 1
        if sender.in_flight + copies * len(data) > self.max_in_flight:
            self._record("drop", *names, data=data, note="overflow")
            log.error(
                "sim connection {src} -> {dst}: more than {limit} bytes in flight; the writer "
                "ignores back-pressure, aborting the connection",
                src=sender.name,
                dst=receiver.name,
                limit=self.max_in_flight,
            )
            sender._close(
                Failure(
                    error.ConnectionLost(f"sim: more than {self.max_in_flight} bytes in flight")
                ),
                Failure(error.ConnectionLost()),
            )
            return
        now = self.clock.seconds()
        for _ in range(copies):
            when = now + self._sample_delay(link, src, dst) + receiver.host._processing_lag()
            if not link.reorder:
                when = max(when, sender._last_arrival)
            call = self._schedule_at(when, self._chunk_arrives, sender, data)
            sender._last_arrival = max(sender._last_arrival, call.getTime())
            sender.in_flight += len(data)

    def _chunk_arrives(self, sender: SimTransport, data: bytes) -> None:
        receiver = sender.peer
        src, dst = sender.host.address, receiver.host.address
        if self.link(src, dst).cut:
            self._record("drop", sender.name, receiver.name, data=data, note="cut")
            sender._consumed(len(data))
            return
        if self._hold(src, dst, lambda: self._chunk_arrives(sender, data)):
            return
        if not receiver.host._dispatch(receiver.incarnation, lambda: receiver._on_chunk(data)):
            self._record("drop", sender.name, receiver.name, data=data, note="crashed")
            sender._consumed(len(data))

    def _send_event(self, sender: SimTransport, kind: str, reason: Failure | None) -> None:
        """
        Send a connection event (C{"close"} or C{"eof"}) to the peer: never
        lost, and after every chunk already sent.
        """
        receiver = sender.peer
        src, dst = sender.host.address, receiver.host.address
        when = self.clock.seconds() + self._sample_delay(self.link(src, dst), src, dst)
        when = max(when + receiver.host._processing_lag(), sender._last_arrival)
        call = self._schedule_at(when, self._event_arrives, sender, kind, reason)
        sender._last_arrival = max(sender._last_arrival, call.getTime())

    def _event_arrives(self, sender: SimTransport, kind: str, reason: Failure | None) -> None:
        receiver = sender.peer
        if self._hold(
            sender.host.address,
            receiver.host.address,
            lambda: self._event_arrives(sender, kind, reason),
        ):
            return
        receiver.host._dispatch(receiver.incarnation, lambda: receiver._on_event(kind, reason))


@implementer(IDelayedCall)
class SimDelayedCall:
    """
    A call scheduled on a L{SimHost}: it runs on the shared clock unless the
    host is paused (then it runs on resume) or crashed (then never).
    """

    def __init__(
        self,
        host: SimHost,
        key: int,
        delay: float,
        func: Callable[..., object],
        args: tuple[object, ...],
        kw: dict[str, object],
    ) -> None:
        self.func = func
        self.args = args
        self.kw = kw
        self._host = host
        self._key = key
        self._incarnation = host.incarnation
        self._state = "pending"
        self._generation = 0
        self._clock_call: DelayedCall | None = None
        self._time = 0.0
        self._schedule(delay)

    def _schedule(self, delay: float) -> None:
        self._generation += 1
        self._state = "pending"
        call = cast(
            DelayedCall, self._host.network.clock.callLater(delay, self._fire, self._generation)
        )
        self._clock_call = call
        self._time = call.getTime()

    def _fire(self, generation: int) -> None:
        self._clock_call = None
        self._state = "due"
        self._host._dispatch(self._incarnation, lambda: self._run(generation))

    def _run(self, generation: int) -> None:
        if self._state != "due" or generation != self._generation:
            return
        self._state = "called"
        self._host._calls.pop(self._key, None)
        self.func(*self.args, **self.kw)

    def _kill(self) -> None:
        if self._clock_call is not None and self._clock_call.active():
            self._clock_call.cancel()
        self._clock_call = None
        self._state = "cancelled"

    def _check_active(self) -> None:
        if self._state == "cancelled":
            raise error.AlreadyCancelled()
        if self._state == "called":
            raise error.AlreadyCalled()

    def getTime(self) -> float:
        """
        @return: the time this call is (or was) due, on its host's clock
            (the shared clock plus the host's skew).
        """
        return self._time + self._host.skew

    def cancel(self) -> None:
        """
        Never run this call.

        @raise twisted.internet.error.AlreadyCancelled: if cancelled before.
        @raise twisted.internet.error.AlreadyCalled: if it has run.
        """
        self._check_active()
        self._kill()
        self._host._calls.pop(self._key, None)

    def reset(self, secondsFromNow: float) -> None:
        """
        Run this call C{secondsFromNow} seconds from now instead.
        """
        self._check_active()
        if self._clock_call is not None and self._clock_call.active():
            self._clock_call.cancel()
        self._schedule(max(0.0, secondsFromNow))

    def delay(self, secondsLater: float) -> None:
        """
        Run this call C{secondsLater} seconds later than planned.
        """
        self._check_active()
        now = self._host.network.clock.seconds()
        self.reset(max(0.0, self._time + secondsLater - now))

    def active(self) -> bool:
        """
        @return: whether this call may still run.
        """
        return self._state in ("pending", "due")

    @property
    def called(self) -> bool:
        """
        Whether this call has run (as on Twisted's C{DelayedCall}).
        """
        return self._state == "called"

    @property
    def cancelled(self) -> bool:
        """
        Whether this call was cancelled (as on Twisted's C{DelayedCall}).
        """
        return self._state == "cancelled"

    def __repr__(self) -> str:
        return (
            f"<SimDelayedCall {self._host.address} at {self._time!r} {self._state}: {self.func!r}>"
        )


@implementer(IListeningPort)
class SimListeningPort:
    """
    A listening port on a L{SimHost}.

    @ivar port: the port number.
    @ivar factory: the server factory.
    """

    def __init__(self, host: SimHost, port: int, factory: Any, interface: str) -> None:
        self.host = host
        self.port = port
        self.factory = factory
        self.interface = interface
        self.listening = False
        self._incarnation = host.incarnation

    def startListening(self) -> None:
        """
        Accept connections (again).

        @raise twisted.internet.error.CannotListenError: when the host is
            crashed or the port is taken.
        """
        if self.listening:
            return
        host = self.host
        if host.state == "crashed" or host.incarnation != self._incarnation:
            raise error.CannotListenError(
                self.interface, self.port, f"sim host {host.address} is crashed"
            )
        if host.listening_port(self.port) is not None:
            raise error.CannotListenError(
                self.interface, self.port, f"address {host.address}:{self.port} already in use"
            )
        host._ports[self.port] = self
        self.listening = True
        host.network._record("listen", f"{host.address}:{self.port}", "-")
        self.factory.doStart()

    def stopListening(self) -> defer.Deferred[None]:
        """
        Stop accepting connections; connections already made stay.

        @return: a Deferred that has fired.
        """
        if self.listening:
            self.listening = False
            self.host._ports.pop(self.port, None)
            self.host.network._record("unlisten", f"{self.host.address}:{self.port}", "-")
            self.factory.doStop()
        return defer.succeed(None)

    def _vanish(self) -> None:
        self.listening = False

    def getHost(self) -> IPv4Address:
        """
        @return: the address this port listens on.
        """
        return IPv4Address("TCP", self.host.address, self.port)

    def __repr__(self) -> str:
        return f"<SimListeningPort {self.host.address}:{self.port} listening={self.listening}>"


@implementer(IConnector)
class SimConnector:
    """
    One client connection being made from a L{SimHost}; can connect again
    after failing or losing its connection (as C{ReconnectingClientFactory}
    does).

    @ivar state: C{"disconnected"}, C{"connecting"} or C{"connected"}.
    @ivar transport: the L{SimTransport} while connected, else None.
    """

    def __init__(
        self,
        host: SimHost,
        destination_host: str,
        destination_port: int,
        factory: Any,
        timeout: float | None,
        bind_address: tuple[str, int] | None,
    ) -> None:
        self.host = host
        self.destination_host = destination_host
        self.destination_port = destination_port
        self.factory = factory
        self.timeout = timeout
        self.bind_address = bind_address
        self.state = "disconnected"
        self.transport: SimTransport | None = None
        self._attempt = 0
        self._timeout_call: SimDelayedCall | None = None
        self._factory_started = False
        self._local_port: int | None = None

    def local_port(self) -> int:
        """
        @return: the client-side port of the current attempt.
        """
        if self._local_port is None:
            if self.bind_address is not None and self.bind_address[1]:
                self._local_port = int(self.bind_address[1])
            else:
                self._local_port = self.host._allocate_port()
        return self._local_port

    def attempting(self, attempt: int) -> bool:
        """
        @return: whether C{attempt} is the attempt in progress.
        """
        return self.state == "connecting" and attempt == self._attempt

    def connect(self) -> None:
        """
        Start connecting.

        @raise RuntimeError: unless disconnected.
        """
        if self.state != "disconnected":
            raise RuntimeError("can't connect in this state")
        self.state = "connecting"
        self._attempt += 1
        self._local_port = None
        attempt = self._attempt
        if not self._factory_started:
            self.factory.doStart()
            self._factory_started = True
        if self.timeout is not None:
            self._timeout_call = self.host.callLater(
                self.timeout, self._failed, attempt, error.TimeoutError()
            )
        self.host.network._start_connect(self, attempt)
        self.factory.startedConnecting(self)

    def stopConnecting(self) -> None:
        """
        Give up connecting; the factory sees C{clientConnectionFailed} with
        L{twisted.internet.error.UserError}.

        @raise twisted.internet.error.NotConnectingError: unless connecting.
        """
        if self.state != "connecting":
            raise error.NotConnectingError("we're not trying to connect")
        self._failed(self._attempt, error.UserError())

    def disconnect(self) -> None:
        """
        Stop connecting, or close the connection.
        """
        if self.state == "connecting":
            self.stopConnecting()
        elif self.state == "connected" and self.transport is not None:
            self.transport.loseConnection()

    def getDestination(self) -> IPv4Address:
        """
        @return: the address being connected to.
        """
        return IPv4Address("TCP", self.destination_host, self.destination_port)

    def _cancel_timeout(self) -> None:
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._timeout_call = None

    def _failed(self, attempt: int, reason: Exception) -> None:
        if not self.attempting(attempt):
            return
        self._attempt += 1
        self._cancel_timeout()
        self.state = "disconnected"
        self.transport = None
        network = self.host.network
        network._record(
            "connect-failed",
            f"{self.host.address}:{self._local_port}",
            f"{self.destination_host}:{self.destination_port}",
            note=type(reason).__name__,
        )
        self.factory.clientConnectionFailed(self, Failure(reason))
        if self.state == "disconnected":
            self.factory.doStop()
            self._factory_started = False

    def _connected(self, attempt: int, transport: SimTransport) -> None:
        if not self.attempting(attempt):
            transport._lost = True
            transport._close(None, Failure(error.ConnectionLost()))
            return
        self._cancel_timeout()
        self.state = "connected"
        self.transport = transport
        transport._attach(lambda: self.factory.buildProtocol(transport.getPeer()))

    def _lost(self, reason: Failure) -> None:
        self.state = "disconnected"
        self.transport = None
        self.factory.clientConnectionLost(self, reason)
        if self.state == "disconnected":
            self.factory.doStop()
            self._factory_started = False

    def __repr__(self) -> str:
        return (
            f"<SimConnector {self.host.address} -> {self.destination_host}:"
            f"{self.destination_port} {self.state}>"
        )


@implementer(ITCPTransport, IConsumer, IPushProducer)
class SimTransport:
    """
    One side of a simulated TCP connection.

    As a consumer it takes streaming (push) or pull producers; as a push
    producer it lets its protocol stop and restart the delivery of incoming
    data (C{pauseProducing}/C{resumeProducing}).

    @ivar protocol: the protocol this side delivers to, once built.
    @ivar peer: the other side's L{SimTransport}.
    @ivar in_flight: bytes written on this side not yet received by the
        peer's protocol.
    @ivar producer: the registered producer, or None.
    """

    def __init__(
        self,
        network: SimNetwork,
        connection_id: int,
        host: SimHost,
        local: IPv4Address,
        remote: IPv4Address,
        connector: SimConnector | None,
    ) -> None:
        self.network = network
        self.connection_id = connection_id
        self.host = host
        self.incarnation = host.incarnation
        self.name = f"{local.host}:{local.port}"
        self.protocol: Any = None
        self.peer: SimTransport = self
        self.in_flight = 0
        self.producer: Any = None
        self._local = local
        self._remote = remote
        self._connector = connector
        self._state = "open"
        self._write_closed = False
        self._read_closed = False
        self._lost = False
        self._last_arrival = 0.0
        self._streaming = False
        self._producer_paused = False
        self._reading_paused = False
        self._inbox: deque[tuple[str, Any]] = deque()
        self._no_delay = False
        self._keep_alive = False

    # State seen by protocols (Twisted's transports have these attributes).

    @property
    def connected(self) -> bool:
        """
        Whether the connection is open (neither closed nor lost).
        """
        return self._state != "closed"

    @property
    def disconnecting(self) -> bool:
        """
        Whether C{loseConnection} was called or the connection is gone.
        """
        return self._state != "open"

    @property
    def disconnected(self) -> bool:
        """
        Whether the connection is gone.
        """
        return self._state == "closed"

    # ITransport

    def write(self, data: bytes) -> None:
        """
        Send C{data} as one chunk.

        @raise TypeError: when C{data} is not bytes.
        """
        if not isinstance(data, bytes):
            raise TypeError("Data must be bytes")
        if self._state == "closed" or self._write_closed or not data:
            return
        self.network._send_chunk(self, data)
        self._maybe_pause_producer()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """
        Send the concatenation of C{data} as one chunk.
        """
        pieces = list(data)
        for piece in pieces:
            if not isinstance(piece, bytes):
                raise TypeError("Data must be bytes")
        self.write(b"".join(pieces))

    def loseConnection(self) -> None:
        """
        Close after every chunk written so far (and, when a producer is
        registered, after it is unregistered). The peer sees
        C{ConnectionDone} after the link delay; so does this side.
        """
        if self._state != "open":
            return
        if self.producer is not None:
            self._state = "closing"
            return
        self._finish_close()

    def abortConnection(self) -> None:
        """
        Close at once: this side sees C{ConnectionAborted}, the peer
        C{ConnectionLost} (after the chunks already sent).
        """
        if self._state == "closed":
            return
        self._close(Failure(error.ConnectionAborted()), Failure(error.ConnectionLost()))

    def loseWriteConnection(self) -> None:
        """
        Half-close: send end-of-file after the chunks written so far. A peer
        protocol providing L{IHalfCloseableProtocol} gets C{readConnectionLost};
        any other peer closes the whole connection.
        """
        if self._state != "open" or self._write_closed:
            return
        self._write_closed = True
        self.network._record("eof", self.name, self.peer.name, note=f"c{self.connection_id}")
        self.network._send_event(self, "eof", None)
        protocol = self.protocol
        if protocol is not None and IHalfCloseableProtocol.providedBy(protocol):

            def write_lost() -> None:
                if not self._lost:
                    protocol.writeConnectionLost()

            self._soon(write_lost)
        if self._read_closed:
            self._close(Failure(error.ConnectionDone()), None)

    def getPeer(self) -> IPv4Address:
        """
        @return: the other side's address.
        """
        return self._remote

    def getHost(self) -> IPv4Address:
        """
        @return: this side's address.
        """
        return self._local

    def getTcpNoDelay(self) -> bool:
        """
        @return: the last value given to L{setTcpNoDelay} (no effect here).
        """
        return self._no_delay

    def setTcpNoDelay(self, enabled: bool) -> None:
        """
        Remember C{enabled}; the simulation has no Nagle algorithm.
        """
        self._no_delay = bool(enabled)

    def getTcpKeepAlive(self) -> bool:
        """
        @return: the last value given to L{setTcpKeepAlive} (no effect here).
        """
        return self._keep_alive

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """
        Remember C{enabled}; the simulation sends no keep-alives.
        """
        self._keep_alive = bool(enabled)

    def logPrefix(self) -> str:
        """
        @return: a prefix for log lines about this connection.
        """
        return f"sim:{self.name}->{self.peer.name}"

    # IConsumer

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """
        Take data from C{producer}: a streaming one is paused above the
        network's high water mark of in-flight bytes and resumed at its low
        water mark; a pull one is asked for more whenever nothing is in
        flight.

        @raise RuntimeError: when a producer is already registered.
        """
        if self.producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer!r}, because producer "
                f"{self.producer!r} was never unregistered."
            )
        if self._state == "closed":
            producer.stopProducing()
            return
        self.producer = producer
        self._streaming = bool(streaming)
        self._producer_paused = False
        if self._streaming:
            self._maybe_pause_producer()
        else:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        """
        Stop taking data from the producer; finish a pending
        C{loseConnection}.
        """
        self.producer = None
        self._producer_paused = False
        if self._state == "closing":
            self._finish_close()

    # IPushProducer: flow control of incoming data.

    def pauseProducing(self) -> None:
        """
        Stop delivering incoming data to the protocol; it waits (and counts as
        in flight for the peer, which pushes back on the peer's producer).
        """
        self._reading_paused = True

    def resumeProducing(self) -> None:
        """
        Deliver incoming data again, the waiting chunks first.
        """
        if not self._reading_paused:
            return
        self._reading_paused = False
        if self._inbox:
            self._soon(self._drain)

    def stopProducing(self) -> None:
        """
        Close the connection (as Twisted's transports do).
        """
        self.loseConnection()

    # Internals

    def _soon(self, thunk: Callable[[], object]) -> None:
        """
        Run C{thunk} on this side's host at the current time, after the
        running call.
        """
        host, incarnation = self.host, self.incarnation
        self.network.clock.callLater(0, lambda: host._dispatch(incarnation, thunk))

    def _attach(self, build: Callable[[], Any]) -> None:
        if self._state == "closed":
            return
        try:
            protocol = build()
        except Exception:
            log.failure("buildProtocol failed on sim host {host}", host=self.host.address)
            self._close(Failure(), Failure(error.ConnectionLost()))
            return
        refused = protocol is None
        self.protocol = protocol if protocol is not None else Protocol()
        try:
            self.protocol.makeConnection(self)
        except Exception:
            log.failure("makeConnection failed on sim host {host}", host=self.host.address)
            self._close(Failure(), Failure(error.ConnectionLost()))
            return
        if refused:
            self.loseConnection()
        elif self._inbox and not self._reading_paused:
            self._soon(self._drain)

    def _accept(self, port: SimListeningPort) -> None:
        if self._state == "closed":
            return
        if not port.listening:
            self._close(None, Failure(error.ConnectionLost()))
            return
        self._attach(lambda: port.factory.buildProtocol(self.getPeer()))

    def _maybe_pause_producer(self) -> None:
        producer = self.producer
        if (
            producer is not None
            and self._streaming
            and not self._producer_paused
            and self.in_flight > self.network.high_water
        ):
            self._producer_paused = True
            producer.pauseProducing()

    def _consumed(self, size: int) -> None:
        """
        C{size} bytes this side sent are received or dropped.
        """
        self.in_flight -= size
        producer = self.producer
        if producer is None or self._state == "closed":
            return
        if self._streaming:
            if self._producer_paused and self.in_flight <= self.network.low_water:
                self._producer_paused = False
                self.host._dispatch(self.incarnation, lambda: self._resume_producer(producer))
        elif self.in_flight == 0:
            self.host._dispatch(self.incarnation, lambda: self._resume_producer(producer))

    def _resume_producer(self, producer: Any) -> None:
        if self.producer is producer and self._state != "closed":
            producer.resumeProducing()

    def _on_chunk(self, data: bytes) -> None:
        if self._state == "closed" or self._read_closed:
            self.network._record("drop", self.peer.name, self.name, data=data, note="closed")
            self.peer._consumed(len(data))
            return
        if self.protocol is None or self._reading_paused or self._inbox:
            self._inbox.append(("data", data))
            return
        self._deliver(data)

    def _on_event(self, kind: str, reason: Failure | None) -> None:
        if self._state == "closed":
            return
        if self.protocol is None or self._reading_paused or self._inbox:
            self._inbox.append((kind, reason))
            return
        self._handle_event(kind, reason)

    def _drain(self) -> None:
        while self._inbox and not self._reading_paused and self._state != "closed":
            kind, item = self._inbox.popleft()
            if kind == "data":
                self._deliver(item)
            else:
                self._handle_event(kind, item)

    def _deliver(self, data: bytes) -> None:
        self.network._record("deliver", self.peer.name, self.name, data=data)
        assert self.protocol is not None
        try:
            self.protocol.dataReceived(data)
        except Exception:
            log.failure(
                "dataReceived raised on sim host {host}; closing the connection",
                host=self.host.address,
            )
            self._close(Failure(), Failure(error.ConnectionDone()))
        finally:
            self.peer._consumed(len(data))

    def _handle_event(self, kind: str, reason: Failure | None) -> None:
        if kind == "close":
            assert reason is not None
            self.network._record(
                "closed",
                self.peer.name,
                self.name,
                note=f"c{self.connection_id} {reason.type.__name__}",
            )
            self._state = "closed"
            self._release_inbox()
            self.host._forget(self)
            self._notify_lost(reason)
        elif kind == "eof":
            protocol = self.protocol
            if protocol is not None and IHalfCloseableProtocol.providedBy(protocol):
                self._read_closed = True
                protocol.readConnectionLost()
                if self._write_closed and self._state != "closed":
                    self._close(Failure(error.ConnectionDone()), None)
            else:
                done = Failure(error.ConnectionDone())
                self._close(None, done)
                self._notify_lost(done)

    def _finish_close(self) -> None:
        done = Failure(error.ConnectionDone())
        self._close(done, done)

    def _close(self, local: Failure | None, remote: Failure | None) -> None:
        """
        Close this side: the peer gets C{remote} (unless None) after the
        chunks already sent; this side's protocol gets C{local} (unless None)
        after the running call.
        """
        if self._state == "closed":
            return
        self._state = "closed"
        note = f"c{self.connection_id} {remote.type.__name__ if remote else '-'}"
        self.network._record("close", self.name, self.peer.name, note=note)
        self._release_inbox()
        self.host._forget(self)
        if remote is not None and self.peer._state != "closed":
            self.network._send_event(self, "close", remote)
        if local is not None:
            self._soon(lambda: self._notify_lost(local))

    def _vanish(self) -> None:
        """
        The host crashed: no more callbacks here; the peer sees
        C{ConnectionLost}.
        """
        self._lost = True
        self.producer = None
        self._close(None, Failure(error.ConnectionLost()))

    def _release_inbox(self) -> None:
        while self._inbox:
            kind, item = self._inbox.popleft()
            if kind == "data":
                self.peer._consumed(len(item))

    def _notify_lost(self, reason: Failure) -> None:
        if self._lost:
            return
        self._lost = True
        producer, self.producer = self.producer, None
        try:
            if producer is not None:
                producer.stopProducing()
            if self.protocol is not None:
                self.protocol.connectionLost(reason)
        finally:
            if self._connector is not None:
                self._connector._lost(reason)

    def __repr__(self) -> str:
        return f"<SimTransport c{self.connection_id} {self.name} -> {self.peer.name} {self._state}>"


@implementer(IReactorTime, IReactorTCP)
class SimHost:
    """
    One host of a L{SimNetwork}, and the reactor its node code runs on.

    @ivar network: the network.
    @ivar address: the address peers dial.
    @ivar incarnation: counts crashes; events meant for an earlier
        incarnation are dropped.
    """

    def __init__(self, network: SimNetwork, address: str) -> None:
        self.network = network
        self.address = address
        self.incarnation = 0
        self._state = "up"
        self._draining = False
        self._backlog: deque[tuple[int, Callable[[], object]]] = deque()
        self._calls: dict[int, SimDelayedCall] = {}
        self._next_call_key = 0
        self._ports: dict[int, SimListeningPort] = {}
        self._transports: dict[tuple[int, str], SimTransport] = {}
        self._next_port = EPHEMERAL_FIRST
        self.skew = 0.0
        self.processing_delay: Delay = 0.0

    @property
    def state(self) -> str:
        """
        C{"up"}, C{"paused"} or C{"crashed"}.
        """
        return self._state

    # IReactorTime

    def seconds(self) -> float:
        """
        @return: this host's wall clock: the shared clock's time plus the
            host's L{skew}.
        """
        return self.network.clock.seconds() + self.skew

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> SimDelayedCall:
        """
        Run C{callable(*args, **kw)} C{delay} seconds from now (late, if the
        host is paused then; never, if it crashes first).

        @raise ValueError: when C{delay} is negative.
        """
        if not _is_number(delay) or delay < 0:
            raise ValueError(f"callLater: delay must be a number of seconds >= 0, got {delay!r}")
        self._next_call_key += 1
        call = SimDelayedCall(self, self._next_call_key, delay, callable, args, kw)
        self._calls[self._next_call_key] = call
        return call

    def getDelayedCalls(self) -> list[SimDelayedCall]:
        """
        @return: this host's calls that may still run, in scheduling order.
        """
        return list(self._calls.values())

    # IReactorTCP

    def listenTCP(
        self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = ""
    ) -> SimListeningPort:
        """
        Listen on C{port} (0 picks a free one).

        @param interface: C{""}, C{"0.0.0.0"}, C{"::"} or this host's address.
        @raise twisted.internet.error.CannotListenError: when the port is
            taken, the interface is not this host's, or the host is crashed.
        """
        if interface not in _ANY_INTERFACE and interface != self.address:
            raise error.CannotListenError(
                interface, port, f"sim host {self.address} has no interface {interface!r}"
            )
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise error.CannotListenError(interface, port, f"invalid port {port!r}")
        if port == 0:
            port = self._allocate_port()
        listening = SimListeningPort(self, port, factory, interface)
        listening.startListening()
        return listening

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: ClientFactory[Any],
        timeout: float = 30,
        bindAddress: tuple[str, int] | None = None,
    ) -> SimConnector:
        """
        Connect to C{host}:C{port} over the simulated network.

        After the link delay the client factory's protocol is connected, or
        it gets C{clientConnectionFailed} with C{ConnectionRefusedError} when
        nothing listens there; over a cut link it fails with C{TimeoutError}
        after C{timeout} seconds.
        """
        if not isinstance(host, str) or not host:
            raise ValueError(f"connectTCP: host must be a non-empty string, got {host!r}")
        if not isinstance(port, int) or not 0 < port <= 65535:
            raise ValueError(f"connectTCP: port must be an integer in 1..65535, got {port!r}")
        connector = SimConnector(self, host, port, factory, timeout, bindAddress)
        connector.connect()
        return connector

    # Faults

    def crash(self) -> None:
        """
        Crash the process: cancel its timers, close its ports, drop its
        connections (peers see C{ConnectionLost}); its code gets no further
        callbacks. No-op if already crashed.
        """
        if self._state == "crashed":
            return
        self.network._record("crash", self.address, "-")
        log.info("sim host {host} crashed", host=self.address)
        self.incarnation += 1
        self._state = "crashed"
        self._draining = False
        self._backlog.clear()
        for call in list(self._calls.values()):
            call._kill()
        self._calls.clear()
        for listening in list(self._ports.values()):
            listening._vanish()
        self._ports.clear()
        for transport in list(self._transports.values()):
            transport._vanish()
        self._transports.clear()

    def restart(self) -> None:
        """
        Bring the host back, fresh: no timers, ports or connections (crashing
        it first if it is not crashed).
        """
        if self._state != "crashed":
            self.crash()
        for call in list(self._calls.values()):
            call._kill()
        self._calls.clear()
        self._state = "up"
        self.network._record("restart", self.address, "-")
        log.info("sim host {host} restarted", host=self.address)

    def pause(self) -> None:
        """
        Freeze the host like C{SIGSTOP}: what is meant for it waits.

        @raise RuntimeError: when the host is crashed.
        """
        if self._state == "crashed":
            raise RuntimeError(f"sim host {self.address} is crashed and cannot be paused")
        if self._state == "paused":
            return
        self._state = "paused"
        self.network._record("pause", self.address, "-")
        log.info("sim host {host} paused", host=self.address)

    def resume(self) -> None:
        """
        Unfreeze the host: everything that waited runs now, in the order it
        became due.

        @raise RuntimeError: when the host is crashed.
        """
        if self._state == "crashed":
            raise RuntimeError(f"sim host {self.address} is crashed and cannot be resumed")
        if self._state != "paused":
            return
        self._state = "up"
        self.network._record("resume", self.address, "-", note=f"backlog={len(self._backlog)}")
        log.info("sim host {host} resumed", host=self.address)
        self._draining = True
        try:
            while self._backlog and self._state == "up":
                incarnation, thunk = self._backlog.popleft()
                if incarnation == self.incarnation:
                    self._run(thunk)
        finally:
            self._draining = False

    def set_skew(self, seconds: float) -> None:
        """
        Set this host's wall-clock skew: L{seconds} reads the shared clock
        plus C{seconds} (which may be negative, and may change while the host
        runs, as when NTP steps a clock). Delays stay relative: a call due in
        one second runs one simulated second from now, whatever the skew.

        @raise ValueError: when C{seconds} is not a finite number.
        """
        if not _is_number(seconds) or not math.isfinite(seconds):
            raise ValueError(f"set_skew: seconds must be a finite number, got {seconds!r}")
        self.skew = float(seconds)
        self.network._record("skew", self.address, "-", note=repr(self.skew))

    def set_processing_delay(self, delay: Delay) -> None:
        """
        Make this host slow: every chunk and connection event delivered to it
        waits C{delay} extra seconds (a number, or a callable drawing one from
        the network's random generator), as with a process whose event loop
        lags. Deliveries on one connection keep their order unless the link
        reorders. C{0} makes it normal again.

        @raise ValueError: when C{delay} is negative or not a number.
        """
        if not callable(delay) and (not _is_number(delay) or not math.isfinite(delay) or delay < 0):
            raise ValueError(
                f"processing delay must be a finite number of seconds >= 0 or a callable(rng) "
                f"returning one, got {delay!r}"
            )
        self.processing_delay = delay
        self.network._record("slow", self.address, "-", note=_show_delay(delay))

    def _processing_lag(self) -> float:
        delay = self.processing_delay
        if not delay:
            return 0.0
        value = delay(self.network.rng) if callable(delay) else delay
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise ValueError(
                f"the processing delay of sim host {self.address} gave {value!r}; it must give "
                "a finite number of seconds >= 0"
            )
        return float(value)

    def seeded_random(self) -> random.Random:
        """
        A random generator derived from the network's seed and this host's
        address, for node code that needs jitter. Each call on a host gives
        the next of a fixed series of generators.
        """
        return self.network._seeded_random(self.address)

    # Inspection

    def listening_port(self, port: int) -> SimListeningPort | None:
        """
        @return: the port listening on C{port}, or None.
        """
        return self._ports.get(port)

    def connections(self) -> list[SimTransport]:
        """
        @return: this host's open connection sides, oldest first.
        """
        return list(self._transports.values())

    # Internals

    def _dispatch(self, incarnation: int, thunk: Callable[[], object]) -> bool:
        """
        Run C{thunk} as this host's code: now, on resume if paused, or never
        if the host crashed since C{incarnation}.

        @return: False when dropped.
        """
        if incarnation != self.incarnation or self._state == "crashed":
            return False
        if self._state == "paused" or self._draining:
            self._backlog.append((incarnation, thunk))
            return True
        self._run(thunk)
        return True

    def _run(self, thunk: Callable[[], object]) -> None:
        try:
            thunk()
        except Exception:
            log.failure("unhandled error on sim host {host}", host=self.address)

    def _allocate_port(self) -> int:
        span = EPHEMERAL_LAST - EPHEMERAL_FIRST + 1
        for _ in range(span):
            port = self._next_port
            self._next_port = EPHEMERAL_FIRST + (port - EPHEMERAL_FIRST + 1) % span
            if port not in self._ports:
                return port
        raise error.CannotListenError("", 0, f"sim host {self.address} has no free port")

    def _adopt(self, transport: SimTransport) -> None:
        side = "client" if transport._connector is not None else "server"
        self._transports[(transport.connection_id, side)] = transport

    def _forget(self, transport: SimTransport) -> None:
        side = "client" if transport._connector is not None else "server"
        self._transports.pop((transport.connection_id, side), None)

    def __repr__(self) -> str:
        return f"<SimHost {self.address} {self._state} incarnation={self.incarnation}>"
