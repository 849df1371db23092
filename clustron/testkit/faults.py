"""
Faults for simulated clusters: delay distributions, partition shapes, and
fault schedules that are plain data.

A fault schedule is a list of L{Step}s: an action (C{partition}, C{crash},
C{clog}, ...), its parameters (node ids, seconds, link settings) and the
simulated time it happens at, counted from the start of the fault phase.
Steps are drawn from a seed by the scenario functions of
L{clustron.testkit.scenarios}, or written by hand in a test::

    steps = [
        Step(1.0, "partition", {"groups": [["n1", "n2"], ["n3", "n4", "n5"]]}),
        Step(4.0, "heal"),
        Step(5.0, "crash", {"node": "n5"}),
    ]
    for step in steps:
        cluster.run(step.at - elapsed) ...
        apply(cluster, step)

Every step prints as one line (L{Step.describe}), so a failing seed shows
exactly what was done to the cluster.

Partition shapes (after Jepsen's nemeses) take the node ids and a
C{random.Random} and return what to cut: L{halves}, L{isolate_one},
L{majorities_ring}, L{bridge} and L{one_way}. L{swizzle_clog} clogs the links
of random nodes one by one and unclogs them in another random order, as
FoundationDB's simulator does.
"""

from __future__ import annotations

import abc
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from clustron.testkit.cluster import SimCluster

__all__ = [
    "ACTIONS",
    "Bimodal",
    "Exponential",
    "Fixed",
    "Step",
    "Uniform",
    "apply",
    "bridge",
    "delay_from_spec",
    "halves",
    "isolate_one",
    "majorities_ring",
    "one_way",
    "random_delay",
    "random_link_params",
    "swizzle_clog",
]


# -- delay distributions ------------------------------------------------------------


class _Distribution(abc.ABC):
    """
    A delay drawn from the network's random generator; callable as
    C{delay(rng) -> seconds}. Its C{__qualname__} attribute names it with its
    parameters, so the network's trace (and a printed schedule) shows them.
    """

    name = ""

    def __init__(self, *params: float) -> None:
        for value in params:
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not (math.isfinite(value) and value >= 0)
            ):
                raise ValueError(
                    f"{self.name} delay parameters must be finite numbers >= 0, got {params!r}"
                )
        self.params = tuple(float(p) for p in params)
        self.__qualname__ = self.spec()

    def spec(self) -> str:
        """
        @return: the distribution as text, e.g. C{uniform(0.001,0.02)}
            (L{delay_from_spec} parses it back).
        """
        return f"{self.name}({','.join(repr(p) for p in self.params)})"

    @abc.abstractmethod
    def __call__(self, rng: random.Random) -> float:
        """
        @return: one delay in seconds, drawn from C{rng}.
        """

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.params == self.params  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.params))

    def __repr__(self) -> str:
        return self.spec()


class Fixed(_Distribution):
    """
    Always C{seconds}.
    """

    name = "fixed"

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)

    def __call__(self, rng: random.Random) -> float:
        return self.params[0]


class Uniform(_Distribution):
    """
    Uniform between C{low} and C{high} seconds.
    """

    name = "uniform"

    def __init__(self, low: float, high: float) -> None:
        super().__init__(low, high)
        if high < low:
            raise ValueError(f"uniform delay needs low <= high, got {low!r} > {high!r}")

    def __call__(self, rng: random.Random) -> float:
        low, high = self.params
        return rng.uniform(low, high)


class Exponential(_Distribution):
    """
    C{base} plus an exponential tail of mean C{mean}, capped at C{cap}
    seconds in all: mostly fast, sometimes slow.
    """

    name = "exponential"

    def __init__(self, base: float, mean: float, cap: float) -> None:
        super().__init__(base, mean, cap)
        if mean <= 0 or cap < base:
            raise ValueError(
                f"exponential delay needs mean > 0 and cap >= base, got {self.params!r}"
            )

    def __call__(self, rng: random.Random) -> float:
        base, mean, cap = self.params
        return min(cap, base + rng.expovariate(1.0 / mean))


