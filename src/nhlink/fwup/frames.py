"""The frames the engine emits, shaped exactly like fwup's ``--framing`` output."""

from __future__ import annotations

from typing import NamedTuple


class Frame(NamedTuple):
    """One output packet: ``PR`` (code = percent), ``WN``, ``ER`` or ``OK``."""

    type: str
    code: int
    text: str


def progress(percent: int) -> Frame:
    return Frame("PR", percent, "")


def warning(text: str) -> Frame:
    return Frame("WN", 0, text)


def error(text: str) -> Frame:
    return Frame("ER", 0, text)


def success(text: str = "") -> Frame:
    return Frame("OK", 0, text)
