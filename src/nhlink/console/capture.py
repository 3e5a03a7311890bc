"""Routes ``sys.stdout``/``sys.stderr`` writes of console worker threads to their console.

The interactive console evaluates code in worker threads while the rest of
the process keeps printing normally: a router replaces both streams while at
least one console is running and sends each write either to the writer
registered for the current thread or to the original stream.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TextIO

Writer = Callable[[str], None]

_lock = threading.Lock()
_writers: dict[int, Writer] = {}
_users = 0
_originals: tuple[TextIO, TextIO] | None = None


class _RoutedStream:
    """A text stream sending each thread's writes to its registered writer."""

    def __init__(self, original: TextIO) -> None:
        self.original = original

    def write(self, text: str) -> int:
        writer = _writers.get(threading.get_ident())
        if writer is None:
            return self.original.write(text)
        writer(text)
        return len(text)

    def flush(self) -> None:
        if threading.get_ident() not in _writers:
            self.original.flush()

    def isatty(self) -> bool:
        return threading.get_ident() not in _writers and self.original.isatty()

    def __getattr__(self, name: str) -> object:
        return getattr(self.original, name)


def install() -> None:
    """Start routing (counted: every call needs one :func:`uninstall`)."""
    global _users
    with _lock:
        _users += 1
    ensure_installed()


def ensure_installed() -> None:
    """Route again if someone replaced ``sys.stdout``/``sys.stderr`` since :func:`install`."""
    global _originals
    with _lock:
        if _users == 0:
            return
        if not isinstance(sys.stdout, _RoutedStream) or not isinstance(sys.stderr, _RoutedStream):
            _originals = (_unwrap(sys.stdout), _unwrap(sys.stderr))
            sys.stdout = _RoutedStream(_originals[0])
            sys.stderr = _RoutedStream(_originals[1])


def _unwrap(stream: TextIO) -> TextIO:
    return stream.original if isinstance(stream, _RoutedStream) else stream


def uninstall() -> None:
    global _users, _originals
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users == 0 and _originals is not None:
            if isinstance(sys.stdout, _RoutedStream):
                sys.stdout = _originals[0]
            if isinstance(sys.stderr, _RoutedStream):
                sys.stderr = _originals[1]
            _originals = None


def register(writer: Writer) -> None:
    """Send the current thread's output to ``writer``."""
    _writers[threading.get_ident()] = writer


def unregister() -> None:
    _writers.pop(threading.get_ident(), None)
