"""
Group membership: views, joins, elections, quorum, failure handling, merge.

L{Membership} is a state machine driven by an injected clock, the frames that
reach it, and its own periodic tick; it talks to peers only through a
C{send} callable and learns who is connected through a C{connected}
callable. It runs unchanged over real sockets and in the simulator.

How it keeps its promises (DESIGN section 4):

- B{One coordinator per epoch.} A node becomes coordinator of epoch C{E}
  only with votes from a quorum of its view's active members (or, when a
  cluster first forms, of C{bootstrap_expect} nodes), and every node votes at
  most once per epoch. Bully decides who I{stands}: a node stands when it is
  the highest-ranked member it can reach, or after lower ranks waited long
  enough for the higher ones (so a missing answer cannot stall the cluster).
- B{No acting without quorum.} The coordinator installs views, removes
  members and sequences total order only while it reaches a quorum of its
  view (CheckQuorum); voters refuse to depose a coordinator they still hear
  acting (leader stickiness, which also makes a partitioned node harmless
  when it returns).
- B{Fencing.} Views carry their epoch; a node refuses views and votes from
  epochs older than the newest it has seen or voted in.
- B{Merge.} Nodes keep dialling discovered addresses; when a node meets a
  peer whose view has higher precedence (acting, epoch, coordinator rank),
  its coordinator hands its view to the other coordinator, which installs a
  merged view and every node receives a C{merged} event with both views.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from typing import Any, TypeGuard

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from clustron.config import NodeConfig
from clustron.errors import (
    ClustronError,
    NoQuorum,
    NotJoined,
    ProtocolViolation,
    UnknownMember,
)
from clustron.interfaces import IElectionStrategy
from clustron.membership.quorum import QuorumPolicy
from clustron.membership.view import (
    ALIVE,
    DEAD,
    LEAVING,
    SUSPECT,
    Member,
    View,
    ViewId,
    parse_view_id,
)
from clustron.monitoring import detector as fd
from clustron.observability import tracing
from clustron.observability.logs import NodeLogger
from clustron.observability.metrics import NodeMetrics
from clustron.wire.framing import CONTROL, HEARTBEAT

Send = Callable[[str, int, Any, bool], bool]

# How long departed (dead, leaving) members stay listed, in units of
# dead_after, before the coordinator reaps them.
_REAP_FACTOR = 10
_MAX_PENDING_ADMIN = 64
_MAX_ADMIN_TEXT = 256
#: Incarnations go into views: the range L{Member.from_dict} accepts.
_MAX_INCARNATION = 2**63
#: Probe nonces are drawn from 32 random bits.
_MAX_NONCE = 2**32
#: The largest time (seconds) a heartbeat may carry.
_MAX_SECONDS = 1e12
_VOTE_MEMORY = 8


@attrs.define
class PeerInfo:
    """
    What a connected peer last said about itself in a heartbeat.
    """

    node_id: str
    address: str
    priority: int
    incarnation: int
    view_id: ViewId | None = None
    coordinator: str | None = None
    #: The incarnation the peer's process started with (its heartbeats say
    #: it), or None until heard: view entries of the peer below it are of
    #: an earlier life, which ended.
    life: int | None = None
    coordinator_address: str | None = None
    #: The incarnation the peer's view lists its coordinator with.
    coordinator_incarnation: int | None = None
    acting: bool = False
    in_view: bool = False
    heard_at: float = 0.0
    heartbeat_at: float = -1.0
    last_t: float | None = None
    last_t_at: float = 0.0
    not_acting_since: float | None = None


@attrs.define
class _Candidacy:
    epoch: int
    voters: set[str]
    granted: set[str]
    required: int
    started_at: float
    bootstrap: bool
    reason: str
    answered: set[str] = attrs.Factory(set)
    pre: bool = False


@attrs.define
class _Rank:
    node_id: str
    priority: int


class Membership:
    """
    This node's membership in its cluster.

    @ivar view: the current view, or None before joining.
    @ivar incarnation: this node's incarnation (grows when it refutes a
        suspicion or rejoins after being declared dead).
    @ivar max_epoch: the highest epoch seen or voted in (fencing).
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        config: NodeConfig,
        strategy: IElectionStrategy,
        send: Send,
        connected: Callable[[], dict[str, Any]],
        rng: random.Random,
        incarnation: int,
        metrics: NodeMetrics,
        set_view_addresses: Callable[[set[tuple[str, int]]], None] = lambda addresses: None,
        set_incarnation: Callable[[int], None] = lambda incarnation: None,
    ) -> None:
        self.clock = clock
        self.config = config
        self.node_id = config.node_id
        self.priority = config.priority
        host, port = config.advertise_address
        self.address = f"{host}:{port}"
        self.strategy = strategy
        self._send = send
        self._connected = connected
        self._rng = rng
        self.incarnation = incarnation
        # The incarnation this process started with: refutations only raise
        # it, so a view listing this node below it is of an earlier life.
        self._life_incarnation = incarnation
        self.metrics = metrics
        self._set_view_addresses = set_view_addresses
        self._set_incarnation = set_incarnation
        self.quorum = QuorumPolicy.from_config(
            config.membership.quorum, config.membership.expected_members
        )
        fdc = config.failure_detector
        self.detector = fd.FailureDetector(
            self.node_id,
            fdc.heartbeat_interval,
            fdc.suspect_after,
            fdc.dead_after,
            fdc.probe_timeout,
        )
        self.view: View | None = None
        self.log = NodeLogger(
            self.node_id,
            view_id=lambda: list(self.view.id) if self.view is not None else None,
            namespace=__name__,
        )
        self._max_epoch = 0
        self._epoch_raised_at = 0.0
        self._max_view_epoch = 0
        # The highest epoch other nodes were heard to be in or to have seen
        # (heartbeats, vote denials): candidacies stand above it, so that a
        # node that knows little (a restarted one) does not stand for an
        # epoch that is already taken, in vain or worse.
        self._epoch_hint = 0
        # Joiners that have seen an epoch above the view's, with that epoch:
        # the view that takes them in opens an epoch above, or they would
        # refuse it.
        self._pending_seen: dict[str, int] = {}
        # Per epoch, the candidate this node voted for and that candidate's
        # life (a restarted candidate is not the one that got the vote).
        self._votes: dict[int, tuple[str, int | None]] = {}
        self.peers: dict[str, PeerInfo] = {}
        self._candidacy: _Candidacy | None = None
        self._no_candidacy_before = 0.0
        self._coordinator_failed_since: float | None = None
        self._abdication: tuple[int, str | None] | None = None
        self._started_at = 0.0
        self._view_accepted_at = -1.0
        self._tick_call: IDelayedCall | None = None
        self._soon_call: IDelayedCall | None = None
        self._running = False
        self._acting = False
        self._pending_joins: dict[str, Member] = {}
        self._pending_alive: dict[str, int] = {}
        self._pending_leaves: set[str] = set()
        self._pending_removals: dict[str, str] = {}
        self._pending_drains: dict[str, tuple[bool, str]] = {}
        self._departed_at: dict[str, float] = {}
        self._last_join_sent = -1e9
        self._last_merge_sent = -1e9
        self._view_resent: dict[str, float] = {}
        self._removed_by_operator = False
        self._leaving: Deferred[None] | None = None
        self._joined_waiters: list[Deferred[View]] = []
        self._admin_requests: dict[str, tuple[Deferred[dict[str, Any]], IDelayedCall]] = {}
        self._admin_counter = 0
        self._last_quorum: bool | None = None
        self._subscribers: list[Callable[[dict[str, Any]], None]] = []
        #: Called with no arguments whenever the view or this node's acting
        #: status changes (the messaging layer follows it).
        self.on_change: Callable[[], None] = lambda: None
        self._notified: tuple[Any, ...] | None = None
        #: Observers of internal decisions (the testkit's checkers):
        #: callables taking (kind, fields).
        self.observers: list[Callable[[str, dict[str, Any]], None]] = []

    @property
    def max_epoch(self) -> int:
        """
        The highest epoch this node has seen a view of, voted in or stood
        for (fencing).
        """
        return self._max_epoch

    @max_epoch.setter
    def max_epoch(self, epoch: int) -> None:
        if epoch > self._max_epoch:
            self._epoch_raised_at = self.clock.seconds()
        self._max_epoch = epoch

    def _stale_fence(self, now: float) -> bool:
        """
        Whether this node's fence is only a vote or candidacy that came to
        nothing: an epoch above every view it has seen, raised more than two
        join timeouts ago. Such a fence protects nobody (no coordinator of
        that epoch ever showed up), and keeping it would make the node refuse
        its cluster forever.
        """
        return (
            self._max_epoch > self._max_view_epoch
            and now - self._epoch_raised_at > 2 * self.config.membership.join_timeout
        )

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """
        Start ticking: heartbeats, detection, joining.
        """
        self._running = True
        self._started_at = self.clock.seconds()
        self._schedule_tick()

    def stop(self) -> None:
        """
        Stop all timers; pending admin requests and waiters fail.
        """
        self._running = False
        for call in (self._tick_call, self._soon_call):
            if call is not None and call.active():
                call.cancel()
        self._tick_call = self._soon_call = None
        for d, timer in list(self._admin_requests.values()):
            if timer.active():
                timer.cancel()
            d.errback(ClustronError("node stopped"))
        self._admin_requests.clear()

    def reconfigure(self, config: NodeConfig) -> None:
        """
        Apply reloadable settings (failure-detector timings).
        """
        self.config = config
        fdc = config.failure_detector
        self.detector.reconfigure(
            fdc.heartbeat_interval, fdc.suspect_after, fdc.dead_after, fdc.probe_timeout
        )

    # -- public state --------------------------------------------------------

    @property
    def joined(self) -> bool:
        """
        Whether this node is an active member of its view.
        """
        return self.view is not None and self.view.is_active_member(self.node_id)

    @property
    def is_coordinator(self) -> bool:
        """
        Whether the current view names this node as coordinator.
        """
        return self.view is not None and self.view.coordinator == self.node_id

    @property
    def acting(self) -> bool:
        """
        Whether this node is the coordinator and currently has quorum.
        """
        return self.is_coordinator and self._acting

    def reachable_members(self) -> list[str]:
        """
        Active members of the view this node hears (itself included).
        """
        if self.view is None:
            return []
        return [
            m.node_id
            for m in self.view.active_members()
            if m.node_id == self.node_id or self.detector.state(m.node_id) == fd.ALIVE
        ]

    def quorum_status(self) -> dict[str, Any]:
        """
        The C{quorum} part of C{GET /v1/cluster}.
        """
        base = (
            len(self.view.active_members())
            if self.view
            else self.config.membership.bootstrap_expect
        )
        present = (
            len(self.reachable_members())
            if self.view
            else 1
            + sum(
                1 for p in self.peers.values() if not p.in_view and p.node_id in self._connected()
            )
        )
        required = self.quorum.required(base)
        return {
            "mode": self.quorum.mode if self.quorum.mode != "static" else "static",
            "required": required,
            "present": present,
            "has_quorum": self.joined and present >= required,
        }

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """
        Receive membership events (dicts with at least C{type} and C{time}).

        @return: a function that unsubscribes.
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def when_joined(self) -> Deferred[View]:
        """
        @return: a Deferred that fires with the view once this node is a
            member (at once if it already is).
        """
        d: Deferred[View] = Deferred()
        if self.joined:
            assert self.view is not None
            d.callback(self.view)
        else:
            self._joined_waiters.append(d)
        return d

    # -- inputs from the mesh --------------------------------------------------

    def peer_up(self, hello: Any) -> None:
        """
        A peer completed a handshake.
        """
        info = self.peers.get(hello.node_id)
        if info is None or info.incarnation != hello.incarnation:
            self.peers[hello.node_id] = PeerInfo(
                hello.node_id, hello.address, hello.priority, hello.incarnation
            )
            if info is not None:
                self.detector.forget(hello.node_id, self.clock.seconds())
        self._heard(hello.node_id)
        self._send_heartbeat(hello.node_id)

    def peer_down(self, hello: Any, reason: str) -> None:
        """
        A peer's connection closed.
        """

    def unreachable(self, node_id: str, reason: str) -> None:
        """
        A dial to a known peer's address failed.
        """
        self.detector.refused(node_id, self.clock.seconds(), reason)

    def frame_received(self, sender: str, frame_type: int, body: Any) -> None:
        """
        A HEARTBEAT or CONTROL frame from an established peer.

        @raise ProtocolViolation: when the body is malformed.
        """
        if not isinstance(body, dict):
            raise ProtocolViolation("malformed", "membership message is not a mapping")
        self._heard(sender)
        if frame_type == HEARTBEAT:
            self._on_heartbeat(sender, body)
            return
        kind = body.get("k")
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            raise ProtocolViolation("unknown_kind", f"unknown control message {kind!r}")
        handler(self, sender, body)

    # -- admin operations --------------------------------------------------------

    def force_election(self, prefer: str | None = None) -> Deferred[dict[str, Any]]:
        """
        Ask the coordinator to step down and let the election run again,
        optionally toward C{prefer}.
        """
        return self._admin("election", prefer)

    def remove_member(self, node_id: str, by: str = "operator") -> Deferred[dict[str, Any]]:
        """
        Ask the coordinator to remove a member.
        """
        return self._admin("remove", node_id, by)

    def drain_member(self, node_id: str, by: str = "operator") -> Deferred[dict[str, Any]]:
        """
        Ask the coordinator to mark a member draining (never elected).
        """
        return self._admin("drain", node_id, by)

    def leave(self) -> Deferred[None]:
        """
        Leave the cluster gracefully.

        @return: a Deferred that fires once a view without this node is
            installed, or after a timeout.
        """
        if self._leaving is not None:
            return self._leaving
        d: Deferred[None] = Deferred()
        if not self.joined:
            d.callback(None)
            return d
        self._leaving = d

        def time_out() -> None:
            if not d.called:
                d.callback(None)

        timeout = self.clock.callLater(self.config.membership.join_timeout * 3, time_out)

        def stop_timeout(result: object) -> object:
            if timeout.active():
                timeout.cancel()
            return result

        d.addBoth(stop_timeout)
        assert self.view is not None
        if self.is_coordinator:
            others = [
                m
                for m in self.view.active_members()
                if m.node_id != self.node_id and not m.draining
            ]
            if not others:
                self._install_departure()
                return d
            self._abdicate(self.strategy.choose(others))
        else:
            self._send_control(self.view.coordinator, {"k": "leave"})
        return d

    # -- the tick ------------------------------------------------------------------

    def _schedule_tick(self) -> None:
        if self._running:
            self._tick_call = self.clock.callLater(
                self.config.failure_detector.heartbeat_interval, self._tick
            )

    def _tick(self) -> None:
        self._tick_call = None
        now = self.clock.seconds()
        self._send_heartbeats()
        for transition in self.detector.check(now):
            self._on_transition(transition, now)
        self._evaluate(now)
        self._forget_strangers(now)
        self._schedule_tick()

    def _forget_strangers(self, now: float) -> None:
        """
        Forget what peers outside the view said, once they are gone and
        silent for long, so that peers that come and go under ever new ids
        do not pile up.
        """
        connected = self._connected()
        listed = {m.node_id for m in self.view.members} if self.view is not None else set()
        limit = _REAP_FACTOR * self.config.failure_detector.dead_after
        for node_id, info in list(self.peers.items()):
            if node_id not in connected and node_id not in listed and now - info.heard_at > limit:
                del self.peers[node_id]

    def _soon(self) -> None:
        if self._soon_call is None and self._running:
            self._soon_call = self.clock.callLater(0, self._soon_fired)

    def _soon_fired(self) -> None:
        self._soon_call = None
        self._evaluate(self.clock.seconds())

    def _evaluate(self, now: float) -> None:
        self._check_won(now)
        if (
            self._candidacy is not None
            and now - self._candidacy.started_at > self.config.membership.join_timeout
        ):
            self.log.info(
                "election for epoch {epoch} got {votes}/{required} votes; giving up for now",
                epoch=self._candidacy.epoch,
                votes=len(self._candidacy.granted),
                required=self._candidacy.required,
            )
            self._candidacy = None
            self._no_candidacy_before = now + self._rng.uniform(
                0, self.config.membership.join_timeout
            )
        if self.view is None or not self.joined:
            self._outside(now)
        elif self.is_coordinator and not self._abdicated():
            self._coordinate(now)
        else:
            self._follow(now)
        self._update_quorum_metrics()
        self._notify_change()

    def _notify_change(self) -> None:
        state = (self.view.id if self.view is not None else None, self.joined, self.acting)
        if state != self._notified:
            self._notified = state
            self.on_change()

    # -- outside: join or bootstrap ---------------------------------------------------

    def _outside(self, now: float) -> None:
        if self._removed_by_operator or self._leaving is not None:
            return
        connected = self._connected()
        in_views = [
            p
            for p in self.peers.values()
            if p.node_id in connected and p.in_view and p.coordinator and not self._orphaned_peer(p)
        ]
        if in_views:
            best = max(in_views, key=lambda p: (p.acting, p.view_id or (0, 0)))
            coordinator = best.coordinator
            assert coordinator is not None
            if (
                best.view_id is not None
                and best.view_id[0] < self.max_epoch
                and now - self._epoch_raised_at < self.config.failure_detector.suspect_after
            ):
                # This node just saw a newer epoch than any view it sees now
                # (it was dropped from it, or voted in it): its coordinator's
                # heartbeats are due. Joining an older view would make that
                # view's coordinator open an epoch above it, taking members
                # from a coordinator just elected.
                return
            if now - self._last_join_sent >= self.config.membership.join_timeout / 2:
                if coordinator in connected:
                    self._last_join_sent = now
                    self._send_control(coordinator, self._join_body())
                elif best.coordinator_address:
                    self._want_address(best.coordinator_address)
            return
        # Nobody we can see is in a view with a coordinator to join: form a
        # new cluster, carefully. (Members of a view whose coordinator's life
        # ended count once they leave it, see _orphaned: until then their
        # view may still elect.)
        waiting = [
            p
            for p in self.peers.values()
            if p.node_id in connected and not p.in_view and p.heard_at
        ]
        expect = self.config.membership.bootstrap_expect
        if len(waiting) + 1 < expect:
            return
        if expect == 1 and now - self._started_at < self.config.membership.join_timeout:
            return
        if self._candidacy is not None or now < self._no_candidacy_before:
            return
        ranked = sorted(
            [_Rank(p.node_id, p.priority) for p in waiting] + [_Rank(self.node_id, self.priority)],
            key=self.strategy.rank,
            reverse=True,
        )
        position = [r.node_id for r in ranked].index(self.node_id)
        if position > 0:
            if self._coordinator_failed_since is None:
                self._coordinator_failed_since = now
            if now - self._coordinator_failed_since < self.config.membership.join_timeout * (
                1 + position
            ):
                return
        required = (
            self.quorum.required(expect)
            if self.quorum.mode != "static"
            else min(self.quorum.size, expect)
        )
        self._stand(
            now,
            voters={p.node_id for p in waiting},
            required=required,
            bootstrap=True,
            reason="bootstrap" if position == 0 else "bootstrap (higher ranks silent)",
        )

    def _orphaned_peer(self, peer: PeerInfo) -> bool:
        """
        Whether a peer's view (as its heartbeats describe it) is coordinated
        by a life that ended: this node's earlier life, or an earlier life of
        a peer that says it started later. Nobody acts in such a view, and
        a join sent to its coordinator's node would go unanswered forever.
        """
        listed = peer.coordinator_incarnation
        if peer.coordinator is None or listed is None:
            return False
        return (self.life_of(peer.coordinator) or 0) > listed

    def _join_body(self) -> dict[str, Any]:
        # The epoch tells the coordinator the lowest view this node accepts.
        return {
            "k": "join",
            "incarnation": self.incarnation,
            "address": self.address,
            "priority": self.priority,
            "epoch": self.max_epoch,
        }

    def _orphaned(self, now: float) -> bool:
        """
        Whether this node is a member of a view whose coordinator's life
        ended, and neither an election nor a merge replaced it for two join
        timeouts. Nobody will ever act in that view again (a new life never
        takes an earlier life's place), and it may lack the quorum to elect
        for good (its quorum counts lives that ended, which never vote): the
        node leaves it and joins, or helps form, another cluster, as a node
        outside any view does. Until then the view gets the time to elect,
        which keeps its members' states and reasons.
        """
        view = self.view
        return (
            view is not None
            and self.joined
            and view.coordinator != self.node_id
            and self._life_ended(view.member(view.coordinator))
            and self._coordinator_failed_since is not None
            and now - self._coordinator_failed_since >= 2 * self.config.membership.join_timeout
        )

    def _life_ended(self, member: Member | None) -> bool:
        """
        Whether a view's entry is a life of its node that has ended: the
        node's heartbeats say its process started with a higher incarnation
        than the entry's (refutations raise an incarnation within one life,
        and only a new process starts above all of them).
        """
        if member is None or member.node_id == self.node_id:
            return False
        info = self.peers.get(member.node_id)
        return info is not None and info.life is not None and info.life > member.incarnation

    def _next_epoch(self) -> int:
        """
        The epoch to stand for: above every epoch this node has seen or
        voted in, and every epoch it heard of from others.
        """
        return max(self.max_epoch, self._epoch_hint) + 1

    # -- member: watch the coordinator -------------------------------------------------

    def _coordinator_failure(self, now: float) -> str | None:
        assert self.view is not None
        coordinator = self.view.coordinator
        if self._abdicated():
            return f"coordinator {coordinator} stepped down"
        if coordinator == self.node_id:
            return None
        entry = self.view.member(coordinator)
        if self._life_ended(entry):
            assert entry is not None
            peer_info = self.peers[coordinator]
            return (
                f"coordinator {coordinator} restarted (incarnation {entry.incarnation} "
                f"-> {peer_info.life}): the life that held epoch {self.view.epoch} ended"
            )
        if (
            self.max_epoch > self.view.epoch
            and now - self._view_accepted_at > 2 * self.config.membership.join_timeout
        ):
            return f"epoch {self.max_epoch} was voted for but no coordinator of it appeared"
        state = self.detector.state(coordinator)
        if state == fd.DEAD:
            return self.detector.reason(coordinator) or f"coordinator {coordinator} is dead"
        info = self.peers.get(coordinator)
        if (
            info is not None
            and info.heartbeat_at > self._view_accepted_at
            and now - info.heartbeat_at < self.config.failure_detector.suspect_after
        ):
            if not info.in_view or (info.view_id is not None and info.view_id[0] < self.view.epoch):
                return f"coordinator {coordinator} no longer holds epoch {self.view.epoch}"
            dead_after = self.config.failure_detector.dead_after
            if info.not_acting_since is not None and now - info.not_acting_since > dead_after:
                return (
                    f"coordinator {coordinator} has not had quorum for "
                    f"{now - info.not_acting_since:.2f} s"
                )
        return None

    def _follow(self, now: float) -> None:
        assert self.view is not None
        failure = self._coordinator_failure(now)
        self._check_merge(now)
        if failure is None:
            self._coordinator_failed_since = None
            return
        if self._coordinator_failed_since is None:
            self._coordinator_failed_since = now
            self.log.info("coordinator failed: {why}", why=failure)
        if self._orphaned(now):
            self._abandon(now, failure)
            return
        if self._candidacy is not None or now < self._no_candidacy_before:
            return
        prefer = self._abdication[1] if self._abdication else None
        eligible = [
            m
            for m in self.view.active_members()
            if not m.draining
            and (
                m.node_id == self.node_id
                or (self.detector.state(m.node_id) == fd.ALIVE and not self._life_ended(m))
            )
            and (m.node_id != self.view.coordinator or (self._abdicated() and prefer is None))
        ]
        if not any(m.node_id == self.node_id for m in eligible):
            return
        ranked = sorted(eligible, key=self.strategy.rank, reverse=True)
        order = [m.node_id for m in ranked]
        if prefer is not None and prefer in order:
            order.remove(prefer)
            order.insert(0, prefer)
        position = order.index(self.node_id)
        waited = now - self._coordinator_failed_since
        if position > 0 and waited < self.config.membership.join_timeout * (1 + position):
            return
        self._stand(
            now,
            voters=set(self.view.active_ids()) - {self.node_id},
            required=self.quorum.required(len(self.view.active_members())),
            bootstrap=False,
            reason=failure if position == 0 else f"{failure}; higher-ranked members silent",
        )

    def _stand(
        self, now: float, voters: set[str], required: int, bootstrap: bool, reason: str
    ) -> None:
        """
        Stand for coordinator. Outside bootstrap this starts with a pre-vote
        (asking whether the voters I{would} vote, without bumping any epoch),
        so a node cut off from the cluster cannot disrupt it when it returns.
        """
        candidacy = _Candidacy(
            self._next_epoch(), voters, {self.node_id}, required, now, bootstrap, reason
        )
        candidacy.pre = not bootstrap
        self._candidacy = candidacy
        if candidacy.pre:
            self._send_vote_requests(candidacy, "prevote_req")
            self._check_won(now)
        else:
            self._campaign(candidacy, now)

    def _campaign(self, candidacy: _Candidacy, now: float) -> None:
        candidacy.pre = False
        candidacy.epoch = self._next_epoch()
        candidacy.granted = {self.node_id}
        candidacy.answered = set()
        candidacy.started_at = now
        self.max_epoch = candidacy.epoch
        self._remember_vote(candidacy.epoch, self.node_id)
        self.metrics.elections.labels("bootstrap" if candidacy.bootstrap else "failover").inc()
        self.log.info(
            "standing for coordinator of epoch {epoch} ({reason}); need {required} votes",
            epoch=candidacy.epoch,
            reason=candidacy.reason,
            required=candidacy.required,
        )
        self._send_vote_requests(candidacy, "vote_req")
        self._check_won(now)

    def _send_vote_requests(self, candidacy: _Candidacy, kind: str) -> None:
        body = {
            "k": kind,
            "epoch": candidacy.epoch,
            "view": list(self.view.id) if self.view and self.joined else None,
            "priority": self.priority,
            "bootstrap": candidacy.bootstrap,
            "fallback": "silent" in candidacy.reason,
            "transfer": self._abdicated(),
        }
        for voter in sorted(candidacy.voters):
            self._send_control(voter, body)

    def _check_won(self, now: float) -> None:
        candidacy = self._candidacy
        if candidacy is None or len(candidacy.granted) < candidacy.required:
            return
        if candidacy.pre:
            self._campaign(candidacy, now)
            return
        if (
            candidacy.bootstrap
            and candidacy.answered < candidacy.voters
            and now - candidacy.started_at < self.config.failure_detector.heartbeat_interval
        ):
            # Give the other nodes that see each other a moment to answer, so
            # the cluster forms with all of them rather than a bare majority.
            return
        self._candidacy = None
        self._coordinator_failed_since = None
        self._abdication = None
        epoch = candidacy.epoch
        connected = self._connected()
        if candidacy.bootstrap:
            members = [
                Member(
                    self.node_id,
                    self.address,
                    self.incarnation,
                    self.priority,
                    ALIVE,
                    False,
                    "formed the cluster",
                )
            ]
            for node_id in sorted(candidacy.granted - {self.node_id}):
                info = self.peers.get(node_id)
                if info is not None:
                    members.append(
                        Member(
                            node_id,
                            info.address,
                            info.incarnation,
                            info.priority,
                            ALIVE,
                            False,
                            "formed the cluster",
                        )
                    )
            merged_from = None
        else:
            assert self.view is not None
            members = []
            for m in self.view.members:
                if m.node_id == self.node_id:
                    m = attrs.evolve(
                        m,
                        state=ALIVE,
                        incarnation=self.incarnation,
                        reason=m.reason if m.state == ALIVE else "refuted",
                    )
                elif m.active and m.node_id not in candidacy.granted:
                    state = self.detector.state(m.node_id)
                    if state == fd.DEAD or (
                        m.node_id == self.view.coordinator
                        and m.node_id not in connected
                        and state != fd.ALIVE
                    ):
                        m = attrs.evolve(
                            m,
                            state=DEAD,
                            reason=self.detector.reason(m.node_id) or "unreachable during election",
                        )
                        self._departed_at[m.node_id] = now
                members.append(m)
            merged_from = None
        view = View(epoch, 0, self.node_id, tuple(sorted(members, key=lambda m: m.node_id)))
        self._trace(
            "elected", epoch=epoch, votes=sorted(candidacy.granted), required=candidacy.required
        )
        self.log.info(
            "elected coordinator of epoch {epoch} with votes of {votes}",
            epoch=epoch,
            votes=",".join(sorted(candidacy.granted)),
        )
        self._acting = True
        with tracing.span(
            "clustron.election",
            epoch=epoch,
            votes=",".join(sorted(candidacy.granted)),
            reason=candidacy.reason,
            bootstrap=candidacy.bootstrap,
        ):
            self._install(
                view, present=len(candidacy.granted), merged_from=merged_from, why=candidacy.reason
            )

    # -- coordinator ------------------------------------------------------------------

    def _coordinate(self, now: float) -> None:
        view = self.view
        assert view is not None
        if self.max_epoch > view.epoch:
            # This node voted (or stood) in a newer epoch: its own views
            # would be refused, by itself first. Stop acting; either a view
            # of that epoch arrives, or the fence goes stale and lifts.
            if self._acting:
                self.log.info(
                    "not acting: voted in epoch {epoch}, coordinating epoch {own}",
                    epoch=self.max_epoch,
                    own=view.epoch,
                )
            self._acting = False
            if self._stale_fence(now):
                self._max_epoch = view.epoch
            return
        base = len(view.active_members())
        present = len(self.reachable_members())
        had = self._acting
        self._acting = self.quorum.satisfied(present, base)
        if had and not self._acting:
            self.log.warn(
                "coordinator lost quorum ({present}/{required} reachable): not acting",
                present=present,
                required=self.quorum.required(base),
            )
        elif self._acting and not had:
            self.log.info("coordinator has quorum again")
        self._check_merge(now)
        if not self._acting:
            return
        changed: dict[str, Member] = {m.node_id: m for m in view.members}
        dirty = False
        reasons = []
        for member in view.members:
            node_id = member.node_id
            if node_id == self.node_id:
                continue
            if member.active:
                opinion = self.detector.state(node_id)
                if node_id in self._pending_removals:
                    changed[node_id] = attrs.evolve(
                        member, state=DEAD, reason=self._pending_removals.pop(node_id)
                    )
                    self._departed_at[node_id] = now
                elif node_id in self._pending_leaves:
                    changed[node_id] = attrs.evolve(
                        member, state=LEAVING, reason="left the cluster"
                    )
                    self._departed_at[node_id] = now
                elif opinion == fd.DEAD:
                    changed[node_id] = attrs.evolve(
                        member, state=DEAD, reason=self.detector.reason(node_id)
                    )
                    self._departed_at[node_id] = now
                elif opinion == fd.SUSPECT and member.state == ALIVE:
                    changed[node_id] = attrs.evolve(
                        member, state=SUSPECT, reason=self.detector.reason(node_id)
                    )
                elif opinion == fd.ALIVE and member.state == SUSPECT:
                    changed[node_id] = attrs.evolve(
                        member, state=ALIVE, reason=self.detector.reason(node_id) or "heard again"
                    )
                incarnation = self._pending_alive.pop(node_id, None)
                if incarnation is not None and incarnation > member.incarnation:
                    latest = changed[node_id]
                    if latest.state in (ALIVE, SUSPECT):
                        changed[node_id] = attrs.evolve(
                            latest,
                            state=ALIVE,
                            incarnation=incarnation,
                            reason=f"refuted suspicion with incarnation {incarnation}",
                        )
                drain = self._pending_drains.pop(node_id, None)
                if drain is not None and changed[node_id].draining != drain[0]:
                    changed[node_id] = attrs.evolve(
                        changed[node_id], draining=drain[0], reason=drain[1]
                    )
            elif (
                now - self._departed_at.setdefault(node_id, now)
                > _REAP_FACTOR * self.config.failure_detector.dead_after
            ):
                del changed[node_id]
                self._departed_at.pop(node_id, None)
            if changed.get(node_id) != member:
                dirty = True
        own = changed[self.node_id]
        drain = self._pending_drains.pop(self.node_id, None)
        if drain is not None and own.draining != drain[0]:
            changed[self.node_id] = attrs.evolve(own, draining=drain[0], reason=drain[1])
            dirty = True
        epoch, seq = view.epoch, view.seq + 1
        above = {
            node_id: seen
            for node_id, seen in self._pending_seen.items()
            if seen > view.epoch and node_id in self._pending_joins
        }
        self._pending_seen.clear()
        if above and self._outranked():
            # This coordinator is about to merge into a view that outranks
            # its own (and the joiners should join there): opening an epoch
            # now could race that view's coordinator to the same epoch.
            for node_id in sorted(above):
                del self._pending_joins[node_id]
                self._send_control(
                    node_id, {"k": "join_refused", "reason": "merging into a newer view"}
                )
        elif above:
            seen = max(above.values())
            epoch, seq = max(self.max_epoch, seen, self._epoch_hint) + 1, 0
            reasons.append(f"opened epoch {epoch} for joiners that saw epoch {seen}")
            dirty = True
        for node_id, joiner in sorted(self._pending_joins.items()):
            current = changed.get(node_id)
            if current is None or not current.active:
                changed[node_id] = joiner
                self._departed_at.pop(node_id, None)
                dirty = True
                reasons.append(f"{node_id} joined")
            elif joiner.incarnation > current.incarnation:
                changed[node_id] = attrs.evolve(
                    joiner,
                    reason=f"restarted (incarnation {current.incarnation} -> {joiner.incarnation})",
                    draining=current.draining,
                )
                self.detector.forget(node_id, now)
                dirty = True
        self._pending_joins.clear()
        self._pending_leaves.clear()
        self._pending_removals.clear()
        self._pending_drains.clear()
        self._pending_alive.clear()
        if dirty:
            self.max_epoch = max(self.max_epoch, epoch)
            new = View(
                epoch, seq, self.node_id, tuple(sorted(changed.values(), key=lambda m: m.node_id))
            )
            self._install(new, present=present, why="; ".join(reasons) or "member states changed")
            if changed[self.node_id].draining:
                self._abdicate(None)
        else:
            self._repair_views(now)

    def _repair_views(self, now: float) -> None:
        view = self.view
        assert view is not None
        for member in view.members:
            node_id = member.node_id
            if node_id == self.node_id:
                continue
            info = self.peers.get(node_id)
            if info is None or node_id not in self._connected():
                continue
            behind = info.view_id is None or info.view_id < view.id
            if (
                behind
                and now - self._view_resent.get(node_id, -1e9)
                >= self.config.failure_detector.suspect_after
            ):
                self._view_resent[node_id] = now
                self._send_control(node_id, {"k": "view", "view": view.to_dict()})

    def _install(
        self, view: View, present: int, why: str, merged_from: list[dict[str, Any]] | None = None
    ) -> None:
        with tracing.span(
            "clustron.view_install",
            epoch=view.epoch,
            seq=view.seq,
            members=len(view.active_members()),
            reason=why,
            merge=merged_from is not None,
        ):
            self._install_view(view, present, why, merged_from)

    def _install_view(
        self, view: View, present: int, why: str, merged_from: list[dict[str, Any]] | None
    ) -> None:
        if view.epoch < self.max_epoch:
            # Never send a view this node would itself refuse: another node
            # could accept it while this one recomputes the same id.
            return
        base = len(self.view.active_members()) if self.view is not None and self.joined else present
        self.metrics.views_installed.inc()
        self._trace(
            "install",
            view=view,
            present=present,
            base=base,
            required=self.quorum.required(base),
            acting=self._acting,
        )
        body: dict[str, Any] = {"k": "view", "view": view.to_dict()}
        if merged_from is not None:
            body["merged_from"] = merged_from
        recipients = {m.node_id for m in view.members} - {self.node_id}
        if self.view is not None:
            recipients |= {m.node_id for m in self.view.members if m.node_id != self.node_id}
        for node_id in sorted(recipients):
            self._send_control(node_id, body)
        self._accept(view, merged_from, sender=self.node_id)

    def _abdicate(self, prefer: str | None) -> None:
        assert self.view is not None
        self._abdication = (self.view.epoch, prefer)
        self._acting = False
        self._coordinator_failed_since = self.clock.seconds()
        self.log.info("stepping down as coordinator (preferred successor: {prefer})", prefer=prefer)
        for node_id in self.view.active_ids():
            if node_id != self.node_id:
                self._send_control(
                    node_id, {"k": "abdicate", "epoch": self.view.epoch, "prefer": prefer}
                )
        self._soon()

    def _abdicated(self) -> bool:
        return (
            self._abdication is not None
            and self.view is not None
            and self._abdication[0] == self.view.epoch
        )

    def _install_departure(self) -> None:
        assert self.view is not None
        me = self.view.member(self.node_id)
        assert me is not None
        members = [
            m
            if m.node_id != self.node_id
            else attrs.evolve(m, state=LEAVING, reason="left the cluster")
            for m in self.view.members
        ]
        view = View(self.view.epoch, self.view.seq + 1, self.node_id, tuple(members))
        self._install(view, present=1, why="coordinator left")

    # -- merge ------------------------------------------------------------------------

    def _precedence(
        self, acting: bool, view_id: ViewId | None, coordinator: str | None
    ) -> tuple[Any, ...]:
        info = self.peers.get(coordinator) if coordinator else None
        priority = self.priority if coordinator == self.node_id else (info.priority if info else 0)
        return (acting, view_id or (0, 0), priority, coordinator or "")

    def _outranked(self) -> bool:
        """
        Whether a connected peer is in a view, of another coordinator, with
        higher precedence than this coordinator's (see L{_check_merge}).
        """
        view = self.view
        assert view is not None
        connected = self._connected()
        mine = self._precedence(self.acting, view.id, view.coordinator)
        return any(
            info.node_id in connected
            and info.in_view
            and info.coordinator not in (None, view.coordinator)
            and self._precedence(info.acting, info.view_id, info.coordinator) > mine
            for info in self.peers.values()
        )

    def _check_merge(self, now: float) -> None:
        view = self.view
        if view is None or now - self._last_merge_sent < self.config.membership.merge_interval:
            return
        connected = self._connected()
        # A coordinator whose life ended acts for nobody in this view, even
        # if its new life coordinates another one.
        ended = self._life_ended(view.member(view.coordinator))
        coordinator_info = None if self.is_coordinator else self.peers.get(view.coordinator)
        own_acting = (
            self.acting
            if self.is_coordinator
            else bool(coordinator_info and coordinator_info.acting and not ended)
        )
        if (
            not self.is_coordinator
            and not ended
            and not (
                coordinator_info is not None
                and coordinator_info.heartbeat_at > self._view_accepted_at
            )
            and now - self._view_accepted_at < self.config.failure_detector.suspect_after
        ):
            # The coordinator has not said yet whether it acts (a new one
            # heartbeats "acting" within a tick): joining another view now
            # would take this member from a coordinator just elected.
            return
        mine = self._precedence(own_acting, view.id, view.coordinator)
        for info in sorted(self.peers.values(), key=lambda p: p.node_id):
            if info.node_id not in connected or not info.in_view or info.coordinator is None:
                continue
            if (
                info.coordinator == view.coordinator
                and not ended
                or view.is_active_member(info.node_id)
                and info.view_id == view.id
            ):
                continue
            theirs = self._precedence(info.acting, info.view_id, info.coordinator)
            if theirs <= mine:
                continue
            self._last_merge_sent = now
            target = info.coordinator
            if target not in connected:
                if info.coordinator_address:
                    self._want_address(info.coordinator_address)
                return
            if self.is_coordinator:
                self.log.info(
                    "found view {theirs} of coordinator {other}; asking it to merge view {mine}",
                    theirs=list(info.view_id or ()),
                    other=target,
                    mine=list(view.id),
                )
                self._send_control(target, {"k": "merge", "view": view.to_dict()})
            elif not own_acting:
                self._send_control(target, self._join_body())
            return

    # -- receiving views -----------------------------------------------------------------

    def _accept(self, view: View, merged_from: list[dict[str, Any]] | None, sender: str) -> None:
        now = self.clock.seconds()
        if (
            view.epoch < self.max_epoch
            and view.epoch >= self._max_view_epoch
            and self._stale_fence(now)
        ):
            self.log.info(
                "epoch {epoch} never got a coordinator; accepting view {view} again",
                epoch=self.max_epoch,
                view=list(view.id),
            )
            self._max_epoch = view.epoch
        if view.epoch < self.max_epoch:
            self.metrics.stale_epoch_refused.inc()
            self._trace("refuse_stale", view=view, max_epoch=self.max_epoch, sender=sender)
            return
        old = self.view
        if old is not None and view.id <= old.id and self.joined:
            return
        me = view.member(self.node_id)
        if me is None or not me.active:
            if (
                old is not None
                and self.joined
                and (view.coordinator == old.coordinator or view.epoch > old.epoch)
            ):
                self._left_view(view, me)
            return
        if (
            me.incarnation > self.incarnation
            or me.incarnation < self._life_incarnation
            or (not self.joined and me.incarnation != self.incarnation)
        ):
            # A view that lists another life of this node (before a restart,
            # or before it was dropped and rejoined): not ours to accept; the
            # join that is under way will bring one that lists this life. A
            # view of an earlier life may even name this node coordinator of
            # an epoch whose state died with that life.
            return
        self.max_epoch = max(self.max_epoch, view.epoch)
        self._max_view_epoch = max(self._max_view_epoch, view.epoch)
        self.view = view
        self._view_accepted_at = self.clock.seconds()
        if view.coordinator != self.node_id:
            self._acting = False
        self._coordinator_failed_since = None
        if self._candidacy is not None and self._candidacy.epoch <= view.epoch:
            self._candidacy = None
        if self._abdication is not None and self._abdication[0] < view.epoch:
            self._abdication = None
        now = self.clock.seconds()
        self.detector.watch(
            [m.node_id for m in view.active_members() if m.node_id != self.node_id], now
        )
        self._set_view_addresses(
            {_split(m.address) for m in view.members if m.node_id != self.node_id and m.active}
        )
        self._trace("accept", view=view, sender=sender)
        self.metrics.view_epoch.set(view.epoch)
        self.metrics.view_seq.set(view.seq)
        self.metrics.is_coordinator.set(1 if view.coordinator == self.node_id else 0)
        for state in ("alive", "suspect", "dead", "leaving", "joining"):
            self.metrics.members.labels(state).set(sum(1 for m in view.members if m.state == state))
        self._emit_view_events(old, view, merged_from)
        if me.state == SUSPECT and me.incarnation >= self.incarnation:
            self.incarnation = me.incarnation + 1
            self._set_incarnation(self.incarnation)
            self.log.info(
                "refuting suspicion ({reason}) with incarnation {incarnation}",
                reason=me.reason,
                incarnation=self.incarnation,
            )
            self._send_control(view.coordinator, {"k": "alive", "incarnation": self.incarnation})
        if self._leaving is not None and view.coordinator != self.node_id:
            self._send_control(view.coordinator, {"k": "leave"})
        self._notify_change()
        waiters, self._joined_waiters = self._joined_waiters, []
        for d in waiters:
            d.callback(view)

    def _abandon(self, now: float, why: str) -> None:
        """
        Leave a view nobody will act in again (see L{_orphaned}), keeping
        the fence of its epoch, to join or form another cluster.
        """
        view = self.view
        assert view is not None
        reason = f"{why}, and no election replaced it"
        self.log.warn(
            "leaving view {view} ({reason}); looking for a cluster to join",
            view=list(view.id),
            reason=reason,
        )
        self.view = None
        self._acting = False
        self._candidacy = None
        self._coordinator_failed_since = None
        self.detector.watch([], now)
        self._emit(
            {
                "type": "left_cluster",
                "node_id": self.node_id,
                "reason": reason,
                "view": list(view.id),
            }
        )
        self._notify_change()

    def _left_view(self, view: View, me: Member | None) -> None:
        old = self.view
        reason = me.reason if me is not None else "no longer listed"
        self.view = None
        self._acting = False
        self.max_epoch = max(self.max_epoch, view.epoch)
        self._max_view_epoch = max(self._max_view_epoch, view.epoch)
        self.detector.watch([], self.clock.seconds())
        self._emit(
            {
                "type": "left_cluster",
                "node_id": self.node_id,
                "reason": reason,
                "view": list(view.id),
            }
        )
        self._notify_change()
        if self._leaving is not None:
            leaving, self._leaving = self._leaving, None
            self.log.info("left the cluster")
            if not leaving.called:
                leaving.callback(None)
            self._removed_by_operator = True
            return
        if me is not None and reason.startswith("removed by"):
            self._removed_by_operator = True
            self.log.warn(
                "this node was removed from the cluster: {reason}; it stays out until restarted",
                reason=reason,
            )
            return
        self.incarnation = max(self.incarnation + 1, (me.incarnation + 1) if me else 0)
        self._set_incarnation(self.incarnation)
        self.log.warn(
            "this node was dropped from view {view} ({reason}); "
            "rejoining with incarnation {incarnation}",
            view=list(view.id),
            reason=reason,
            incarnation=self.incarnation,
        )
        del old

    # -- control message handlers ---------------------------------------------------------

    def _on_heartbeat(self, sender: str, body: dict[str, Any]) -> None:
        info = self.peers.get(sender)
        if info is None:
            return
        view_id = body.get("v")
        info.view_id = parse_view_id(view_id) if view_id is not None else None
        coordinator = body.get("c")
        info.coordinator = coordinator if isinstance(coordinator, str) else None
        ca = body.get("ca")
        info.coordinator_address = ca if isinstance(ca, str) else None
        ci = body.get("ci")
        info.coordinator_incarnation = ci if _is_incarnation(ci) else None
        info.acting = body.get("a") is True
        if info.acting or info.coordinator != sender:
            info.not_acting_since = None
        elif info.not_acting_since is None:
            info.not_acting_since = self.clock.seconds()
        info.in_view = body.get("j") is True and info.view_id is not None
        if info.view_id is not None:
            self._epoch_hint = max(self._epoch_hint, info.view_id[0])
        incarnation = body.get("i")
        if _is_incarnation(incarnation) and incarnation > info.incarnation:
            info.incarnation = incarnation
        life = body.get("l")
        if _is_incarnation(life) and (info.life is None or life > info.life):
            info.life = life
        now = info.heard_at = info.heartbeat_at = self.clock.seconds()
        # Times come from the peer: only finite numbers of a sane size (a
        # huge int does not convert to a float; NaN cannot be echoed in JSON).
        sent, echoed, held = (_seconds(body.get(key)) for key in ("t", "e", "h"))
        if sent is not None:
            info.last_t, info.last_t_at = sent, now
        if echoed is not None and held is not None:
            rtt = now - echoed - held
            if 0 <= rtt < 60:
                self.metrics.heartbeat_rtt.observe(rtt)
        if (
            info.view_id is not None
            and self.view is not None
            and info.view_id > self.view.id
            and (self.view.is_active_member(sender) or info.coordinator == self.view.coordinator)
        ):
            self._send_control(sender, {"k": "view_req"})

    def _on_join(self, sender: str, body: dict[str, Any]) -> None:
        incarnation = body.get("incarnation")
        address = body.get("address")
        priority = body.get("priority", 0)
        seen = body.get("epoch", 0)
        if not _is_incarnation(seen):
            raise ProtocolViolation("malformed", "bad join: epoch is not a non-negative integer")
        try:
            # The joiner's fields go into views: hold them to the same rules
            # as a view's members, or every member would refuse the view.
            joiner = Member.from_dict(
                {
                    "node_id": sender,
                    "address": address,
                    "incarnation": incarnation,
                    "priority": priority,
                    "state": ALIVE,
                    "reason": "joined",
                }
            )
        except ProtocolViolation as e:
            raise ProtocolViolation("malformed", f"bad join: {e.detail}") from None
        if not self.is_coordinator or self._abdicated():
            return
        if not self._acting:
            self._send_control(sender, {"k": "join_refused", "reason": "coordinator has no quorum"})
            return
        assert self.view is not None
        if seen > self.view.epoch:
            # The joiner has seen a newer epoch (a view of a coordinator that
            # has since failed or restarted) and refuses views of this one:
            # the view that takes it in opens an epoch above (_coordinate).
            self._pending_seen[sender] = seen
            self._pending_joins[sender] = joiner
            self._soon()
            return
        current = self.view.member(sender)
        if current is not None and current.active and current.incarnation == incarnation:
            self._send_control(sender, {"k": "view", "view": self.view.to_dict()})
            return
        self._pending_joins[sender] = joiner
        self._soon()

    def _on_join_refused(self, sender: str, body: dict[str, Any]) -> None:
        self.log.info(
            "join refused by {sender}: {reason}",
            sender=sender,
            reason=str(body.get("reason"))[:200],
        )

    def _on_view(self, sender: str, body: dict[str, Any]) -> None:
        view = View.from_dict(body.get("view"))
        merged_from = body.get("merged_from")
        if merged_from is not None and not isinstance(merged_from, list):
            raise ProtocolViolation("malformed", "bad merged_from")
        self._accept(view, merged_from, sender)

    def _on_view_req(self, sender: str, body: dict[str, Any]) -> None:
        if self.view is not None and self.joined and self.view.is_active_member(sender):
            self._send_control(sender, {"k": "view", "view": self.view.to_dict()})

    def _on_vote_req(self, sender: str, body: dict[str, Any]) -> None:
        epoch = body.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ProtocolViolation("malformed", "bad vote request")
        bootstrap = body.get("bootstrap") is True
        deny = self._vote_denial(sender, epoch, body, bootstrap)
        if deny is None:
            self._remember_vote(epoch, sender)
            self.max_epoch = max(self.max_epoch, epoch)
            if self._candidacy is not None and self._candidacy.epoch <= epoch:
                self._candidacy = None
            if self.is_coordinator:
                self._acting = False
            self._trace("vote", epoch=epoch, candidate=sender)
            self._send_control(sender, {"k": "vote", "epoch": epoch, "granted": True})
        else:
            if deny.startswith("stale"):
                self.metrics.stale_epoch_refused.inc()
            self._send_control(
                sender,
                {
                    "k": "vote",
                    "epoch": epoch,
                    "granted": False,
                    "reason": deny,
                    "seen": max(self.max_epoch, self._epoch_hint),
                },
            )

    def _on_prevote_req(self, sender: str, body: dict[str, Any]) -> None:
        epoch = body.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ProtocolViolation("malformed", "bad pre-vote request")
        deny = self._vote_denial(sender, epoch, body, bootstrap=False)
        reply: dict[str, Any] = {"k": "prevote", "epoch": epoch, "granted": deny is None}
        if deny is not None:
            reply["reason"] = deny
            reply["seen"] = max(self.max_epoch, self._epoch_hint)
        self._send_control(sender, reply)

    def _on_prevote(self, sender: str, body: dict[str, Any]) -> None:
        candidacy = self._candidacy
        if candidacy is None or not candidacy.pre or body.get("epoch") != candidacy.epoch:
            return
        if sender in candidacy.voters and body.get("granted") is True:
            candidacy.granted.add(sender)
            self._check_won(self.clock.seconds())
        else:
            self._heard_epoch(body)

    def _heard_epoch(self, body: dict[str, Any]) -> None:
        """
        A voter that denied a vote said which epoch it has seen: the next
        candidacy stands above it (a candidate that stood again for an
        epoch its voters have moved past would be denied forever).
        """
        seen = body.get("seen")
        if _is_incarnation(seen):
            self._epoch_hint = max(self._epoch_hint, seen)

    def _vote_denial(
        self, candidate: str, epoch: int, body: dict[str, Any], bootstrap: bool
    ) -> str | None:
        if epoch < self.max_epoch:
            return f"stale epoch {epoch} (seen {self.max_epoch})"
        voted = self._votes.get(epoch)
        if voted is not None and voted != (candidate, self.life_of(candidate)):
            return f"voted for {voted[0]} (incarnation {voted[1]}) in epoch {epoch}"
        if epoch == self.max_epoch and voted is None:
            return f"epoch {epoch} already in use"
        if bootstrap:
            if self.joined:
                assert self.view is not None
                return f"already a member of view {self.view.epoch}.{self.view.seq}"
            if epoch <= self._epoch_hint:
                # Nodes that know nothing (restarted ones) would otherwise
                # form a cluster in an epoch a peer's view already holds.
                return f"epoch {epoch} is taken (a peer is in epoch {self._epoch_hint})"
            return None
        if not self.joined:
            return "not a member"
        view = self.view
        assert view is not None
        if not view.is_active_member(candidate):
            return f"{candidate} is not a member of view {view.epoch}.{view.seq}"
        try:
            candidate_view = parse_view_id(body.get("view"))
        except ProtocolViolation:
            return "candidate has no view"
        if candidate_view < view.id:
            return f"candidate's view {candidate_view} is older than {view.id}"
        transfer = body.get("transfer") is True and self._abdicated()
        if not transfer:
            coordinator = view.coordinator
            if coordinator == self.node_id and self._acting:
                return "this coordinator is alive and acting"
            if coordinator not in (self.node_id, candidate):
                info = self.peers.get(coordinator)
                now = self.clock.seconds()
                if (
                    self.detector.state(coordinator) == fd.ALIVE
                    and info is not None
                    and info.acting
                    and now - info.heard_at < self.config.failure_detector.suspect_after
                    and not self._life_ended(view.member(coordinator))
                ):
                    return f"coordinator {coordinator} is alive and acting"
            if body.get("fallback") is not True:
                candidate_member = view.member(candidate)
                assert candidate_member is not None
                for member in view.active_members():
                    if (
                        member.node_id not in (candidate, coordinator)
                        and not member.draining
                        and self.strategy.rank(member) > self.strategy.rank(candidate_member)
                        and (
                            member.node_id == self.node_id
                            or self.detector.state(member.node_id) == fd.ALIVE
                            and not self._life_ended(member)
                        )
                    ):
                        return f"higher-ranked {member.node_id} is alive"
        return None

    def _on_vote(self, sender: str, body: dict[str, Any]) -> None:
        candidacy = self._candidacy
        epoch = body.get("epoch")
        if (
            candidacy is None
            or candidacy.pre
            or epoch != candidacy.epoch
            or sender not in candidacy.voters
        ):
            return
        candidacy.answered.add(sender)
        if body.get("granted") is True:
            candidacy.granted.add(sender)
            self._check_won(self.clock.seconds())
        else:
            self._heard_epoch(body)
            reason = body.get("reason")
            self.log.debug(
                "vote denied by {sender}: {reason}", sender=sender, reason=str(reason)[:200]
            )

    def _on_abdicate(self, sender: str, body: dict[str, Any]) -> None:
        epoch = body.get("epoch")
        prefer = body.get("prefer")
        if self.view is None or sender != self.view.coordinator or epoch != self.view.epoch:
            return
        self._abdication = (self.view.epoch, prefer if isinstance(prefer, str) else None)
        self._coordinator_failed_since = self.clock.seconds()
        self._soon()

    def _on_leave(self, sender: str, body: dict[str, Any]) -> None:
        if self.acting and self.view is not None and self.view.is_active_member(sender):
            self._pending_leaves.add(sender)
            self._soon()

    def _on_alive(self, sender: str, body: dict[str, Any]) -> None:
        incarnation = body.get("incarnation")
        if _is_incarnation(incarnation):
            self._pending_alive[sender] = max(incarnation, self._pending_alive.get(sender, 0))
            self._soon()

    def _on_merge(self, sender: str, body: dict[str, Any]) -> None:
        other = View.from_dict(body.get("view"))
        if not self.acting or self.view is None or other.coordinator != sender:
            return
        view = self.view
        members = {m.node_id: m for m in view.members}
        for m in other.active_members():
            current = members.get(m.node_id)
            if current is None or not current.active or m.incarnation > current.incarnation:
                members[m.node_id] = attrs.evolve(
                    m,
                    state=ALIVE,
                    reason=f"merged from view {other.epoch}.{other.seq} of {other.coordinator}",
                )
                self._departed_at.pop(m.node_id, None)
        # A merge always opens a new epoch: the members that come from the
        # other side must see a coordinator change (the total order flushes
        # and opens the epoch for them).
        epoch, seq = max(self.max_epoch, view.epoch, other.epoch) + 1, 0
        self.max_epoch = epoch
        merged = View(
            epoch, seq, self.node_id, tuple(sorted(members.values(), key=lambda m: m.node_id))
        )
        self.log.info(
            "merging view {other} of {sender} into {mine} as {merged}",
            other=list(other.id),
            sender=sender,
            mine=list(view.id),
            merged=list(merged.id),
        )
        self._install(
            merged,
            present=len(self.reachable_members()),
            why="merge",
            merged_from=[view.to_dict(), other.to_dict()],
        )

    def _on_probe_req(self, sender: str, body: dict[str, Any]) -> None:
        target = body.get("target")
        nonce = body.get("nonce")
        if isinstance(target, str) and _is_nonce(nonce) and target in self._connected():
            self._send_control(target, {"k": "probe", "nonce": nonce, "origin": sender})

    def _on_probe(self, sender: str, body: dict[str, Any]) -> None:
        # Both fields are sent back: only what this node could have sent.
        nonce, origin = body.get("nonce"), body.get("origin")
        if not _is_nonce(nonce) or not isinstance(origin, str):
            raise ProtocolViolation("malformed", "bad probe")
        self._send_control(sender, {"k": "probe_ack", "nonce": nonce, "origin": origin})

    def _on_probe_ack(self, sender: str, body: dict[str, Any]) -> None:
        origin = body.get("origin")
        target = body.get("target")
        if isinstance(origin, str) and origin != self.node_id and target is None:
            # We probed for `origin`: relay the answer.
            nonce = body.get("nonce")
            if not _is_nonce(nonce):
                raise ProtocolViolation("malformed", "bad probe answer")
            self._send_control(origin, {"k": "probe_ack", "nonce": nonce, "target": sender})
        elif isinstance(target, str):
            self.detector.heard(target, self.clock.seconds(), via=sender)

    def _on_admin(self, sender: str, body: dict[str, Any]) -> None:
        request_id = body.get("id")
        if not isinstance(request_id, str) or len(request_id) > _MAX_ADMIN_TEXT:
            raise ProtocolViolation("malformed", "admin request without id")
        if self.view is None or not self.view.is_active_member(sender):
            # Members forward operators' requests; nobody else may ask.
            raise ProtocolViolation("not_a_member", f"admin request from non-member {sender}")
        by = str(body.get("by", sender))[:_MAX_ADMIN_TEXT]
        d = self._admin_local(str(body.get("op"))[:_MAX_ADMIN_TEXT], body.get("target"), by)

        def reply(result: Any) -> None:
            if isinstance(result, dict):
                self._send_control(
                    sender, {"k": "admin_result", "id": request_id, "ok": True, "result": result}
                )
            else:
                error = result.value
                self._send_control(
                    sender,
                    {
                        "k": "admin_result",
                        "id": request_id,
                        "ok": False,
                        "error": type(error).__name__,
                        "message": str(error)[:300],
                    },
                )

        d.addBoth(reply)

    def _on_admin_result(self, sender: str, body: dict[str, Any]) -> None:
        entry = self._admin_requests.pop(str(body.get("id")), None)
        if entry is None:
            return
        d, timer = entry
        if timer.active():
            timer.cancel()
        if body.get("ok") is True:
            result = body.get("result")
            d.callback(result if isinstance(result, dict) else {})
        else:
            errors = {
                "NoQuorum": NoQuorum,
                "UnknownMember": UnknownMember,
                "NotJoined": NotJoined,
                "ValueError": ValueError,
            }
            error_type = errors.get(str(body.get("error")), ClustronError)
            d.errback(error_type(str(body.get("message"))))

    _handlers: dict[str, Callable[[Membership, str, dict[str, Any]], None]] = {
        "join": _on_join,
        "join_refused": _on_join_refused,
        "view": _on_view,
        "view_req": _on_view_req,
        "vote_req": _on_vote_req,
        "vote": _on_vote,
        "prevote_req": _on_prevote_req,
        "prevote": _on_prevote,
        "abdicate": _on_abdicate,
        "leave": _on_leave,
        "alive": _on_alive,
        "merge": _on_merge,
        "probe_req": _on_probe_req,
        "probe": _on_probe,
        "probe_ack": _on_probe_ack,
        "admin": _on_admin,
        "admin_result": _on_admin_result,
    }

    # -- admin plumbing ----------------------------------------------------------------------

    def _admin(self, op: str, target: str | None, by: str = "operator") -> Deferred[dict[str, Any]]:
        if self.view is None or not self.joined:
            from twisted.internet.defer import fail

            return fail(NotJoined("this node is not a member of a view"))
        if self.is_coordinator:
            return self._admin_local(op, target, by)
        if len(self._admin_requests) >= _MAX_PENDING_ADMIN:
            from twisted.internet.defer import fail

            return fail(ClustronError("too many admin requests in flight"))
        self._admin_counter += 1
        request_id = f"{self.node_id}-{self._admin_counter}"
        d: Deferred[dict[str, Any]] = Deferred()

        def timed_out() -> None:
            entry = self._admin_requests.pop(request_id, None)
            if entry is not None:
                entry[0].errback(ClustronError(f"coordinator {coordinator} did not answer"))

        coordinator = self.view.coordinator
        timer = self.clock.callLater(self.config.membership.join_timeout * 2, timed_out)
        self._admin_requests[request_id] = (d, timer)
        self._send_control(
            coordinator, {"k": "admin", "id": request_id, "op": op, "target": target, "by": by}
        )
        return d

    def _admin_local(self, op: str, target: Any, by: str) -> Deferred[dict[str, Any]]:
        from twisted.internet.defer import fail, succeed

        view = self.view
        if view is None or not self.is_coordinator:
            return fail(NotJoined("this node does not coordinate"))
        if not self._acting:
            return fail(NoQuorum("the coordinator does not have quorum"))
        if target is not None and not isinstance(target, str):
            return fail(ValueError("target must be a node id"))
        if op == "election":
            if target is not None:
                member = view.member(target)
                if member is None or not member.active:
                    return fail(UnknownMember(f"{target!r} is not a member"))
                if member.draining:
                    return fail(ValueError(f"{target!r} is draining and cannot be elected"))
            eligible = [m for m in view.active_members() if not m.draining]
            successor = target or self.strategy.choose(eligible)
            self._abdicate(successor)
            return succeed(
                {"action": "election", "epoch": view.epoch, "prefer": target, "expected": successor}
            )
        if target is None:
            return fail(ValueError(f"{op} needs a node id"))
        member = view.member(target)
        if member is None or not member.active:
            return fail(UnknownMember(f"{target!r} is not a member"))
        if op == "remove":
            if target == self.node_id:
                self.leave()
                return succeed({"action": "remove", "node_id": target, "view": list(view.id)})
            self._pending_removals[target] = f"removed by {by}"
            self._send_control(target, {"k": "view", "view": view.to_dict()})
        elif op == "drain":
            self._pending_drains[target] = (True, f"drained by {by}")
        else:
            return fail(ValueError(f"unknown admin operation {op!r}"))
        self._evaluate(self.clock.seconds())
        assert self.view is not None
        return succeed({"action": op, "node_id": target, "view": list(self.view.id)})

    # -- events ---------------------------------------------------------------------------

    def _emit_view_events(
        self, old: View | None, new: View, merged_from: list[dict[str, Any]] | None
    ) -> None:
        view_id = list(new.id)
        if old is None:
            self._emit(
                {
                    "type": "joined",
                    "node_id": self.node_id,
                    "view": view_id,
                    "reason": "this node joined",
                }
            )
        if old is None or old.coordinator != new.coordinator or old.epoch != new.epoch:
            self._emit(
                {
                    "type": "coordinator_changed",
                    "node_id": new.coordinator,
                    "view": view_id,
                    "previous": old.coordinator if old else None,
                    "reason": f"epoch {new.epoch}",
                }
            )
        before = {m.node_id: m for m in old.members} if old else {}
        for member in new.members:
            prior = before.get(member.node_id)
            kind = None
            if prior is None or (not prior.active and member.active):
                kind = "member_joined" if member.active else None
            elif prior.state != member.state:
                kind = {
                    SUSPECT: "member_suspected",
                    ALIVE: "member_alive",
                    DEAD: "member_removed"
                    if member.reason.startswith("removed by")
                    else "member_died",
                    LEAVING: "member_left",
                }.get(member.state)
            elif prior.draining != member.draining:
                kind = "member_draining"
            elif prior.incarnation != member.incarnation:
                kind = "member_restarted" if member.reason.startswith("restarted") else None
            if kind:
                self._emit(
                    {
                        "type": kind,
                        "node_id": member.node_id,
                        "view": view_id,
                        "reason": member.reason,
                    }
                )
        for node_id, prior in before.items():
            if new.member(node_id) is None:
                self._emit(
                    {
                        "type": "member_reaped",
                        "node_id": node_id,
                        "view": view_id,
                        "reason": prior.reason,
                    }
                )
        if merged_from:
            self._emit(
                {
                    "type": "merged",
                    "view": view_id,
                    "merged_from": merged_from,
                    "reason": "partition healed",
                }
            )
        self._emit(
            {
                "type": "view_changed",
                "view": view_id,
                "coordinator": new.coordinator,
                "members": [m.node_id for m in new.active_members()],
            }
        )

    def _emit(self, event: dict[str, Any]) -> None:
        event.setdefault("time", self.clock.seconds())
        event.setdefault("observer", self.node_id)
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                self.log.failure("membership event subscriber failed")

    def _trace(self, kind: str, **fields: Any) -> None:
        fields["node_id"] = self.node_id
        fields["time"] = self.clock.seconds()
        for observer in self.observers:
            observer(kind, fields)

    def _update_quorum_metrics(self) -> None:
        status = self.quorum_status() if self.view is not None else None
        has = bool(status and status["has_quorum"])
        self.metrics.has_quorum.set(1 if has else 0)
        if self._last_quorum is not None and has != self._last_quorum and self.joined:
            self._emit(
                {
                    "type": "quorum_regained" if has else "quorum_lost",
                    "node_id": self.node_id,
                    "reason": (
                        f"{status['present'] if status else 0} of "
                        f"{status['required'] if status else 0} needed"
                    ),
                }
            )
        self._last_quorum = has

    # -- heartbeats and detection ------------------------------------------------------------

    def _heard(self, node_id: str) -> None:
        now = self.clock.seconds()
        if self.detector.heard(node_id, now):
            self.metrics.suspicions_refuted.inc()
        info = self.peers.get(node_id)
        if info is not None:
            info.heard_at = now

    def _heartbeat_body(self) -> dict[str, Any]:
        view = self.view if self.joined else None
        coordinator_address = coordinator_incarnation = None
        if view is not None:
            coordinator = view.member(view.coordinator)
            if coordinator is not None:
                coordinator_address = coordinator.address
                coordinator_incarnation = coordinator.incarnation
        return {
            "v": list(view.id) if view else None,
            "c": view.coordinator if view else None,
            "ca": coordinator_address,
            "ci": coordinator_incarnation,
            "a": self.acting,
            "j": view is not None,
            "i": self.incarnation,
            "l": self._life_incarnation,
        }

    def _send_heartbeats(self) -> None:
        body = self._heartbeat_body()
        for node_id in sorted(self._connected()):
            self._send(node_id, HEARTBEAT, self._timed(body, node_id), True)

    def _send_heartbeat(self, node_id: str) -> None:
        self._send(node_id, HEARTBEAT, self._timed(self._heartbeat_body(), node_id), True)

    def _timed(self, body: dict[str, Any], node_id: str) -> dict[str, Any]:
        """
        Add round-trip timing to a heartbeat: our send time, and the peer's
        last send time echoed with how long we held it, so the peer measures
        the round trip on its own clock.
        """
        now = self.clock.seconds()
        timed = dict(body)
        timed["t"] = now
        info = self.peers.get(node_id)
        if info is not None and info.last_t is not None:
            timed["e"] = info.last_t
            timed["h"] = now - info.last_t_at
        return timed

    def _on_transition(self, transition: fd.Transition, now: float) -> None:
        self.log.info(
            "{node} {old} -> {new}: {reason}",
            node=transition.node_id,
            old=transition.old,
            new=transition.new,
            reason=transition.reason,
        )
        if transition.new == fd.SUSPECT and transition.old == fd.ALIVE:
            self.metrics.suspicions.inc()
            self._probe_indirectly(transition.node_id)
        self._trace(
            "opinion",
            target=transition.node_id,
            old=transition.old,
            new=transition.new,
            reason=transition.reason,
        )

    def _probe_indirectly(self, target: str) -> None:
        if self.view is None:
            return
        connected = self._connected()
        helpers = [
            node_id
            for node_id in self.view.active_ids()
            if node_id not in (self.node_id, target)
            and node_id in connected
            and self.detector.state(node_id) == fd.ALIVE
        ]
        self._rng.shuffle(helpers)
        nonce = self._rng.getrandbits(32)
        for helper in helpers[: self.config.failure_detector.indirect_probes]:
            self._send_control(helper, {"k": "probe_req", "target": target, "nonce": nonce})

    # -- small things ------------------------------------------------------------------------------

    def _send_control(self, node_id: str, body: dict[str, Any]) -> bool:
        if node_id == self.node_id:
            return False
        return self._send(node_id, CONTROL, body, False)

    def life_of(self, node_id: str) -> int | None:
        """
        The incarnation C{node_id}'s process started with, if known.
        """
        if node_id == self.node_id:
            return self._life_incarnation
        info = self.peers.get(node_id)
        return info.life if info is not None else None

    def _remember_vote(self, epoch: int, candidate: str) -> None:
        self._votes[epoch] = (candidate, self.life_of(candidate))
        for old in sorted(self._votes)[:-_VOTE_MEMORY]:
            del self._votes[old]

    def _want_address(self, address: str) -> None:
        try:
            parsed = _split(address)
        except ValueError:
            return
        current = set()
        if self.view is not None:
            current = {
                _split(m.address)
                for m in self.view.members
                if m.node_id != self.node_id and m.active
            }
        self._set_view_addresses(current | {parsed})


#: The kinds of CONTROL message membership understands (fuzzers and
#: hostile-input tests draw from it).
CONTROL_KINDS: tuple[str, ...] = tuple(Membership._handlers)


def _is_incarnation(value: Any) -> TypeGuard[int]:
    """
    Whether a peer-sent C{value} is an incarnation a view may carry.
    """
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_INCARNATION


def _is_nonce(value: Any) -> bool:
    """
    Whether a peer-sent C{value} is a probe nonce this node could have drawn.
    """
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_NONCE


def _seconds(value: Any) -> float | None:
    """
    A peer-sent time as a float, or None unless it is a finite number of at
    most L{_MAX_SECONDS} in size.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int) and abs(value) > _MAX_SECONDS:
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and abs(seconds) <= _MAX_SECONDS else None


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def rank_members(strategy: IElectionStrategy, members: Iterable[Member]) -> list[str]:
    """
    Node ids ordered by election rank, highest first.
    """
    return [m.node_id for m in sorted(members, key=strategy.rank, reverse=True)]
