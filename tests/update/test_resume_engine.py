"""Engine checkpoints and resume, in process, on both backends: an apply cut off at any
point after a checkpoint (pending cache writes lost, as in a power cut) and resumed from
the checkpoint yields the same image as one uninterrupted apply."""

from __future__ import annotations

import itertools
import random
import re
import shutil
import struct
from pathlib import Path
from types import ModuleType

import pytest

import nhlink._native
from nhlink.errors import NHLinkError
from nhlink.fwup.engine import Checkpoint, Engine
from nhlink.fwup.frames import Frame
from tests.conftest import backend_params
from tests.helpers.vectors import vectors_dir
from tests.update.firmware import BLOCK, SLOT_A_BLOCK, raw_public_key, read_env
from tests.update.resume_support import MultiFirmware, image_size, make_multi_firmware

CUT_SEED = 20261127


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> tuple[MultiFirmware, MultiFirmware]:
    directory = tmp_path_factory.mktemp("multi")
    return make_multi_firmware(directory, "1.0.0"), make_multi_firmware(directory, "2.0.0")


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> ModuleType:
    return nhlink._native.load(request.param)


def engine(image: Path, backend: ModuleType, **kw: object) -> Engine:
    return Engine(
        mode="apply",
        destination=image,
        task="upgrade",
        public_keys=[raw_public_key()],
        primitives=backend,
        checkpoint_interval=0,
        **kw,  # type: ignore[arg-type]
    )


def feed(eng: Engine, data: bytes, step: int = 65536) -> list[Frame]:
    frames: list[Frame] = []
    for at in range(0, len(data), step):
        frames += eng.feed(data[at : at + step])
    return frames


def installed(tmp_path: Path, v1: MultiFirmware, backend: ModuleType) -> Path:
    image = tmp_path / "installed.img"
    eng = Engine(
        mode="apply",
        destination=image,
        task="complete",
        public_keys=[raw_public_key()],
        primitives=backend,
    )
    frames = feed(eng, v1.path.read_bytes()) + eng.finish()
    assert frames[-1].type == "OK", frames
    slot_b = (SLOT_A_BLOCK + v1.slot_blocks) * BLOCK
    with open(image, "r+b") as f:
        f.truncate(slot_b)
        f.seek(slot_b)  # old content in slot B that is not zeros, so trim semantics show
        f.write(b"\xa5" * (image_size(v1) - slot_b))
    return image


def local_header_size(archive: bytes, offset: int) -> int:
    """Bytes of the zip local file header at ``offset`` (fixed part, name, extra)."""
    assert archive[offset : offset + 4] == b"PK\x03\x04"
    name_length, extra_length = struct.unpack_from("<HH", archive, offset + 26)
    return 30 + name_length + extra_length


def taken_at(archive: bytes, checkpoint: Checkpoint) -> int:
    """The archive bytes fed when ``checkpoint`` is taken: an entry boundary's once the next
    local header is read, one inside an entry's at the deflate block boundary."""
    if checkpoint.entry_header is not None:
        return checkpoint.offset
    return checkpoint.offset + local_header_size(archive, checkpoint.offset)


def test_cut_and_resume_matches_one_run(
    tmp_path: Path, multi: tuple[MultiFirmware, MultiFirmware], backend: ModuleType
) -> None:
    v1, v2 = multi
    base = installed(tmp_path, v1, backend)
    archive = v2.path.read_bytes()
    reference = tmp_path / "reference.img"
    shutil.copy(base, reference)
    checkpoints: list[Checkpoint] = []
    one = engine(reference, backend, on_checkpoint=checkpoints.append)
    commits: list[str] = []  # on_commit comes before on-finish switches the slot
    one.on_commit = lambda: commits.append(read_env(reference)["nerves_fw_active"])
    frames = feed(one, archive) + one.finish()
    assert frames[-1].type == "OK", frames
    assert commits == ["a"] and read_env(reference)["nerves_fw_active"] == "b"
    # entry boundaries: none after the last resource, only on-finish is left there
    boundaries = [c for c in checkpoints if c.entry_header is None]
    assert [len(c.completed) for c in boundaries] == [1, 2, 3]
    assert all(archive[c.offset : c.offset + 4] == b"PK\x03\x04" for c in boundaries)
    # the native backend also checkpoints inside resources (at least 1 MiB apart)
    inside = [c for c in checkpoints if c.entry_header is not None]
    assert bool(inside) == (backend.__name__.endswith("_core")), checkpoints
    expected = reference.read_bytes()

    rng = random.Random(CUT_SEED)
    for index, checkpoint in enumerate(checkpoints):
        image = tmp_path / f"cut-{index}.img"
        shutil.copy(base, image)
        saved: list[Checkpoint] = []
        first = engine(image, backend, on_checkpoint=saved.append)
        # a checkpoint is taken once the next local header is read; cut after that
        taken = taken_at(archive, checkpoint)
        end = checkpoints[index + 1].offset if index + 1 < len(checkpoints) else len(archive)
        cut = rng.randrange(taken, end)
        feed(first, archive[:cut])
        assert saved[-1] == checkpoint  # the same checkpoints in every run
        del first  # killed: what was pending in its cache is lost
        assert read_env(image)["nerves_fw_active"] == "a"
        resumed = engine(image, backend, on_checkpoint=saved.append)
        resumed.resume(checkpoint, expected_uuid=v2.uuid)
        frames = feed(resumed, archive[checkpoint.offset :]) + resumed.finish()
        assert frames[-1].type == "OK", (index, frames)
        assert frames[0].type == "PR"
        assert image.read_bytes() == expected, f"checkpoint {index}, cut at {cut}"
        assert read_env(image)["nerves_fw_active"] == "b"


