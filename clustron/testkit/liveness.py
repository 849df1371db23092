"""
Liveness: what must eventually happen once the faults stop.

Safety (nothing bad ever happens) is checked after every event by
L{clustron.testkit.checkers}. Liveness can only be judged at the end of a
run, after the network is healed, paused nodes resumed and slow nodes made
normal: L{LivenessChecker} records every broadcast, delivery and view change
while the faults run, and L{check_liveness} then drives the healed cluster
and reports, as strings:

  - no single view with an acting coordinator, agreed by every live node,
    within the bound;
  - a crashed (not restarted) node still listed as an active member by a
    live node;
  - the members changing again once the cluster had settled (agreed on
    one view for a C{join_timeout}) with no fault left;
  - a probe (one broadcast of each order from every live node, and a
    request from each node to the next) not delivered to, or not answered
    by, every member within the bound;
  - a reliable FIFO or causal broadcast sent during the faults that was
    I{owed} to a member and never delivered. A broadcast from sender S at
    time t is owed to member R when S and R are both alive at the end (same
    process, no crash), R was in S's view at t (this life of R), neither S
    nor R left the cluster after t, and every view S accepted after t lists
    R and every view R accepted after t lists S: no membership change ever
    released S from delivering it. A causal broadcast is owed only if
    everything in its causal past (computed here from deliveries, not taken
    from the nodes) was delivered to R or is itself owed to R;
  - a total-order broadcast whose sender is alive at the end not
    delivered (its Deferred never fired);
  - members that stayed in the view disagreeing on a total-order epoch: for
    each epoch E, the live nodes whose id is an active member of every
    view installed from E's first view to the end, with this life of the
    node, must have delivered exactly the same positions of E.

These are exactly the promises of DESIGN sections 4 and 5; nothing weaker
than a promise is reported.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from clustron.errors import DeliveryFailed
from clustron.messaging.message import Message
from clustron.node import ClusterNode
from clustron.testkit.checkers import MembershipChecker
from clustron.testkit.cluster import SimCluster

__all__ = ["PROBE_TOPIC", "Broadcast", "LivenessChecker", "check_liveness", "describe_views"]

#: The topic of the probe messages L{check_liveness} sends.
PROBE_TOPIC = "clustron.testkit.probe"


@attrs.define
class Broadcast:
    """
    One broadcast, as the liveness checker saw it sent.

    @ivar id: the message id.
    @ivar sender: the sending node's id.
    @ivar order: C{fifo}, C{causal} or C{total}.
    @ivar time: when it was sent.
    @ivar members: the active members of the sender's view then, with the
        incarnation the view listed.
    @ivar past: for causal broadcasts, the causal broadcasts that happened
        before it (delivered by the sender, or sent by it, before).
    @ivar outcome: C{None} while its Deferred has not fired, C{"ok"}, or
        the failure's exception type name.
    """

    id: str
    sender: str
    order: str
    time: float
    members: dict[str, int]
    past: frozenset[str]
    sender_key: int
    outcome: str | None = None


@attrs.define
class _Life:
    """
    One node object (one life of a node id) as seen by the checker.
    """

    node: Any
    created: float
    incarnation: int
    delivered: set[str] = attrs.Factory(set)
    total: dict[int, list[int]] = attrs.Factory(dict)
    views: list[tuple[float, frozenset[str]]] = attrs.Factory(list)
    left: list[float] = attrs.Factory(list)
    sent_causal: set[str] = attrs.Factory(set)
    delivered_causal: set[str] = attrs.Factory(set)


class LivenessChecker:
    """
    Records what liveness is judged on: broadcasts, deliveries, accepted
    views and departures of every node life. Attach it to every node (with
    L{SimCluster.on_node}) before the nodes start.

    @ivar broadcasts: every broadcast seen, by message id.
    """

    def __init__(self, membership: MembershipChecker, clock: IReactorTime | None = None) -> None:
        """
        @param membership: the membership checker of the same cluster (its
            record of installed views decides who stayed in the view); give
            it the same C{clock}.
        @param clock: the simulation's clock. Times of different nodes are
            compared, so with clock skew this must be given (without it, the
            nodes' own clocks are used).
        """
        self.membership = membership
        self.clock = clock
        self.broadcasts: dict[str, Broadcast] = {}
        self._lives: dict[int, _Life] = {}

    def attach(self, node: Any) -> None:
        """
        Observe one node object (call for every node, restarted ones too).
        """
        key = id(node)
        life = _Life(node, self._now(node), node.messenger.incarnation)
        self._lives[key] = life

        def on_message(kind: str, fields: dict[str, Any]) -> None:
            if kind == "broadcast":
                self._sent(life, key, fields)
            elif kind == "deliver":
                life.delivered.add(fields["id"])
                if fields["order"] == "causal":
                    life.delivered_causal.add(fields["id"])
                position = fields.get("position")
                if fields["order"] == "total" and position is not None:
                    life.total.setdefault(position.epoch, []).append(position.seq)

        def on_membership(kind: str, fields: dict[str, Any]) -> None:
            if kind == "accept":
                life.views.append((self._now(node), frozenset(fields["view"].active_ids())))

        def on_event(event: dict[str, Any]) -> None:
            if event["type"] == "left_cluster":
                life.left.append(self._now(node))

        node.messenger.observers.append(on_message)
        node.membership.observers.append(on_membership)
        node.subscribe(on_event)

    def _now(self, node: Any) -> float:
        return self.clock.seconds() if self.clock is not None else float(node.reactor.seconds())

    def _sent(self, life: _Life, key: int, fields: dict[str, Any]) -> None:
        node = life.node
        view = node.membership.view
        members = {m.node_id: m.incarnation for m in view.active_members()} if view else {}
        order = fields["order"]
        past: frozenset[str] = frozenset()
        if order == "causal":
            past = frozenset(life.delivered_causal | life.sent_causal)
            life.sent_causal.add(fields["id"])
        self.broadcasts[fields["id"]] = Broadcast(
            fields["id"], node.node_id, order, self._now(node), members, past, key
        )

    def broadcast(self, node: Any, topic: str, body: Any, order: str) -> Deferred[None]:
        """
        Broadcast through C{node} and record the outcome of its Deferred.

        @return: the broadcast's Deferred (its failures are consumed here;
            add callbacks before it fires to see them).
        """
        before = len(self.broadcasts)
        d = node.broadcast(topic, body, order=order)
        if len(self.broadcasts) > before:
            record = list(self.broadcasts.values())[-1]

            def settled(result: Any) -> None:
                if isinstance(result, Failure):
                    record.outcome = result.type.__name__
                else:
                    record.outcome = "ok"

            d.addBoth(settled)
        else:
            d.addErrback(lambda failure: None)
        return d

    # -- judging --------------------------------------------------------------

    def _life_of(self, node: Any) -> _Life | None:
        return self._lives.get(id(node))

    def owed_violations(self, cluster: SimCluster, exclude: Collection[str] = ()) -> list[str]:
        """
        @param exclude: message ids not to judge (the probes, reported on
            their own).
        @return: one line per owed broadcast not delivered (see the module
            docstring), and per total-order broadcast of a live sender that
            never completed.
        """
        live = {id(n): self._lives[id(n)] for n in cluster.live() if id(n) in self._lives}
        by_id = {life.node.node_id: life for life in live.values()}
        violations = []
        memo: dict[tuple[str, str], bool] = {}
        for record in self.broadcasts.values():
            if record.id in exclude or record.sender_key not in live:
                continue
            if record.order == "total":
                if record.outcome is None:
                    violations.append(
                        f"total-order broadcast {record.id} of {record.sender} (sent at "
                        f"t={record.time:.3f}) never completed: its sender is alive but never "
                        "delivered it"
                    )
                continue
            if record.outcome not in (None, "ok", DeliveryFailed.__name__):
                continue
            for receiver in sorted(by_id):
                life = by_id[receiver]
                if record.id in life.delivered:
                    continue
                if self._owed(record, life, live, memo):
                    violations.append(
                        f"{record.order} broadcast {record.id} of {record.sender} (sent at "
                        f"t={record.time:.3f}) was never delivered to {receiver}, which stayed in "
                        "the sender's view"
                    )
        return violations

    def _owed(
        self,
        record: Broadcast,
        receiver: _Life,
        live: dict[int, _Life],
        memo: dict[tuple[str, str], bool],
    ) -> bool:
        key = (record.id, receiver.node.node_id)
        if key in memo:
            return memo[key]
        memo[key] = False
        sender = live.get(record.sender_key)
        owed = sender is not None and (
            sender is receiver or self._owed_between(record, sender, receiver)
        )
        if owed and record.order == "causal":
            for earlier in sorted(record.past):
                if earlier in receiver.delivered:
                    continue
                past = self.broadcasts.get(earlier)
                if past is None or not self._owed(past, receiver, live, memo):
                    owed = False
                    break
        memo[key] = owed
        return owed

    def _owed_between(self, record: Broadcast, sender: _Life, receiver: _Life) -> bool:
        name = receiver.node.node_id
        listed = record.members.get(name)
        if listed is None or listed < receiver.incarnation or receiver.created >= record.time:
            return False
        after = record.time
        if any(t > after for t in sender.left) or any(t > after for t in receiver.left):
            return False
        if any(t > after and name not in ids for t, ids in sender.views):
            return False
        return not any(t > after and record.sender not in ids for t, ids in receiver.views)

    def total_agreement_violations(self, cluster: SimCluster) -> list[str]:
        """
        @return: one line per total-order epoch on which two nodes that
            stayed in the view (see the module docstring) delivered
            different positions.
        """
        installs = sorted(self.membership.installed, key=lambda item: (item[0], item[1].id))
        lives = [self._lives[id(n)] for n in cluster.live() if id(n) in self._lives]
        violations = []
        epochs = sorted({view.epoch for _, view in installs})
        for epoch in epochs:
            start = min(t for t, view in installs if view.epoch == epoch)
            later = [view for t, view in installs if t >= start]
            stayed = []
            for life in lives:
                name = life.node.node_id
                if life.created >= start:
                    continue
                if all(
                    view.is_active_member(name)
                    and (member := view.member(name)) is not None
                    and member.incarnation >= life.incarnation
                    for view in later
                ):
                    stayed.append(life)
            groups: dict[tuple[int, ...], list[str]] = {}
            for life in stayed:
                groups.setdefault(tuple(sorted(life.total.get(epoch, []))), []).append(
                    life.node.node_id
                )
            if len(groups) < 2:
                continue
            union = set().union(*(set(positions) for positions in groups))
            shown = []
            for positions, names in sorted(groups.items(), key=lambda kv: (-len(kv[0]), kv[1])):
                missing = sorted(union - set(positions))
                shown.append(
                    f"{','.join(sorted(names))} {'has' if len(names) == 1 else 'have'} "
                    f"{len(positions)} (miss{'es' if len(names) == 1 else ''} "
                    f"{missing[:10] if missing else 'none'}{' ...' if len(missing) > 10 else ''})"
                )
            violations.append(
                f"total order epoch {epoch}: members that stayed in the view delivered "
                f"different positions: {'; '.join(shown)}"
            )
        return violations


def describe_views(cluster: SimCluster) -> str:
    """
    @return: the live nodes' views on one line, nodes that see the same
        thing grouped, e.g. C{n1,n2: 3.2 coord n5 [n1,n2,n5]; n5: 3.2 coord n5
        [n1,n2,n5] acting}. A member list of more than ten is shown as its
        size and how it differs from the live nodes.
    """
    live = [node.node_id for node in cluster.live()]
    groups: dict[str, list[str]] = {}
    for node in cluster.live():
        view = node.view
        state = cluster.host(node.node_id).state
        suffix = "" if state == "up" else f" ({state})"
        if view is None or not node.membership.joined:
            groups.setdefault(f"no view{suffix}", []).append(node.node_id)
            continue
        members = list(view.active_ids())
        if len(members) <= 10:
            shown = f"[{','.join(members)}]"
        else:
            missing = [n for n in live if n not in members]
            extra = [n for n in members if n not in live]
            shown = f"[{len(members)} members"
            shown += f", without {','.join(missing)}" if missing else ""
            shown += f", with not-live {','.join(extra)}" if extra else ""
            shown += "]"
        acting = " acting" if node.membership.acting else ""
        key = f"{view.epoch}.{view.seq} coord {view.coordinator} {shown}{acting}{suffix}"
        groups.setdefault(key, []).append(node.node_id)
    return "; ".join(f"{','.join(nodes)}: {key}" for key, nodes in groups.items())


def _snapshot(cluster: SimCluster) -> tuple[Any, ...]:
    views: list[tuple[Any, ...]] = []
    for node in cluster.live():
        view = node.view
        if view is None or not node.membership.joined:
            views.append((node.node_id, None))
        else:
            views.append((node.node_id, view.epoch, view.coordinator, tuple(view.active_ids())))
    return tuple(views)


def _members(cluster: SimCluster) -> tuple[Any, ...]:
    return tuple(
        (node.node_id, tuple(node.view.active_ids()) if node.view is not None else None)
        for node in cluster.live()
    )


def _settle(cluster: SimCluster, bound: float) -> bool:
    """
    Run until the cluster has converged and stayed so, with the same view
    epoch, coordinator and members, for the nodes' C{join_timeout} (an
    election already under way when the cluster first looks converged
    finishes within it), or until C{bound} seconds pass.

    @return: whether it settled.
    """
    clock = cluster.clock
    deadline = clock.seconds() + bound
    settle = max((n.config.membership.join_timeout for n in cluster.live()), default=1.0)
    while clock.seconds() <= deadline:
        if not cluster.run_until(cluster.converged, max(0.0, deadline - clock.seconds())):
            return False
        snapshot = _snapshot(cluster)
        cluster.run(settle)
        if cluster.converged() and _snapshot(cluster) == snapshot:
            return True
    return False


def check_liveness(
    cluster: SimCluster,
    checker: LivenessChecker,
    bound: float,
    probe_time: float = 10.0,
) -> list[str]:
    """
    Drive a healed cluster and report every liveness promise it breaks (see
    the module docstring). Call it after healing the network, resuming
    paused nodes and making slow nodes normal; it runs the clock for at most
    C{bound + probe_time} simulated seconds.

    @param bound: seconds within which one view with an acting coordinator
        must be agreed by every live node.
    @param probe_time: seconds the probe messages get to be delivered (and
        owed broadcasts to catch up).
    @return: the violations, as strings.
    """
    start = cluster.clock.seconds()
    if not _settle(cluster, bound):
        return [
            f"no single view with an acting coordinator agreed by every live node within "
            f"{bound:g} s after healing (t={start:.3f}): {describe_views(cluster)}"
        ]
    violations = []
    for node in cluster.live():
        view = node.view
        assert view is not None
        for gone in sorted(cluster.crashed):
            if view.is_active_member(gone):
                violations.append(f"{node.node_id} still lists crashed {gone} as an active member")
    before = _members(cluster)
    shown_before = describe_views(cluster)
    probes: dict[str, tuple[str, str]] = {}
    replies: list[str] = []
    answers: dict[str, Any] = {}
    live = cluster.live()
    for node in live:

        def probe_reply(message: Message, node: ClusterNode = node) -> list[Any]:
            return [node.node_id, message.body]

        node.on_message(PROBE_TOPIC, probe_reply)
    for index, node in enumerate(live):
        for order in ("fifo", "causal", "total"):
            record_count = len(checker.broadcasts)
            checker.broadcast(node, PROBE_TOPIC, f"{node.node_id}:{order}", order)
            if len(checker.broadcasts) > record_count:
                probes[list(checker.broadcasts)[-1]] = (node.node_id, order)
            else:
                violations.append(f"{node.node_id} could not broadcast a {order} probe")
        target = live[(index + 1) % len(live)].node_id
        tag = f"{node.node_id}->{target}"
        replies.append(tag)

        def answered(result: Any, tag: str = tag) -> None:
            answers[tag] = result

        node.request(target, PROBE_TOPIC, tag, timeout=probe_time).addBoth(answered)

    def all_delivered() -> bool:
        lives = [checker._life_of(n) for n in live]
        return len(answers) == len(replies) and all(
            life is not None and probe in life.delivered for life in lives for probe in probes
        )

    deadline = cluster.clock.seconds() + probe_time
    while cluster.clock.seconds() < deadline and not all_delivered():
        cluster.run(min(0.25, deadline - cluster.clock.seconds()))
    # Give owed broadcasts the rest of the time to catch up.
    if cluster.clock.seconds() < deadline:
        owed = checker.owed_violations(cluster, probes)
        while owed and cluster.clock.seconds() < deadline:
            cluster.run(min(0.5, deadline - cluster.clock.seconds()))
            owed = checker.owed_violations(cluster, probes)
    if _members(cluster) != before:
        violations.append(
            f"the members changed after the cluster had settled, with no fault left: before: "
            f"{shown_before}; after: {describe_views(cluster)}"
        )
    for node in live:
        life = checker._life_of(node)
        for probe, (sender, order) in probes.items():
            if life is None or probe not in life.delivered:
                violations.append(
                    f"{order} probe {probe} of {sender} not delivered to {node.node_id} within "
                    f"{probe_time:g} s of convergence"
                )
    for tag in replies:
        result = answers.get(tag)
        target = tag.split("->")[1]
        if result is None:
            violations.append(f"probe request {tag} got no answer within {probe_time:g} s")
        elif isinstance(result, Failure):
            violations.append(f"probe request {tag} failed: {result.type.__name__}: {result.value}")
        elif result != [target, tag]:
            violations.append(f"probe request {tag} got a wrong reply {result!r}")
    violations.extend(checker.owed_violations(cluster, probes))
    violations.extend(checker.total_agreement_violations(cluster))
    return violations
