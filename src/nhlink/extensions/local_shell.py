"""The ``local_shell`` extension: a real shell on a pseudo-terminal (spec 4).

``request_shell`` starts the shell (``/bin/sh`` unless configured) as a new
session leader whose controlling terminal is the PTY; its output is pushed as
``shell_output``, ``shell_input`` is typed into it, ``window_size`` resizes
the terminal (TIOCSWINSZ, so the shell gets SIGWINCH), ``kill_shell`` signals
its process group, and ``shell_exited {"exit_code"}`` follows its end
(``128 + n`` when killed by signal n, as shells report it).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import fcntl
import logging
import os
import pty
import signal
import struct
import termios
from collections.abc import Mapping

from nhlink.extensions.base import Extension, ExtensionContext
from nhlink.protocol.frames import JSONObject

logger = logging.getLogger("nhlink.extensions.local_shell")

DEFAULT_SHELL = "/bin/sh"
DEFAULT_ROWS, DEFAULT_COLS = 24, 80
MAX_DIMENSION = 10_000
READ_SIZE = 16 * 1024
DRAIN_TIMEOUT = 1.0
"""Seconds to wait for the last output after the shell exits."""
MAX_INPUT = 64 * 1024
KILL_GRACE = 2.0
"""Seconds a shell may survive ``kill_shell`` (interactive shells ignore SIGTERM) before SIGKILL."""


def _take_controlling_terminal() -> None:  # runs in the child, after setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def set_window_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _dimension(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_DIMENSION:
        return value
    return None


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class _Session:
    """One running shell: the process, the PTY master and the output pump."""

    def __init__(
        self, process: asyncio.subprocess.Process, master: int, context: ExtensionContext
    ) -> None:
        self.process = process
        self.master = master
        self._context = context
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._eof = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        os.set_blocking(master, False)
        self._loop.add_reader(master, self._readable)
        self.finished = self._loop.create_task(self._watch())
        self._escalation: asyncio.Task[None] | None = None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.master, view)
            except BlockingIOError:
                logger.warning("shell input buffer full; %d byte(s) dropped", len(view))
                return
            except OSError as exc:
                logger.warning("shell input failed: %s", exc)
                return
            view = view[written:]

    def resize(self, rows: int, cols: int) -> None:
        with contextlib.suppress(OSError):
            set_window_size(self.master, rows, cols)

    def kill(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def terminate(self, signum: int) -> None:
        """Send ``signum``; SIGKILL follows if the shell is still there after KILL_GRACE."""
        self.kill(signum)
        if signum != signal.SIGKILL:
            self._escalation = self._loop.create_task(self._escalate())

    async def _escalate(self) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self.finished), KILL_GRACE)
        except TimeoutError:
            logger.info("local shell %d ignored kill_shell; killing it", self.process.pid)
            self.kill(signal.SIGKILL)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:  # EIO: every holder of the terminal's slave side is gone
            data = b""
        if not data:
            self._loop.remove_reader(self.master)
            self._eof.set()
            return
        text = self._decoder.decode(data)
        if text:
            self._context.push("shell_output", {"data": text}, track=False)

    async def _watch(self) -> None:
        returncode = await self.process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._eof.wait(), DRAIN_TIMEOUT)
        self._loop.remove_reader(self.master)
        os.close(self.master)
        logger.info("local shell %d exited with %d", self.process.pid, returncode)
        self._context.push("shell_exited", {"exit_code": _exit_code(returncode)})


class LocalShellExtension(Extension):
    """A PTY shell driven by the hub."""

    name = "local_shell"

    def __init__(self, shell: str = DEFAULT_SHELL, env: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.shell = shell
        self.env = dict(env) if env is not None else None
        self._session: _Session | None = None
        self._size = (DEFAULT_ROWS, DEFAULT_COLS)

    @property
    def running(self) -> bool:
        return self._session is not None and not self._session.finished.done()

    async def handle(self, action: str, payload: JSONObject) -> None:
        if action == "request_shell":
            await self._request_shell()
        elif action == "shell_input":
            data = payload.get("data")
            if not isinstance(data, str) or len(data) > MAX_INPUT:
                logger.warning("local_shell: shell_input without usable data ignored")
            elif self._session is None or not self.running:
                logger.warning("local_shell: shell_input with no shell running ignored")
            else:
                self._session.write(data.encode())
        elif action == "window_size":
            rows, cols = _dimension(payload.get("rows")), _dimension(payload.get("cols"))
            if rows is None or cols is None:
                logger.warning("local_shell: window_size %r ignored", payload)
                return
            self._size = (rows, cols)
            if self._session is not None and self.running:
                self._session.resize(rows, cols)
        elif action == "kill_shell":
            signum = payload.get("signal", signal.SIGTERM.value)
            valid = {s.value for s in signal.Signals}
            if not isinstance(signum, int) or isinstance(signum, bool) or signum not in valid:
                logger.warning("local_shell: kill_shell with signal %r ignored", signum)
            elif self._session is not None and self.running:
                self._session.terminate(signum)
        else:
            await super().handle(action, payload)

    async def stop(self) -> None:
        await self._end_session()
        await super().stop()

    async def _request_shell(self) -> None:
        await self._end_session()
        try:
            self._session = await self._spawn()
        except OSError as exc:
            logger.error("local_shell: cannot start %s: %s", self.shell, exc)
            self.context.push("request_status", {"status": "failed", "reason": str(exc)})
            return
        self.context.push("request_status", {"status": "started"})

    async def _spawn(self) -> _Session:
        master, slave = pty.openpty()
        try:
            set_window_size(slave, *self._size)
            env = dict(os.environ if self.env is None else self.env)
            env.setdefault("TERM", "xterm-256color")
            process = await asyncio.create_subprocess_exec(
                self.shell,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                start_new_session=True,
                preexec_fn=_take_controlling_terminal,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        return _Session(process, master, self.context)

    async def _end_session(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        if not session.finished.done():
            session.kill(signal.SIGHUP)
            session.kill(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(session.finished), 2)
            except TimeoutError:
                session.kill(signal.SIGKILL)
                await session.finished