class Bimodal(_Distribution):
    """
    C{fast} seconds, except with probability C{p_slow} C{slow} seconds (a
    link that now and then stalls, such as a congested switch).
    """

    name = "bimodal"

    def __init__(self, fast: float, slow: float, p_slow: float) -> None:
        super().__init__(fast, slow, p_slow)
        if p_slow > 1:
            raise ValueError(f"bimodal delay needs p_slow <= 1, got {p_slow!r}")

    def __call__(self, rng: random.Random) -> float:
        fast, slow, p_slow = self.params
        return slow if rng.random() < p_slow else fast


_DISTRIBUTIONS: dict[str, type[_Distribution]] = {
    cls.name: cls for cls in (Fixed, Uniform, Exponential, Bimodal)
}


def delay_from_spec(spec: str | float) -> float | _Distribution:
    """
    Parse a delay: a number of seconds, or a distribution as L{_Distribution.spec}
    prints it (C{"uniform(0.001,0.02)"}, C{"exponential(0.001,0.01,0.5)"},
    C{"bimodal(0.001,0.3,0.05)"}, C{"fixed(0.01)"}).

    @raise ValueError: naming the bad spec and why.
    """
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if not math.isfinite(spec) or spec < 0:
            raise ValueError(f"a delay must be a finite number of seconds >= 0, got {spec!r}")
        return float(spec)
    if not isinstance(spec, str) or "(" not in spec or not spec.endswith(")"):
        raise ValueError(f"bad delay {spec!r}: expected seconds or NAME(a,b,...)")
    name, _, rest = spec.partition("(")
    cls = _DISTRIBUTIONS.get(name.strip())
    if cls is None:
        raise ValueError(
            f"bad delay {spec!r}: unknown distribution {name!r}; "
            f"known: {', '.join(sorted(_DISTRIBUTIONS))}"
        )
    try:
        params = [float(p) for p in rest[:-1].split(",") if p.strip()]
        return cls(*params)
    except TypeError:
        raise ValueError(f"bad delay {spec!r}: wrong number of parameters for {name}") from None


def random_delay(rng: random.Random, scale: float = 1.0) -> _Distribution:
    """
    Draw a delay distribution: fixed, uniform, exponential-tailed or bimodal,
    with link latencies from a millisecond to (times C{scale}) a few hundred
    milliseconds.
    """
    kind = rng.choice(("fixed", "uniform", "exponential", "bimodal"))
    fast = round(rng.uniform(0.0005, 0.01) * scale, 6)
    if kind == "fixed":
        return Fixed(fast)
    if kind == "uniform":
        return Uniform(fast, round(fast + rng.uniform(0.001, 0.05) * scale, 6))
    if kind == "exponential":
        mean = round(rng.uniform(0.002, 0.05) * scale, 6)
        return Exponential(fast, mean, round(fast + 10 * mean, 6))
    return Bimodal(fast, round(rng.uniform(0.05, 0.3) * scale, 6), round(rng.uniform(0.01, 0.1), 4))


def random_link_params(
    rng: random.Random,
    max_loss: float = 0.2,
    max_duplicate: float = 0.1,
    p_reorder: float = 0.5,
) -> dict[str, Any]:
    """
    Draw link parameters: a delay distribution, loss, duplication and
    whether chunks may be reordered.

    @return: keyword arguments for L{SimCluster.set_links} (the delay as a
        spec string, so the dict is plain data).
    """
    return {
        "delay": random_delay(rng).spec(),
        "loss": round(rng.uniform(0, max_loss), 4),
        "duplicate": round(rng.uniform(0, max_duplicate), 4),
        "reorder": rng.random() < p_reorder,
    }


# -- partition shapes ---------------------------------------------------------------


def halves(nodes: Sequence[str], rng: random.Random) -> list[list[str]]:
    """
    Split the nodes at random into a minority and a majority.

    @return: two groups (the smaller first).
    """
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    cut = len(shuffled) // 2
    return [sorted(shuffled[:cut]), sorted(shuffled[cut:])]


def isolate_one(nodes: Sequence[str], rng: random.Random) -> list[list[str]]:
    """
    Cut one random node off from all the others.

    @return: two groups: the lone node, then the rest.
    """
    lone = rng.choice(list(nodes))
    return [[lone], sorted(n for n in nodes if n != lone)]


