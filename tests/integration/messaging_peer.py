"""
A node process for tests/integration/test_messaging_live.py: runs a
ClusterNode from a configuration file, with handlers the test drives over
the cluster itself.
"""

import sys

from twisted.internet import reactor

from clustron import ClusterNode, NodeConfig


def main(path: str) -> None:
    node = ClusterNode(NodeConfig.from_file(path), reactor=reactor)
    received: list = []

    def fail(message):
        raise ValueError(f"refused {message.body!r}")

    def broadcast(message):
        return node.broadcast("b", message.body["body"], order=message.body["order"]).addCallback(
            lambda _: "sent"
        )

    node.on_message("echo", lambda message: {"echo": message.body, "by": node.node_id})
    node.on_message("fail", fail)
    node.on_message("b", lambda message: received.append(message.body))
    node.on_message("received", lambda message: list(received))
    node.on_message("broadcast", broadcast)
    reactor.callWhenRunning(node.startService)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1])
