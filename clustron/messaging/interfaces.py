"""
The zope interfaces of the messaging layer's sans-IO core.

These are the seams the node wiring plugs together: a source of message
ids, a duplicate filter, a reliable sender and receiver, and the frame
scheduler that interleaves fragments with control traffic. Methods are
written without C{self}, as zope.interface expects. (They are meant to move
to L{clustron.interfaces} once the node wiring lands.)
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IMessageIdSource(Interface):
    """
    Hands out the unique ids of the messages one node incarnation sends.
    """

    node_id = Attribute("The sending node's id (str).")
    incarnation = Attribute("The sending node's incarnation (int).")

    def next_id():
        """
        @return: a L{clustron.messaging.ids.MessageId} never returned before
            by this source; counters increase by one from call to call.
        """


class IDuplicateFilter(Interface):
    """
    Remembers which message ids were already received, within a bounded
    window, so that a retransmitted message is not delivered twice.
    """

    capacity = Attribute(
        "How many of the most recently recorded new ids are guaranteed to be remembered (int)."
    )

    def seen(msg_id):
        """
        Record C{msg_id} and say whether it had been recorded before.

        @param msg_id: a L{clustron.messaging.ids.MessageId}.
        @return: C{True} when C{msg_id} was recorded before (a duplicate),
            C{False} when it is new (and is now recorded). Never C{True}
            for an id that was not recorded before.
        """

    def contains(msg_id):
        """
        Say whether C{msg_id} was recorded, without recording it.

        @return: what L{seen} would return, with no change of state.
        """

    def forget(node_id):
        """
        Drop everything remembered about ids sent by C{node_id} (every
        incarnation), for instance when it is removed from the view.
        """


class IReliableSender(Interface):
    """
    Sends envelopes to peers until each is acknowledged, the peer is
    declared dead or leaves, or the send is cancelled.
    """

    def submit(to, envelope):
        """
        Send C{envelope} to node C{to} and keep retransmitting it until it is
        acknowledged.

        @param to: the destination node id (str).
        @param envelope: a dict whose C{"id"} key holds the message id, in
            the string form of L{clustron.messaging.ids.MessageId}.
        @return: a Deferred that fires with C{None} when the peer
            acknowledges, fails with L{clustron.errors.DeliveryFailed} when
            the peer is declared dead or leaves first, fails with
            L{clustron.errors.QueueFull} at once when too many messages to
            that peer are outstanding, and can be cancelled.
        """

    def ack(from_node, msg_id):
        """
        Node C{from_node} acknowledged C{msg_id}.

        @return: C{True} when that acknowledged an outstanding send.
        """

    def handle_ack(from_node, envelope):
        """
        Apply an acknowledgement envelope received from C{from_node}.

        @return: how many outstanding sends it acknowledged.
        @raise clustron.errors.ProtocolViolation: when the envelope is
            malformed.
        """

    def peer_dead(node_id):
        """
        C{node_id} was declared dead: fail every outstanding send to it
        with L{clustron.errors.DeliveryFailed}.
        """

    def peer_left(node_id):
        """
        C{node_id} left the view: fail every outstanding send to it with
        L{clustron.errors.DeliveryFailed}.
        """

    def stop():
        """
        Fail every outstanding send with L{clustron.errors.DeliveryFailed}
        and cancel every timer (the node is stopping).
        """

    def in_flight(to):
        """
        @return: how many sends to C{to} were transmitted and are waiting for
            an acknowledgement.
        """

    def pending(to):
        """
        @return: how many sends to C{to} wait for an in-flight slot before
            their first transmission.
        """


class IReliableReceiver(Interface):
    """
    The receiving half of reliable delivery: filters duplicates and
    acknowledges what it took.
    """

    def receive(from_node, envelope, admit=None, acknowledge=True):
        """
        Handle an envelope that node C{from_node} transmitted.

        @param admit: called with the envelope when it is new; returns
            C{True} when the layer above took it (delivered or buffered) and
            C{False} when it could not (for instance its buffer is full),
            in which case the envelope is neither recorded nor acknowledged
            so the sender retransmits it. C{None} means always taken.
        @param acknowledge: C{False} for unreliable envelopes, which are
            filtered but never acknowledged.
        @return: C{True} when the envelope was new and taken.
        @raise clustron.errors.ProtocolViolation: when the envelope has no
            valid id.
        """

    def flush():
        """
        Send every batched acknowledgement now.
        """

    def stop():
        """
        Cancel the batching timer; batched acknowledgements are dropped.
        """


class IFrameScheduler(Interface):
    """
    A bounded queue of outgoing frames for one connection that serves small
    control frames first and interleaves the other frames round-robin across
    streams, so a large message's fragments never hold up heartbeats or
    acknowledgements.
    """

    queued_frames = Attribute("How many frames are queued, both lanes (int).")
    queued_bytes = Attribute("How many bytes are queued, both lanes (int).")

    def push(stream, frame, control=False):
        """
        Queue one frame.

        @param stream: any hashable naming the stream the frame belongs to;
            frames of one stream leave in the order they were pushed.
        @param frame: the encoded frame (bytes).
        @param control: C{True} for the priority lane.
        @raise clustron.errors.QueueFull: when the frame does not fit in its
            lane's bounds; nothing is queued.
        """

    def push_all(stream, frames):
        """
        Queue several frames of one stream (the fragments of one message)
        on the data lane, all or nothing.

        @raise clustron.errors.QueueFull: when they do not all fit; nothing
            is queued.
        """

    def pop():
        """
        @return: the next frame to write (bytes), or C{None} when empty.
        """

    def discard(stream):
        """
        Drop every queued data frame of C{stream}.

        @return: how many frames were dropped.
        """
