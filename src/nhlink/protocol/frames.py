"""Phoenix V2 JSON frames: ``[join_ref, ref, topic, event, payload]``.

Decoding is strict: anything that is not such an array with the right types,
is larger than the size cap or nests deeper than the depth cap raises a
:class:`ProtocolError` with a one-line message. Nothing else escapes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TypeAlias

from nhlink.errors import NHLinkError

JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"
JSONObject: TypeAlias = "dict[str, JSONValue]"

DEFAULT_MAX_FRAME_SIZE = 1 << 20
"""Largest accepted frame, in UTF-8 bytes (1 MiB)."""

DEFAULT_MAX_DEPTH = 64
"""Deepest accepted JSON nesting; the outer array counts as 1."""

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class ProtocolError(NHLinkError):
    """A message from the hub breaks the wire protocol."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One Phoenix V2 message."""

    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: JSONObject = field(default_factory=dict)


def encode_frame(frame: Frame) -> str:
    """Serialise ``frame`` as compact, ASCII-only JSON text.

    Raises :class:`ProtocolError` if the payload is not JSON-serialisable.
    """
    message = [frame.join_ref, frame.ref, frame.topic, frame.event, frame.payload]
    try:
        return json.dumps(message, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"cannot encode {frame.event!r} frame: {exc}") from None


def decode_frame(
    data: str | bytes,
    *,
    max_size: int = DEFAULT_MAX_FRAME_SIZE,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Frame:
    """Parse and validate one received frame."""
    text = _checked_text(data, max_size)
    if _too_deep(text, max_depth):
        raise ProtocolError(f"frame nests deeper than {max_depth} levels")
    try:
        message = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"frame is not valid JSON: {_first_line(exc)}") from None
    if not isinstance(message, list) or len(message) != 5:
        raise ProtocolError("frame is not a 5-element JSON array")
    join_ref, ref, topic, event, payload = message
    for name, value in (("join_ref", join_ref), ("ref", ref)):
        if value is not None and not isinstance(value, str):
            raise ProtocolError(f"frame {name} is not a string or null")
    if not isinstance(topic, str) or not topic:
        raise ProtocolError("frame topic is not a non-empty string")
    if not isinstance(event, str) or not event:
        raise ProtocolError("frame event is not a non-empty string")
    if not isinstance(payload, dict):
        raise ProtocolError(f"frame payload of {event!r} is not a JSON object")
    return Frame(join_ref, ref, topic, event, payload)


def _checked_text(data: str | bytes, max_size: int) -> str:
    if isinstance(data, bytes):
        size = len(data)
    elif len(data) * 4 <= max_size:
        size = len(data)  # cannot exceed the cap whatever it encodes to
    else:
        size = len(data.encode("utf-8", "surrogatepass"))
    if size > max_size:
        raise ProtocolError(f"frame of {size} bytes exceeds the {max_size}-byte limit")
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("frame is not valid UTF-8") from None
    return data


def _too_deep(text: str, max_depth: int) -> bool:
    """Whether brackets outside JSON strings nest deeper than ``max_depth``.

    Done before parsing, without recursion, so hostile input never reaches
    the recursive JSON decoder.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return False
    outside_strings = _JSON_STRING.sub("", text)
    steps = (_BRACKET_STEP[match] for match in _BRACKET.findall(outside_strings))
    return max(accumulate(steps), default=0) > max_depth


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
