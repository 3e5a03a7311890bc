"""The remote console of a link: the ``console`` channel wired to a Python session.

``RemoteConsole(link)`` adds the channel to the link's connection and listens
to its events. The session starts lazily with the first console message,
is restarted on ``restart`` and when it dies, and is stopped after
``timeout`` seconds without input, resize or output (the next key starts a
new one). Files sent by the hub land in ``data_path``; :meth:`send_file`
sends one the other way.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nhlink.console.files import FileReceiver, FileTransferError, read_for_sending, safe_file_name
from nhlink.console.session import PythonConsole, python_banner
from nhlink.protocol import Event
from nhlink.protocol.console import (
    FILE_CHUNK_SIZE,
    ConsoleChannel,
    ConsoleInput,
    ConsoleRestartRequested,
    ConsoleWindowSizeChanged,
    FileChunkReceived,
    FileTransferStarted,
    FileTransferStopped,
)

if TYPE_CHECKING:
    from nhlink.aio.link import NervesHubLink

logger = logging.getLogger("nhlink.console")

MAX_UP_FRAME = 4096
"""Characters per ``up`` push."""
CHUNKS_PER_YIELD = 16
SEND_FILE_TIMEOUT = 120.0

TIMEOUT_MESSAGE = (
    "\r\n"
    "****************************************\r\n"
    "*   Session timeout due to inactivity  *\r\n"
    "*                                      *\r\n"
    "*   Press any key to continue...       *\r\n"
    "****************************************\r\n"
)
RESTART_MESSAGE = "\r*** Restarting console ***\r"


def stopped_message(reason: str) -> str:
    return f"\r******* Remote console stopped: {reason} *******\r"


class RemoteConsole:
    """The console channel of ``link`` and the Python session behind it."""

    def __init__(
        self,
        link: NervesHubLink,
        *,
        timeout: float | None = None,
        data_path: Path | None = None,
    ) -> None:
        self.link = link
        self.timeout = float(timeout if timeout is not None else link.config.remote_console_timeout)
        self.channel = ConsoleChannel()
        self.receiver = FileReceiver(data_path or Path(link.config.data_path))
        self.session: PythonConsole | None = None
        self.timed_out = False
        """The last session ended by the inactivity timeout (the next key starts one)."""
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        link.connection.add_channel(self.channel)
        link.event_listeners.append(self.handle)

    # -- public API --------------------------------------------------------------

    async def send_file(self, path: str | Path) -> None:
        """Send a file (under 10 MiB) to the hub; FileTransferError if it cannot be sent."""
        path = Path(path)
        name = safe_file_name(path.name)
        data = read_for_sending(path)
        if not self.channel.send_file_start(name):
            raise FileTransferError("cannot send a file: the console channel is not joined")
        for index, offset in enumerate(range(0, len(data), FILE_CHUNK_SIZE)):
            if not self.channel.send_file_chunk(
                name, index, data[offset : offset + FILE_CHUNK_SIZE]
            ):
                raise FileTransferError(f"sending {name} interrupted: the console channel left")
            if index % CHUNKS_PER_YIELD == CHUNKS_PER_YIELD - 1:
                await asyncio.sleep(0)
        self.channel.send_file_stop(name)
        logger.info("sent %s (%d bytes)", path, len(data))

    def close(self) -> None:
        """Stop the session and abandon unfinished transfers."""
        self._stop_session()
        self.receiver.close()

    # -- events ------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        """Event listener of the link (runs on the loop)."""
        self._loop = asyncio.get_running_loop()
        match event:
            case ConsoleInput(data=data):
                self._input(data)
            case ConsoleWindowSizeChanged(height=height, width=width):
                session = self._ensure_session()
                session.window_size = (height, width)
                self._activity()
            case ConsoleRestartRequested():
                self._output(RESTART_MESSAGE)
                self._stop_session()
                self._ensure_session()
            case FileTransferStarted(filename=name):
                self.receiver.start(name)
            case FileChunkReceived(filename=name, chunk=index, data=data):
                self.receiver.chunk(name, index, data)
            case FileTransferStopped(filename=name):
                self.receiver.stop(name)
            case _:
                pass

    def _input(self, data: str) -> None:
        if self.session is None and self.timed_out:
            self.timed_out = False
            self._ensure_session()  # "press any key": the key itself only wakes the console
            return
        self._ensure_session().feed(data)
        self._activity()

    # -- session -----------------------------------------------------------------

    def _ensure_session(self) -> PythonConsole:
        if self.session is not None:
            return self.session
        loop = self._loop or asyncio.get_running_loop()
        session = PythonConsole(
            self._namespace(loop),
            output=self._output,
            died=self._died,
            call_soon=loop.call_soon_threadsafe,
            banner=python_banner(),
        )
        self.session = session
        self.timed_out = False
        session.start()
        self._activity()
        return session

    def _stop_session(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        session, self.session = self.session, None
        if session is not None:
            session.stop()

    def _died(self, reason: str) -> None:
        message = stopped_message(reason)
        logger.warning("%s", message.strip("\r"))
        self._output(message)
        self._stop_session()
        self._ensure_session()

    def _namespace(self, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
        def send_file(path: str | Path) -> None:
            """Send a file to the hub (blocks the console until it is queued)."""
            future = asyncio.run_coroutine_threadsafe(self.send_file(path), loop)
            future.result(SEND_FILE_TIMEOUT)

        def leave(code: object = None) -> None:
            """End this console session (a fresh one starts); the process keeps running."""
            raise SystemExit(code)

        return {
            "__name__": "__console__",
            "exit": leave,
            "quit": leave,
            "__doc__": None,
            "link": self.link,
            "client": self.link.client,
            "console": self,
            "send_file": send_file,
        }

    # -- output and inactivity -----------------------------------------------------

    def _output(self, text: str) -> None:
        for start in range(0, len(text), MAX_UP_FRAME):
            self.channel.send_output(text[start : start + MAX_UP_FRAME])
        if self.session is not None:
            self._activity()

    def _activity(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = self._loop or asyncio.get_running_loop()
        self._timer = loop.call_later(self.timeout, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self.session is None:
            return
        logger.info("remote console closed after %g s of inactivity", self.timeout)
        self.channel.send_output(TIMEOUT_MESSAGE)
        self._stop_session()
        self.timed_out = True
