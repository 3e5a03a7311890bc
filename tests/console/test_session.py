"""The Python session on its own: output routing per thread, typeahead, interrupting."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from nhlink.console import capture
from nhlink.console.session import PythonConsole


async def settle(out: list[str], text: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while text not in "".join(out):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{text!r} not in {''.join(out)!r}")
        await asyncio.sleep(0.01)


def test_only_the_worker_thread_output_is_captured(capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        out: list[str] = []
        gate = threading.Event()
        session = PythonConsole(
            {"gate": gate}, output=out.append, died=out.append, call_soon=loop.call_soon_threadsafe
        )
        session.start()
        try:
            session.feed("gate.wait(5); print('from console')\r")
            await asyncio.sleep(0.05)
            print("from the application")  # another thread, during the evaluation
            gate.set()
            await settle(out, "from console\r\n>>> ")
            assert "from the application" not in "".join(out)
        finally:
            session.stop()
        assert capture._users == 0
        assert not isinstance(sys.stdout, capture._RoutedStream)

    asyncio.run(scenario())
    captured = capsys.readouterr()
    assert "from the application" in captured.out and "from console" not in captured.out


def test_typeahead_waits_and_ctrl_c_interrupts_a_busy_loop() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        out: list[str] = []
        session = PythonConsole(
            {}, output=out.append, died=out.append, call_soon=loop.call_soon_threadsafe
        )
        session.start()
        try:
            session.feed("n = 0\rwhile True: n += 1\r\r")
            await asyncio.sleep(0.2)
            assert session.evaluating
            session.feed("n > 0\r")  # typed ahead: runs after the interrupt
            session.feed("\x03")
            await settle(out, "True\r\n>>> ")
            text = "".join(out)
            assert text.index("KeyboardInterrupt") < text.index("n > 0")
            assert not session.evaluating
        finally:
            session.stop()

    asyncio.run(scenario())
