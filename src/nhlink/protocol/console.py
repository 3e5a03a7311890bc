"""The ``console`` channel (spec 3): typed hub events in, ``up`` and file-data pushes out.

Sans-I/O like the rest of :mod:`nhlink.protocol`: hub messages become the
events below (bad payloads become :class:`PayloadRejected` and an error log
line), and the push methods queue frames on the connection. What the events
mean (a Python console, files in ``data_path``) lives in :mod:`nhlink.console`.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass

from nhlink.protocol.connection import ChannelLogic
from nhlink.protocol.device import CONSOLE_VERSION, DEVICE_API_VERSION
from nhlink.protocol.events import Event, PayloadRejected, UnknownEvent
from nhlink.protocol.frames import JSONObject, JSONValue

logger = logging.getLogger("nhlink.protocol.console")

CONSOLE_TOPIC = "console"
FILE_CHUNK_SIZE = 1024
"""Raw bytes per ``file-data`` chunk we send."""
MAX_RECEIVED_CHUNK = 64 * 1024
"""Largest decoded ``file-data`` chunk accepted from the hub."""
MAX_DIMENSION = 10_000


@dataclass(frozen=True, slots=True)
class ConsoleInput(Event):
    """Keystrokes for the console (``dn``)."""

    data: str


@dataclass(frozen=True, slots=True)
class ConsoleWindowSizeChanged(Event):
    """The operator's terminal was resized (``window_size``)."""

    height: int
    width: int


@dataclass(frozen=True, slots=True)
class ConsoleRestartRequested(Event):
    """The hub asks for a fresh console (``restart``)."""


@dataclass(frozen=True, slots=True)
class FileTransferStarted(Event):
    """The hub starts sending ``filename`` (``file-data/start``)."""

    filename: str


@dataclass(frozen=True, slots=True)
class FileChunkReceived(Event):
    """One decoded chunk of ``filename`` (``file-data``)."""

    filename: str
    chunk: int
    data: bytes


@dataclass(frozen=True, slots=True)
class FileTransferStopped(Event):
    """The hub finished sending ``filename`` (``file-data/stop``; may be empty)."""

    filename: str


class ConsoleChannel(ChannelLogic):
    """Logic of the ``console`` topic."""

    def __init__(self) -> None:
        super().__init__(CONSOLE_TOPIC)

    def join_params(self) -> JSONObject:
        return {"console_version": CONSOLE_VERSION, "device_api_version": DEVICE_API_VERSION}

    def on_message(self, event: str, payload: JSONObject, now: float) -> list[Event]:
        try:
            return [self._parse(event, payload)]
        except ValueError as exc:
            logger.error("console %s rejected: %s", event, exc)
            return [PayloadRejected(CONSOLE_TOPIC, event, str(exc))]

    def _parse(self, event: str, payload: JSONObject) -> Event:
        if event == "dn":
            return ConsoleInput(_string(payload, "data"))
        if event == "window_size":
            return ConsoleWindowSizeChanged(
                _dimension(payload, "height"), _dimension(payload, "width")
            )
        if event == "restart":
            return ConsoleRestartRequested()
        if event == "file-data/start":
            return FileTransferStarted(_string(payload, "filename"))
        if event == "file-data":
            return FileChunkReceived(
                _string(payload, "filename"), _chunk_index(payload), _chunk_data(payload)
            )
        if event == "file-data/stop":
            name = payload.get("filename", "")
            return FileTransferStopped(name if isinstance(name, str) else "")
        logger.info("unknown console event %r ignored", event)
        return UnknownEvent(CONSOLE_TOPIC, event, payload)

    # -- pushes --------------------------------------------------------------

    def send_output(self, data: str) -> bool:
        """Push terminal output (``up``); False when the channel is not joined."""
        return self.channel.push("up", {"data": data}) is not None

    def send_file_start(self, filename: str) -> bool:
        return self.channel.push("file-data/start", {"filename": filename}) is not None

    def send_file_chunk(self, filename: str, index: int, data: bytes) -> bool:
        """Push chunk ``index`` (at most :data:`FILE_CHUNK_SIZE` bytes)."""
        if len(data) > FILE_CHUNK_SIZE:
            raise ValueError(f"file chunk of {len(data)} bytes exceeds {FILE_CHUNK_SIZE}")
        payload: JSONObject = {
            "filename": filename,
            "chunk": index,
            "data": base64.b64encode(data).decode("ascii"),
        }
        return self.channel.push("file-data", payload) is not None

    def send_file_stop(self, filename: str) -> bool:
        return self.channel.push("file-data/stop", {"filename": filename}) is not None


def _string(payload: JSONObject, key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, not {_kind(value)}")
    return value


def _dimension(payload: JSONObject, key: str) -> int:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_DIMENSION:
        raise ValueError(f"{key!r} must be an integer in 1..{MAX_DIMENSION}, not {value!r:.40}")
    return value


def _chunk_index(payload: JSONObject) -> int:
    value = payload.get("chunk")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"'chunk' must be a non-negative integer, not {value!r:.40}")
    return value


def _chunk_data(payload: JSONObject) -> bytes:
    text = _string(payload, "data")
    if len(text) > (MAX_RECEIVED_CHUNK + 2) // 3 * 4:
        raise ValueError(
            f"chunk of {len(text)} base64 characters exceeds {MAX_RECEIVED_CHUNK} bytes"
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"'data' is not valid base64: {exc}") from None


def _kind(value: JSONValue) -> str:
    return "null" if value is None else type(value).__name__
