"""
The zope interfaces of Clustron.

Interfaces are documentation: every implementation is declared with
``@implementer`` and checked with ``verifyObject`` in the test suite.
Methods are written without ``self``, as zope.interface expects.

The four plugin interfaces (:class:`ITransportPlugin`,
:class:`ISerializerPlugin`, :class:`IDiscoveryPlugin` and
:class:`IElectionPlugin`) extend :class:`twisted.plugin.IPlugin`, so a third
party ships a module in its own ``twisted/plugins/`` directory holding a
module-level instance, and Clustron finds it by ``name`` with no change to
Clustron itself.
"""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface


class ITransportPlugin(IPlugin):
    """
    A way of carrying Clustron's byte stream between two nodes.

    Built in: ``tcp`` (plain TCP), ``tls`` (mutual TLS) and ``sim`` (the
    testkit's in-memory simulated network).
    """

    name = Attribute("The name configuration uses to select this transport (str).")

    def listen(reactor, config, factory):
        """
        Start accepting connections for this node.

        @param reactor: the node's reactor.
        @param config: the node's L{clustron.config.NodeConfig}; the listen
            address is C{config.listen} (a Twisted server endpoint string).
        @param factory: the L{twisted.internet.protocol.Factory} to build a
            protocol per accepted connection.
        @return: a Deferred firing with an
            L{twisted.internet.interfaces.IListeningPort}.
        """

    def connect(reactor, config, host, port, factory):
        """
        Open one connection to a peer at C{host}:C{port}.

        @return: a Deferred firing with the connected protocol, or failing
            when the connection cannot be made, at the latest after
            C{config.wire.handshake_timeout} seconds (the mesh dials a peer
            again only once the previous attempt ended).
        """


class ISerializer(Interface):
    """
    Turns message bodies (plain data: dicts, lists, str, bytes, numbers,
    booleans, None) into bytes and back.
    """

    name = Attribute("The serializer's name (str).")
    wire_id = Attribute(
        "A small integer (1-255) written in every frame header; unique per serializer."
    )

    def dumps(obj):
        """
        Encode C{obj} to bytes.

        @raise clustron.errors.SerializationError: when C{obj} holds a value
            this serializer cannot encode.
        """

    def loads(data):
        """
        Decode bytes produced by L{dumps}.

        @raise clustron.errors.SerializationError: on malformed input; never
            any other exception, whatever the bytes are.
        """


class ISerializerPlugin(IPlugin, ISerializer):
    """
    A serializer offered as a plugin (``json``, ``msgpack``, ``protobuf``).
    """


class IDiscovery(Interface):
    """
    A running discovery source: it tells the node which addresses may hold
    peers of its cluster.
    """

    def start():
        """
        Begin discovering; called once when the node starts.

        @return: None or a Deferred that fires when the first round is done.
        """

    def stop():
        """
        Stop discovering and withdraw any registration of this node.

        @return: None or a Deferred that fires when done.
        """

    def addresses():
        """
        @return: the set of C{(host, port)} tuples currently known to this
            source (this node's own address may be among them).
        """


class IDiscoveryPlugin(IPlugin):
    """
    A factory of L{IDiscovery} sources, selected by the key of the same name
    under ``discovery:`` in the configuration.
    """

    name = Attribute("The key under ``discovery:`` that selects this plugin (str).")

    def validate(options):
        """
        Check this plugin's options (the mapping under its key).

        @return: a list of C{(key, reason)} pairs, empty when the options are
            valid; keys are relative to the plugin's own key.
        """

    def create(reactor, node_config, options, on_change):
        """
        Build a discovery source.

        @param reactor: the node's reactor (time, and network where the
            source needs it).
        @param node_config: the node's L{clustron.config.NodeConfig}.
        @param options: this plugin's validated options (a dict).
        @param on_change: a callable taking no arguments, to call whenever the
            set of addresses changes.
        @return: an L{IDiscovery} provider.
        """


class IElectionStrategy(Interface):
    """
    Decides, from what a node can see, which member should coordinate.
    Pure and deterministic: the same inputs give the same answer on every
    node.
    """

    def rank(member):
        """
        @param member: a L{clustron.membership.view.Member}.
        @return: a value that orders members; the highest rank coordinates.
        """

    def choose(candidates):
        """
        @param candidates: the members that may coordinate (reachable,
            alive, not draining, not leaving).
        @return: the chosen member's node id, or None when there is none.
        """


class IElectionPlugin(IPlugin):
    """
    An election strategy offered as a plugin (``bully`` by default).
    """

    name = Attribute("The name ``election.plugin`` uses to select it (str).")

    def create(config):
        """
        @param config: the node's L{clustron.config.NodeConfig}.
        @return: an L{IElectionStrategy} provider.
        """
