"""fwup framing: golden framed outputs, stdin packets, errors."""

from __future__ import annotations

from typing import Any

import pytest
from backend_support import Vectors, framed_outputs

from nhlink.errors import FramingError


def manifest_frames(vectors: Vectors, relative: str) -> list[tuple[str, int, str]]:
    for vector in vectors.manifest["vectors"]:
        for step in vector["steps"]:
            if step["expected"].get("framed_output") == relative:
                return [
                    (f["type"], f.get("percent", f.get("code", 0)), f.get("text", ""))
                    for f in step["expected"]["frames"]
                ]
    raise KeyError(relative)


@pytest.mark.parametrize("relative", framed_outputs())
def test_golden_framed_output_decodes_and_reencodes(
    backend: Any, vectors: Vectors, relative: str
) -> None:
    raw = (vectors.root / relative).read_bytes()
    expected = manifest_frames(vectors, relative)
    decoder = backend.FrameDecoder()
    assert decoder.feed(raw) == expected
    assert decoder.pending == 0
    assert b"".join(backend.encode_frame(*frame) for frame in expected) == raw
    one_by_one = backend.FrameDecoder()
    frames: list[tuple[str, int, str]] = []
    decoded_bytes = 0
    for i in range(len(raw)):
        new = one_by_one.feed(raw[i : i + 1])
        frames += new
        decoded_bytes += sum(len(backend.encode_frame(*frame)) for frame in new)
        assert one_by_one.pending == i + 1 - decoded_bytes
    assert frames == expected


def test_frame_decoder_pending_counts_partial_frames(backend: Any) -> None:
    frame = backend.encode_frame("WN", 0, "hello")
    decoder = backend.FrameDecoder()
    assert decoder.feed(frame[:6]) == []
    assert decoder.pending == 6
    assert decoder.feed(frame[6:] + frame[:2]) == [("WN", 0, "hello")]
    assert decoder.pending == 2


@pytest.mark.parametrize("length", [0, 3, 1024 * 1024 + 1])
def test_frame_decoder_rejects_bad_lengths(backend: Any, length: int) -> None:
    with pytest.raises(FramingError):
        backend.FrameDecoder().feed(length.to_bytes(4, "big") + b"PR\0\0")


def test_packets_round_trip_at_any_chunking(backend: Any, vectors: Vectors) -> None:
    fw = vectors.fw("01_minimal_raw")
    stream = b"".join(backend.encode_packet(fw[i : i + 4096]) for i in range(0, len(fw), 4096))
    stream += backend.encode_packet(b"") + b"ignored trailing bytes"
    for chunk in (1, 3, 4100, len(stream)):
        decoder = backend.PacketDecoder()
        payloads = []
        for i in range(0, len(stream), chunk):
            payloads += decoder.feed(stream[i : i + chunk])
        assert b"".join(payloads) == fw
        assert all(len(p) == 4096 for p in payloads[:-1])
        assert decoder.finished
        decoder.check_eof()


def test_packet_eof_rules(backend: Any) -> None:
    decoder = backend.PacketDecoder()
    assert decoder.feed(backend.encode_packet(b"abc")) == [b"abc"]
    decoder.check_eof()  # plain EOF at a packet boundary ends the input like fwup
    assert not decoder.finished
    decoder.feed(b"\0\0")
    with pytest.raises(FramingError) as caught:
        decoder.check_eof()
    assert str(caught.value) == "Received EOF even though framing indicated more bytes"
    inside = backend.PacketDecoder()
    inside.feed(backend.encode_packet(b"abcdef")[:7])
    with pytest.raises(FramingError):
        inside.check_eof()


def test_encode_frame_layout(backend: Any) -> None:
    assert backend.encode_frame("PR", 100, "") == b"\0\0\0\x04PR\0\x64"
    assert backend.encode_frame("ER", 0, "é") == b"\0\0\0\x06ER\0\0\xc3\xa9"
    assert backend.encode_packet(b"xy") == b"\0\0\0\x02xy"
