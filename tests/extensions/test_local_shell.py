"""local_shell against the local hub: a real /bin/sh on a PTY."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from nhlink.testing import LocalHub, Pki
from tests.extensions.support import attached, pushed, send, wait_pushed
from tests.link.support import run


async def output_containing(hub: LocalHub, text: str, since: int, timeout: float = 10.0) -> str:
    def check() -> str | None:
        output = "".join(p["data"] for p in pushed(hub, "local_shell:shell_output", since))
        return output if text in output else None

    return await hub.wait_until(check, timeout, f"shell output with {text!r}")


async def resized_size(hub: LocalHub, attempts: int = 5) -> str:
    """Ask ``stty size`` until the new size shows (the resize and the input travel as
    separate messages; on a loaded machine the shell may read one before the other)."""
    for attempt in range(attempts):
        mark = hub.frame_mark()
        await send(hub, "local_shell:shell_input", {"data": "stty size\n"})
        try:
            return await output_containing(hub, "\n37 101\r\n", mark, timeout=4.0)
        except TimeoutError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def test_echo_resize_and_kill(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> tuple[Any, str, str, list[Any]]:
        async with attached(pki, tmp_path, ["local_shell"]) as (hub, _link):
            await send(hub, "local_shell:request_shell", {})
            (status,) = await wait_pushed(hub, "local_shell:request_status")
            mark = hub.frame_mark()
            await send(hub, "local_shell:shell_input", {"data": "echo hel''lo\n"})
            echoed = await output_containing(hub, "\nhello\r\n", mark)
            await send(hub, "local_shell:window_size", {"rows": 37, "cols": 101})
            size = await resized_size(hub)
            await send(hub, "local_shell:kill_shell", {"signal": 9})
            exited = await wait_pushed(hub, "local_shell:shell_exited")
            return status, echoed, size, exited

    status, echoed, size, exited = run(scenario())
    assert status == {"status": "started"}
    assert "\nhello\r\n" in echoed
    assert "\n37 101\r\n" in size
    assert exited == [{"exit_code": 128 + 9}]


def test_kill_shell_default_ends_an_interactive_shell(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> list[Any]:
        async with attached(pki, tmp_path, ["local_shell"]) as (hub, _link):
            await send(hub, "local_shell:request_shell", {})
            await wait_pushed(hub, "local_shell:request_status")
            await send(hub, "local_shell:kill_shell", {})
            return await wait_pushed(hub, "local_shell:shell_exited")

    ((exited,),) = [run(scenario())]
    assert exited["exit_code"] in (128 + 15, 128 + 9)


def test_shell_exit_status_and_a_missing_shell(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> list[Any]:
        async with attached(pki, tmp_path, ["local_shell"]) as (hub, _link):
            await send(hub, "local_shell:request_shell", {})
            await wait_pushed(hub, "local_shell:request_status")
            await send(hub, "local_shell:shell_input", {"data": "exit 3\n"})
            return await wait_pushed(hub, "local_shell:shell_exited")

    assert run(scenario()) == [{"exit_code": 3}]

    async def missing() -> list[Any]:
        async with attached(pki, tmp_path, ["local_shell"], shell="/nonexistent/sh") as (hub, _):
            await send(hub, "local_shell:request_shell", {})
            return await wait_pushed(hub, "local_shell:request_status")

    ((status,),) = [run(missing())]
    assert status["status"] == "failed" and "nonexistent" in status["reason"]


def test_stopping_the_link_ends_the_shell(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> int:
        async with attached(pki, tmp_path, ["local_shell"]) as (hub, _link):
            await send(hub, "local_shell:request_shell", {})
            await wait_pushed(hub, "local_shell:request_status")
            mark = hub.frame_mark()
            await send(hub, "local_shell:shell_input", {"data": "echo pid=$$.\n"})

            def shell_pid() -> int | None:
                output = "".join(p["data"] for p in pushed(hub, "local_shell:shell_output", mark))
                match = re.search(r"pid=(\d+)\.\r\n", output)
                return int(match.group(1)) if match else None

            pid = await hub.wait_until(shell_pid, 10, "the shell's pid")
            os.kill(pid, 0)  # running now
            return pid

    pid = run(scenario())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