def test_resume_rejects_a_tampered_head(
    tmp_path: Path, multi: tuple[MultiFirmware, MultiFirmware], backend: ModuleType
) -> None:
    v1, v2 = multi
    image = installed(tmp_path, v1, backend)
    checkpoints: list[Checkpoint] = []
    feed(engine(image, backend, on_checkpoint=checkpoints.append), v2.path.read_bytes()[: 3 << 20])
    good = checkpoints[0]
    before = image.read_bytes()
    head = bytearray(good.head)
    head[-40] ^= 1  # inside meta.conf: the CRC or the signature fails
    bad_head = Checkpoint(good.offset, bytes(head), good.task, good.completed, good.units)
    other_task = Checkpoint(good.offset, good.head, "upgrade.nonesuch", good.completed, good.units)
    cases = [(bad_head, v2.uuid), (other_task, v2.uuid), (good, v1.uuid)]
    for checkpoint, uuid in cases:
        eng = engine(image, backend)
        with pytest.raises(NHLinkError):
            eng.resume(checkpoint, expected_uuid=uuid)
        assert eng.done and not eng.finish()  # nothing more happens
    assert image.read_bytes() == before  # and nothing was written


@pytest.mark.parametrize("vector", ["02_ab_uboot", "10_zip64", "09_sparse", "03_large_8mib"])
def test_checkpoints_of_real_fwup_archives(
    tmp_path: Path, backend: ModuleType, vector: str
) -> None:
    """Archives made by the real fwup (data descriptors, zip64, a sparse map): every
    entry-boundary checkpoint is at a local header or the central directory, the native
    backend also checkpoints inside the raw_write entries (here at every deflate block,
    but 1 MiB apart in the large one), and resuming from any gives the same image."""
    archive = (vectors_dir() / "fw" / f"{vector}.fw").read_bytes()

    def complete(image: Path, **kw: object) -> Engine:
        eng = Engine(
            mode="apply",
            destination=image,
            task="complete",
            primitives=backend,
            checkpoint_interval=0,
            **kw,  # type: ignore[arg-type]
        )
        if vector != "03_large_8mib":
            eng.mid_entry_min_interval = 0
        return eng

    checkpoints: list[Checkpoint] = []
    one = complete(tmp_path / "one.img", on_checkpoint=checkpoints.append)
    frames = feed(one, archive, 4096) + one.finish()
    assert frames[-1].type == "OK", frames
    starts = {archive[c.offset : c.offset + 4] for c in checkpoints if c.entry_header is None}
    # taken as the next entry starts: none in a one-resource archive
    one_resource = vector in ("09_sparse", "03_large_8mib")
    assert starts == (set() if one_resource else {b"PK\x03\x04"}), starts
    inside = [c for c in checkpoints if c.entry_header is not None]
    assert bool(inside) == backend.__name__.endswith("_core"), len(inside)
    expected = (tmp_path / "one.img").read_bytes()
    for index, checkpoint in enumerate(checkpoints):
        image = tmp_path / f"resumed-{index}.img"
        first = complete(image, on_checkpoint=lambda c: None)
        feed(first, archive[: taken_at(archive, checkpoint)])
        del first  # cut right after the checkpoint was taken
        resumed = complete(image)
        resumed.resume(checkpoint)
        frames = feed(resumed, archive[checkpoint.offset :], 4096) + resumed.finish()
        assert frames[-1].type == "OK", frames
        assert image.read_bytes() == expected, index


