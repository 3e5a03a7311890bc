"""The remote Python console against the real LocalHub over real TLS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
from pathlib import Path

import pytest

from nhlink.aio.link import NervesHubLink
from nhlink.console.remote import RESTART_MESSAGE, TIMEOUT_MESSAGE
from nhlink.protocol.console import FILE_CHUNK_SIZE
from nhlink.testing import LocalHub, Pki
from tests.console.support import Terminal
from tests.link.support import Records, device_config, run, running


async def wait_joined(hub: LocalHub, identifier: str) -> Terminal:
    device = await hub.wait_for_device(identifier)
    await hub.wait_until(lambda: device.console_join_params, 10, "console join")
    assert device.console_join_params == {"console_version": "2.0.0", "device_api_version": "2.3.0"}
    return Terminal(hub, device)


def test_console_is_not_joined_unless_enabled(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            link = NervesHubLink(device_config(hub, "dev-nocon", tmp_path))
            assert link.console is None
            async with running(link):
                await hub.wait_for_device("dev-nocon")
                await hub.wait_for_event("dev-nocon", "report_network_interface")
            assert hub.frames("dev-nocon", "console") == []

    run(scenario())


def test_session_evaluates_edits_multiline_and_interrupts(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            link = NervesHubLink(device_config(hub, "dev-con", tmp_path, remote_iex=True))
            async with running(link):
                term = await wait_joined(hub, "dev-con")
                assert hub.frames("dev-con", "console", "up") == []  # lazy start
                await term.type("6 * 7\r")
                await term.expect("(nhlink remote console)")
                assert (await term.run("")) == ""
                assert "42" in await term.expect(">>> ")  # the first line's answer
                # the live link is in the namespace
                assert (await term.run("link.config.remote_console, type(client).__name__")) == (
                    "(True, 'Client')\r\n"
                )
                # line editing: fix a typo with left arrow + backspace, Ctrl-A to prepend
                await term.type("2**1O\x1b[D\x7f1\x1b[C\x7f0")
                await term.type("\x01x=\r")
                await term.expect(">>> ")
                assert (await term.run("x")) == "1024\r\n"
                # history: up arrow recalls the previous line
                await term.type("\x1b[A\r")
                assert "1024\r\n" in await term.expect(">>> ")
                # multi-line input: a def, then a call
                await term.type("def double(n):\r")
                await term.expect("... ")
                await term.type("    return n * 2\r")
                await term.expect("... ")
                await term.type("\r")
                await term.expect(">>> ")
                assert (await term.run("double(21)")) == "42\r\n"
                # output and errors of the evaluation are captured
                assert (await term.run("print('a\\nb')")) == "a\r\nb\r\n"
                assert "ZeroDivisionError" in await term.run("1/0")
                # Ctrl-C interrupts a long loop; the session lives on
                await term.type("while True: pass\r")
                await term.expect("while True: pass\r\n")
                await term.expect("... ")
                started = asyncio.get_running_loop().time()
                await term.type("\r")
                await asyncio.sleep(0.3)
                assert link.console is not None and link.console.session is not None
                assert link.console.session.evaluating
                await term.type("\x03")
                interrupted = await term.expect(">>> ", timeout=5)
                assert "KeyboardInterrupt" in interrupted
                assert asyncio.get_running_loop().time() - started < 5
                assert (await term.run("double(5)")) == "10\r\n"
                # Ctrl-C at the prompt drops the line
                await term.type("abc\x03")
                assert "KeyboardInterrupt" in await term.expect(">>> ")

    run(scenario())


def test_timeout_then_next_key_restarts_and_restart_event(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            link = NervesHubLink(device_config(hub, "dev-to", tmp_path, remote_console=True))
            assert link.console is not None
            link.console.timeout = 0.5
            async with running(link):
                term = await wait_joined(hub, "dev-to")
                await term.type("secret = 7\r")
                await term.expect(">>> ")
                await term.expect(">>> ")
                await term.expect(TIMEOUT_MESSAGE, timeout=5)
                assert link.console.session is None and link.console.timed_out
                await term.type("q")  # any key: a fresh console, the key is not typed
                await term.expect("(nhlink remote console)")
                await term.expect(">>> ")
                assert "NameError" in await term.run("secret")
                await term.run("kept = 1")
                await hub.push("dev-to", "console", "restart", {})
                await term.expect(RESTART_MESSAGE)
                await term.expect(">>> ")
                assert "NameError" in await term.run("kept")
                # the session dies with exit(): reported and restarted
                await term.type("exit(3)\r")
                await term.expect("Remote console stopped: exit(3)")
                await term.expect(">>> ")
                assert (await term.run("1+1")) == "2\r\n"
                # window_size is kept for the session
                await hub.push("dev-to", "console", "window_size", {"height": 33, "width": 101})
                await hub.wait_until(
                    lambda: (
                        (
                            link.console is not None
                            and link.console.session is not None
                            and link.console.session.window_size == (33, 101)
                        )
                        or None
                    ),
                    5,
                    "window size",
                )

    run(scenario())


def test_files_both_ways_with_matching_sha256(pki: Pki, tmp_path: Path) -> None:
    payload = os.urandom(5 * FILE_CHUNK_SIZE + 321)
    outgoing = tmp_path / "report.bin"
    outgoing.write_bytes(payload)
    small = tmp_path / "small.txt"
    small.write_bytes(b"tiny")

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            link = NervesHubLink(device_config(hub, "dev-file", tmp_path, remote_console=True))
            console = link.console
            assert console is not None
            data_path = Path(link.config.data_path)
            async with running(link):
                await wait_joined(hub, "dev-file")
                # hub -> device
                mark = hub.frame_mark()
                await hub.push("dev-file", "console", "file-data/start", {"filename": "in.bin"})
                for index, offset in enumerate(range(0, len(payload), FILE_CHUNK_SIZE)):
                    chunk = base64.b64encode(payload[offset : offset + FILE_CHUNK_SIZE]).decode()
                    await hub.push(
                        "dev-file",
                        "console",
                        "file-data",
                        {"filename": "in.bin", "chunk": index, "data": chunk},
                    )
                await hub.push("dev-file", "console", "file-data/stop", {"filename": "in.bin"})
                received = data_path / "in.bin"
                await hub.wait_until(
                    lambda: received in console.receiver.received or None, 5, "file"
                )
                # device -> hub
                await console.send_file(outgoing)
                stop = await hub.wait_for_event(
                    "dev-file", "file-data/stop", topic="console", since=mark
                )
                # and from the console itself, as an operator would
                second = hub.frame_mark()
                term = Terminal(hub, hub.devices["dev-file"])
                typed = f"send_file({str(small)!r})"
                assert (await term.run(typed)) == ""  # send_file returns None
                await hub.wait_for_event(
                    "dev-file", "file-data/stop", topic="console", since=second
                )
                typed_frames = hub.frames(
                    "dev-file", "console", "file-data", since=second, direction="from_device"
                )
                assert [base64.b64decode(f.payload["data"]) for f in typed_frames] == [b"tiny"]
            frames = hub.frames("dev-file", "console", since=mark, direction="from_device")
            frames = [f for f in frames if f.index < second]
            start = [f for f in frames if f.event == "file-data/start"]
            chunks = [f.payload for f in frames if f.event == "file-data"]
            assert [f.payload for f in start] == [{"filename": "report.bin"}]
            assert stop.payload == {"filename": "report.bin"}
            assert [c["chunk"] for c in chunks] == list(range(6))
            raw = [base64.b64decode(c["data"]) for c in chunks]
            assert all(len(r) <= FILE_CHUNK_SIZE for r in raw)
            assert hashlib.sha256(b"".join(raw)).digest() == hashlib.sha256(payload).digest()
            assert (
                hashlib.sha256(received.read_bytes()).digest() == hashlib.sha256(payload).digest()
            )

    run(scenario())


def test_hostile_console_messages_are_logged_not_fatal(
    pki: Pki, tmp_path: Path, nhlink_log: Records
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            link = NervesHubLink(device_config(hub, "dev-bad", tmp_path, remote_console=True))
            assert link.console is not None
            data_path = Path(link.config.data_path)
            async with running(link):
                term = await wait_joined(hub, "dev-bad")
                push = hub.push
                for name in ("../escape.txt", "/etc/evil", "a/b", "..", ""):
                    await push("dev-bad", "console", "file-data/start", {"filename": name})
                await push("dev-bad", "console", "dn", {"data": ["not", "text"]})
                await push("dev-bad", "console", "window_size", {"height": -1, "width": "x"})
                await push("dev-bad", "console", "file-data", {"filename": 1, "chunk": 0})
                await push("dev-bad", "console", "file-data/start", {"filename": "ok.bin"})
                await push(
                    "dev-bad",
                    "console",
                    "file-data",
                    {"filename": "ok.bin", "chunk": 0, "data": "%%%not-base64%%%"},
                )
                huge = base64.b64encode(b"\0" * 300_000).decode()
                await push(
                    "dev-bad",
                    "console",
                    "file-data",
                    {"filename": "ok.bin", "chunk": 0, "data": huge},
                )
                await push(
                    "dev-bad",
                    "console",
                    "file-data",
                    {"filename": "ok.bin", "chunk": 5, "data": "AAAA"},
                )
                await push(
                    "dev-bad",
                    "console",
                    "file-data",
                    {"filename": "nope", "chunk": 0, "data": "AAAA"},
                )
                await push("dev-bad", "console", "dn", "just a string")
                await push("dev-bad", "console", "surprise", {})
                # still alive and answering
                await term.type("'alive'\r")
                await term.expect("'alive'\r\n>>> ")
            errors = [r.getMessage() for r in nhlink_log.at_least(logging.ERROR)]
            assert not (tmp_path / "escape.txt").exists() and not (data_path / "b").exists()
            assert not (data_path / "ok.bin").exists()  # out-of-order chunk abandoned it
            for needle in (
                "'../escape.txt' refused",
                "'/etc/evil' refused",
                "'a/b' refused",
                "not valid base64",
                "exceeds",
                "chunk 5 arrived, expected 0",
                "no transfer started",
                "'data' must be a string",
                "'height' must be",
            ):
                assert any(needle in e for e in errors), (needle, errors)
            assert hub.devices["dev-bad"].connection_count == 1

    run(scenario())


def test_file_size_limit_both_ways(pki: Pki, tmp_path: Path, nhlink_log: Records) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as out:
        out.truncate(10 * 1024 * 1024)

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            link = NervesHubLink(device_config(hub, "dev-big", tmp_path, remote_console=True))
            console = link.console
            assert console is not None
            console.receiver.max_size = 4096
            async with running(link):
                await wait_joined(hub, "dev-big")
                from nhlink.console.files import FileTransferError

                with pytest.raises(FileTransferError, match="under 10485760"):
                    await console.send_file(big)
                chunk = base64.b64encode(b"z" * 1024).decode()
                await hub.push("dev-big", "console", "file-data/start", {"filename": "cap.bin"})
                for index in range(5):
                    await hub.push(
                        "dev-big",
                        "console",
                        "file-data",
                        {"filename": "cap.bin", "chunk": index, "data": chunk},
                    )
                await hub.wait_until(
                    lambda: any("limit" in r.getMessage() for r in nhlink_log.records) or None,
                    5,
                    "size limit log",
                )
            assert not (Path(link.config.data_path) / "cap.bin").exists()

    run(scenario())