def majorities_ring(nodes: Sequence[str], rng: random.Random) -> list[tuple[str, str]]:
    """
    Arrange the nodes in a random ring and cut every link except those
    between ring neighbours close enough that each node sees a majority
    (itself included) but no two nodes see the same majority.

    @return: the directed links to cut (both directions of each pair are
        listed).
    """
    ring = list(nodes)
    rng.shuffle(ring)
    n = len(ring)
    majority = n // 2 + 1
    reach = max(1, math.ceil((majority - 1) / 2))
    cuts = []
    for i, a in enumerate(ring):
        for j, b in enumerate(ring):
            distance = min((i - j) % n, (j - i) % n)
            if a != b and distance > reach:
                cuts.append((a, b))
    return sorted(cuts)


def bridge(nodes: Sequence[str], rng: random.Random) -> list[list[str]]:
    """
    Split the nodes into two sides that cannot talk, except through one
    bridge node that reaches both.

    @return: the two sides; the bridge node is in neither (it keeps its
        links to both).
    """
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    rest = shuffled[1:]
    cut = len(rest) // 2
    return [sorted(rest[:cut]), sorted(rest[cut:])]


def one_way(nodes: Sequence[str], rng: random.Random) -> list[tuple[str, str]]:
    """
    An asymmetric fault: one random node stops hearing everyone (or everyone
    stops hearing it) while the other direction works.

    @return: the directed links to cut.
    """
    target = rng.choice(list(nodes))
    others = sorted(n for n in nodes if n != target)
    if rng.random() < 0.5:
        return [(other, target) for other in others]
    return [(target, other) for other in others]


def swizzle_clog(
    nodes: Sequence[str],
    rng: random.Random,
    start: float,
    spacing: float = 0.3,
    hold: float = 1.0,
) -> list[Step]:
    """
    FoundationDB's swizzle-clog: pick a random subset of nodes, clog every
    link of each one in turn (one every C{spacing} seconds), hold, then
    unclog them one by one in a different random order.

    @param start: the time of the first clog.
    @return: the clog and unclog steps.
    """
    chosen = [n for n in nodes if rng.random() < 0.5] or [rng.choice(list(nodes))]
    rng.shuffle(chosen)
    steps = []
    at = start
    for node in chosen:
        steps.append(Step(round(at, 6), "clog", {"pairs": _all_links(node, nodes)}))
        at += rng.uniform(0, spacing)
    at += hold
    release = list(chosen)
    rng.shuffle(release)
    for node in release:
        steps.append(Step(round(at, 6), "unclog", {"pairs": _all_links(node, nodes)}))
        at += rng.uniform(0, spacing)
    return steps


def _all_links(node: str, nodes: Sequence[str]) -> list[tuple[str, str]]:
    return [(node, other) for other in nodes if other != node] + [
        (other, node) for other in nodes if other != node
    ]


# -- steps -------------------------------------------------------------------------


@attrs.frozen
class Step:
    """
    One fault (or application action) at a simulated time.

    @ivar at: seconds after the start of the phase the step belongs to.
    @ivar action: one of L{ACTIONS} (or an action a scenario's traffic
        driver knows, such as C{broadcast}).
    @ivar params: the action's parameters, plain data.
    """

    at: float
    action: str
    params: Mapping[str, Any] = attrs.field(factory=dict)

    def describe(self) -> str:
        """
        @return: the step as one line, e.g. C{t=1.500 crash node=n3}.
        """
        shown = []
        for key in sorted(self.params):
            value = self.params[key]
            if key == "groups":
                text = " | ".join(",".join(group) for group in value)
            elif key == "pairs":
                text = ",".join(f"{a}>{b}" for a, b in value)
            else:
                text = str(value)
            shown.append(f"{key}={text}")
        return f"t={self.at:.3f} {self.action} {' '.join(shown)}".rstrip()


def _nodes(cluster: SimCluster, step: Step, key: str = "node") -> str:
    """
    @return: the id of the node living at the address of the step's node
        now (a wiped restart gives an address a new node id).
    """
    node = step.params.get(key)
    if not isinstance(node, str) or node not in cluster.node_ids:
        raise ValueError(f"step {step.describe()!r}: {key} must be a node id of the cluster")
    return cluster.current(node)


