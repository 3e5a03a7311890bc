"""Sans-I/O NervesHub device protocol: Phoenix V2 frames, channels and the device channel.

Nothing here touches sockets, clocks or randomness: times (seconds) and a
random source are passed in, frames to send and :class:`Event` objects come
out. ``nhlink.aio`` drives it over a real websocket.
"""

from nhlink.protocol.backoff import RandomSource, ReconnectBackoff
from nhlink.protocol.connection import (
    Channel,
    ChannelLogic,
    ChannelState,
    Connection,
)
from nhlink.protocol.device import (
    CONSOLE_VERSION,
    DEVICE_API_VERSION,
    DeviceChannel,
    DeviceJoinInfo,
    ProgressThrottle,
    build_join_params,
    reschedule_minutes,
)
from nhlink.protocol.events import (
    ArchiveOffered,
    ArchivePublicKeysUpdated,
    ChannelInterrupted,
    ChannelJoined,
    ChannelJoinFailed,
    ChannelLeft,
    ConnectionLost,
    Event,
    ExtensionsRequested,
    FrameRejected,
    FwupPublicKeysUpdated,
    IdentifyRequested,
    MessageReceived,
    PayloadRejected,
    RebootRequested,
    ReplyReceived,
    ScriptRunRequested,
    UnknownEvent,
    UpdateOffered,
)
from nhlink.protocol.frames import (
    Frame,
    JSONObject,
    JSONValue,
    ProtocolError,
    decode_frame,
    encode_frame,
)
from nhlink.protocol.payloads import ArchiveInfo, FirmwareMetadata, UpdateInfo

__all__ = [
    "CONSOLE_VERSION",
    "DEVICE_API_VERSION",
    "ArchiveInfo",
    "ArchiveOffered",
    "ArchivePublicKeysUpdated",
    "Channel",
    "ChannelInterrupted",
    "ChannelJoinFailed",
    "ChannelJoined",
    "ChannelLeft",
    "ChannelLogic",
    "ChannelState",
    "Connection",
    "ConnectionLost",
    "DeviceChannel",
    "DeviceJoinInfo",
    "Event",
    "ExtensionsRequested",
    "FirmwareMetadata",
    "Frame",
    "FrameRejected",
    "FwupPublicKeysUpdated",
    "IdentifyRequested",
    "JSONObject",
    "JSONValue",
    "MessageReceived",
    "PayloadRejected",
    "ProgressThrottle",
    "ProtocolError",
    "RandomSource",
    "RebootRequested",
    "ReconnectBackoff",
    "ReplyReceived",
    "ScriptRunRequested",
    "UnknownEvent",
    "UpdateInfo",
    "UpdateOffered",
    "build_join_params",
    "decode_frame",
    "encode_frame",
    "reschedule_minutes",
]
