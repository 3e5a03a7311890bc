"""The Phoenix V2 socket and channel state machine, without any I/O.

A :class:`Connection` owns one websocket's worth of state: the ref counter,
the heartbeat, and a :class:`Channel` per topic whose per-topic behaviour is a
:class:`ChannelLogic`. The transport drives it::

    conn.connection_made(now)                 # socket open: joins are queued
    conn.receive_text(text, now)              # every text frame received
    conn.on_timer(now)                        # whenever next_deadline() passes
    send(conn.data_to_send()); handle(conn.events_received())   # after each input
    conn.connection_lost()                    # socket closed, before reconnecting

Send the queued frames before acting on the events (a ``RebootRequested``
follows a queued ``rebooting`` push).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from typing import Literal

from nhlink.errors import ConfigError
from nhlink.protocol.events import (
    ChannelInterrupted,
    ChannelJoined,
    ChannelJoinFailed,
    ChannelLeft,
    ConnectionLost,
    Event,
    FrameRejected,
    MessageReceived,
    ReplyReceived,
)
from nhlink.protocol.frames import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_FRAME_SIZE,
    Frame,
    JSONObject,
    JSONValue,
    ProtocolError,
    decode_frame,
    encode_frame,
)

logger = logging.getLogger("nhlink.protocol")

PHOENIX_TOPIC = "phoenix"
DEFAULT_HEARTBEAT_INTERVAL = 30.0
DEFAULT_REJOIN_AFTER = (5.0,)
MAX_PENDING_REPLIES = 1024

_PendingKind = Literal["join", "leave", "push"]


class ChannelState(enum.Enum):
    """Where a channel stands on the current connection."""

    CLOSED = "closed"
    JOINING = "joining"
    JOINED = "joined"
    WAITING_TO_REJOIN = "waiting to rejoin"
    LEAVING = "leaving"


class ChannelLogic:
    """What one topic does with its messages; subclass it per topic.

    The base class is a plain channel: fixed join params, every message
    reported as :class:`MessageReceived`, every reply as :class:`ReplyReceived`.
    Hooks return the events to report; they push through :attr:`channel`.
    """

    def __init__(self, topic: str, params: Mapping[str, JSONValue] | None = None) -> None:
        self.topic = topic
        self._params: JSONObject = dict(params or {})
        self._channel: Channel | None = None

    @property
    def channel(self) -> Channel:
        """The channel this logic is attached to (set by ``Connection.add_channel``)."""
        if self._channel is None:
            raise RuntimeError(f"channel logic for {self.topic!r} is not attached to a connection")
        return self._channel

    def attach(self, channel: Channel) -> None:
        """Called once by ``Connection.add_channel``."""
        self._channel = channel

    def join_params(self) -> JSONObject:
        """The ``phx_join`` payload, built anew for every (re)join."""
        return dict(self._params)

    def on_joined(self, response: JSONValue, now: float) -> list[Event]:
        """The join succeeded (``ChannelJoined`` is reported already)."""
        return []

    def on_message(self, event: str, payload: JSONObject, now: float) -> list[Event]:
        """A hub message on this topic (not a reply, ``phx_error`` or ``phx_close``)."""
        return [MessageReceived(self.topic, event, payload)]

    def on_reply(self, ref: str, status: str, response: JSONValue, now: float) -> list[Event]:
        """The hub answered a push of ours sent with ``want_reply=True``."""
        return [ReplyReceived(self.topic, ref, status, response)]


class Channel:
    """The Phoenix state of one topic on a :class:`Connection`."""

    def __init__(self, connection: Connection, logic: ChannelLogic) -> None:
        self.topic = logic.topic
        self.logic = logic
        self.state = ChannelState.CLOSED
        self.join_ref: str | None = None
        self.wanted = False
        """Whether the channel should be joined whenever the socket is open."""
        self.rejoin_at = 0.0
        self.failures = 0
        """Consecutive failed joins/interruptions; indexes ``rejoin_after``."""
        self._connection = connection

    @property
    def joined(self) -> bool:
        """Whether pushes on this channel are sent now."""
        return self.state is ChannelState.JOINED and self._connection.is_open

    def push(
        self, event: str, payload: Mapping[str, JSONValue], *, want_reply: bool = False
    ) -> str | None:
        """Queue a push; see :meth:`Connection.push`."""
        return self._connection.push(self.topic, event, payload, want_reply=want_reply)


class Connection:
    """Phoenix V2 socket state: refs, heartbeats, joins, rejoins and replies.

    Times are seconds on any monotonic clock, always passed in. Refs count
    from ``"1"`` on each connection; a join's ref is its channel's join_ref.
    When a heartbeat is still unanswered as the next one falls due, the
    connection reports :class:`ConnectionLost` and goes quiet. ``phx_error``,
    ``phx_close`` and refused joins make the channel rejoin after
    ``rejoin_after`` seconds (the n-th consecutive failure uses the n-th
    value; the last repeats).
    """

    def __init__(
        self,
        *,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        rejoin_after: float | Sequence[float] = DEFAULT_REJOIN_AFTER,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        delays = (rejoin_after,) if isinstance(rejoin_after, int | float) else tuple(rejoin_after)
        if not heartbeat_interval > 0:
            raise ConfigError(f"heartbeat interval must be positive, not {heartbeat_interval!r}")
        if not delays or not all(delay >= 0 for delay in delays):
            raise ConfigError(f"rejoin_after must be delays >= 0, not {rejoin_after!r}")
        self.heartbeat_interval = heartbeat_interval
        self.rejoin_after = delays
        self.max_frame_size = max_frame_size
        self.max_depth = max_depth
        self._channels: dict[str, Channel] = {}
        self._open = False
        self._lost = False
        self._last_ref = 0
        self._pending: dict[str, tuple[_PendingKind, str]] = {}
        self._heartbeat_due = 0.0
        self._heartbeat_ref: str | None = None
        self._outbox: list[str] = []
        self._events: list[Event] = []

    # -- state -------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """The socket is up and no :class:`ConnectionLost` was reported on it."""
        return self._open and not self._lost

    def channel(self, topic: str) -> Channel:
        """The channel of ``topic`` (``KeyError`` if none was added)."""
        return self._channels[topic]

    def add_channel(self, logic: ChannelLogic, *, join: bool = True) -> Channel:
        """Register the logic of a topic; with ``join``, join it whenever connected."""
        if logic.topic in self._channels or logic.topic == PHOENIX_TOPIC:
            raise ValueError(f"topic {logic.topic!r} is already in use")
        channel = Channel(self, logic)
        self._channels[logic.topic] = channel
        logic.attach(channel)
        if join:
            self.join(logic.topic)
        return channel

    def join(self, topic: str) -> None:
        """Join ``topic`` now if connected, and on every later connection."""
        channel = self._channels[topic]
        channel.wanted = True
        if self.is_open and channel.state is ChannelState.CLOSED:
            self._send_join(channel)

    def leave(self, topic: str) -> None:
        """Leave ``topic`` and stop rejoining it; ``ChannelLeft`` follows."""
        channel = self._channels[topic]
        channel.wanted = False
        if not self.is_open:
            return
        if channel.state in (ChannelState.JOINING, ChannelState.JOINED):
            self._forget_pending(topic)
            ref = self._next_ref()
            self._pending[ref] = ("leave", topic)
            channel.state = ChannelState.LEAVING
            self._send(Frame(channel.join_ref, ref, topic, "phx_leave", {}))
        elif channel.state is ChannelState.WAITING_TO_REJOIN:
            channel.state = ChannelState.CLOSED
            self._events.append(ChannelLeft(topic))

    # -- transport inputs ----------------------------------------------------

    def connection_made(self, now: float) -> None:
        """The websocket is open: start heartbeats and join the wanted channels."""
        self._reset()
        self._open = True
        self._heartbeat_due = now + self.heartbeat_interval
        for channel in self._channels.values():
            if channel.wanted:
                self._send_join(channel)

    def connection_lost(self) -> None:
        """The websocket is closed; unsent frames are dropped, channels rejoin on reconnect."""
        self._reset()

    def receive_text(self, data: str | bytes, now: float) -> None:
        """Handle one received frame. Malformed frames become :class:`FrameRejected`."""
        if not self.is_open:
            logger.debug("frame ignored: connection is not open")
            return
        try:
            frame = decode_frame(data, max_size=self.max_frame_size, max_depth=self.max_depth)
        except ProtocolError as exc:
            self._reject(str(exc))
            return
        if frame.event == "phx_reply":
            self._receive_reply(frame, now)
            return
        channel = self._channels.get(frame.topic)
        if channel is None or not self._is_member(channel, frame):
            logger.debug("%s on %s ignored: no such joined channel", frame.event, frame.topic)
        elif frame.event in ("phx_error", "phx_close"):
            self._interrupt(channel, frame.event, now)
        else:
            self._events.extend(channel.logic.on_message(frame.event, frame.payload, now))

    def on_timer(self, now: float) -> None:
        """Run whatever is due at ``now``: heartbeat (or its timeout) and rejoins."""
        if not self.is_open:
            return
        if now >= self._heartbeat_due:
            if self._heartbeat_ref is not None:
                logger.warning("heartbeat %s unanswered; connection lost", self._heartbeat_ref)
                self._lost = True
                self._events.append(ConnectionLost("heartbeat timeout"))
                return
            self._heartbeat_ref = self._next_ref()
            self._heartbeat_due = now + self.heartbeat_interval
            self._send(Frame(None, self._heartbeat_ref, PHOENIX_TOPIC, "heartbeat", {}))
        for channel in self._channels.values():
            if channel.state is ChannelState.WAITING_TO_REJOIN and now >= channel.rejoin_at:
                self._send_join(channel)

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` must next be called; ``None`` while not open."""
        if not self.is_open:
            return None
        rejoins = (
            channel.rejoin_at
            for channel in self._channels.values()
            if channel.state is ChannelState.WAITING_TO_REJOIN
        )
        return min([self._heartbeat_due, *rejoins])

    # -- application inputs ------------------------------------------------

    def push(
        self,
        topic: str,
        event: str,
        payload: Mapping[str, JSONValue],
        *,
        want_reply: bool = False,
    ) -> str | None:
        """Queue a push on a joined channel and return its ref.

        Returns ``None`` (and drops the push, as NervesHubLink does) when the
        channel is not joined. With ``want_reply`` the hub's reply is reported
        to the channel logic's ``on_reply``; otherwise replies are ignored.
        """
        channel = self._channels[topic]
        if not channel.joined:
            logger.debug("%s push on %s dropped: channel not joined", event, topic)
            return None
        ref = self._next_ref()
        if want_reply:
            self._pending[ref] = ("push", topic)
            if len(self._pending) > MAX_PENDING_REPLIES:
                self._forget_oldest_push()
        self._send(Frame(channel.join_ref, ref, topic, event, dict(payload)))
        return ref

    # -- transport outputs ---------------------------------------------------

    def data_to_send(self) -> list[str]:
        """Text frames to send, in order; the list is emptied."""
        frames, self._outbox = self._outbox, []
        return frames

    def events_received(self) -> list[Event]:
        """Events since the last call, in order; the list is emptied."""
        events, self._events = self._events, []
        return events

    # -- internals -------------------------------------------------------------

    def _reset(self) -> None:
        self._open = False
        self._lost = False
        self._last_ref = 0
        self._pending.clear()
        self._heartbeat_ref = None
        self._outbox.clear()
        for channel in self._channels.values():
            channel.state = ChannelState.CLOSED
            channel.join_ref = None
            channel.failures = 0

    def _next_ref(self) -> str:
        self._last_ref += 1
        return str(self._last_ref)

    def _send(self, frame: Frame) -> None:
        self._outbox.append(encode_frame(frame))

    def _reject(self, reason: str) -> None:
        logger.warning("malformed frame dropped: %s", reason)
        self._events.append(FrameRejected(reason))

    def _send_join(self, channel: Channel) -> None:
        ref = self._next_ref()
        channel.join_ref = ref
        channel.state = ChannelState.JOINING
        self._pending[ref] = ("join", channel.topic)
        self._send(Frame(ref, ref, channel.topic, "phx_join", channel.logic.join_params()))

    @staticmethod
    def _is_member(channel: Channel, frame: Frame) -> bool:
        """Whether a frame belongs to the channel's current join (null join_ref: fastlane)."""
        return channel.state in (ChannelState.JOINING, ChannelState.JOINED) and (
            frame.join_ref is None or frame.join_ref == channel.join_ref
        )

    def _receive_reply(self, frame: Frame, now: float) -> None:
        status = frame.payload.get("status")
        if not isinstance(status, str):
            self._reject(f"phx_reply on {frame.topic!r} has no status string")
            return
        response = frame.payload.get("response", {})
        ref = frame.ref
        if ref is None:
            logger.debug("reply without a ref on %s ignored", frame.topic)
            return
        if frame.topic == PHOENIX_TOPIC and ref == self._heartbeat_ref:
            self._heartbeat_ref = None
            return
        pending = self._pending.get(ref)
        if pending is None or pending[1] != frame.topic:
            logger.debug("reply to unknown ref %s on %s ignored", ref, frame.topic)
            return
        del self._pending[ref]
        kind, topic = pending
        channel = self._channels[topic]
        if kind == "join":
            self._receive_join_reply(channel, status, response, now)
        elif kind == "leave":
            channel.state = ChannelState.CLOSED
            channel.join_ref = None
            self._events.append(ChannelLeft(topic))
            if channel.wanted:
                self._send_join(channel)
        else:
            self._events.extend(channel.logic.on_reply(ref, status, response, now))

    def _receive_join_reply(
        self, channel: Channel, status: str, response: JSONValue, now: float
    ) -> None:
        if status == "ok":
            channel.state = ChannelState.JOINED
            channel.failures = 0
            self._events.append(ChannelJoined(channel.topic, response))
            self._events.extend(channel.logic.on_joined(response, now))
        else:
            logger.warning("join of %s refused: %r", channel.topic, response)
            retry_at = self._schedule_rejoin(channel, now)
            self._events.append(ChannelJoinFailed(channel.topic, response, retry_at))

    def _interrupt(self, channel: Channel, reason: str, now: float) -> None:
        logger.warning("channel %s ended by %s; rejoining", channel.topic, reason)
        retry_at = self._schedule_rejoin(channel, now)
        self._events.append(ChannelInterrupted(channel.topic, reason, retry_at))

    def _schedule_rejoin(self, channel: Channel, now: float) -> float:
        self._forget_pending(channel.topic)
        delay = self.rejoin_after[min(channel.failures, len(self.rejoin_after) - 1)]
        channel.failures += 1
        channel.state = ChannelState.WAITING_TO_REJOIN
        channel.join_ref = None
        channel.rejoin_at = now + delay
        return channel.rejoin_at

    def _forget_oldest_push(self) -> None:
        """Drop the oldest push still awaiting a reply (joins and leaves are kept:
        losing one would leave a channel waiting forever)."""
        oldest = next(ref for ref, (kind, _) in self._pending.items() if kind == "push")
        del self._pending[oldest]

    def _forget_pending(self, topic: str) -> None:
        for ref in [ref for ref, (_, owner) in self._pending.items() if owner == topic]:
            del self._pending[ref]