def _apply_partition(cluster: SimCluster, step: Step) -> None:
    groups = step.params.get("groups")
    if not isinstance(groups, (list, tuple)) or len(groups) < 2:
        raise ValueError(f"step {step.describe()!r}: groups must list at least two groups")
    cluster.partition(*groups)


def _apply_cut(cluster: SimCluster, step: Step) -> None:
    for a, b in step.params.get("pairs", ()):
        cluster.cut_one_way(a, b)


def _apply_links(cluster: SimCluster, step: Step) -> None:
    params = dict(step.params)
    nodes = params.pop("nodes", None)
    if "delay" in params:
        params["delay"] = delay_from_spec(params["delay"])
    cluster.set_links(nodes, **params)


def _apply_clog(cluster: SimCluster, step: Step) -> None:
    seconds = step.params.get("seconds")
    for a, b in step.params.get("pairs", ()):
        cluster.clog(a, b, seconds, both=False)


def _apply_unclog(cluster: SimCluster, step: Step) -> None:
    for a, b in step.params.get("pairs", ()):
        cluster.unclog(a, b, both=False)


def _apply_crash(cluster: SimCluster, step: Step) -> None:
    cluster.crash(_nodes(cluster, step))


def _apply_restart(cluster: SimCluster, step: Step) -> None:
    node = _nodes(cluster, step)
    if node not in cluster.crashed:
        raise ValueError(f"step {step.describe()!r}: {node} is not crashed")
    cluster.restart(node, wipe=bool(step.params.get("wipe", False)))


def _apply_pause(cluster: SimCluster, step: Step) -> None:
    node = _nodes(cluster, step)
    if node in cluster.crashed:
        raise ValueError(f"step {step.describe()!r}: {node} is crashed")
    cluster.pause(node)


def _apply_resume(cluster: SimCluster, step: Step) -> None:
    node = _nodes(cluster, step)
    if node in cluster.crashed:
        raise ValueError(f"step {step.describe()!r}: {node} is crashed")
    cluster.resume(node)


def _apply_slow(cluster: SimCluster, step: Step) -> None:
    cluster.slow(_nodes(cluster, step), delay_from_spec(step.params.get("delay", 0.0)))


def _apply_skew(cluster: SimCluster, step: Step) -> None:
    cluster.skew(_nodes(cluster, step), float(step.params.get("seconds", 0.0)))


def _apply_heal(cluster: SimCluster, step: Step) -> None:
    cluster.heal()


#: The fault actions L{apply} knows, and what each does.
ACTIONS: dict[str, Callable[[SimCluster, Step], None]] = {
    "partition": _apply_partition,
    "cut": _apply_cut,
    "heal": _apply_heal,
    "links": _apply_links,
    "clog": _apply_clog,
    "unclog": _apply_unclog,
    "crash": _apply_crash,
    "restart": _apply_restart,
    "pause": _apply_pause,
    "resume": _apply_resume,
    "slow": _apply_slow,
    "skew": _apply_skew,
}


def apply(cluster: SimCluster, step: Step) -> None:
    """
    Do what a fault step says to the cluster.

    Actions and their parameters: C{partition} (C{groups}: lists of node
    ids), C{cut} (C{pairs}: directed C{(from, to)} node pairs), C{heal},
    C{links} (optional C{nodes}, and any of C{delay} (seconds or a
    distribution spec), C{loss}, C{duplicate}, C{reorder}, C{cut}),
    C{clog} (C{pairs}, optional C{seconds}), C{unclog} (C{pairs}),
    C{crash}, C{restart} (C{node}, optional C{wipe}), C{pause}, C{resume}
    (C{node}), C{slow} (C{node}, C{delay}), C{skew} (C{node}, C{seconds}).
    A C{node} names a machine: after a wiped restart the step acts on the
    node id that lives at that node's address now.

    @raise ValueError: for an unknown action or a step that cannot apply
        (restarting a node that is not crashed, ...), naming the step.
    """
    handler = ACTIONS.get(step.action)
    if handler is None:
        raise ValueError(
            f"unknown fault action {step.action!r} in step {step.describe()!r}; "
            f"known: {', '.join(sorted(ACTIONS))}"
        )
    handler(cluster, step)
