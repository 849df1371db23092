"""
Fuzz envelope decoding: decoded frame bodies fed to the membership and
messaging layers of a node of a 3-node cluster on the simulated network.

The cluster is L{clustron.testkit.cluster.SimCluster(3)}, started and
converged. Each input picks a receiving node, a sender (one of the other
members, or C{x9}, which is not a member), a frame type and a body, and hands
the body straight to C{node.membership.frame_received} (CONTROL, HEARTBEAT)
or C{node.messenger.frame_received} (MESSAGE), as the node's frame dispatch
does. The body is either shaped like a protocol message (mostly well formed;
see C{shapes.py}) and passed through a serializer (JSON or msgpack, so it
holds only what a peer can send), or raw input bytes decoded by any
installed serializer. Then simulated time runs for a moment, so replies
travel and timers fire on every node.

Only L{ProtocolViolation} and L{FrameError} may escape (the body is
decoded already, so a L{SerializationError} could only come from encoding
an answer: that is a bug). Any other exception, and any error logged with a
traceback on any node meanwhile (the simulated hosts and the wire log and
swallow them), is a crash. There are two clusters, one whose nodes speak
JSON and one msgpack; the input picks one. A cluster is built anew whenever
an input changed a node's membership state, so each input starts from the
same converged cluster. Some inputs first put the coordinator's total order
into a flush (as at the start of an epoch), so that flush replies meet one.

    python fuzz/fuzz_envelope.py -max_total_time=60
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import atheris  # noqa: E402
from twisted.logger import LogLevel, formatEvent, globalLogBeginner  # noqa: E402

with atheris.instrument_imports(include=["clustron"]):
    from clustron import plugins
    from clustron.errors import FrameError, ProtocolViolation, SerializationError
    from clustron.node import ClusterNode
    from clustron.testkit.cluster import SimCluster
    from clustron.wire import framing

from shapes import Shaper  # noqa: E402

SERIALIZERS = list(plugins.installed("serializer").values())

#: Errors logged while an input ran (with a traceback, or at level error).
logged_failures: list[dict[str, Any]] = []


def _observe(event: dict[str, Any]) -> None:
    if "log_failure" in event or event.get("log_level") in (LogLevel.error, LogLevel.critical):
        logged_failures.append(event)


def _raise_logged() -> None:
    """
    Turn an error logged while the input ran into a crash.
    """
    if logged_failures:
        event = logged_failures[0]
        if "log_failure" in event:
            event["log_failure"].raiseException()
        raise AssertionError(f"error logged: {formatEvent(event)}")


def fingerprint(node: ClusterNode) -> tuple[Any, ...]:
    """
    The parts of a node's membership state an input may change.
    """
    m = node.membership
    return (
        m.view,
        m.max_epoch,
        m.incarnation,
        m.acting,
        m._candidacy is not None,
        dict(m._votes),
        m._abdication,
        m._removed_by_operator,
        m._leaving is not None,
        len(m._admin_requests),
    )


class Harness:
    """
    Converged 3-node simulated clusters (one whose nodes speak JSON, one
    msgpack), each rebuilt when an input changed it.
    """

    def __init__(self) -> None:
        self.clusters: dict[str, SimCluster] = {}
        self.baselines: dict[str, dict[str, tuple[Any, ...]]] = {}
        self.runs: dict[str, int] = {}

    def fresh(self, serializer: str) -> SimCluster:
        """
        @return: the cluster whose nodes use C{serializer}, built (again) if
            needed.
        """
        cluster = self.clusters.get(serializer)
        if cluster is None or self.runs[serializer] >= 2000:
            cluster = SimCluster(3, overrides={"serializer": serializer})
            cluster.start()
            if not cluster.run_until(cluster.converged, timeout=5.0):
                raise RuntimeError("the simulated cluster did not converge")
            self.clusters[serializer] = cluster
            self.baselines[serializer] = {n.node_id: fingerprint(n) for n in cluster.live()}
            self.runs[serializer] = 0
        self.runs[serializer] += 1
        return cluster

    def check_unchanged(self, serializer: str, dirty: bool) -> None:
        """
        Forget a cluster if an input changed any node's membership state
        (or C{dirty} says it changed something else).
        """
        cluster = self.clusters[serializer]
        baseline = self.baselines[serializer]
        if dirty or any(fingerprint(n) != baseline[n.node_id] for n in cluster.live()):
            del self.clusters[serializer]


harness = Harness()


def _body(shaper: Shaper, frame_type: int, sender: str) -> tuple[bool, Any]:
    """
    @return: C{(ok, body)}; not ok when the input decodes to nothing.
    """
    if shaper.fdp.ConsumeIntInRange(0, 5) == 0:
        serializer = shaper.pick(SERIALIZERS)
        raw = shaper.fdp.ConsumeBytes(shaper.fdp.ConsumeIntInRange(0, 512))
        try:
            return True, serializer.loads(raw)
        except SerializationError:
            return False, None
    if frame_type == framing.MESSAGE:
        body = shaper.envelope(sender)
    else:
        body = shaper.control(frame_type == framing.HEARTBEAT)
    serializer = shaper.pick([s for s in SERIALIZERS if s.name in ("json", "msgpack")])
    try:
        return True, serializer.loads(serializer.dumps(body))
    except SerializationError:
        return False, None


def test_one_input(data: bytes) -> None:
    """
    One fuzz case; see the module docstring.
    """
    del logged_failures[:]
    shaper = Shaper(data)
    serializer = shaper.pick(("json", "msgpack"))
    cluster = harness.fresh(serializer)
    dirty = False
    if shaper.fdp.ConsumeIntInRange(0, 15) == 0:
        # Put the coordinator's total order into a flush, as at the start of
        # a new epoch, so that flush replies meet a flush in progress.
        coordinator = cluster.nodes[cluster.coordinator_seen_by("n1") or "n3"]
        view = coordinator.view
        assert view is not None
        coordinator.messenger.total.view_changed(
            coordinator.node_id, view.epoch + 1, view.active_ids(), True
        )
        dirty = True
    for _ in range(shaper.fdp.ConsumeIntInRange(1, 3)):
        node = cluster.nodes[shaper.pick(cluster.node_ids)]
        sender = shaper.pick([n for n in cluster.node_ids if n != node.node_id] + ["x9"])
        frame_type = shaper.pick((framing.CONTROL, framing.HEARTBEAT, framing.MESSAGE))
        ok, body = _body(shaper, frame_type, sender)
        if not ok:
            continue
        if frame_type == framing.MESSAGE:
            handler = node.messenger.frame_received
        else:
            handler = node.membership.frame_received
        try:
            handler(sender, frame_type, body)
        except (ProtocolViolation, FrameError):
            # What the wire does with these: count them and close the
            # connection. A SerializationError cannot come from decoding
            # here (the body is decoded already): it would come from
            # encoding an answer, which is a crash.
            pass
    cluster.run(shaper.pick((0.0, 0.01, 0.3)))
    harness.check_unchanged(serializer, dirty)
    _raise_logged()


def main() -> None:
    """
    Run the fuzzer (libFuzzer options on the command line).
    """
    globalLogBeginner.beginLoggingTo([_observe], redirectStandardIO=False)
    argv = list(sys.argv)
    if not any(arg.startswith(("-len_control=", "-max_len=")) for arg in argv):
        # Inputs are slow to run: let them grow long (many messages, deep
        # values) from the start rather than after many runs.
        argv.append("-len_control=0")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
