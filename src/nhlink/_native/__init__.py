"""The byte-level primitives of the applier, from the native or the pure-Python backend.

``NHLINK_IMPORT_POLICY`` chooses: ``default`` (native when it imports, else
python), ``native`` (native or ImportError) or ``python``.
``NHLINK_REQUIRE_NATIVE=1`` is the same as ``native``. ``backend`` says which
one loaded.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING

from nhlink._native.events import ArchiveEnd, DataChunk, EntryEnd, EntryStart, Event

_POLICIES = ("default", "native", "python")


def load(name: str) -> ModuleType:
    """Import one backend by name (``"native"`` or ``"python"``), whatever the policy.

    Differential tests and benchmarks use this to compare both in one process.
    """
    if name == "native":
        return importlib.import_module("nhlink._native._core")
    if name == "python":
        return importlib.import_module("nhlink._native._pyimpl")
    raise ValueError(f"unknown backend {name!r}")


def _policy() -> str:
    policy = os.environ.get("NHLINK_IMPORT_POLICY", "default").strip().lower() or "default"
    if policy not in _POLICIES:
        raise ImportError(f"NHLINK_IMPORT_POLICY={policy!r} is not one of {', '.join(_POLICIES)}")
    if os.environ.get("NHLINK_REQUIRE_NATIVE", "") not in ("", "0"):
        if policy == "python":
            raise ImportError("NHLINK_REQUIRE_NATIVE=1 contradicts NHLINK_IMPORT_POLICY=python")
        policy = "native"
    return policy


if TYPE_CHECKING:
    from nhlink._native._pyimpl import (
        BlockCache,
        FrameDecoder,
        PacketDecoder,
        VcdiffDecoder,
        ZipStream,
        blake2b_256,
        encode_frame,
        encode_packet,
        uboot_env_decode,
        uboot_env_encode,
        verify_ed25519,
    )

    backend: str
else:
    _selected = _policy()
    if _selected == "python":
        from nhlink._native._pyimpl import *  # noqa: F403

        backend = "python"
    else:
        try:
            from nhlink._native._core import *  # noqa: F403
        except ImportError:
            if _selected == "native":
                raise
            from nhlink._native._pyimpl import *  # noqa: F403

            backend = "python"
        else:
            backend = "native"

__all__ = [
    "ArchiveEnd",
    "BlockCache",
    "DataChunk",
    "EntryEnd",
    "EntryStart",
    "Event",
    "FrameDecoder",
    "PacketDecoder",
    "VcdiffDecoder",
    "ZipStream",
    "backend",
    "blake2b_256",
    "encode_frame",
    "encode_packet",
    "load",
    "uboot_env_decode",
    "uboot_env_encode",
    "verify_ed25519",
]
