"""Pure-Python backend: the reference for the native one, and its fallback.

Same API as ``nhlink._native._core`` (docs/architecture.md, "Backend API").
"""

from __future__ import annotations

from nhlink._native._pyimpl.cache import BlockCache
from nhlink._native._pyimpl.crypto import blake2b_256, verify_ed25519
from nhlink._native._pyimpl.framing import (
    FrameDecoder,
    PacketDecoder,
    encode_frame,
    encode_packet,
)
from nhlink._native._pyimpl.uboot import uboot_env_decode, uboot_env_encode
from nhlink._native._pyimpl.vcdiff import VcdiffDecoder
from nhlink._native._pyimpl.zipstream import ZipStream

__all__ = [
    "BlockCache",
    "FrameDecoder",
    "PacketDecoder",
    "VcdiffDecoder",
    "ZipStream",
    "blake2b_256",
    "encode_frame",
    "encode_packet",
    "uboot_env_decode",
    "uboot_env_encode",
    "verify_ed25519",
]
