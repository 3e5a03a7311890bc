"""raw_write sink into a BlockCache: golden images, sparse maps, padding, failure behaviour."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from backend_support import Vectors, resource_name, split_at, walk, walk_pieces
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nhlink._native.events import EntryEnd, EntryStart
from nhlink.errors import ArchiveError

BLOCK = 512
SEGMENT = 128 * 1024

# The single raw_write tasks of the vectors' meta.conf, read by hand: resource -> block offset.
RAW_WRITE_TASKS = {
    "01_minimal_raw": {"payload.bin": 2048},
    "03_large_8mib": {"rootfs.img": 4096},
    "09_sparse": {"sparse.img": 2048},
    "10_zip64": {"payload.bin": 1000, "/extra-at-root.txt": 999},
}


def apply_raw_writes(
    backend: Any,
    vectors: Vectors,
    vector_id: str,
    image: Path,
    chunk: int | None,
) -> tuple[list[Any], int]:
    """Run the vector's raw_write task with only the primitives; return events and units."""
    task = RAW_WRITE_TASKS[vector_id]
    resources = vectors.resources(vector_id)
    cache = backend.BlockCache(image)

    def choose(stream: Any, start: EntryStart) -> None:
        name = resource_name(start.name)
        if name in task:
            resource = resources[name]
            stream.sink_raw_write(
                cache, task[name] * BLOCK, resource.sparse_map, resource.data_size
            )

    stream_holder: list[Any] = []
    events = walk(backend, vectors.fw(vector_id), chunk, _remember(stream_holder, choose))
    for event in events:
        if isinstance(event, EntryEnd) and resource_name(event.name) in task:
            resource = resources[resource_name(event.name)]
            assert event.blake2b == resource.blake2b
            assert event.size == resource.data_size
    cache.flush()
    cache.close()
    return events, stream_holder[0].units


def _remember(holder: list[Any], choose: Any) -> Any:
    def on_start(stream: Any, start: EntryStart) -> None:
        if not holder:
            holder.append(stream)
        choose(stream, start)

    return on_start


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("vector_id", sorted(RAW_WRITE_TASKS))
def test_raw_write_reproduces_the_golden_image(
    backend: Any, vectors: Vectors, vector_id: str, tmp_path: Path
) -> None:
    step = vectors.step(vector_id, "complete")
    expected = step["expected"]
    resources = vectors.resources(vector_id)
    data_bytes = sum(resources[name].data_size for name in RAW_WRITE_TASKS[vector_id])
    chunks: list[int | None] = [None, 4096]
    if vector_id != "03_large_8mib":
        chunks.append(1 if vector_id != "09_sparse" else 3)
    for chunk in chunks:
        image = tmp_path / f"image-{chunk}.img"
        vectors.make_base_image(step["base_image"], image)
        _, units = apply_raw_writes(backend, vectors, vector_id, image, chunk)
        assert image.stat().st_size == expected["image_size"]
        assert sha256_of(image) == expected["image_sha256"]
        assert units == data_bytes


