"""fwup-compatible firmware applier: the task interpreter over the native (or Python) primitives."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from nhlink.fwup.engine import Engine
from nhlink.fwup.frames import Frame

__all__ = ["Engine", "Frame", "apply_file"]

_READ_SIZE = 1 << 16


def apply_file(
    archive_path: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    task: str,
    public_keys: Sequence[bytes] = (),
    **kw: Any,
) -> list[Frame]:
    """Apply ``task`` of the .fw at ``archive_path`` to ``destination``; returns every frame.

    Extra keyword arguments go to :class:`Engine`. The last frame is ``OK`` or ``ER``.
    """
    engine = Engine(mode="apply", destination=destination, task=task, public_keys=public_keys, **kw)
    out: list[Frame] = []
    with open(archive_path, "rb") as archive:
        while not engine.done:
            data = archive.read(_READ_SIZE)
            if not data:
                break
            out += engine.feed(data)
    out += engine.finish()
    return out