def test_resume_refuses_a_slot_that_became_the_running_one(
    tmp_path: Path, multi: tuple[MultiFirmware, MultiFirmware], backend: ModuleType
) -> None:
    """A journal for upgrade.b on a device that meanwhile runs slot B (updated by other
    means): the requirements now select upgrade.a, so the resume is refused."""
    v1, v2 = multi
    image = installed(tmp_path, v1, backend)
    checkpoints: list[Checkpoint] = []
    feed(engine(image, backend, on_checkpoint=checkpoints.append), v2.path.read_bytes()[: 3 << 20])
    assert checkpoints[0].task == "upgrade.b"
    done = engine(image, backend)
    assert (feed(done, v2.path.read_bytes()) + done.finish())[-1].type == "OK"
    assert read_env(image)["nerves_fw_active"] == "b"
    before = image.read_bytes()
    eng = engine(image, backend)
    with pytest.raises(NHLinkError, match=r"now 'upgrade\.a'"):
        eng.resume(checkpoints[0], expected_uuid=v2.uuid)
    assert image.read_bytes() == before


# ---------------------------------------------------------------- inside one big resource

BIG = 24 << 20
BIG_INTERVAL = 2 << 20
MiB = 1 << 20


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[MultiFirmware, MultiFirmware]:
    """One-resource firmware: v2 is 24 MiB of compressible random data, deflated."""
    directory = tmp_path_factory.mktemp("single")
    return (
        make_multi_firmware(directory, "1.0.0", (BIG,)),
        make_multi_firmware(directory, "2.0.0", (BIG,), compress=True),
    )


@pytest.fixture(params=[p for p in backend_params() if "native" in str(p)])
def native(request: pytest.FixtureRequest) -> ModuleType:
    """The native backend only: mid-entry checkpoints need zlib's inflatePrime."""
    return nhlink._native.load(request.param)


def one_run(
    tmp_path: Path, base: Path, archive: bytes, backend: ModuleType
) -> tuple[bytes, list[Checkpoint]]:
    reference = tmp_path / "reference.img"
    shutil.copy(base, reference)
    checkpoints: list[Checkpoint] = []
    eng = engine(reference, backend, on_checkpoint=checkpoints.append)
    eng.checkpoint_interval = BIG_INTERVAL
    frames = feed(eng, archive) + eng.finish()
    assert frames[-1].type == "OK", frames
    return reference.read_bytes(), checkpoints


def test_checkpoints_inside_one_big_resource(
    tmp_path: Path, single: tuple[MultiFirmware, MultiFirmware], native: ModuleType
) -> None:
    """Cut after every checkpoint inside the resource and resume: the image is the one of
    an uninterrupted apply, and a cut costs at most the interval and a deflate block."""
    v1, v2 = single
    archive = v2.path.read_bytes()
    base = installed(tmp_path, v1, native)
    expected, checkpoints = one_run(tmp_path, base, archive, native)
    assert len(archive) < 0.7 * BIG  # really deflated
    assert len(checkpoints) >= len(archive) // (BIG_INTERVAL + MiB)
    assert all(c.entry_header is not None and not c.completed for c in checkpoints)
    offsets = [0] + [c.offset for c in checkpoints] + [len(archive)]
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert max(gaps) <= BIG_INTERVAL + MiB, gaps  # the most a cut makes feed again
    rng = random.Random(CUT_SEED)
    for index, checkpoint in enumerate(checkpoints):
        image = tmp_path / "cut.img"
        shutil.copy(base, image)
        saved: list[Checkpoint] = []
        first = engine(image, native, on_checkpoint=saved.append)
        first.checkpoint_interval = BIG_INTERVAL
        cut = rng.randrange(checkpoint.offset, offsets[index + 2])
        feed(first, archive[:cut])
        assert saved[-1] == checkpoint  # the same checkpoints in every run
        del first  # killed: what was pending in its cache is lost
        resumed = engine(image, native)
        resumed.checkpoint_interval = BIG_INTERVAL
        resumed.resume(checkpoint, expected_uuid=v2.uuid)
        later: list[Checkpoint] = []
        resumed.on_checkpoint = later.append  # as the pipeline hooks it, after resume()
        frames = feed(resumed, archive[checkpoint.offset :]) + resumed.finish()
        assert frames[-1].type == "OK", (index, frames)
        assert image.read_bytes() == expected, f"checkpoint {index}, cut at {cut}"
        assert later == checkpoints[index + 1 :]  # it goes on checkpointing the same way
        assert cut - checkpoint.offset <= BIG_INTERVAL + MiB


