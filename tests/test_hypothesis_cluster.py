"""
A Hypothesis state machine over a simulated five-node cluster: programs of
broadcasts, partitions, heals, crashes, restarts and time passing, with the
membership and messaging checkers as invariants after every step. A failing
program is shrunk to a short one and printed as Python that replays it.

Deterministic: derandomized, no example database, bounded examples.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.trial.unittest import SynchronousTestCase

from clustron.errors import ClustronError
from clustron.testkit.checkers import MembershipChecker, MessagingChecker
from clustron.testkit.cluster import SimCluster
from clustron.testkit.faults import Uniform
from clustron.testkit.liveness import LivenessChecker

NODES = ("n1", "n2", "n3", "n4", "n5")
ORDERS = ("fifo", "causal", "total")

SETTINGS = settings(
    derandomize=True,
    database=None,
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def program(nodes: tuple[str, ...], quorum: str = "majority") -> type[RuleBasedStateMachine]:
    """
    @return: a state machine class driving a cluster of C{nodes} whose
        C{membership.quorum} is C{quorum}.
    """

    class ClusterProgram(RuleBasedStateMachine):
        """
        One simulated cluster per example; each rule is one step of the
        program.
        """

        def __init__(self) -> None:
            super().__init__()
            self.cluster: SimCluster | None = None
            self.errors: list[str] = []

        @initialize(seed=st.integers(0, 2**16), lossy=st.booleans())
        def form(self, seed: int, lossy: bool) -> None:
            cluster = SimCluster(
                len(nodes), seed=seed, overrides={"membership": {"quorum": quorum}}
            )
            self.membership = MembershipChecker(clock=cluster.clock)
            self.messaging = MessagingChecker(membership=self.membership, clock=cluster.clock)
            self.liveness = LivenessChecker(self.membership, clock=cluster.clock)
            for checker in (self.membership, self.messaging, self.liveness):
                cluster.on_node(checker.attach)
            cluster.start()
            cluster.run_until(cluster.converged, 5)
            if lossy:
                cluster.set_links(loss=0.05, duplicate=0.02, delay=Uniform(0.001, 0.02))
            self.cluster = cluster

        def _up(self, node: str) -> bool:
            assert self.cluster is not None
            return node not in self.cluster.crashed and self.cluster.host(node).state == "up"

        @rule(node=st.sampled_from(nodes), order=st.sampled_from(ORDERS))
        def broadcast(self, node: str, order: str) -> None:
            assert self.cluster is not None
            if self._up(node):
                d = self.liveness.broadcast(self.cluster.nodes[node], "t", node, order)
                d.addErrback(self._failed, f"{order} broadcast from {node}")

        @rule(minority=st.sets(st.sampled_from(nodes), min_size=1, max_size=(len(nodes) - 1) // 2))
        def partition(self, minority: set[str]) -> None:
            assert self.cluster is not None
            self.cluster.partition(sorted(minority), sorted(set(nodes) - minority))

        @rule()
        def heal(self) -> None:
            assert self.cluster is not None
            self.cluster.heal()

        @precondition(
            lambda self: (
                self.cluster is not None and len(self.cluster.crashed) < (len(nodes) - 1) // 2
            )
        )
        @rule(node=st.sampled_from(nodes))
        def crash(self, node: str) -> None:
            assert self.cluster is not None
            self.cluster.crash(node)

        @precondition(lambda self: self.cluster is not None and bool(self.cluster.crashed))
        @rule(data=st.data())
        def restart(self, data: Any) -> None:
            assert self.cluster is not None
            node = data.draw(st.sampled_from(sorted(self.cluster.crashed)), label="node")
            self.cluster.restart(node)

        @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 2.0, 5.0]))
        def advance(self, seconds: float) -> None:
            assert self.cluster is not None
            self.cluster.run(seconds)

        @invariant()
        def promises_kept(self) -> None:
            if self.cluster is None:
                return
            violations = self.membership.violations + self.messaging.violations + self.errors
            assert not violations, "\n".join(violations)

        def _failed(self, failure: Any, what: str) -> None:
            if not isinstance(failure.value, ClustronError):
                self.errors.append(f"{what} failed with {failure.type.__name__}: {failure.value}")

    return ClusterProgram


#: Five nodes, quorum on: every program must keep the promises.
ClusterProgram = program(NODES)
#: Three nodes with quorum off: a partition lets the minority act.
QuorumOffProgram = program(NODES[:3], quorum="none")


class StatefulTests(SynchronousTestCase):
    def test_promises_hold(self) -> None:
        run_state_machine_as_test(ClusterProgram, settings=SETTINGS)

    def test_split_brain_found_and_shrunk(self) -> None:
        """
        With quorum off Hypothesis finds a program that breaks the majority
        promise and shrinks it to a short program, printed as Python that
        replays it: form the cluster, cut a node off, let time pass.
        """
        error = self.assertRaises(
            AssertionError,
            run_state_machine_as_test,
            QuorumOffProgram,
            settings=settings(SETTINGS, stateful_step_count=8, max_examples=60),
        )
        self.assertIn("split brain possible", str(error))
        # Hypothesis attaches the shrunk program to the error.
        program_text = "\n".join(getattr(error, "__notes__", []))
        self.assertIn("state = ClusterProgram()\nstate.form(seed=0, lossy=False)", program_text)
        actions = [
            line
            for line in program_text.splitlines()
            if line.startswith("state.")
            and not line.startswith(("state.promises_kept", "state.form"))
        ]
        # Cut a node off (a crash here), then let time pass: two steps.
        self.assertEqual(len(actions), 3, program_text)
        self.assertTrue(actions[0].startswith(("state.crash(", "state.partition(")), program_text)
        self.assertTrue(actions[1].startswith("state.advance("), program_text)
        self.assertEqual(actions[2], "state.teardown()")
