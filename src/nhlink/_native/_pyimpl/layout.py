"""Sizes shared by the block cache and the raw_write sink (fwup's units)."""

from __future__ import annotations

BLOCK_SIZE = 512
SEGMENT_SIZE = 128 * 1024
BLOCKS_PER_SEGMENT = SEGMENT_SIZE // BLOCK_SIZE
DEFAULT_CACHE_SIZE = 8 * 1024 * 1024
