"""ZipStream: golden archives at many chunkings, synthetic zip layouts, every error path."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import struct
import zipfile
import zlib
from typing import Any

import pytest
from backend_support import Vectors, parse_resources, resource_name, vector_ids, walk

from nhlink._native.events import ArchiveEnd, DataChunk, EntryEnd, EntryStart
from nhlink.errors import ArchiveError

SMALL_ARCHIVE = 400_000


def chunkings(size: int) -> list[int | None]:
    """Whole, 4 KiB and byte-level chunkings (odd-sized for the 8 MiB archive, see below)."""
    return [None, 4096, 1, 7] if size <= SMALL_ARCHIVE else [None, 4096, 65_537]


def hash_everything(stream: Any, start: EntryStart) -> None:
    if start.name == "meta.conf" or start.name == "meta.conf.ed25519":
        stream.sink_collect(50_000)
    else:
        stream.sink_hash()


def entry_ends(events: list[Any]) -> list[EntryEnd]:
    return [event for event in events if isinstance(event, EntryEnd)]


# -- golden archives ---------------------------------------------------------------------------


@pytest.mark.parametrize("vector_id", vector_ids())
def test_golden_archive_matches_zipfile_and_meta_conf(
    backend: Any, vectors: Vectors, vector_id: str
) -> None:
    """Walk the archive like `fwup -V`: names, sizes, CRCs, BLAKE2b and errors as fwup reports."""
    data = vectors.fw(vector_id)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        meta = {name: archive.read(name) for name in archive.namelist() if name.startswith("meta.")}
        digests = {}
        for info in infos:
            with contextlib.suppress(zipfile.BadZipFile):  # 07a: zipfile sees the bad CRC too
                digests[info.filename] = backend.blake2b_256(archive.read(info))
    resources = parse_resources(meta["meta.conf"].decode())
    verify = vectors.vector(vector_id)["verify"]
    bad_crc = (
        verify["stdout"].removeprefix("fwup: ").strip() if "bad CRC" in verify["stdout"] else None
    )

    for chunk in chunkings(len(data)):
        if bad_crc is not None:
            with pytest.raises(ArchiveError) as caught:
                walk(backend, data, chunk, hash_everything)
            assert str(caught.value) == bad_crc
            continue
        events = walk(backend, data, chunk, hash_everything)
        assert isinstance(events[-1], ArchiveEnd)
        starts = [e for e in events if isinstance(e, EntryStart)]
        ends = entry_ends(events)
        assert [e.name for e in starts] == [info.filename for info in infos]
        assert [(e.name, e.size, e.crc32) for e in ends] == [
            (info.filename, info.file_size, info.CRC) for info in infos
        ]
        assert [s.size for s in starts] == [info.file_size for info in infos]
        meta_start = next(s for s in starts if s.name == "meta.conf")
        assert meta_start.mtime is not None
        created = datetime.datetime.fromtimestamp(meta_start.mtime, datetime.UTC)
        creation_date = vectors.vector(vector_id)["metadata"]["meta-creation-date"]
        assert created.strftime("%Y-%m-%dT%H:%M:%SZ") == creation_date
        mismatches = []
        for end in ends:
            if end.name in meta:
                assert end.data == meta[end.name]
                continue
            resource = resources[resource_name(end.name)]
            assert end.size == resource.data_size
            assert end.blake2b == digests[end.name]
            if end.blake2b != resource.blake2b:
                mismatches.append(resource_name(end.name).lstrip("/"))
        if verify["exit_status"] == 0:
            assert mismatches == []
        else:
            assert (
                verify["stdout"] == f"fwup: Detected blake2b digest mismatch for {mismatches[0]}\n"
            )


@pytest.mark.slow
def test_big_archive_in_7_byte_pieces(backend: Any, vectors: Vectors) -> None:
    data = vectors.fw("03_large_8mib")
    reference = entry_ends(walk(backend, data, None, hash_everything))
    assert entry_ends(walk(backend, data, 7, hash_everything)) == reference


def test_chunks_sink_hands_out_every_byte_and_counts_units(backend: Any, vectors: Vectors) -> None:
    data = vectors.fw("02_ab_uboot")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        expected = {info.filename: archive.read(info) for info in archive.infolist()}
    for chunk in (None, 4096, 333):
        events = walk(backend, data, chunk, lambda stream, start: stream.sink_chunks())
        received: dict[str, bytearray] = {}
        current = None
        for event in events:
            if isinstance(event, EntryStart):
                current = received.setdefault(event.name, bytearray())
            elif isinstance(event, DataChunk):
                assert current is not None and event.data
                current += event.data
            elif isinstance(event, EntryEnd):
                assert (
                    event.blake2b == hashlib.blake2b(expected[event.name], digest_size=32).digest()
                )
                assert event.data is None
        assert {name: bytes(value) for name, value in received.items()} == expected


def test_units_count_chunks_but_not_skip_hash_or_collect(backend: Any, vectors: Vectors) -> None:
    data = vectors.fw("01_minimal_raw")
    stream = backend.ZipStream()
    consumed, event = stream.feed(data)
    total_chunked = 0
    while event is not None:
        if isinstance(event, EntryStart):
            if event.name == "data/payload.bin":
                stream.sink_chunks()
            else:
                stream.sink_hash()
        if isinstance(event, DataChunk):
            total_chunked += len(event.data)
            assert stream.units == total_chunked
        data = data[consumed:]
        consumed, event = stream.feed(data)
    assert stream.units == total_chunked == 65536


def test_input_types_give_identical_events(backend: Any, vectors: Vectors) -> None:
    data = vectors.fw("10_zip64")
    reference = walk(backend, data, 1000, hash_everything)
    for convert in (bytes, bytearray, memoryview):
        stream = backend.ZipStream()
        events = []
        rest: Any = convert(data)
        while True:
            consumed, event = stream.feed(rest)
            rest = convert(bytes(rest)[consumed:])
            if event is None:
                break
            events.append(event)
            if isinstance(event, EntryStart):
                hash_everything(stream, event)
        events.append(stream.end_of_input())
        assert entry_ends(events) == entry_ends(reference)


# -- truncation --------------------------------------------------------------------------------


def test_archive_cut_at_an_entry_boundary_ends_cleanly(backend: Any, vectors: Vectors) -> None:
    data = vectors.fw("02_ab_uboot")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
    for count, info in enumerate(infos):
        for chunk in (None, 1000):
            events = walk(backend, data[: info.header_offset], chunk, hash_everything)
            assert [e.name for e in entry_ends(events)] == [i.filename for i in infos[:count]]
            assert isinstance(events[-1], ArchiveEnd)


@pytest.mark.parametrize(
    "where", ["in signature", "in fixed header", "in name", "in data", "in descriptor"]
)
def test_archive_cut_inside_an_entry_fails_with_minus_5(
    backend: Any, vectors: Vectors, where: str
) -> None:
    data = vectors.fw("01_minimal_raw")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        payload = archive.getinfo("data/payload.bin")
    start = payload.header_offset
    data_start = start + 30 + len(payload.filename) + len(payload.extra)
    data_end = data_start + payload.compress_size
    cut = {
        "in signature": start + 2,
        "in fixed header": start + 17,
        "in name": start + 33,
        "in data": data_start + 1000,
        "in descriptor": data_end + 9,
    }[where]
    for chunk in (None, 7):
        with pytest.raises(ArchiveError, match=r"^ZIP decompression failed \(-5\)$"):
            walk(backend, data[:cut], chunk, hash_everything)


def test_stream_is_dead_after_an_error(backend: Any, vectors: Vectors) -> None:
    data = vectors.fw("07a_tampered_flip")
    stream = backend.ZipStream()
    message = None
    rest = data
    with pytest.raises(ArchiveError) as caught:
        while True:
            consumed, event = stream.feed(rest)
            rest = rest[consumed:]
            if isinstance(event, EntryStart):
                stream.sink_hash()
    message = str(caught.value)
    assert message.startswith("ZIP bad CRC")
    for attempt in (lambda: stream.feed(rest), lambda: stream.feed(b""), stream.end_of_input):
        with pytest.raises(ArchiveError) as again:
            attempt()
        assert str(again.value) == message


# -- synthetic archives ------------------------------------------------------------------------

CENTRAL_DIRECTORY = b"PK\x01\x02" + bytes(42)
END_OF_CENTRAL_DIRECTORY = b"PK\x05\x06" + bytes(18)
U32_MAX = 0xFFFFFFFF


def local_header(
    name: bytes,
    *,
    method: int = 8,
    flags: int = 0,
    crc: int = 0,
    csize: int = 0,
    usize: int = 0,
    extra: bytes = b"",
    dos_time: int = 0,
    dos_date: int = 0,
) -> bytes:
    fixed = struct.pack(
        "<4sHHHHHIIIHH",
        b"PK\x03\x04",
        20,
        flags,
        method,
        dos_time,
        dos_date,
        crc,
        csize,
        usize,
        len(name),
        len(extra),
    )
    return fixed + name + extra


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def zip64_extra(*sizes: int) -> bytes:
    body = b"".join(struct.pack("<Q", size) for size in sizes)
    return struct.pack("<HH", 0x0001, len(body)) + body


def plain_entry(name: bytes, payload: bytes) -> bytes:
    """Sizes and CRC in the header, no data descriptor (Info-ZIP style)."""
    body = deflate(payload)
    crc = zlib.crc32(payload)
    return local_header(name, crc=crc, csize=len(body), usize=len(payload)) + body


PAYLOAD = bytes(range(256)) * 300 + b"tail"


def walk_all_chunkings(backend: Any, archive: bytes, on_start: Any = None) -> list[Any]:
    """Walk at several chunkings; all must give the same EntryStart/EntryEnd sequence."""
    results = []
    for chunk in (None, 1, 5, 4096):
        events = walk(backend, archive, chunk, on_start or (lambda s, e: s.sink_hash()))
        results.append([e for e in events if not isinstance(e, DataChunk)])
    assert all(result == results[0] for result in results)
    return results[0]


def expect_error(backend: Any, archive: bytes, message: str, on_start: Any = None) -> None:
    for chunk in (None, 1, 4096):
        with pytest.raises(ArchiveError) as caught:
            walk(backend, archive, chunk, on_start or (lambda s, e: s.sink_hash()))
        assert str(caught.value) == message


@pytest.mark.parametrize("with_signature", [True, False])
def test_zip64_entry_with_data_descriptor(backend: Any, with_signature: bool) -> None:
    body = deflate(PAYLOAD)
    header = local_header(
        b"data/big.img",
        flags=0x0008,
        csize=U32_MAX,
        usize=U32_MAX,
        extra=b"\x55\x54\x05\x00\x01\x00\x00\x00\x00" + zip64_extra(len(PAYLOAD), 0),
    )
    descriptor = struct.pack("<IQQ", zlib.crc32(PAYLOAD), len(body), len(PAYLOAD))
    if with_signature:
        descriptor = b"PK\x07\x08" + descriptor
    archive = header + body + descriptor + CENTRAL_DIRECTORY
    events = walk_all_chunkings(backend, archive)
    digest = hashlib.blake2b(PAYLOAD, digest_size=32).digest()
    assert events == [
        EntryStart("data/big.img", 8, len(PAYLOAD), 0),
        EntryEnd("data/big.img", len(PAYLOAD), zlib.crc32(PAYLOAD), digest, None),
        ArchiveEnd(),
        ArchiveEnd(),
    ]


def test_zip64_sizes_in_header_without_descriptor(backend: Any) -> None:
    body = deflate(PAYLOAD)
    header = local_header(
        b"payload",
        crc=zlib.crc32(PAYLOAD),
        csize=U32_MAX,
        usize=U32_MAX,
        extra=zip64_extra(len(PAYLOAD), len(body)),
    )
    events = walk_all_chunkings(backend, header + body + END_OF_CENTRAL_DIRECTORY)
    assert events[0] == EntryStart("payload", 8, len(PAYLOAD))
    assert events[1].size == len(PAYLOAD) and events[1].crc32 == zlib.crc32(PAYLOAD)


@pytest.mark.parametrize("with_signature", [True, False])
def test_descriptor_with_unknown_sizes(backend: Any, with_signature: bool) -> None:
    body = deflate(PAYLOAD)
    descriptor = struct.pack("<III", zlib.crc32(PAYLOAD), len(body), len(PAYLOAD))
    if with_signature:
        descriptor = b"PK\x07\x08" + descriptor
    archive = local_header(b"stream", flags=0x0008) + body + descriptor
    archive += plain_entry(b"second", b"x" * 10) + CENTRAL_DIRECTORY
    events = walk_all_chunkings(backend, archive)
    assert events[0] == EntryStart("stream", 8, None)
    assert [(e.name, e.size) for e in entry_ends(events)] == [
        ("stream", len(PAYLOAD)),
        ("second", 10),
    ]


def test_stored_entry_with_descriptor_like_fwup_signature(backend: Any) -> None:
    signature = bytes(range(64))
    crc = zlib.crc32(signature)
    archive = (
        local_header(b"meta.conf.ed25519", method=0, flags=0x0008, csize=64, usize=64)
        + signature
        + b"PK\x07\x08"
        + struct.pack("<III", crc, 64, 64)
        + plain_entry(b"meta.conf", b"meta-product=x\n")
    )
    events = walk_all_chunkings(backend, archive, lambda s, e: s.sink_collect(100))
    assert events[0] == EntryStart("meta.conf.ed25519", 0, 64)
    assert events[1] == EntryEnd("meta.conf.ed25519", 64, crc, None, signature)
    assert events[3].data == b"meta-product=x\n"


def test_empty_stored_entry_and_pending_entry_end(backend: Any) -> None:
    archive = local_header(b"empty", method=0) + CENTRAL_DIRECTORY
    stream = backend.ZipStream()
    consumed, event = stream.feed(archive)
    assert event == EntryStart("empty", 0, 0)
    stream.sink_collect(10)
    rest = archive[consumed:]
    consumed, event = stream.feed(b"")
    assert (consumed, event) == (0, EntryEnd("empty", 0, 0, None, b""))
    consumed, event = stream.feed(rest)
    assert (consumed, event) == (4, ArchiveEnd())
    assert stream.feed(rest[4:]) == (len(rest) - 4, None)
    assert stream.end_of_input() == ArchiveEnd()


def test_stored_entry_with_descriptor_and_no_size_is_rejected(backend: Any) -> None:
    archive = local_header(b"sig", method=0, flags=0x0008) + bytes(64)
    expect_error(backend, archive, "ZIP: stored entry 'sig' has no size")


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        (b"", ""),
        (b"../etc/passwd", "../etc/passwd"),
        (b"data/../../x", "data/../../x"),
        (b"data/..", "data/.."),
        (b"a\x00b", "a?b"),
        (b"x" * 513, "x" * 513),
        (b"/etc/passwd", "/etc/passwd"),
        (b"data//etc/passwd", "data//etc/passwd"),
        (b"\x1b[2J/../x", "?[2J/../x"),
        (b"\xc3\xa9/../x", "??/../x"),
    ],
)
def test_bad_entry_names(backend: Any, name: bytes, shown: str) -> None:
    archive = plain_entry(name, b"abc")
    expect_error(backend, archive, f"ZIP: bad entry name '{shown}'")


def test_names_with_dots_that_are_not_components_are_fine(backend: Any) -> None:
    events = walk_all_chunkings(
        backend, plain_entry(b"data/a..b", b"x") + plain_entry(b"x" * 512, b"y")
    )
    assert [e.name for e in entry_ends(events)] == ["data/a..b", "x" * 512]


def test_encrypted_entry_is_rejected(backend: Any) -> None:
    archive = local_header(b"data/secret", flags=0x0001, csize=3, usize=3) + b"abc"
    expect_error(backend, archive, "ZIP: encrypted entries are not supported ('data/secret')")


def test_unsupported_method_is_rejected(backend: Any) -> None:
    archive = local_header(b"data/x.bz2", method=12, csize=3, usize=3) + b"abc"
    expect_error(backend, archive, "ZIP: unsupported compression method 12 for 'data/x.bz2'")


def test_unexpected_data_reports_the_archive_offset(backend: Any) -> None:
    first = plain_entry(b"first", PAYLOAD)
    expect_error(
        backend, first + b"garbage!", f"ZIP: unexpected data at archive offset {len(first)}"
    )
    expect_error(backend, b"MZ\x90\x00", "ZIP: unexpected data at archive offset 0")


def test_corrupt_deflate_data(backend: Any) -> None:
    # BTYPE 11 (reserved) in the first block header.
    archive = local_header(b"bad", flags=0x0008) + b"\xff" * 64
    expect_error(backend, archive, "ZIP decompression failed (-3)")


def test_crc_mismatch_message(backend: Any) -> None:
    body = deflate(PAYLOAD)
    wrong = zlib.crc32(PAYLOAD) ^ 0x0F000000
    archive = local_header(b"p", crc=wrong, csize=len(body), usize=len(PAYLOAD)) + body
    expect_error(backend, archive, f"ZIP bad CRC: 0x{zlib.crc32(PAYLOAD):x} should be 0x{wrong:x}")


def test_output_beyond_the_declared_size(backend: Any) -> None:
    body = deflate(PAYLOAD)
    crc = zlib.crc32(PAYLOAD)
    in_header = local_header(b"p", crc=crc, csize=len(body), usize=len(PAYLOAD) - 1) + body
    expect_error(backend, in_header, "ZIP: 'p' is larger than declared")
    with_descriptor = local_header(b"p", flags=0x0008, usize=100) + body
    expect_error(backend, with_descriptor, "ZIP: 'p' is larger than declared")


def test_inflate_bomb_stops_at_the_declared_size(backend: Any) -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = b"".join(bomb.compress(bytes(1 << 20)) for _ in range(256)) + bomb.flush()  # 256 MiB
    archive = local_header(b"bomb", flags=0x0008, usize=4096) + body
    received = []

    def chunks(stream: Any, start: EntryStart) -> None:
        stream.sink_chunks()

    with pytest.raises(ArchiveError, match="larger than declared"):
        stream = backend.ZipStream()
        rest = memoryview(archive)
        while True:
            consumed, event = stream.feed(rest)
            rest = rest[consumed:]
            if isinstance(event, EntryStart):
                chunks(stream, event)
            elif isinstance(event, DataChunk):
                received.append(len(event.data))
    assert sum(received) <= 4096  # never more than declared reaches the caller


@pytest.mark.parametrize("field", ["csize", "usize"])
def test_descriptor_size_mismatch(backend: Any, field: str) -> None:
    body = deflate(PAYLOAD)
    csize, usize = len(body), len(PAYLOAD)
    if field == "csize":
        csize += 1
    else:
        usize -= 1
    descriptor = b"PK\x07\x08" + struct.pack("<III", zlib.crc32(PAYLOAD), csize, usize)
    archive = local_header(b"p", flags=0x0008) + body + descriptor
    expect_error(backend, archive, "ZIP: size mismatch for 'p'")


@pytest.mark.parametrize("delta", [-1, 1])
def test_deflate_stream_must_end_exactly_at_the_header_size(backend: Any, delta: int) -> None:
    body = deflate(PAYLOAD)
    crc = zlib.crc32(PAYLOAD)
    archive = local_header(b"p", crc=crc, csize=len(body) + delta, usize=len(PAYLOAD))
    archive += body + b"\0" + CENTRAL_DIRECTORY
    expect_error(backend, archive, "ZIP: size mismatch for 'p'")


def test_collect_limit(backend: Any) -> None:
    archive = plain_entry(b"meta.conf", b"x" * 100)
    expect_error(
        backend,
        archive,
        "ZIP: 'meta.conf' is larger than 99 bytes",
        lambda s, e: s.sink_collect(99),
    )
    events = walk(backend, archive, None, lambda s, e: s.sink_collect(100))
    assert entry_ends(events)[0].data == b"x" * 100


def test_sinks_can_only_be_chosen_right_after_entry_start(backend: Any) -> None:
    stream = backend.ZipStream()
    with pytest.raises(RuntimeError):
        stream.sink_hash()
    archive = plain_entry(b"a", PAYLOAD)
    consumed, event = stream.feed(archive)
    assert isinstance(event, EntryStart)
    stream.sink_hash()
    stream.sink_collect(1 << 20)  # changing one's mind before feeding is allowed
    consumed2, event = stream.feed(archive[consumed : consumed + 10])
    with pytest.raises(RuntimeError):
        stream.sink_skip()
    assert consumed2 == 10 and event is None


def test_end_of_input_right_after_entry_start_is_inside_the_entry(backend: Any) -> None:
    stream = backend.ZipStream()
    _, event = stream.feed(local_header(b"a", method=0))
    assert isinstance(event, EntryStart)
    with pytest.raises(ArchiveError, match=r"\(-5\)"):
        stream.end_of_input()


def dos_time(hour: int, minute: int, second: int) -> int:
    return hour << 11 | minute << 5 | second // 2


def dos_date(year: int, month: int, day: int) -> int:
    return (year - 1980) << 9 | month << 5 | day


def timestamp_extra(flags: int, mtime: int) -> bytes:
    return struct.pack("<HHBI", 0x5455, 5, flags, mtime)


@pytest.mark.parametrize(
    ("extra", "time", "date", "expected"),
    [
        # The extended timestamp wins over the DOS fields.
        (timestamp_extra(1, 1_700_000_000), 0, dos_date(2001, 1, 1), 1_700_000_000),
        # Only the first 0x5455 field counts; without its mtime flag, DOS date/time are used.
        (
            timestamp_extra(0, 5) + timestamp_extra(1, 7),
            dos_time(12, 34, 56),
            dos_date(2024, 2, 29),
            int(datetime.datetime(2024, 2, 29, 12, 34, 56, tzinfo=datetime.UTC).timestamp()),
        ),
        # Day 31 of February counts on into March.
        (
            b"",
            dos_time(0, 0, 0),
            dos_date(2023, 2, 31),
            int(datetime.datetime(2023, 3, 3, tzinfo=datetime.UTC).timestamp()),
        ),
        (b"", 0, 0, None),  # month 0: not a date
        (b"", dos_time(24, 0, 0), dos_date(2020, 1, 1), None),
    ],
)
def test_entry_mtime(
    backend: Any, extra: bytes, time: int, date: int, expected: int | None
) -> None:
    body = deflate(b"x")
    header = local_header(
        b"meta.conf",
        crc=zlib.crc32(b"x"),
        csize=len(body),
        usize=1,
        extra=extra,
        dos_time=time,
        dos_date=date,
    )
    events = walk_all_chunkings(backend, header + body)
    assert events[0] == EntryStart("meta.conf", 8, 1, expected)
