"""The external applier: an installed ``fwup`` run as spec section 8 describes.

``fwup --framing --exit-handshake --apply --no-unmount -d <devpath> --task
<task> [extra options] --public-key <b64>...`` reads the archive from stdin
as length-prefixed packets (a zero-length packet ends it) and answers with
framed ``PR``/``WN``/``ER``/``OK`` packets, decoded here with the native
:class:`FrameDecoder`. After ``OK`` or ``ER`` stdin is closed; with
``--exit-handshake`` fwup then writes ``0x1A`` and its exit status (raw,
unframed) and exits once stdin is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Mapping, Sequence

from nhlink._native import FrameDecoder, encode_packet
from nhlink.errors import FramingError
from nhlink.fwup.frames import Frame
from nhlink.update.pipeline import FrameCallback, Piece

logger = logging.getLogger("nhlink.aio.fwup_process")

HANDSHAKE = 0x1A
EXIT_TIMEOUT = 30.0
ABORT_GRACE = 10.0
READ_SIZE = 64 * 1024


def fwup_command(
    *,
    devpath: str,
    task: str,
    public_keys: Sequence[str],
    extra_options: Sequence[str] = (),
    executable: str = "fwup",
) -> list[str]:
    """The argv of a streaming apply, in the reference client's order."""
    command = [executable, "--framing", "--exit-handshake", "--apply", "--no-unmount"]
    command += ["-d", devpath, "--task", task, *extra_options]
    for key in public_keys:
        command += ["--public-key", key]
    return command


def fwup_environment(
    assignments: Sequence[str], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``base`` (default: this process's environment) plus ``fwup_env`` ``NAME=value`` entries."""
    env = dict(os.environ if base is None else base)
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"fwup_env entry {item!r} is not NAME=value")
        env[name] = value
    return env


class FwupProcessApplier:
    """A running ``fwup``; create it with :meth:`start`."""

    def __init__(self, process: asyncio.subprocess.Process, on_frame: FrameCallback) -> None:
        assert process.stdin is not None and process.stdout is not None
        self._process = process
        self._stdin = process.stdin
        self._on_frame = on_frame
        self._outcome: Frame | None = None
        self._handshake = False
        self._stdin_closed = False
        self._reader = asyncio.ensure_future(self._read(process.stdout))
        self._stderr = (
            asyncio.ensure_future(self._log_stderr(process.stderr))
            if process.stderr is not None
            else None
        )

    @classmethod
    async def start(
        cls, command: Sequence[str], *, env: Mapping[str, str] | None, on_frame: FrameCallback
    ) -> FwupProcessApplier:
        """Start ``command``; OSError (e.g. FileNotFoundError) when it cannot run."""
        executable = shutil.which(command[0], path=(env or os.environ).get("PATH"))
        if executable is None:
            raise FileNotFoundError(f"{command[0]}: not found on PATH")
        logger.info("running %s", " ".join(command))
        process = await asyncio.create_subprocess_exec(
            executable,
            *command[1:],
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
        )
        return cls(process, on_frame)

    @property
    def outcome(self) -> Frame | None:
        return self._outcome

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def feed(self, pieces: Sequence[Piece]) -> None:
        for piece in pieces:
            if self._outcome is not None or self._stdin_closed:
                return
            try:
                self._stdin.write(encode_packet(bytes(piece)))
                await self._stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                # fwup stopped reading: its answer (ER, or an exit) tells why
                self._stdin_closed = True
                await self._reader
                return

    async def finish(self) -> None:
        if self._outcome is None and not self._stdin_closed:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._stdin.write(encode_packet(b""))
                await self._stdin.drain()
        await self._reader  # fwup may still be writing: no time limit while it works
        self._close_stdin()
        try:
            async with asyncio.timeout(EXIT_TIMEOUT):
                status: int | None = await self._process.wait()
        except TimeoutError:
            logger.error("fwup did not exit %g s after its output ended; killing it", EXIT_TIMEOUT)
            await self.abort("it did not exit")
            status = self._process.returncode
        if self._stderr is not None:
            await self._stderr
        if self._outcome is None:
            self._set_outcome(Frame("ER", 0, f"fwup exited with status {status} without a result"))
        elif status not in (0, None) and self._outcome.type == "OK":
            logger.warning("fwup said OK but exited with status %s", status)

    async def abort(self, reason: str = "aborted") -> None:
        if self._process.returncode is None:
            logger.info("stopping fwup: %s", reason)
        self._close_stdin()  # end of input mid-archive: fwup fails and runs on-error
        for stop, grace in ((None, ABORT_GRACE), (self._process.terminate, 5.0)):
            if self._process.returncode is not None:
                break
            if stop is not None:
                with contextlib.suppress(ProcessLookupError):
                    stop()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._process.wait()
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
        for task in (self._reader, self._stderr):
            if task is not None and not task.done():
                task.cancel()
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _close_stdin(self) -> None:
        if not self._stdin_closed:
            self._stdin_closed = True
            transport = self._stdin.transport
            # fwup may have closed its end already (a broken pipe closes the transport)
            if not transport.is_closing():
                transport.abort()

    def _set_outcome(self, frame: Frame) -> None:
        self._outcome = frame
        self._on_frame(frame)

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        decoder = FrameDecoder()
        unparsed = b""  # the bytes the decoder holds back (an incomplete frame)
        while data := await stdout.read(READ_SIZE):
            if self._outcome is not None or self._handshake:
                continue  # the exit handshake after OK/ER
            try:
                frames = decoder.feed(data)
            except FramingError as exc:
                self._set_outcome(Frame("ER", 0, f"unreadable fwup output: {exc}"))
                self._close_stdin()
                continue
            combined = unparsed + data
            unparsed = combined[len(combined) - decoder.pending :]
            for type_, code, text in frames:
                frame = Frame(type_, code, text)
                if type_ in ("OK", "ER"):
                    self._set_outcome(frame)
                    self._close_stdin()  # lets fwup finish its exit handshake
                    break
                self._on_frame(frame)
            if self._outcome is None and unparsed[:1] == bytes([HANDSHAKE]):
                # A frame length never starts with 0x1A (frames are < 16 MiB):
                # fwup is exiting without a result and waits for stdin to close.
                self._handshake = True
                self._close_stdin()

    @staticmethod
    async def _log_stderr(stderr: asyncio.StreamReader) -> None:
        while line := await stderr.readline():
            logger.info("fwup: %s", line.decode("utf-8", "replace").rstrip())
