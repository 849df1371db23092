"""
Clustron: clustering and messaging for Twisted.

A Clustron node discovers its peers, joins one cluster, agrees with the
others on a coordinator, exchanges messages under stated ordering and
delivery guarantees, and notices when a peer dies::

    from clustron import ClusterNode, NodeConfig

    node = ClusterNode(NodeConfig.from_file("node.yaml"))
    node.setServiceParent(application)

The names below are the public API; everything else may change between
releases.
"""

from clustron._version import __version__
from clustron.config import NodeConfig
from clustron.errors import (
    ClustronError,
    ConfigError,
    DeliveryFailed,
    MessageTooLarge,
    MissingPlugin,
    NoQuorum,
    NotJoined,
    QueueFull,
    RemoteError,
    RequestTimeout,
    UnknownMember,
)
from clustron.membership.view import Member, View
from clustron.node import ClusterNode

__all__ = [
    "ClusterNode",
    "ClustronError",
    "ConfigError",
    "DeliveryFailed",
    "Member",
    "MessageTooLarge",
    "MissingPlugin",
    "NoQuorum",
    "NodeConfig",
    "NotJoined",
    "QueueFull",
    "RemoteError",
    "RequestTimeout",
    "UnknownMember",
    "View",
    "__version__",
]
