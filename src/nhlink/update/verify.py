"""Checks a download against the offer's ``size``, ``checksum`` and ``partials_checksums``
as it arrives (sans-I/O).

:meth:`StreamVerifier.push` takes the bytes in download order and returns the
pieces that may go to the applier now:

* with ``partials_checksums`` (SHA-256 of each 1 MiB part), bytes are held
  until their part's digest matches. A mismatch forgets the part and raises
  :class:`PartMismatch` with the offset to fetch again (at most
  ``max_part_attempts`` times per part);
* the last ``tail`` bytes (1 MiB; with partials, every part reaching into
  them) are always held until :meth:`finish` has checked the total size and
  the whole-file SHA-256, so a corrupt or truncated file never lets the
  applier reach the archive's central directory, where fwup runs on-finish
  and switches the boot slot.

When ``partials_checksums`` cover the offered ``size`` exactly, every byte is
already checked against the offer, part by part, so the whole-file SHA-256
would only repeat that work: it is skipped (one hash pass instead of two).
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Sequence

from nhlink.update.errors import VerificationError

logger = logging.getLogger("nhlink.update.verify")

PART_SIZE = 1 << 20
MAX_PART_ATTEMPTS = 3


class PartMismatch(VerificationError):
    """A part failed its checksum; fetch it again from ``offset``."""

    def __init__(self, index: int, offset: int, attempt: int) -> None:
        super().__init__(f"checksum mismatch in part {index} (byte {offset}), attempt {attempt}")
        self.index = index
        self.offset = offset
        self.attempt = attempt
        self.ready: list[memoryview] = []
        """Earlier pieces of the same push that verified: apply them before fetching again."""


class StreamVerifier:
    """See the module docstring. ``received`` counts the bytes accepted so far."""

    def __init__(
        self,
        *,
        size: int | None = None,
        checksum: str | None = None,
        partials: Sequence[str] | None = None,
        part_size: int = PART_SIZE,
        tail: int = PART_SIZE,
        max_part_attempts: int = MAX_PART_ATTEMPTS,
    ) -> None:
        self.size = size
        self._checksum = checksum.upper() if checksum else None
        self._partials = tuple(p.upper() for p in partials) if partials else None
        if self._partials is not None and size is not None:
            needed = -(-size // part_size)
            if needed != len(self._partials):
                logger.warning(
                    "partials_checksums has %d entries, a %d-byte file has %d parts; not using them",
                    len(self._partials),
                    size,
                    needed,
                )
                self._partials = None
        self._part_size = part_size
        self._tail_size = tail
        self._max_attempts = max_part_attempts
        self.received = 0
        self._whole = hashlib.sha256()
        # partials mode
        self._part_index = 0
        self._part_chunks: list[memoryview] = []
        self._part_length = 0
        self._part_hash = hashlib.sha256()
        self._failures: dict[int, int] = {}
        self._held: list[memoryview] = []
        self._whole_at_part = self._whole.copy()
        self._stale = False
        # tail mode
        self._tail: deque[memoryview] = deque()
        self._tail_length = 0

    @property
    def uses_partials(self) -> bool:
        return self._partials is not None

    @property
    def _whole_needed(self) -> bool:
        """The whole-file digest is computed only when no partials cover the file."""
        return self._checksum is not None and (self._partials is None or self.size is None)

    @property
    def held_bytes(self) -> int:
        """Bytes accepted but not yet released."""
        held = sum(len(piece) for piece in self._held)
        return held + self._part_length + self._tail_length

    def push(
        self, data: bytes | bytearray | memoryview, offset: int | None = None
    ) -> list[memoryview]:
        """Accept the next bytes; returns the pieces now safe to apply (in order).

        ``offset`` (the file offset of ``data``) lets the caller keep pushing what
        it had already received after a :class:`PartMismatch`: such stale data is
        dropped until the part asked for again arrives at its offset.
        """
        if offset is not None and offset != self.received:
            if self._stale and offset > self.received:
                return []
            raise VerificationError(f"data at byte {offset}, expected byte {self.received}")
        self._stale = False
        view = memoryview(data).cast("B")
        if self.size is not None and self.received + len(view) > self.size:
            raise VerificationError(f"more data than the offered {self.size} bytes", code="size")
        if self._partials is None:
            return self._push_tail(view)
        out: list[memoryview] = []
        while view:
            room = self._part_target() - self._part_length
            piece, view = view[:room], view[room:]
            whole = self._whole_needed
            if whole and not self._part_length:
                self._whole_at_part = self._whole.copy()
            self._part_hash.update(piece)
            if whole:
                self._whole.update(piece)  # now, while the bytes are in the CPU cache
            self._part_chunks.append(piece)
            self._part_length += len(piece)
            self.received += len(piece)
            if self._part_length == self._part_target():
                try:
                    out += self._close_part()
                except PartMismatch as mismatch:
                    mismatch.ready = out
                    raise
        return out

    def finish(self) -> list[memoryview]:
        """The input is complete: check size and checksum; returns the held pieces."""
        if self._partials is not None and self._part_length:
            self._close_part()
        if self.size is not None and self.received != self.size:
            raise VerificationError(
                f"size mismatch: got {self.received} bytes, the offer said {self.size}",
                code="size",
            )
        if self._partials is not None and self._part_index != len(self._partials):
            raise VerificationError(
                f"size mismatch: got {self._part_index} parts, partials_checksums has "
                f"{len(self._partials)}",
                code="size",
            )
        if self._whole_needed:
            digest = self._whole.hexdigest().upper()
            if digest != self._checksum:
                raise VerificationError(
                    f"checksum mismatch: sha256 {digest}, the offer said {self._checksum}"
                )
        out = self._held + list(self._tail)
        self._held, self._tail, self._tail_length = [], deque(), 0
        return out

    def _push_tail(self, view: memoryview) -> list[memoryview]:
        if self._whole_needed:
            self._whole.update(view)
        self.received += len(view)
        self._tail.append(view)
        self._tail_length += len(view)
        out: list[memoryview] = []
        while self._tail and self._tail_length - len(self._tail[0]) >= self._tail_size:
            piece = self._tail.popleft()
            self._tail_length -= len(piece)
            out.append(piece)
        return out

    def _part_target(self) -> int:
        assert self._partials is not None
        if self._part_index >= len(self._partials):
            raise VerificationError(
                f"more data than the {len(self._partials)} parts partials_checksums covers",
                code="size",
            )
        if self.size is None:
            return self._part_size
        return min(self._part_size, self.size - self._part_index * self._part_size)

    def _close_part(self) -> list[memoryview]:
        assert self._partials is not None
        index = self._part_index
        chunks, length = self._part_chunks, self._part_length
        digest = self._part_hash.hexdigest().upper()
        self._part_chunks, self._part_length, self._part_hash = [], 0, hashlib.sha256()
        if index >= len(self._partials):
            raise VerificationError(
                f"more data than the {len(self._partials)} parts partials_checksums covers",
                code="size",
            )
        if digest != self._partials[index]:
            self.received -= length
            self._whole = self._whole_at_part
            self._stale = True
            attempt = self._failures[index] = self._failures.get(index, 0) + 1
            offset = index * self._part_size
            if attempt >= self._max_attempts:
                raise VerificationError(
                    f"checksum mismatch in part {index} (byte {offset}) after {attempt} attempts"
                )
            raise PartMismatch(index, offset, attempt)
        self._part_index += 1
        if self._held or self._near_the_end(index, length):
            self._held += chunks
            return []
        return chunks

    def _near_the_end(self, index: int, length: int) -> bool:
        """Whether a part reaches into the last ``tail`` bytes, which are held until
        :meth:`finish` (the archive's central directory is there)."""
        assert self._partials is not None
        if self.size is None:
            return index >= len(self._partials) - 2
        return index * self._part_size + length > self.size - self._tail_size
