"""
The heartbeat failure detector, sans-IO.

It is told when each watched peer was last heard from (directly, or
indirectly through another member's probe) and when a dial to a peer was
refused, and on each L{FailureDetector.check} it says which peers changed
between C{alive}, C{suspect} and C{dead}, with the reason in words:

- alive -> suspect: nothing heard for C{suspect_after} seconds, or the
  connection was lost and redialling is refused (a killed process: fast).
- suspect -> dead: nothing heard, directly or through an indirect probe, for
  C{dead_after} seconds (or C{probe_timeout} after a refused redial).
- suspect/dead -> alive: anything heard again.

The detector only holds opinions; the coordinator turns them into views.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

ALIVE = "alive"
SUSPECT = "suspect"
DEAD = "dead"


@attrs.frozen
class Transition:
    """
    A change of opinion about one peer.

    @ivar node_id: the peer.
    @ivar old: the previous state.
    @ivar new: the new state.
    @ivar reason: what was observed, in words.
    """

    node_id: str
    old: str
    new: str
    reason: str


@attrs.define
class _Watch:
    last_heard: float
    state: str = ALIVE
    suspected_at: float | None = None
    refused_at: float | None = None
    refused_reason: str = ""
    via: str | None = None
    reason: str = ""


class FailureDetector:
    """
    Opinions about the liveness of a set of peers.

    @ivar heartbeat_interval: seconds between heartbeats.
    @ivar suspect_after: silence before suspicion.
    @ivar dead_after: silence before death.
    @ivar probe_timeout: how long indirect probes get after a refused redial.
    """

    def __init__(
        self,
        observer: str,
        heartbeat_interval: float,
        suspect_after: float,
        dead_after: float,
        probe_timeout: float,
    ) -> None:
        self.observer = observer
        self.heartbeat_interval = heartbeat_interval
        self.suspect_after = suspect_after
        self.dead_after = dead_after
        self.probe_timeout = probe_timeout
        self._watches: dict[str, _Watch] = {}

    def reconfigure(
        self,
        heartbeat_interval: float,
        suspect_after: float,
        dead_after: float,
        probe_timeout: float,
    ) -> None:
        """
        Apply new timings (configuration reload); opinions are kept.
        """
        self.heartbeat_interval = heartbeat_interval
        self.suspect_after = suspect_after
        self.dead_after = dead_after
        self.probe_timeout = probe_timeout

    def watch(self, node_ids: Iterable[str], now: float) -> None:
        """
        Watch exactly these peers; newly watched ones start alive, as if just
        heard from.
        """
        wanted = set(node_ids)
        for node_id in list(self._watches):
            if node_id not in wanted:
                del self._watches[node_id]
        for node_id in sorted(wanted):
            if node_id not in self._watches:
                self._watches[node_id] = _Watch(last_heard=now)

    def forget(self, node_id: str, now: float) -> None:
        """
        Start over for one peer (it restarted with a new incarnation).
        """
        if node_id in self._watches:
            self._watches[node_id] = _Watch(last_heard=now)

    def watched(self) -> list[str]:
        """
        The watched peers, sorted.
        """
        return sorted(self._watches)

    def heard(self, node_id: str, now: float, via: str | None = None) -> bool:
        """
        Something arrived from C{node_id} (directly, or C{via} another
        member's indirect probe).

        @return: True when this refutes a suspicion (or a death verdict).
        """
        watch = self._watches.get(node_id)
        if watch is None:
            return False
        if now > watch.last_heard:
            watch.last_heard = now
        watch.via = via
        if via is None:
            watch.refused_at = None
        return watch.state != ALIVE

    def refused(self, node_id: str, now: float, reason: str) -> None:
        """
        A dial to the peer's address failed while no connection to it exists.
        """
        watch = self._watches.get(node_id)
        if watch is None:
            return
        if watch.refused_at is None:
            watch.refused_at = now
            watch.refused_reason = reason

    def state(self, node_id: str) -> str:
        """
        The current opinion of a peer (unwatched peers are alive).
        """
        watch = self._watches.get(node_id)
        return ALIVE if watch is None else watch.state

    def reason(self, node_id: str) -> str:
        """
        Why the peer is in its current state.
        """
        watch = self._watches.get(node_id)
        return "" if watch is None else watch.reason

    def silence(self, node_id: str, now: float) -> float:
        """
        Seconds since the peer was last heard from.
        """
        watch = self._watches.get(node_id)
        return 0.0 if watch is None else max(0.0, now - watch.last_heard)

    def check(self, now: float) -> list[Transition]:
        """
        Re-evaluate every watched peer.

        @return: the opinions that changed, in node id order.
        """
        transitions = []
        for node_id in sorted(self._watches):
            watch = self._watches[node_id]
            silence = now - watch.last_heard
            new = ALIVE
            reason = ""
            refused = watch.refused_at is not None and watch.refused_at >= watch.last_heard
            if refused:
                assert watch.refused_at is not None
                since_refused = now - watch.refused_at
                if since_refused >= self.probe_timeout and silence >= self.probe_timeout:
                    new = DEAD
                    reason = (
                        f"dead according to {self.observer}: connection lost and redial "
                        f"refused ({watch.refused_reason}); no indirect answer in "
                        f"{since_refused:.2f} s"
                    )
                else:
                    new = SUSPECT
                    reason = (
                        f"suspected by {self.observer}: connection lost and redial refused "
                        f"({watch.refused_reason})"
                    )
            elif silence >= self.dead_after:
                new = DEAD
                missed = int(silence / self.heartbeat_interval)
                reason = (
                    f"dead according to {self.observer}: nothing heard for {silence:.2f} s "
                    f"({missed} heartbeats missed, dead_after {self.dead_after} s), "
                    "indirect probes unanswered"
                )
            elif silence >= self.suspect_after:
                new = SUSPECT
                missed = int(silence / self.heartbeat_interval)
                reason = (
                    f"suspected by {self.observer}: no heartbeat for {silence:.2f} s "
                    f"({missed} missed, suspect_after {self.suspect_after} s)"
                )
            if new != watch.state:
                old = watch.state
                if new == ALIVE:
                    reason = f"alive again according to {self.observer}" + (
                        f" (answered an indirect probe via {watch.via})" if watch.via else ""
                    )
                    watch.suspected_at = None
                elif old == ALIVE:
                    watch.suspected_at = now
                watch.state = new
                watch.reason = reason
                transitions.append(Transition(node_id, old, new, reason))
        return transitions
