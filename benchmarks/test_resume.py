"""Resume overhead (issue 9), in one run on the same 64 MiB, 8-resource archive:

* ``plain``: one apply without checkpoints; ``plain_fsync``: the same plus the fsync
  that puts it on the media (the fair baseline: a checkpoint is mostly that fsync, early);
* ``checkpointed``: one apply writing the journal at each checkpoint (flush, fsync of the
  image, atomic journal write) — the cost a normal update pays for being resumable;
* ``interrupted_resumed``: an apply cut off 60% in (pending writes lost) and resumed
  from its last checkpoint — the total time of an interrupted update;
* ``journal_write``: one journal write (temporary file, fsync, rename, fsync of the dir);
  ``journal_write_inside``: the same for a checkpoint inside a resource (33 KiB of state);
* ``single_*``: the same kinds on a one-resource archive (64 MiB of compressible data,
  deflated): with the native backend its checkpoints are inside the resource.

Run: ``PYTHONPATH=src python -m pytest benchmarks/test_resume.py --benchmark-only``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from benchmarks.conftest import KEY_DIR, MIB
from nhlink import _native
from nhlink.fwup.engine import Checkpoint, Engine
from nhlink.fwup.frames import Frame
from nhlink.update.journal import OfferIdentity, UpdateJournal

RESOURCES = 8
RESOURCE_MIB = 8
CHUNK = 1 << 20
CUT = 0.6


@pytest.fixture(scope="module")
def primitives() -> object:
    try:
        return _native.load("native")
    except ImportError:
        return _native.load("python")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nhlink.fwup.create import create_archive
    from nhlink.fwup.keys import read_private_key_file

    directory = tmp_path_factory.mktemp("resume-bench")
    handlers = []
    resources = []
    for i in range(RESOURCES):
        path = directory / f"r{i}.bin"
        path.write_bytes(os.urandom(RESOURCE_MIB * MIB))
        resources.append(f'file-resource r{i}.bin {{ host-path = "{path}" }}')
        handlers.append(
            f"    on-resource r{i}.bin {{ raw_write({2048 + i * RESOURCE_MIB * 2048}) }}"
        )
    conf = directory / "resume.conf"
    conf.write_text(
        'meta-product = "resume-bench"\n'
        + "\n".join(resources)
        + "\ntask complete {\n    on-init { trim(2048, "
        + str(RESOURCES * RESOURCE_MIB * 2048)
        + ") }\n"
        + "\n".join(handlers)
        + "\n}\n"
    )
    out = directory / "resume.fw"
    key = read_private_key_file(str(KEY_DIR / "testkey-a.priv"))
    create_archive(conf, out, signing_key=key, level=1, environ={"SOURCE_DATE_EPOCH": "0"})
    return out


# 16 symbols: about 4 bits of entropy a byte, so deflate makes Huffman blocks
_NIBBLES = bytes(b"etaoinshrdlucmfw"[i % 16] for i in range(256))
SINGLE_MIB = 64


@pytest.fixture(scope="module")
def single_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nhlink.fwup.create import create_archive
    from nhlink.fwup.keys import read_private_key_file

    directory = tmp_path_factory.mktemp("resume-bench-single")
    path = directory / "rootfs.img"
    path.write_bytes(os.urandom(SINGLE_MIB * MIB).translate(_NIBBLES))
    conf = directory / "single.conf"
    conf.write_text(
        'meta-product = "resume-bench"\n'
        f'file-resource rootfs.img {{ host-path = "{path}" }}\n'
        "task complete {\n"
        f"    on-init {{ trim(2048, {SINGLE_MIB * 2048}) }}\n"
        "    on-resource rootfs.img { raw_write(2048) }\n"
        "}\n"
    )
    out = directory / "single.fw"
    key = read_private_key_file(str(KEY_DIR / "testkey-a.priv"))
    create_archive(conf, out, signing_key=key, level=6, environ={"SOURCE_DATE_EPOCH": "0"})
    return out


@pytest.fixture(scope="module")
def public_key() -> bytes:
    import base64

    return base64.b64decode((KEY_DIR / "testkey-a.pub").read_text().strip())


def _engine(image: Path, key: bytes, primitives: object, **kw: object) -> Engine:
    return Engine(
        mode="apply",
        destination=image,
        task="complete",
        public_keys=[key],
        primitives=primitives,
        **kw,  # type: ignore[arg-type]
    )


def _feed(engine: Engine, data: memoryview) -> list[Frame]:
    frames: list[Frame] = []
    for at in range(0, len(data), CHUNK):
        frames += engine.feed(data[at : at + CHUNK])
    return frames


def _apply(
    archive: bytes, image: Path, key: bytes, primitives: object, journal: Path | None, sync: bool
) -> None:
    image.unlink(missing_ok=True)
    kw: dict[str, object] = {}
    if journal is not None:
        offer = OfferIdentity("bench", len(archive), None)
        kw["on_checkpoint"] = functools.partial(UpdateJournal(journal).save, offer, str(image))
        image.touch()
    engine = _engine(image, key, primitives, **kw)
    frames = _feed(engine, memoryview(archive)) + engine.finish()
    assert frames[-1].type == "OK", frames[-1]
    if sync:  # what an uninterrupted apply needs to be on the media too
        fd = os.open(image, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def _interrupted(
    archive: bytes, image: Path, key: bytes, primitives: object, journal: Path
) -> None:
    image.unlink(missing_ok=True)
    image.touch()
    saved: list[Checkpoint] = []
    save = functools.partial(
        UpdateJournal(journal).save, OfferIdentity("bench", len(archive), None), str(image)
    )

    def checkpoint_to_both(checkpoint: Checkpoint) -> None:
        save(checkpoint)
        saved.append(checkpoint)

    first = _engine(image, key, primitives, on_checkpoint=checkpoint_to_both)
    _feed(first, memoryview(archive)[: int(len(archive) * CUT)])
    del first  # power cut: pending writes are lost
    checkpoint = saved[-1]
    resumed = _engine(image, key, primitives, on_checkpoint=checkpoint_to_both)
    resumed.resume(checkpoint)
    frames = _feed(resumed, memoryview(archive)[checkpoint.offset :]) + resumed.finish()
    assert frames[-1].type == "OK", frames[-1]


@pytest.mark.parametrize("kind", ["plain", "plain_fsync", "checkpointed", "interrupted_resumed"])
def test_resume_overhead(  # type: ignore[no-untyped-def]
    benchmark, kind: str, archive: Path, public_key: bytes, primitives: object, tmp_path: Path
) -> None:
    data = archive.read_bytes()
    image = tmp_path / "image.img"
    benchmark.extra_info["bytes"] = len(data)
    benchmark.extra_info["checkpoints"] = RESOURCES if kind == "checkpointed" else 0
    journal = tmp_path / "journal.json"
    if kind == "interrupted_resumed":
        args: tuple[object, ...] = (data, image, public_key, primitives, journal)
        benchmark.pedantic(_interrupted, args=args, rounds=3, iterations=1)
    else:
        checkpointed = journal if kind == "checkpointed" else None
        args = (data, image, public_key, primitives, checkpointed, kind == "plain_fsync")
        benchmark.pedantic(_apply, args=args, rounds=3, iterations=1)


@pytest.mark.parametrize("kind", ["plain_fsync", "checkpointed", "interrupted_resumed"])
def test_resume_overhead_single(  # type: ignore[no-untyped-def]
    benchmark,
    kind: str,
    single_archive: Path,
    public_key: bytes,
    primitives: object,
    tmp_path: Path,
) -> None:
    data = single_archive.read_bytes()
    image = tmp_path / "image.img"
    journal = tmp_path / "journal.json"
    benchmark.extra_info["bytes"] = len(data)
    if kind == "interrupted_resumed":
        args: tuple[object, ...] = (data, image, public_key, primitives, journal)
        benchmark.pedantic(_interrupted, args=args, rounds=3, iterations=1)
    else:
        checkpointed = journal if kind == "checkpointed" else None
        args = (data, image, public_key, primitives, checkpointed, kind == "plain_fsync")
        benchmark.pedantic(_apply, args=args, rounds=3, iterations=1)


def test_journal_write_inside(benchmark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image = tmp_path / "image.img"
    image.write_bytes(b"\0" * 4096)
    journal = UpdateJournal(tmp_path / "journal.json")
    offer = OfferIdentity("bench", 1 << 30, "AB" * 32, tuple("CD" * 32 for _ in range(1024)))
    checkpoint = Checkpoint(
        123456789,
        os.urandom(2000),
        "upgrade.b",
        (),
        1 << 29,
        entry_header=os.urandom(90),
        entry_state=os.urandom(30 + 32768 + 4 + 384),
        entry_extent=1 << 28,
    )
    benchmark(journal.save, offer, str(image), checkpoint)


def test_journal_write(benchmark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image = tmp_path / "image.img"
    image.write_bytes(b"\0" * 4096)
    journal = UpdateJournal(tmp_path / "journal.json")
    offer = OfferIdentity("bench", 1 << 30, "AB" * 32, tuple("CD" * 32 for _ in range(1024)))
    checkpoint = Checkpoint(123456789, os.urandom(2000), "upgrade.b", ("a", "b", "c"), 1 << 29)
    benchmark(journal.save, offer, str(image), checkpoint)
