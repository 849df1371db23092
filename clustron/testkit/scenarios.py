"""
Scenarios: a whole simulated run from one seed, judged by the checkers.

A scenario turns a seed into a plan (L{Plan}): fault steps and application
traffic over a fault phase of simulated seconds (see
L{clustron.testkit.faults}). L{run_seed} then

  1. starts an N-node L{SimCluster} and waits for it to form;
  2. plays the plan, with the membership and messaging checkers asserting
     the safety promises after every event;
  3. heals: restores every link, resumes paused nodes, makes slow nodes
     normal and, if crashed nodes leave less than a majority of the last
     view, restarts enough of them (a minority may stay crashed, to check
     they are declared dead);
  4. checks liveness (L{clustron.testkit.liveness.check_liveness});

and returns a L{SeedResult}. Everything random comes from the seed, so the
same scenario, seed and options give the same trace hash, on any machine and
whatever C{PYTHONHASHSEED} is::

    result = run_seed("mixed", 17, nodes=5)
    assert result.ok, result.violations

Scenarios (L{SCENARIOS}): C{quiet} (traffic, no faults), C{partitions},
C{crashes}, C{lossy}, C{clogging}, C{pauses} and C{mixed} (all of them,
plus slow nodes and clock skew).
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import provider

from clustron.errors import ClustronError
from clustron.testkit import faults
from clustron.testkit.checkers import MembershipChecker, MessagingChecker
from clustron.testkit.cluster import SimCluster
from clustron.testkit.faults import Step
from clustron.testkit.liveness import LivenessChecker, check_liveness, describe_views

__all__ = [
    "SCENARIOS",
    "Plan",
    "Scenario",
    "SeedResult",
    "plan_for",
    "replay_command",
    "run_seed",
]

#: The topic of the scenarios' application traffic.
APP_TOPIC = "app"
#: The topic of the scenarios' requests.
REQUEST_TOPIC = "app.echo"


@attrs.frozen
class Plan:
    """
    What a scenario does in its fault phase.

    @ivar faults: fault steps (see L{faults.apply}), sorted by time.
    @ivar traffic: application steps (C{broadcast} with C{node} and
        C{order}, C{request} and C{send} with C{node} and C{to}), sorted by
        time.
    @ivar keep_crashed: how many crashed nodes may stay crashed through
        the healing (the others are restarted).
    """

    faults: tuple[Step, ...]
    traffic: tuple[Step, ...]
    keep_crashed: int = 0

    def describe(self) -> list[str]:
        """
        @return: one line per fault step.
        """
        return [step.describe() for step in self.faults]


@attrs.frozen
class Scenario:
    """
    A named way of drawing a plan from a seed.

    @ivar name: the name given to C{clustron sim --scenario}.
    @ivar description: one line about it.
    @ivar faults: C{faults(rng, nodes, duration) -> (steps, keep_crashed)}.
    """

    name: str
    description: str
    faults: Callable[[random.Random, list[str], float], tuple[list[Step], int]]


@attrs.frozen
class SeedResult:
    """
    The outcome of one seed.

    @ivar seed: the seed.
    @ivar ok: whether no violation was found.
    @ivar violations: every violation, one line each.
    @ivar trace_hash: the simulated network's trace hash at the end.
    @ivar sim_seconds: simulated seconds run.
    @ivar wall_seconds: real seconds it took.
    @ivar scenario: the scenario's name.
    @ivar nodes: the cluster size.
    @ivar quorum: the nodes' C{membership.quorum}.
    @ivar duration: seconds of the fault phase.
    @ivar steps: the fault steps, one line each.
    @ivar events: the number of network trace events.
    @ivar recent: the last network trace lines.
    """

    seed: int
    ok: bool
    violations: list[str]
    trace_hash: str
    sim_seconds: float
    wall_seconds: float
    scenario: str = ""
    nodes: int = 0
    quorum: str | int = "majority"
    duration: float = 0.0
    steps: list[str] = attrs.field(factory=list)
    events: int = 0
    recent: list[str] = attrs.field(factory=list)

    @property
    def command(self) -> str:
        """
        The one-line command that replays this seed.
        """
        return replay_command(self.scenario, self.seed, self.nodes, self.quorum, self.duration)

    def to_json(self) -> dict[str, Any]:
        """
        @return: the result as plain data (for C{clustron sim --json}).
        """
        return {
            "seed": self.seed,
            "ok": self.ok,
            "violations": list(self.violations),
            "trace_hash": self.trace_hash,
            "scenario": self.scenario,
            "nodes": self.nodes,
            "quorum": self.quorum,
            "duration": self.duration,
            "sim_seconds": round(self.sim_seconds, 6),
            "wall_seconds": round(self.wall_seconds, 6),
            "events": self.events,
            "command": self.command,
        }


def replay_command(
    scenario: str, seed: int, nodes: int, quorum: str | int = "majority", duration: float = 10.0
) -> str:
    """
    @return: the C{clustron sim} command line that runs one seed again.
    """
    command = (
        f"clustron sim --nodes {nodes} --scenario {scenario} --seeds {seed} --duration {duration:g}"
    )
    if quorum != "majority":
        command += f" --quorum {quorum}"
    return command


# -- fault plans --------------------------------------------------------------------


def _minority(nodes: Sequence[str]) -> int:
    return (len(nodes) - 1) // 2


def _no_faults(rng: random.Random, nodes: list[str], duration: float) -> tuple[list[Step], int]:
    return [], 0


def _partition_step(rng: random.Random, nodes: list[str], at: float) -> Step:
    shape = rng.choice(("halves", "isolate_one", "majorities_ring", "bridge", "one_way"))
    if shape in ("majorities_ring", "one_way"):
        pairs = (
            faults.majorities_ring(nodes, rng)
            if shape == "majorities_ring"
            else faults.one_way(nodes, rng)
        )
        return Step(at, "cut", {"pairs": pairs, "shape": shape})
    groups = getattr(faults, shape)(nodes, rng)
    return Step(at, "partition", {"groups": groups, "shape": shape})


def _partitions(rng: random.Random, nodes: list[str], duration: float) -> tuple[list[Step], int]:
    steps = []
    at = rng.uniform(0.1, 1.0)
    while at < duration:
        if len(nodes) > 1:
            steps.append(_partition_step(rng, nodes, round(at, 6)))
        at += rng.uniform(1.0, 4.0)
        steps.append(Step(round(min(at, duration), 6), "heal"))
        at += rng.uniform(0.2, 2.0)
    return steps, 0


class _Machines:
    """
    What a plan has done to the machines so far: which are crashed or
    paused, so that every step it draws can apply.
    """

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = nodes
        self.crashed: list[str] = []
        self.paused: list[str] = []

    def up(self) -> list[str]:
        return [n for n in self.nodes if n not in self.crashed and n not in self.paused]

    def can_take_down(self) -> bool:
        return len(self.crashed) + len(self.paused) < _minority(self.nodes)


def _crash_episode(rng: random.Random, machines: _Machines, at: float, steps: list[Step]) -> None:
    if machines.crashed and (rng.random() < 0.5 or not machines.can_take_down()):
        node = rng.choice(machines.crashed)
        machines.crashed.remove(node)
        steps.append(Step(at, "restart", {"node": node, "wipe": rng.random() < 0.25}))
    elif machines.can_take_down():
        node = rng.choice(machines.up())
        machines.crashed.append(node)
        steps.append(Step(at, "crash", {"node": node}))


def _crashes(rng: random.Random, nodes: list[str], duration: float) -> tuple[list[Step], int]:
    machines = _Machines(nodes)
    steps: list[Step] = []
    at = rng.uniform(0.1, 1.0)
    while at < duration:
        _crash_episode(rng, machines, round(at, 6), steps)
        at += rng.uniform(0.5, 3.0)
    return steps, rng.randint(0, len(machines.crashed))


def _lossy(rng: random.Random, nodes: list[str], duration: float) -> tuple[list[Step], int]:
    steps = [Step(0.0, "links", faults.random_link_params(rng))]
    at = rng.uniform(1.0, 3.0)
    while at < duration:
        if rng.random() < 0.5:
            chosen = (
                sorted(rng.sample(nodes, k=max(2, len(nodes) // 2))) if len(nodes) > 2 else nodes
            )
            steps.append(
                Step(round(at, 6), "links", {"nodes": chosen, **faults.random_link_params(rng)})
            )
        else:
            steps.append(Step(round(at, 6), "links", faults.random_link_params(rng)))
        at += rng.uniform(1.0, 4.0)
    return steps, 0


def _clogging(rng: random.Random, nodes: list[str], duration: float) -> tuple[list[Step], int]:
    steps: list[Step] = []
    at = rng.uniform(0.1, 1.0)
    while at < duration:
        if rng.random() < 0.5 and len(nodes) > 1:
            a, b = rng.sample(nodes, 2)
            seconds = round(rng.uniform(0.1, 3.0), 6)
            steps.append(
                Step(round(at, 6), "clog", {"pairs": [(a, b), (b, a)], "seconds": seconds})
            )
            at += rng.uniform(0.2, 1.5)
        else:
            swizzle = faults.swizzle_clog(nodes, rng, at, hold=rng.uniform(0.2, 3.0))
            steps.extend(swizzle)
            at = swizzle[-1].at + rng.uniform(0.2, 1.5)
    return [s for s in steps if s.at < duration], 0


def _pauses(rng: random.Random, nodes: list[str], duration: float) -> tuple[list[Step], int]:
    machines = _Machines(nodes)
    steps: list[Step] = []
    at = rng.uniform(0.1, 1.0)
    while at < duration:
        if machines.paused and (rng.random() < 0.6 or not machines.can_take_down()):
            node = rng.choice(machines.paused)
            machines.paused.remove(node)
            steps.append(Step(round(at, 6), "resume", {"node": node}))
        elif machines.can_take_down():
            node = rng.choice(machines.up())
            machines.paused.append(node)
            steps.append(Step(round(at, 6), "pause", {"node": node}))
        at += rng.uniform(0.2, 3.0)
    return steps, 0


def _mixed(rng: random.Random, nodes: list[str], duration: float) -> tuple[list[Step], int]:
    machines = _Machines(nodes)
    steps: list[Step] = []
    for node in nodes:
        # Skews are relative, so drawing them from [0, 5) gives every
        # arrangement while keeping each host's clock (which starts at 0)
        # from going negative, which no real wall clock does.
        if rng.random() < 0.3:
            steps.append(
                Step(0.0, "skew", {"node": node, "seconds": round(rng.uniform(0.0, 5.0), 6)})
            )
    at = rng.uniform(0.1, 1.0)
    partitioned = False
    while at < duration:
        when = round(at, 6)
        kind = rng.choice(("partition", "crash", "links", "clog", "pause", "slow"))
        if kind == "partition":
            if partitioned:
                steps.append(Step(when, "heal"))
            elif len(nodes) > 1:
                steps.append(_partition_step(rng, nodes, when))
            partitioned = not partitioned
        elif kind == "crash":
            _crash_episode(rng, machines, when, steps)
        elif kind == "links":
            steps.append(Step(when, "links", faults.random_link_params(rng, max_loss=0.1)))
        elif kind == "clog" and len(nodes) > 1:
            a, b = rng.sample(nodes, 2)
            seconds = round(rng.uniform(0.1, 2.0), 6)
            steps.append(Step(when, "clog", {"pairs": [(a, b), (b, a)], "seconds": seconds}))
        elif kind == "pause":
            if machines.paused:
                node = machines.paused.pop(0)
                steps.append(Step(when, "resume", {"node": node}))
            elif machines.can_take_down():
                node = rng.choice(machines.up())
                machines.paused.append(node)
                steps.append(Step(when, "pause", {"node": node}))
        elif kind == "slow":
            node = rng.choice(nodes)
            delay = (
                faults.Uniform(0.0, round(rng.uniform(0.01, 0.3), 6)).spec()
                if rng.random() < 0.7
                else 0.0
            )
            steps.append(Step(when, "slow", {"node": node, "delay": delay}))
        at += rng.uniform(0.3, 2.0)
    return steps, rng.randint(0, len(machines.crashed))


#: Every scenario, by name.
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("quiet", "application traffic and no fault", _no_faults),
        Scenario(
            "partitions",
            "partitions of every shape (halves, isolate one, majorities ring, bridge, one way), "
            "each healed after a while",
            _partitions,
        ),
        Scenario(
            "crashes",
            "a minority of nodes crash and restart (same identity, or wiped to a new one)",
            _crashes,
        ),
        Scenario(
            "lossy", "links with random delay distributions, loss, duplication, reordering", _lossy
        ),
        Scenario("clogging", "links clogged for a while, and swizzle-clogs", _clogging),
        Scenario("pauses", "a minority of nodes paused (SIGSTOP) and resumed", _pauses),
        Scenario(
            "mixed",
            "all of the above, plus slow nodes and clock skew",
            _mixed,
        ),
    )
}


def _traffic(rng: random.Random, nodes: list[str], duration: float) -> list[Step]:
    steps = []
    at = rng.uniform(0.0, 0.3)
    while at < duration:
        node = rng.choice(nodes)
        kind = rng.random()
        if kind < 0.6:
            order = rng.choice(("fifo", "causal", "total"))
            steps.append(Step(round(at, 6), "broadcast", {"node": node, "order": order}))
        elif len(nodes) > 1:
            to = rng.choice([n for n in nodes if n != node])
            steps.append(
                Step(round(at, 6), "request" if kind < 0.85 else "send", {"node": node, "to": to})
            )
        at += rng.uniform(0.02, 0.4)
    return steps


def plan_for(scenario: str | Scenario, seed: int, nodes: int, duration: float) -> Plan:
    """
    Draw a scenario's plan from a seed.

    @raise ValueError: for an unknown scenario name.
    """
    chosen = _scenario(scenario)
    duration = float(duration)
    names = [f"n{i}" for i in range(1, nodes + 1)]
    rng = random.Random(f"clustron.testkit.scenarios:{chosen.name}:{seed}:{nodes}:{duration!r}")
    steps, keep = chosen.faults(rng, names, duration)
    traffic = _traffic(
        random.Random(f"clustron.testkit.traffic:{seed}:{nodes}:{duration!r}"), names, duration
    )
    return Plan(tuple(sorted(steps, key=lambda s: s.at)), tuple(traffic), keep)


def _scenario(scenario: str | Scenario) -> Scenario:
    if isinstance(scenario, Scenario):
        return scenario
    found = SCENARIOS.get(scenario)
    if found is None:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    return found


# -- running ------------------------------------------------------------------------


class _Traffic:
    """
    Plays the application steps and checks what it can see directly:
    requests are answered with the right reply, and nothing fails with an
    error that is not one of Clustron's.
    """

    def __init__(self, cluster: SimCluster, liveness: LivenessChecker) -> None:
        self.cluster = cluster
        self.liveness = liveness
        self.violations: list[str] = []
        self.counter = 0

    def install(self, node: Any) -> None:
        node_id = node.node_id
        node.on_message(REQUEST_TOPIC, lambda message: [node_id, message.body])
        node.on_message(APP_TOPIC, lambda message: None)

    def play(self, step: Step) -> None:
        cluster = self.cluster
        node_id = cluster.current(step.params["node"])
        if node_id in cluster.crashed or cluster.host(node_id).state != "up":
            return
        node = cluster.nodes[node_id]
        self.counter += 1
        tag = f"{node_id}#{self.counter}"
        if step.action == "broadcast":
            d = self.liveness.broadcast(node, APP_TOPIC, tag, step.params["order"])
            d.addErrback(self._failed, f"{step.params['order']} broadcast {tag}")
        elif step.action == "request":
            to = cluster.current(step.params["to"])
            d = node.request(to, REQUEST_TOPIC, tag, timeout=2.0)
            d.addCallbacks(self._replied, self._failed, (to, tag), {}, (f"request {tag} to {to}",))
        elif step.action == "send":
            to = cluster.current(step.params["to"])
            node.send(to, APP_TOPIC, tag).addErrback(self._failed, f"send {tag} to {to}")

    def _replied(self, reply: Any, to: str, tag: str) -> None:
        if reply != [to, tag]:
            self.violations.append(f"request {tag} to {to} got a wrong reply {reply!r}")

    def _failed(self, failure: Failure, what: str) -> None:
        if not isinstance(failure.value, ClustronError):
            self.violations.append(
                f"{what} failed with {failure.type.__name__}: {failure.getErrorMessage()}"
            )


class _ErrorLog:
    """
    Collects the errors node code logs with a traceback (unhandled
    exceptions), which are bugs whatever the faults.
    """

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self.errors: list[str] = []

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            failure = event.get("log_failure")
            if failure is None or len(self.errors) >= 20:
                return
            text = event.get("log_format", "") or ""
            self.errors.append(
                f"t={cluster.clock.seconds():.3f} unhandled error logged ({text[:80]!r}): "
                f"{failure.type.__name__}: {failure.getErrorMessage()[:200]}"
            )

        self.observer = observe

    def __enter__(self) -> _ErrorLog:
        globalLogPublisher.addObserver(self.observer)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self.observer)


def _merged(plan: Plan) -> list[tuple[float, int, Step]]:
    items = [(step.at, 0, index, step) for index, step in enumerate(plan.faults)]
    items += [(step.at, 1, index, step) for index, step in enumerate(plan.traffic)]
    items.sort(key=lambda item: item[:3])
    return [(at, kind, step) for at, kind, _, step in items]


def _heal(cluster: SimCluster, membership: MembershipChecker, keep_crashed: int) -> list[str]:
    """
    Restore links, resume and un-slow every node; restart crashed nodes
    beyond C{keep_crashed}, and more while the live nodes are less than a
    majority of the last installed view's active members.

    @return: notes on what was restarted (for the result's steps).
    """
    notes = []
    cluster.heal()
    for node_id in cluster.node_ids:
        if node_id in cluster.crashed:
            continue
        host = cluster.host(node_id)
        if host.state == "paused":
            cluster.resume(node_id)
        if host.processing_delay:
            cluster.slow(node_id, 0.0)
    restartable = [n for n in cluster.node_ids if n in cluster.crashed and n not in cluster.retired]
    while len(restartable) > keep_crashed:
        node_id = restartable.pop(0)
        cluster.restart(node_id)
        notes.append(f"heal restart node={node_id}")
    if membership.installed:
        last = max((view for _, view in membership.installed), key=lambda v: v.id)
        active = set(last.active_ids())
        live = {n.node_id for n in cluster.live()}
        while restartable and len(active & live) < len(active) // 2 + 1:
            node_id = restartable.pop(0)
            cluster.restart(node_id)
            live.add(node_id)
            notes.append(f"heal restart node={node_id} (for a majority)")
    return notes


def run_seed(
    scenario: str | Scenario,
    seed: int,
    nodes: int = 5,
    quorum: str | int = "majority",
    duration: float = 10.0,
    profile: str = "lan",
    form_bound: float | None = None,
    heal_bound: float | None = None,
    probe_time: float = 10.0,
) -> SeedResult:
    """
    Run one seed of a scenario (see the module docstring).

    @param scenario: a name from L{SCENARIOS}, or a L{Scenario}.
    @param seed: the seed.
    @param nodes: the cluster size.
    @param quorum: the nodes' C{membership.quorum}; the checkers hold every
        run to the majority promise, so C{"none"} is expected to fail under
        partitions.
    @param duration: simulated seconds of the fault phase.
    @param profile: the nodes' timing profile.
    @param form_bound: seconds the cluster gets to form (default 10 plus a
        tenth of a second per node).
    @param heal_bound: seconds the healed cluster gets to agree on one view
        (default 45 plus half a second per node, generous: a connection
        attempt made during a partition gives up after the nodes'
        C{wire.handshake_timeout}, reconnections back off, and elections
        follow).
    @param probe_time: seconds the probes (and owed messages) get to be
        delivered once it has.
    @raise ValueError: for an unknown scenario or a size below 1.
    """
    chosen = _scenario(scenario)
    if not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"nodes must be a positive integer, got {nodes!r}")
    duration = float(duration)
    form_bound = 10.0 + 0.1 * nodes if form_bound is None else form_bound
    heal_bound = 45.0 + 0.5 * nodes if heal_bound is None else heal_bound
    started = time.perf_counter()
    plan = plan_for(chosen, seed, nodes, duration)
    cluster = SimCluster(
        nodes, seed=seed, profile=profile, overrides={"membership": {"quorum": quorum}}
    )
    membership = MembershipChecker(clock=cluster.clock)
    messaging = MessagingChecker(membership=membership, clock=cluster.clock)
    liveness = LivenessChecker(membership, clock=cluster.clock)
    traffic = _Traffic(cluster, liveness)
    cluster.on_node(membership.attach)
    cluster.on_node(messaging.attach)
    cluster.on_node(liveness.attach)
    cluster.on_node(traffic.install)
    violations: list[str] = []
    steps = plan.describe()
    with _ErrorLog(cluster) as errors:
        try:
            cluster.start()
            if not cluster.run_until(cluster.converged, form_bound):
                violations.append(
                    f"the cluster did not form within {form_bound:g} s: {describe_views(cluster)}"
                )
            else:
                base = cluster.clock.seconds()
                for at, kind, step in _merged(plan):
                    cluster.run(max(0.0, base + at - cluster.clock.seconds()))
                    if kind == 0:
                        faults.apply(cluster, step)
                    else:
                        traffic.play(step)
                cluster.run(max(0.0, base + duration - cluster.clock.seconds()))
                steps.extend(_heal(cluster, membership, plan.keep_crashed))
                violations.extend(check_liveness(cluster, liveness, heal_bound, probe_time))
        except Exception as e:
            where = traceback.extract_tb(e.__traceback__)[-1]
            violations.append(
                f"t={cluster.clock.seconds():.3f} the run stopped on {type(e).__name__}: {e} "
                f"(at {where.filename}:{where.lineno} in {where.name})"
            )
        violations = membership.violations + messaging.violations + traffic.violations + violations
        violations.extend(errors.errors)
    return SeedResult(
        seed=seed,
        ok=not violations,
        violations=violations,
        trace_hash=cluster.trace_hash(),
        sim_seconds=cluster.clock.seconds(),
        wall_seconds=time.perf_counter() - started,
        scenario=chosen.name,
        nodes=nodes,
        quorum=quorum,
        duration=duration,
        steps=steps,
        events=cluster.network.event_count,
        recent=cluster.network.recent_events()[-20:],
    )
