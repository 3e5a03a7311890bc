"""Phoenix V2 frame codec: real frames, every rejection path, and fuzzing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nhlink.errors import NHLinkError
from nhlink.protocol import Frame, ProtocolError, decode_frame, encode_frame
from tests.protocol.harness import FIXTURE_DEVICE_JOIN, FIXTURE_DEVICE_JOIN_REPLY

FASTLANED_KEYS = '[null,null,"device","fwup_public_keys",{"keys":["pUJ3...base64...="]}]'
HEARTBEAT = '[null,"3","phoenix","heartbeat",{}]'


def test_decodes_the_spec_frames() -> None:
    join = decode_frame(FIXTURE_DEVICE_JOIN)
    assert (join.join_ref, join.ref, join.topic, join.event) == ("1", "1", "device", "phx_join")
    assert join.payload["meta"] == {
        "firmware_auto_revert_detected": False,
        "firmware_validated": True,
    }
    assert join.payload["currently_downloading_uuid"] is None

    reply = decode_frame(FIXTURE_DEVICE_JOIN_REPLY)
    assert reply == Frame("1", "1", "device", "phx_reply", {"status": "ok", "response": {}})

    fastlaned = decode_frame(FASTLANED_KEYS)
    assert fastlaned == Frame(
        None, None, "device", "fwup_public_keys", {"keys": ["pUJ3...base64...="]}
    )


def test_encodes_the_spec_frames_byte_for_byte() -> None:
    assert encode_frame(Frame(None, "3", "phoenix", "heartbeat", {})) == HEARTBEAT
    for text in (FIXTURE_DEVICE_JOIN, FIXTURE_DEVICE_JOIN_REPLY, FASTLANED_KEYS):
        assert encode_frame(decode_frame(text)) == text


def test_accepts_utf8_bytes_and_escapes_non_ascii_on_encode() -> None:
    frame = decode_frame('["1",null,"console","dn",{"data":"é✓"}]'.encode())
    assert frame.payload == {"data": "é✓"}
    assert encode_frame(frame) == '["1",null,"console","dn",{"data":"\\u00e9\\u2713"}]'


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not json", "frame is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        ("", "frame is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        ('{"topic":"device"}', "frame is not a 5-element JSON array"),
        ('[null,null,"device","update"]', "frame is not a 5-element JSON array"),
        ('[null,null,"device","update",{},1]', "frame is not a 5-element JSON array"),
        ('[1,null,"device","update",{}]', "frame join_ref is not a string or null"),
        ('[null,2,"device","update",{}]', "frame ref is not a string or null"),
        ('[null,null,7,"update",{}]', "frame topic is not a non-empty string"),
        ('[null,null,"","update",{}]', "frame topic is not a non-empty string"),
        ('[null,null,"device",null,{}]', "frame event is not a non-empty string"),
        ('[null,null,"device","",{}]', "frame event is not a non-empty string"),
        ('[null,null,"device","update",[]]', "frame payload of 'update' is not a JSON object"),
        ('[null,null,"device","update","x"]', "frame payload of 'update' is not a JSON object"),
        ('[null,null,"device","update",{"v":NaN}]', "frame is not valid JSON: NaN is not allowed"),
        (
            '[null,null,"device","update",{"v":-Infinity}]',
            "frame is not valid JSON: -Infinity is not allowed",
        ),
        (b'[null,null,"device","update",{"v":"\xff"}]', "frame is not valid UTF-8"),
    ],
)
def test_rejects_malformed_frames_with_one_line(data: str | bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_frame(data)
    assert str(info.value) == message
    assert isinstance(info.value, NHLinkError)


def test_rejects_integers_too_long_to_parse() -> None:
    with pytest.raises(ProtocolError, match=r"^frame is not valid JSON: .*digits"):
        decode_frame('[null,null,"d","e",{"n":' + "9" * 5000 + "}]")


def _frame_of_size(size: int, filler: str = "a") -> str:
    head, tail = '[null,null,"device","blob",{"data":"', '"}]'
    count = (size - len(head) - len(tail)) // len(filler.encode())
    return head + filler * count + tail


def test_size_cap_counts_utf8_bytes() -> None:
    assert decode_frame(_frame_of_size(1 << 20)).event == "blob"
    with pytest.raises(
        ProtocolError, match=r"^frame of 1048577 bytes exceeds the 1048576-byte limit$"
    ):
        decode_frame(_frame_of_size(1 << 20) + " ")
    with pytest.raises(ProtocolError, match=r"exceeds the 1048576-byte limit"):
        decode_frame(_frame_of_size((1 << 20) + 4).encode())
    # About 300 000 characters of 4 bytes each: fewer characters than the cap, more bytes.
    emoji = _frame_of_size(1_200_000, "\U0001f600")
    size = len(emoji.encode())
    assert len(emoji) < 1 << 20 < size
    with pytest.raises(ProtocolError, match=rf"^frame of {size} bytes exceeds"):
        decode_frame(emoji)
    small = _frame_of_size(100)
    assert len(small) == 100
    assert decode_frame(small, max_size=100).event == "blob"
    with pytest.raises(ProtocolError, match=r"exceeds the 99-byte limit"):
        decode_frame(small, max_size=99)


def _nested(depth: int) -> str:
    """A frame whose deepest value sits at ``depth`` (outer array = 1, payload = 2)."""
    inner = "[" * (depth - 2) + "]" * (depth - 2)
    return '[null,null,"device","deep",{"v":' + (inner or "0") + "}]"


def test_depth_cap() -> None:
    assert decode_frame(_nested(64)).event == "deep"
    with pytest.raises(ProtocolError, match=r"^frame nests deeper than 64 levels$"):
        decode_frame(_nested(65))
    with pytest.raises(ProtocolError, match="deeper than 3 levels"):
        decode_frame(_nested(4), max_depth=3)
    # Brackets inside strings (escaped quotes included) do not nest.
    text = '[null,null,"device","s",{"v":"\\"' + "[{" * 100 + '","w":["]]"]}]'
    assert decode_frame(text).payload["w"] == ["]]"]


def test_hostile_nesting_never_reaches_the_decoder() -> None:
    with pytest.raises(ProtocolError, match="deeper than 64"):
        decode_frame("[" * 500_000)
    with pytest.raises(ProtocolError, match="deeper than 64"):
        decode_frame('[null,null,"d","e",{"v":' + '{"a":' * 100_000 + "}")


def test_encode_refuses_unserialisable_payloads() -> None:
    with pytest.raises(ProtocolError, match=r"^cannot encode 'x' frame: .*not JSON serializable"):
        encode_frame(Frame("1", "2", "device", "x", {"v": object()}))  # type: ignore[dict-item]
    with pytest.raises(ProtocolError, match=r"^cannot encode 'x' frame: Out of range float"):
        encode_frame(Frame("1", "2", "device", "x", {"v": float("nan")}))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
refs = st.none() | st.text()
names = st.text(min_size=1)


@given(refs, refs, names, names, st.dictionaries(st.text(), json_values, max_size=5))
def test_encode_decode_roundtrip(
    join_ref: str | None, ref: str | None, topic: str, event: str, payload: dict[str, Any]
) -> None:
    frame = Frame(join_ref, ref, topic, event, payload)
    text = encode_frame(frame)
    assert text.isascii()
    assert decode_frame(text) == frame


@settings(max_examples=300)
@given(json_values)
def test_any_json_decodes_or_fails_cleanly(value: Any) -> None:
    text = json.dumps(value)
    try:
        frame = decode_frame(text)
    except ProtocolError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(frame.payload, dict) and [*json.loads(text)][4] == frame.payload


@settings(max_examples=300)
@given(st.text() | st.binary())
def test_arbitrary_input_never_crashes(data: str | bytes) -> None:
    try:
        decode_frame(data)
    except ProtocolError as exc:
        assert str(exc) and "\n" not in str(exc)


@settings(max_examples=200)
@given(
    st.lists(
        st.sampled_from(["[", "]", "{", "}", '"', "\\", ",", ":", "1", "null", '"a"']), max_size=200
    )
)
def test_bracket_soup_never_crashes(pieces: list[str]) -> None:
    try:
        decode_frame("".join(pieces), max_depth=3)
    except ProtocolError as exc:
        assert "\n" not in str(exc)