def _tampered(checkpoint: Checkpoint, where: str) -> Checkpoint:
    state = bytearray(checkpoint.entry_state or b"")
    if where == "window":  # the inflate window: 32 KiB after 30 bytes of positions
        for at in range(30, len(state) - 400):
            state[at] ^= 0x5A
    else:  # the BLAKE2b chaining value, at the start of the hash state (its last 384 bytes)
        state[-384] ^= 1
    return Checkpoint(
        checkpoint.offset,
        checkpoint.head,
        checkpoint.task,
        checkpoint.completed,
        checkpoint.units,
        checkpoint.entry_header,
        bytes(state),
        checkpoint.entry_extent,
    )


@pytest.mark.parametrize("where", ["window", "hash"])
def test_a_tampered_mid_entry_checkpoint_fails_the_apply(
    tmp_path: Path, single: tuple[MultiFirmware, MultiFirmware], native: ModuleType, where: str
) -> None:
    v1, v2 = single
    archive = v2.path.read_bytes()
    base = installed(tmp_path, v1, native)
    _, checkpoints = one_run(tmp_path, base, archive, native)
    checkpoint = checkpoints[len(checkpoints) // 2]
    image = tmp_path / "cut.img"
    shutil.copy(base, image)
    first = engine(image, native, on_checkpoint=lambda c: None)
    first.checkpoint_interval = BIG_INTERVAL
    feed(first, archive[: checkpoint.offset])
    del first
    resumed = engine(image, native)
    resumed.resume(_tampered(checkpoint, where), expected_uuid=v2.uuid)
    frames = feed(resumed, archive[checkpoint.offset :]) + resumed.finish()
    assert frames[-1].type == "ER", frames
    mismatch = "blake2b mismatch" if where == "hash" else "(bad CRC|blake2b mismatch)"
    assert re.search(mismatch, frames[-1].text), frames[-1]
    assert read_env(image)["nerves_fw_active"] == "a"  # nothing switched


def test_the_python_backend_refuses_a_mid_entry_checkpoint(
    tmp_path: Path, single: tuple[MultiFirmware, MultiFirmware], native: ModuleType
) -> None:
    """Python's zlib cannot prime bits into an inflater: it starts over instead."""
    v1, v2 = single
    archive = v2.path.read_bytes()
    base = installed(tmp_path, v1, native)
    _, checkpoints = one_run(tmp_path, base, archive, native)
    image = tmp_path / "cut.img"
    shutil.copy(base, image)
    before = image.read_bytes()
    eng = engine(image, nhlink._native.load("python"))
    with pytest.raises(NHLinkError, match="cannot resume inside"):
        eng.resume(checkpoints[0], expected_uuid=v2.uuid)
    assert eng.done and image.read_bytes() == before


def test_a_mid_entry_checkpoint_with_another_extent_is_refused(
    tmp_path: Path, single: tuple[MultiFirmware, MultiFirmware], native: ModuleType
) -> None:
    """The extent kept out of the replayed trims must be the one the state gives."""
    v1, v2 = single
    archive = v2.path.read_bytes()
    base = installed(tmp_path, v1, native)
    _, checkpoints = one_run(tmp_path, base, archive, native)
    good = checkpoints[0]
    image = tmp_path / "cut.img"
    shutil.copy(base, image)
    before = image.read_bytes()
    bad = Checkpoint(
        good.offset,
        good.head,
        good.task,
        good.completed,
        good.units,
        good.entry_header,
        good.entry_state,
        good.entry_extent - 512,
    )
    eng = engine(image, native)
    with pytest.raises(NHLinkError, match="does not fit"):
        eng.resume(bad, expected_uuid=v2.uuid)
    assert eng.done and image.read_bytes() == before


def test_the_checkpoint_period_spaces_checkpoints_in_time(
    tmp_path: Path, multi: tuple[MultiFirmware, MultiFirmware], backend: ModuleType
) -> None:
    """With a period, a checkpoint needs the time as well as the bytes: a fast apply takes
    none; when the clock moves on between entries, the same ones as without a period."""
    v1, v2 = multi
    archive = v2.path.read_bytes()
    taken: dict[str, list[Checkpoint]] = {}
    for case, step in (("no period", None), ("fast", 0.0), ("slow", 60.0)):
        (tmp_path / case).mkdir()
        image = installed(tmp_path / case, v1, backend)
        checkpoints: list[Checkpoint] = []
        eng = engine(image, backend, on_checkpoint=checkpoints.append)
        if step is not None:
            now = [0.0]

            def clock(now: list[float] = now, step: float = step) -> float:
                now[0] += step
                return now[0]

            eng.checkpoint_period = 30.0
            eng.clock = clock
        assert (feed(eng, archive) + eng.finish())[-1].type == "OK"
        taken[case] = checkpoints
    assert len(taken["no period"]) >= 2
    assert taken["fast"] == []
    assert taken["slow"] == taken["no period"]
