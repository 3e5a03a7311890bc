"""Applying delta .fw archives (xdelta3 patches against slot A of the golden 02_ab_uboot image)."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import zipfile
from pathlib import Path

import pytest

from nhlink._native import uboot_env_decode
from tests.delta import support
from tests.delta.support import BLOCK, SLOT_A, SLOT_B, SLOT_BLOCKS

BACKENDS = ["native", "python"]


def modified(rootfs: bytes, seed: int) -> bytes:
    """A plausible next rootfs: some blocks rewritten, an insertion, a new tail."""
    rng = random.Random(seed)
    data = bytearray(rootfs)
    for _ in range(20):
        at = rng.randrange(len(data) - 600)
        data[at : at + rng.randrange(1, 600)] = rng.randbytes(rng.randrange(1, 600))
    at = rng.randrange(len(data))
    data[at:at] = rng.randbytes(3000)
    return bytes(data) + rng.randbytes(40000)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | bytes]:
    """Base image, new rootfs, and the full and delta archives of the same upgrade."""
    support.xdelta3()
    tmp = tmp_path_factory.mktemp("delta")
    base = tmp / "base.img"
    support.golden_base_image(base)
    old = support.slot_a_rootfs(base)
    new = modified(old, 1)
    rootfs = tmp / "rootfs.img"
    rootfs.write_bytes(new)
    full = support.create_signed(support.upgrade_conf(rootfs), tmp, "full")
    patch = support.make_patch(tmp / "xd", old, new)
    assert len(patch) < len(new) // 4
    delta = tmp / "delta.fw"
    support.replace_entries(full, delta, {"data/rootfs.img": patch})
    return {"tmp": tmp, "base": base, "old": old, "new": new, "full": full, "delta": delta,
            "patch": patch}  # fmt: skip


def _copy(world: dict[str, Path | bytes], name: str) -> Path:
    tmp = world["tmp"]
    assert isinstance(tmp, Path)
    image = tmp / f"{name}-{os.getpid()}.img"
    shutil.copyfile(str(world["base"]), image)
    return image


def _slot(image: Path, block: int, length: int) -> bytes:
    with open(image, "rb") as f:
        f.seek(block * BLOCK)
        return f.read(length)


def _env(image: Path) -> dict[str, str]:
    with open(image, "rb") as f:
        f.seek(256 * BLOCK)
        return uboot_env_decode(f.read(16 * BLOCK), False)[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_delta_apply_equals_full_apply(world: dict[str, Path | bytes], backend: str) -> None:
    full_image, delta_image = _copy(world, f"full-{backend}"), _copy(world, f"delta-{backend}")
    full_frames = support.apply(Path(str(world["full"])), full_image, backend)
    delta_frames = support.apply(Path(str(world["delta"])), delta_image, backend)
    assert full_frames[-1] == ("OK", 0, "")
    assert delta_frames[-1] == ("OK", 0, "")
    assert [f for f in delta_frames if f[0] != "PR"] == [f for f in full_frames if f[0] != "PR"]
    progress = [f[1] for f in delta_frames if f[0] == "PR"]
    assert progress == sorted(progress) and progress[-1] == 100
    assert full_image.read_bytes() == delta_image.read_bytes()
    new = world["new"]
    assert isinstance(new, bytes)
    assert _slot(delta_image, SLOT_B, len(new)) == new
    assert _slot(delta_image, SLOT_A, len(new)) == _slot(Path(str(world["base"])), SLOT_A, len(new))
    assert _env(delta_image)["nerves_fw_active"] == "b"


def test_backends_agree_on_frames(world: dict[str, Path | bytes]) -> None:
    frames = {
        b: support.apply(Path(str(world["delta"])), _copy(world, f"frames-{b}"), b)
        for b in BACKENDS
    }
    assert frames["native"] == frames["python"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_source_fails_with_blake2b_mismatch(
    world: dict[str, Path | bytes], backend: str
) -> None:
    """A device whose slot A is not the firmware the patch was made against."""
    image = _copy(world, f"wrong-{backend}")
    old = world["old"]
    assert isinstance(old, bytes)
    with open(image, "r+b") as f:  # a different build in slot A: every 4 KiB, one byte changed
        for at in range(100, len(old), 4096):
            f.seek(SLOT_A * BLOCK + at)
            f.write(bytes([old[at] ^ 0x5A]))
    before_env = _env(image)
    before_slot_b = _slot(image, SLOT_B, support.SLOT_BLOCKS * BLOCK)
    frames = support.apply(Path(str(world["delta"])), image, backend)
    assert frames[-1] == ("ER", 0, "raw_write detected blake2b mismatch on 'rootfs.img'")
    env = _env(image)
    assert env["nerves_fw_active"] == "a"  # on-finish never ran
    # on-init's unsetenv was discarded with the pending writes (fwup: errors drop the cache)
    assert env == before_env
    # the only window failed its checksum before any byte reached the cache; the trim of
    # on-init was pending and discarded with the rest: slot B keeps the old contents
    assert _slot(image, SLOT_B, support.SLOT_BLOCKS * BLOCK) == before_slot_b


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cut", [0.3, 0.999])
def test_truncated_patch_fails_cleanly(
    world: dict[str, Path | bytes], backend: str, cut: float
) -> None:
    patch = world["patch"]
    tmp = world["tmp"]
    assert isinstance(patch, bytes) and isinstance(tmp, Path)
    broken = tmp / f"truncated-{cut}.fw"
    support.replace_entries(
        Path(str(world["full"])), broken, {"data/rootfs.img": patch[: int(len(patch) * cut)]}
    )
    image = _copy(world, f"trunc-{backend}")
    frames = support.apply(broken, image, backend)
    assert frames[-1][0] == "ER"
    assert frames[-1][2].startswith("VCDIFF: patch ends inside window 0"), frames[-1]
    assert _env(image)["nerves_fw_active"] == "a"
    base = Path(str(world["base"]))
    slot_bytes = support.SLOT_BLOCKS * BLOCK
    assert _slot(image, SLOT_B, slot_bytes) == _slot(base, SLOT_B, slot_bytes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_secondary_compression_is_refused(world: dict[str, Path | bytes], backend: str) -> None:
    """xdelta3's default (lzma/djw secondary compression) is not supported: a clear error."""
    tmp = world["tmp"]
    old, new = world["old"], world["new"]
    assert isinstance(tmp, Path) and isinstance(old, bytes) and isinstance(new, bytes)
    patch = support.make_patch(tmp / "xd-djw", old, new, ("-S", "djw", "-f"))
    archive = tmp / "djw.fw"
    support.replace_entries(Path(str(world["full"])), archive, {"data/rootfs.img": patch})
    frames = support.apply(archive, _copy(world, f"djw-{backend}"), backend)
    assert frames[-1] == (
        "ER",
        0,
        "VCDIFF: secondary compression is not supported (make the patch with xdelta3 -S none)",
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_patch_with_app_header_and_no_checksum(
    world: dict[str, Path | bytes], backend: str
) -> None:
    """``-S none`` keeps xdelta3's application header; ``-n`` drops the adler32 checksums."""
    tmp = world["tmp"]
    old, new = world["old"], world["new"]
    assert isinstance(tmp, Path) and isinstance(old, bytes) and isinstance(new, bytes)
    patch = support.make_patch(tmp / "xd-none", old, new, ("-S", "none", "-n", "-f"))
    archive = tmp / "app-header.fw"
    support.replace_entries(Path(str(world["full"])), archive, {"data/rootfs.img": patch})
    image = _copy(world, f"apphdr-{backend}")
    assert support.apply(archive, image, backend)[-1] == ("OK", 0, "")
    assert hashlib.sha256(_slot(image, SLOT_B, len(new))).digest() == hashlib.sha256(new).digest()


@pytest.mark.parametrize("backend", BACKENDS)
def test_overlapping_source_is_refused(world: dict[str, Path | bytes], backend: str) -> None:
    tmp = world["tmp"]
    old = world["old"]
    assert isinstance(tmp, Path) and isinstance(old, bytes)
    rootfs = tmp / "rootfs-overlap.img"
    rootfs.write_bytes(old[::-1])
    text = support.upgrade_conf(rootfs).replace(
        f"delta-source-raw-offset = {SLOT_A}", f"delta-source-raw-offset = {SLOT_B}"
    )
    full = support.create_signed(text, tmp, "overlap")
    delta = tmp / "overlap-delta.fw"
    support.replace_entries(
        full, delta, {"data/rootfs.img": support.make_patch(tmp / "xd-o", old, old[::-1])}
    )
    frames = support.apply(delta, _copy(world, f"overlap-{backend}"), backend)
    assert frames[-1] == ("ER", 0, "delta source overlaps the raw_write target of 'rootfs.img'")


def provision_conf(kernel: Path) -> str:
    """Puts a FAT filesystem with ``zImage.a`` where the 02 vector has its boot area."""
    return f"""
meta-product = "nhlink-delta-tests"
meta-version = "1.0.0"
file-resource zImage {{ host-path = "{kernel}" }}
task provision {{
    on-init {{ fat_mkfs({support.BOOT_OFFSET}, {support.BOOT_BLOCKS}) }}
    on-resource zImage {{ fat_write({support.BOOT_OFFSET}, "zImage.a") }}
}}
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_fat_and_raw_deltas_in_one_archive(world: dict[str, Path | bytes], backend: str) -> None:
    from nhlink.fwup import apply_file

    tmp, old, new = world["tmp"], world["old"], world["new"]
    assert isinstance(tmp, Path) and isinstance(old, bytes) and isinstance(new, bytes)
    kernel_a = random.Random(3).randbytes(150_000)
    kernel_b = modified(kernel_a, 4)
    (tmp / "zImage.a").write_bytes(kernel_a)
    (tmp / "zImage.b").write_bytes(kernel_b)
    provision = support.create_signed(provision_conf(tmp / "zImage.a"), tmp, "provision")
    base = _copy(world, f"fat-base-{backend}")
    frames = apply_file(provision, base, "provision", [support.public_key()])
    assert frames[-1].type == "OK", frames[-1]

    conf = support.upgrade_conf(tmp / "rootfs.img", boot=tmp / "zImage.b")
    full = support.create_signed(conf, tmp, "fat-full")
    delta = tmp / "fat-delta.fw"
    patches = {
        "data/rootfs.img": support.make_patch(tmp / "xd-r", old, new),
        "data/zImage": support.make_patch(tmp / "xd-k", kernel_a, kernel_b),
    }
    support.replace_entries(full, delta, patches)
    full_image, delta_image = tmp / f"fat-full-{backend}.img", tmp / f"fat-delta-{backend}.img"
    shutil.copyfile(base, full_image)
    shutil.copyfile(base, delta_image)
    assert support.apply(full, full_image, backend)[-1] == ("OK", 0, "")
    assert support.apply(delta, delta_image, backend)[-1] == ("OK", 0, "")
    assert full_image.read_bytes() == delta_image.read_bytes()
    assert kernel_b in delta_image.read_bytes()  # contiguous clusters in a fresh FAT


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_fat_source_file(world: dict[str, Path | bytes], backend: str) -> None:
    from nhlink.fwup import apply_file

    tmp = world["tmp"]
    assert isinstance(tmp, Path)
    (tmp / "other").write_bytes(b"x" * 1000)
    text = provision_conf(tmp / "other").replace('"zImage.a"', '"other.bin"')
    provision = support.create_signed(text, tmp, "provision-other")
    base = _copy(world, f"nofat-{backend}")
    assert apply_file(provision, base, "provision", [support.public_key()])[-1].type == "OK"
    (tmp / "k.b").write_bytes(b"y" * 2000)
    full = support.create_signed(
        support.upgrade_conf(tmp / "rootfs.img", boot=tmp / "k.b"), tmp, "nofat-full"
    )
    delta = tmp / "nofat-delta.fw"
    patch = support.make_patch(tmp / "xd-nf", b"x" * 1000, b"y" * 2000)
    support.replace_entries(full, delta, {"data/zImage": patch})
    frames = support.apply(delta, base, backend)
    assert frames[-1] == (
        "ER",
        0,
        "delta source file 'zImage.a' not found in the FAT filesystem",
    )


# ---------------------------------------------------------------------------- source range

RAW_SOURCE = (
    f"delta-source-raw-offset = {SLOT_A}\n        delta-source-raw-count = {support.SLOT_BLOCKS}"
)


def _with_source(world: dict[str, Path | bytes], name: str, offset: int, count: int) -> Path:
    """The delta archive with its raw source moved to ``offset``/``count`` blocks: meta.conf
    edited and signed again (our creator refuses integers past 64 bits, the applier may not)."""
    import nacl.signing

    tmp, delta = world["tmp"], world["delta"]
    assert isinstance(tmp, Path) and isinstance(delta, Path)
    key = nacl.signing.SigningKey(support.signing_key()[:32])
    output = tmp / f"{name}.fw"
    with zipfile.ZipFile(delta) as source:
        meta = source.read("meta.conf").decode()
        for option, value in (("offset", offset), ("count", count)):
            old = f"delta-source-raw-{option}={SLOT_A if option == 'offset' else SLOT_BLOCKS}\n"
            assert old in meta
            meta = meta.replace(old, f"delta-source-raw-{option}={value}\n")
        entries = {
            "meta.conf": meta.encode(),
            "meta.conf.ed25519": key.sign(meta.encode()).signature,
        }
    support.replace_entries(delta, output, entries)
    return output


def _beyond(offset: int, count: int, size: int = support.IMAGE_SIZE) -> tuple[str, int, str]:
    start, end = offset * BLOCK, (offset + count) * BLOCK
    text = f"delta source of 'rootfs.img' lies beyond the destination (bytes {start}..{end}, destination size {size})"
    return ("ER", 0, text)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("offset", "count"),
    [
        (SLOT_A, 1 << 80),  # the count alone is past 2**64 bytes
        ((1 << 55) - 1, 1 << 20),  # offset + count wraps around 2**64 bytes
        (1 << 53, (1 << 53) + 1),  # just past 2**63 bytes
    ],
)
def test_source_past_2_63_bytes_is_refused(
    world: dict[str, Path | bytes], backend: str, offset: int, count: int
) -> None:
    delta = _with_source(world, f"huge-{offset}-{count}", offset, count)
    image = _copy(world, f"huge-{backend}")
    before = image.read_bytes()
    assert support.apply(delta, image, backend)[-1] == _beyond(offset, count)
    assert image.read_bytes() == before


class _BlockDeviceCache:
    """A backend BlockCache that says it is a block device (of the file's size)."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    @property
    def is_block_device(self) -> bool:
        return True

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


class _BlockDevicePrimitives:
    def __init__(self, backend: str) -> None:
        from nhlink._native import load

        self._backend = load(backend)

    def BlockCache(self, path: str, **kw: object) -> _BlockDeviceCache:
        return _BlockDeviceCache(self._backend.BlockCache(path, **kw))

    def __getattr__(self, name: str) -> object:
        return getattr(self._backend, name)


def _apply_on_block_device(archive: Path, image: Path, backend: str) -> list[tuple[str, int, str]]:
    from nhlink.fwup import apply_file

    primitives = _BlockDevicePrimitives(backend)
    frames = apply_file(archive, image, "upgrade", [support.public_key()], primitives=primitives)
    return [(f.type, f.code, f.text) for f in frames]


@pytest.mark.parametrize("backend", BACKENDS)
def test_source_beyond_a_block_device_is_refused(
    world: dict[str, Path | bytes], backend: str
) -> None:
    """Slot A moved to the last 2 MiB of the device, then 1 block further: past its end."""
    last = support.IMAGE_SIZE // BLOCK - support.SLOT_BLOCKS
    image = _copy(world, f"blockdev-{backend}")
    with open(image, "r+b") as f:  # the installed firmware, where the moved source points
        f.seek(last * BLOCK)
        f.write(_slot(image, SLOT_A, support.SLOT_BLOCKS * BLOCK))
    before = image.read_bytes()
    beyond = _with_source(world, "beyond", last + 1, support.SLOT_BLOCKS)
    frames = _apply_on_block_device(beyond, image, backend)
    assert frames[-1] == _beyond(last + 1, support.SLOT_BLOCKS)
    assert image.read_bytes() == before
    # the same region on a regular file reads zeros past its end, as fwup's cache does
    assert support.apply(beyond, image, backend)[-1] == (
        "ER",
        0,
        "raw_write detected blake2b mismatch on 'rootfs.img'",
    )
    # ending exactly at the end of the device is fine
    inside = _with_source(world, "at-end", last, support.SLOT_BLOCKS)
    assert _apply_on_block_device(inside, image, backend)[-1] == ("OK", 0, "")
    new = world["new"]
    assert isinstance(new, bytes)
    assert _slot(image, SLOT_B, len(new)) == new


# ---------------------------------------------------------------------------- streaming cap


def _streaming_conf(resource: Path, action: str) -> str:
    return f"""
meta-product = "nhlink-delta-tests"
meta-version = "2.0.0"
file-resource blob {{ host-path = "{resource}" }}
task upgrade {{
    on-resource blob {{
        {RAW_SOURCE}
        {action}
    }}
}}
"""


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("action", ["path_write", "pipe_write"])
def test_streaming_delta_output_is_capped_at_the_declared_length(
    world: dict[str, Path | bytes], backend: str, action: str
) -> None:
    """A patch decoding to 2 MiB for a 1000-byte resource stops at the first excess piece."""
    from nhlink._native import load
    from nhlink.fwup import apply_file

    tmp, old = world["tmp"], world["old"]
    assert isinstance(tmp, Path) and isinstance(old, bytes)
    blob = tmp / "blob.bin"
    blob.write_bytes(old[:1000])
    out = tmp / f"streamed-{action}-{backend}.bin"
    out.unlink(missing_ok=True)
    call = f'path_write("{out}")' if action == "path_write" else f'pipe_write("cat > {out}")'
    full = support.create_signed(_streaming_conf(blob, call), tmp, f"stream-{action}")
    delta = tmp / f"stream-{action}-delta.fw"
    big = old[:1000] + bytes(2 << 20)
    support.replace_entries(full, delta, {"data/blob": support.make_patch(tmp / "xd-s", old, big)})
    frames = apply_file(
        delta,
        _copy(world, f"stream-{backend}"),
        "upgrade",
        [support.public_key()],
        primitives=load(backend),
        unsafe=True,
    )
    assert frames[-1] == ("ER", 0, f"{action}: 'blob' is larger than its declared length")
    assert not out.exists() or out.stat().st_size <= 1000  # pipe_write's shell may be killed first
    # the same patch with the right length declared applies
    (tmp / "big.bin").write_bytes(big)
    full = support.create_signed(_streaming_conf(tmp / "big.bin", call), tmp, f"ok-{action}")
    support.replace_entries(full, delta, {"data/blob": support.make_patch(tmp / "xd-s", old, big)})
    frames = apply_file(
        delta,
        _copy(world, f"stream-ok-{backend}"),
        "upgrade",
        [support.public_key()],
        primitives=load(backend),
        unsafe=True,
    )
    assert frames[-1] == ("OK", 0, "")
    assert out.read_bytes() == big
