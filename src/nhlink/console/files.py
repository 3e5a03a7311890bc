"""File transfer over the console channel (spec 3): receiving into ``data_path``.

The hub sends ``file-data/start``, numbered base64 chunks and
``file-data/stop``. Names must be plain file names (no directory part, no
``..``), chunks must arrive in order, and a file may not reach
:data:`MAX_FILE_SIZE`; a transfer breaking a rule is abandoned, its partial
file removed, and the reason logged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nhlink.errors import NHLinkError

logger = logging.getLogger("nhlink.console.files")

MAX_FILE_SIZE = 10 * 1024 * 1024
"""Files sent either way must be smaller than this (10 MiB)."""


class FileTransferError(NHLinkError):
    """A console file transfer was refused or failed."""


def safe_file_name(name: str) -> str:
    """``name`` when it is a plain file name; FileTransferError otherwise."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or len(name.encode("utf-8", "surrogatepass")) > 255
    ):
        raise FileTransferError(f"refused file name {name[:80]!r}: not a plain file name")
    return name


@dataclass
class _Incoming:
    path: Path
    file: BinaryIO
    next_chunk: int = 0
    size: int = 0


class FileReceiver:
    """Writes files sent by the hub into ``directory``."""

    def __init__(self, directory: Path, max_size: int = MAX_FILE_SIZE) -> None:
        self.directory = directory
        self.max_size = max_size
        self._incoming: dict[str, _Incoming] = {}
        self.received: list[Path] = []
        """Files completed by ``file-data/stop``, oldest first."""

    def start(self, name: str) -> None:
        """``file-data/start``: create (or truncate) the file."""
        try:
            safe_file_name(name)
            self._abandon(name, None)
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / name
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
            handle = open(os.open(path, flags, 0o600), "wb")  # noqa: SIM115
        except (FileTransferError, OSError) as exc:
            logger.error("file-data/start %r refused: %s", name[:80], exc)
            return
        self._incoming[name] = _Incoming(path, handle)
        logger.info("receiving %s", path)

    def chunk(self, name: str, index: int, data: bytes) -> None:
        """``file-data``: append chunk ``index`` (chunks count from 0)."""
        incoming = self._incoming.get(name)
        if incoming is None:
            logger.error("file-data for %r ignored: no transfer started", name[:80])
            return
        if index != incoming.next_chunk:
            self._abandon(name, f"chunk {index} arrived, expected {incoming.next_chunk}")
            return
        if incoming.size + len(data) >= self.max_size:
            self._abandon(name, f"file reaches the {self.max_size}-byte limit")
            return
        try:
            incoming.file.write(data)
        except OSError as exc:
            self._abandon(name, str(exc))
            return
        incoming.size += len(data)
        incoming.next_chunk += 1

    def stop(self, name: str) -> None:
        """``file-data/stop``: close the file (all open ones when ``name`` is empty)."""
        names = [name] if name else list(self._incoming)
        for key in names:
            incoming = self._incoming.pop(key, None)
            if incoming is None:
                logger.debug("file-data/stop for %r: nothing to close", key[:80])
                continue
            try:
                incoming.file.close()
            except OSError as exc:
                logger.error("closing %s failed: %s", incoming.path, exc)
                continue
            self.received.append(incoming.path)
            logger.info("received %s (%d bytes)", incoming.path, incoming.size)

    def close(self) -> None:
        """Abandon every unfinished transfer."""
        for name in list(self._incoming):
            self._abandon(name, "console closed")

    def _abandon(self, name: str, reason: str | None) -> None:
        incoming = self._incoming.pop(name, None)
        if incoming is None:
            return
        if reason is not None:
            logger.error("file transfer of %r abandoned: %s", name[:80], reason)
        incoming.file.close()
        incoming.path.unlink(missing_ok=True)


def read_for_sending(path: Path, max_size: int = MAX_FILE_SIZE) -> bytes:
    """The contents of a file to send; FileTransferError when unreadable or too large."""
    try:
        size = path.stat().st_size
        if size >= max_size:
            raise FileTransferError(f"{path} is {size} bytes; files must be under {max_size}")
        data = path.read_bytes()
    except OSError as exc:
        raise FileTransferError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) >= max_size:
        raise FileTransferError(f"{path} grew to {len(data)} bytes; files must be under {max_size}")
    return data
