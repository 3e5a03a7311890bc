"""The sans-I/O console channel: join params, typed events, rejected payloads, pushes."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from nhlink.protocol import Connection, PayloadRejected
from nhlink.protocol.console import (
    ConsoleChannel,
    ConsoleInput,
    ConsoleRestartRequested,
    ConsoleWindowSizeChanged,
    FileChunkReceived,
    FileTransferStarted,
    FileTransferStopped,
)
from nhlink.protocol.events import Event


def joined() -> tuple[Connection, ConsoleChannel]:
    conn = Connection()
    channel = ConsoleChannel()
    conn.add_channel(channel)
    conn.connection_made(0.0)
    join = json.loads(conn.data_to_send()[0])
    assert join[2:] == [
        "console",
        "phx_join",
        {"console_version": "2.0.0", "device_api_version": "2.3.0"},
    ]
    conn.receive_text(
        json.dumps([join[0], join[1], "console", "phx_reply", {"status": "ok", "response": {}}]),
        0.0,
    )
    conn.events_received()
    return conn, channel


def receive(conn: Connection, event: str, payload: object) -> list[Event]:
    conn.receive_text(json.dumps([None, None, "console", event, payload]), 1.0)
    return conn.events_received()


def test_hub_events_become_typed_events() -> None:
    conn, _ = joined()
    assert receive(conn, "dn", {"data": "1+1\r"}) == [ConsoleInput("1+1\r")]
    assert receive(conn, "window_size", {"height": 40, "width": 120}) == [
        ConsoleWindowSizeChanged(40, 120)
    ]
    assert receive(conn, "restart", {}) == [ConsoleRestartRequested()]
    assert receive(conn, "file-data/start", {"filename": "a.bin"}) == [FileTransferStarted("a.bin")]
    data = base64.b64encode(b"\x00\x01hello").decode()
    assert receive(conn, "file-data", {"filename": "a.bin", "chunk": 0, "data": data}) == [
        FileChunkReceived("a.bin", 0, b"\x00\x01hello")
    ]
    assert receive(conn, "file-data/stop", {}) == [FileTransferStopped("")]


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("dn", {"data": 5}),
        ("dn", {}),
        ("window_size", {"height": "40", "width": 80}),
        ("window_size", {"height": True, "width": 80}),
        ("file-data/start", {"filename": None}),
        ("file-data", {"filename": "a", "chunk": -1, "data": ""}),
        ("file-data", {"filename": "a", "chunk": 0, "data": "not base64!"}),
        ("file-data", {"filename": "a", "chunk": 0, "data": "A" * 200_000}),
    ],
)
def test_bad_payloads_are_rejected_with_an_error_log(
    event: str, payload: object, caplog: pytest.LogCaptureFixture
) -> None:
    conn, _ = joined()
    with caplog.at_level(logging.ERROR, "nhlink.protocol.console"):
        events = receive(conn, event, payload)
    assert len(events) == 1 and isinstance(events[0], PayloadRejected)
    assert events[0].event == event
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def test_pushes_carry_output_and_base64_chunks() -> None:
    conn, channel = joined()
    assert channel.send_output("hi\r\n")
    assert channel.send_file_chunk("f", 3, b"\xff" * 1024)
    with pytest.raises(ValueError):
        channel.send_file_chunk("f", 4, b"x" * 1025)
    frames = [json.loads(f) for f in conn.data_to_send()]
    assert frames[0][3:] == ["up", {"data": "hi\r\n"}]
    assert frames[1][3] == "file-data"
    assert frames[1][4]["chunk"] == 3
    assert base64.b64decode(frames[1][4]["data"]) == b"\xff" * 1024
