"""
Clustron's testkit: whole clusters in one process, faults, checkers.

  - L{SimCluster}: N real L{clustron.node.ClusterNode}s on a simulated
    network (L{SimNetwork}) and one clock, deterministic from one seed.
  - L{faults}: delay distributions, partition shapes (halves, isolate one,
    majorities ring, bridge, one way), clogging, crashes, restarts, pauses,
    slow nodes and clock skew, as schedules of plain-data L{Step}s.
  - L{checkers}: the safety promises asserted after every event
    (L{MembershipChecker}, L{MessagingChecker}); L{liveness}: what must
    happen once the faults stop (L{LivenessChecker}, L{check_liveness}).
  - L{scenarios}: named fault scenarios run seed by seed
    (L{run_seed} -> L{SeedResult}), as C{clustron sim} does.
  - For real processes: L{ChaosProxy} (latency, jitter, loss, bandwidth,
    blackhole, resets between real nodes) and L{NetworkLab} (network
    namespaces with nftables link cuts).

See the "Testing your application" and "Reproducing a failing seed" guides.
"""

from clustron.testkit import checkers, faults, liveness, scenarios
from clustron.testkit.checkers import InvariantViolation, MembershipChecker, MessagingChecker
from clustron.testkit.cluster import SimCluster
from clustron.testkit.faults import Step
from clustron.testkit.liveness import LivenessChecker, check_liveness
from clustron.testkit.netns import NetworkLab
from clustron.testkit.proxy import ChaosProxy
from clustron.testkit.scenarios import SCENARIOS, Plan, SeedResult, plan_for, run_seed
from clustron.testkit.simnet import LinkParams, SimClock, SimHost, SimNetwork

__all__ = [
    "SCENARIOS",
    "ChaosProxy",
    "InvariantViolation",
    "LinkParams",
    "LivenessChecker",
    "MembershipChecker",
    "MessagingChecker",
    "NetworkLab",
    "Plan",
    "SeedResult",
    "SimClock",
    "SimCluster",
    "SimHost",
    "SimNetwork",
    "Step",
    "check_liveness",
    "checkers",
    "faults",
    "liveness",
    "plan_for",
    "run_seed",
    "scenarios",
]
