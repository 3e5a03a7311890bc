"""Events the protocol core reports, each named as a fact that happened.

The transport drains them with ``Connection.events_received()`` after every
input. Connection-level events come first in this module, device-channel
events after them.
"""

from __future__ import annotations

from dataclasses import dataclass

from nhlink.protocol.frames import JSONObject, JSONValue
from nhlink.protocol.payloads import ArchiveInfo, UpdateInfo


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every protocol event."""


# -- connection and channels -------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionLost(Event):
    """The connection is dead (e.g. ``"heartbeat timeout"``).

    The transport must close the socket, call ``connection_lost()`` and
    reconnect after the backoff delay. The core sends nothing until then.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class FrameRejected(Event):
    """A received frame was malformed and was dropped (the connection lives on)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ChannelJoined(Event):
    """The hub accepted the join of ``topic``; ``response`` is the reply's response."""

    topic: str
    response: JSONValue


@dataclass(frozen=True, slots=True)
class ChannelJoinFailed(Event):
    """The hub refused the join of ``topic``; it is retried at ``retry_at``."""

    topic: str
    response: JSONValue
    retry_at: float


@dataclass(frozen=True, slots=True)
class ChannelInterrupted(Event):
    """A joined (or joining) channel ended: ``reason`` is ``"phx_error"`` or
    ``"phx_close"``. It is rejoined at ``retry_at``."""

    topic: str
    reason: str
    retry_at: float


@dataclass(frozen=True, slots=True)
class ChannelLeft(Event):
    """A channel left at our request is closed."""

    topic: str


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """A hub message on a channel whose logic has no more specific event."""

    topic: str
    event: str
    payload: JSONObject


@dataclass(frozen=True, slots=True)
class ReplyReceived(Event):
    """The hub answered a push sent with ``want_reply=True``."""

    topic: str
    ref: str
    status: str
    response: JSONValue


# -- device channel ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PayloadRejected(Event):
    """A known hub event had an unusable payload; it was logged and ignored."""

    topic: str
    event: str
    reason: str


@dataclass(frozen=True, slots=True)
class UnknownEvent(Event):
    """The hub sent an event this client does not know; it was logged and ignored."""

    topic: str
    event: str
    payload: JSONObject


@dataclass(frozen=True, slots=True)
class UpdateOffered(Event):
    """The hub offers a firmware update (``update``)."""

    update: UpdateInfo


@dataclass(frozen=True, slots=True)
class RebootRequested(Event):
    """The hub asks for a reboot; the ``rebooting`` push is already queued.

    Send ``data_to_send()`` before rebooting.
    """


@dataclass(frozen=True, slots=True)
class IdentifyRequested(Event):
    """The hub asks the device to identify itself (blink an LED...)."""


@dataclass(frozen=True, slots=True)
class FwupPublicKeysUpdated(Event):
    """The hub sent fwup public keys (base64 Ed25519) to use instead of the current ones."""

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ArchivePublicKeysUpdated(Event):
    """The hub sent archive public keys (base64 Ed25519) to use instead of the current ones."""

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ArchiveOffered(Event):
    """The hub offers an archive (``archive``)."""

    archive: ArchiveInfo


@dataclass(frozen=True, slots=True)
class ScriptRunRequested(Event):
    """The hub asked to run Elixir code; the core already answered with an error."""

    ref: str
    text: str


@dataclass(frozen=True, slots=True)
class ExtensionsRequested(Event):
    """The hub asks the device to join the ``extensions`` channel (``extensions:get``)."""