def test_raw_write_into_a_missing_file_grows_it_in_segments(
    backend: Any, vectors: Vectors, tmp_path: Path
) -> None:
    image = tmp_path / "new.img"
    apply_raw_writes(backend, vectors, "10_zip64", image, None)
    # extra-at-root.txt at 511488 (47 bytes) and payload.bin at 512000 (20000 bytes):
    # the last segment touched is [524288, 655360).
    assert image.stat().st_size == 5 * SEGMENT
    content = image.read_bytes()
    resources_end = 512000 + 20000
    assert content[resources_end : -(-resources_end // BLOCK) * BLOCK] == bytes(
        -(-resources_end // BLOCK) * BLOCK - resources_end
    )
    assert content[:511488] == bytes(511488)


def write_resource(
    backend: Any,
    cache: Any,
    payload: bytes,
    offset: int,
    sparse_map: list[int] | None,
    expected_size: int,
    chunk: int | None,
) -> EntryEnd:
    """Put ``payload`` in a one-entry stored archive and raw_write it."""
    header = (
        struct.pack(
            "<4sHHHHHIIIHH",
            b"PK\x03\x04",
            10,
            0,
            0,
            0,
            0,
            zlib.crc32(payload),
            len(payload),
            len(payload),
            8,
            0,
        )
        + b"data/res"
    )
    events = walk(
        backend,
        header + payload,
        chunk,
        lambda s, e: s.sink_raw_write(cache, offset, sparse_map, expected_size),
    )
    ends = [e for e in events if isinstance(e, EntryEnd)]
    return ends[0]


def model_raw_write(base: bytes, payload: bytes, offset: int, runs: list[int]) -> bytes:
    """Reference model: every block holding a data byte is written whole, the rest zero."""
    image = bytearray(base)
    touched: dict[int, bytearray] = {}
    position = 0
    data = iter(payload)
    for index, length in enumerate(runs):
        if index % 2 == 0:
            for at in range(offset + position, offset + position + length):
                block = touched.setdefault(at // BLOCK, bytearray(BLOCK))
                block[at % BLOCK] = next(data)
        position += length
    if len(runs) % 2 == 0 and runs[-1]:
        zeros = min(BLOCK, runs[-1])
        for at in range(offset + position - zeros, offset + position):
            touched.setdefault(at // BLOCK, bytearray(BLOCK))
    for block_index, block in touched.items():
        image[block_index * BLOCK : (block_index + 1) * BLOCK] = block
    return bytes(image)


@pytest.mark.parametrize(
    "runs",
    [
        [1000],
        [512, 1024, 512],
        [700, 1000, 300, 100],
        [0, 4096, 100, 5000],
        [1, 1, 1, 1, 1, 600],
        [3000, 200, 3000, 200],
    ],
)
def test_sparse_maps_and_padding(backend: Any, tmp_path: Path, runs: list[int]) -> None:
    base = b"\xaa" * SEGMENT
    payload = hashlib.sha256(repr(runs).encode()).digest() * 300
    payload = payload[: sum(runs[0::2])]
    offset = 3 * BLOCK
    expected = model_raw_write(base, payload, offset, runs)
    for chunk in (None, 1, 100):
        image = tmp_path / "image.img"
        image.write_bytes(base)
        cache = backend.BlockCache(image)
        end = write_resource(backend, cache, payload, offset, runs, len(payload), chunk)
        cache.flush()
        cache.close()
        assert end.size == len(payload)
        assert end.blake2b == hashlib.blake2b(payload, digest_size=32).digest()
        assert image.read_bytes() == expected


def test_more_data_than_declared(backend: Any, tmp_path: Path) -> None:
    image = tmp_path / "image.img"
    image.write_bytes(bytes(SEGMENT))
    cache = backend.BlockCache(image)
    with pytest.raises(ArchiveError) as caught:
        write_resource(backend, cache, b"x" * 1000, 0, None, 999, None)
    # Named like fwup's raw_write errors: by resource name ('data/' stripped).
    assert str(caught.value) == "raw_write: 'res' is larger than its declared length"


def test_complete_segments_reach_the_media_before_the_entry_ends(
    backend: Any, vectors: Vectors, tmp_path: Path
) -> None:
    """07b: the BLAKE2b mismatch is found after the whole resource went through the cache.

    Like fwup: the first full 128 KiB segment of the resource is on the media,
    the 1000-byte tail and the pending on-init memset are dropped by discard(),
    and the on-error memset written afterwards lands.
    """
    step = vectors.step("07b_tampered_crcfixed", "complete")
    image = tmp_path / "image.img"
    vectors.make_base_image(step["base_image"], image)
    resource = vectors.resources("07b_tampered_crcfixed")["payload.bin"]
    cache = backend.BlockCache(image)
    cache.write(32 * BLOCK, b"\x11" * BLOCK, streamed=True)  # on-init raw_memset(32, 1, 0x11)

    def choose(stream: Any, start: EntryStart) -> None:
        if start.name == "data/payload.bin":
            stream.sink_raw_write(cache, 2048 * BLOCK, None, resource.data_size)

    events = walk(backend, vectors.fw("07b_tampered_crcfixed"), 4096, choose)
    end = next(e for e in events if isinstance(e, EntryEnd) and e.name == "data/payload.bin")
    assert end.blake2b != resource.blake2b  # the engine reports the mismatch and fails
    cache.discard()
    cache.write(64 * BLOCK, b"\xee" * BLOCK, streamed=True)  # on-error raw_memset(64, 1, 0xee)
    cache.flush()
    cache.close()
    content = image.read_bytes()
    assert content[24576 : 24576 + BLOCK] == bytes(BLOCK)  # must_hold: block 48 unchanged
    assert content[32768 : 32768 + BLOCK] == b"\xee" * BLOCK  # must_hold: on-error ran
    assert content[16384 : 16384 + BLOCK] == bytes(BLOCK)  # on-init memset dropped
    assert sha256_of(image) == step["expected"]["image_sha256"]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cuts=st.lists(st.integers(min_value=1, max_value=20965), max_size=40))
def test_any_input_split_gives_the_same_image(
    backend: Any, vectors: Vectors, tmp_path: Path, cuts: list[int]
) -> None:
    """10_zip64 cut at arbitrary points: same events, same image, same units."""
    step = vectors.step("10_zip64", "complete")
    resources = vectors.resources("10_zip64")
    task = RAW_WRITE_TASKS["10_zip64"]
    image = tmp_path / "split.img"
    vectors.make_base_image(step["base_image"], image)
    cache = backend.BlockCache(image)
    streams: list[Any] = []

    def choose(stream: Any, start: EntryStart) -> None:
        streams.append(stream)
        name = resource_name(start.name)
        if name in task:
            resource = resources[name]
            stream.sink_raw_write(
                cache, task[name] * BLOCK, resource.sparse_map, resource.data_size
            )

    events = walk_pieces(backend, split_at(vectors.fw("10_zip64"), cuts), choose)
    cache.flush()
    cache.close()
    assert [e.blake2b for e in events if isinstance(e, EntryEnd)][2:] == [
        resources["payload.bin"].blake2b,
        resources["/extra-at-root.txt"].blake2b,
    ]
    assert streams[0].units == 20000 + 47
    assert sha256_of(image) == step["expected"]["image_sha256"]
