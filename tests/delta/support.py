"""Delta .fw archives for the tests: xdelta3 patches against the golden 02_ab_uboot image.

The base device is the golden vector 02_ab_uboot after its ``complete`` step
(its sha256 is checked against MANIFEST.json): slot A (block 4096) holds the
vector's rootfs. ``upgrade_conf`` is an upgrade.b task like the vector's,
with ``delta-source-raw-*`` pointing at slot A. A full archive is made with
our creator; its delta twin is the same archive with the rootfs entry's data
replaced by an xdelta3 patch (meta.conf, hence its signature, unchanged).
"""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from nhlink.fwup import apply_file
from nhlink.fwup.create import create_archive
from nhlink.fwup.keys import read_private_key_file
from tests.helpers.vectors import key_base64, vector, vectors_dir

BLOCK = 512
SLOT_A, SLOT_B, SLOT_BLOCKS = 4096, 8192, 4096
BOOT_OFFSET, BOOT_BLOCKS = 1024, 2048
IMAGE_SIZE = 16 << 20
NERVESHUB_FLAGS = ("-A", "-S", "-f")  # what NervesHub's delta generator passes


def modified(
    rootfs: bytes,
    seed: int,
    *,
    edits: int = 20,
    max_edit: int = 600,
    insertion: int = 3000,
    tail: int = 40000,
    tail_at: int | None = None,
) -> bytes:
    """A plausible next rootfs: ``edits`` scattered rewrites, an insertion, a new tail.

    The random tail of ``tail`` bytes replaces what follows ``tail_at`` (appended if None).
    """
    rng = random.Random(seed)
    data = bytearray(rootfs)
    for _ in range(edits):
        at = rng.randrange(len(data) - max_edit)
        data[at : at + rng.randrange(1, max_edit)] = rng.randbytes(rng.randrange(1, max_edit))
    at = rng.randrange(len(data))
    data[at:at] = rng.randbytes(insertion)
    return bytes(data[:tail_at]) + rng.randbytes(tail)


def xdelta3() -> str:
    path = shutil.which("xdelta3")
    if path is None:
        pytest.skip("xdelta3 is not installed (apt-get install xdelta3)")
    return path


def make_patch(
    tmp: Path, source: bytes, target: bytes, flags: tuple[str, ...] = NERVESHUB_FLAGS
) -> bytes:
    """``xdelta3 <flags> -e -s source target patch``, as NervesHub makes delta resources."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "source").write_bytes(source)
    (tmp / "target").write_bytes(target)
    subprocess.run(
        [
            xdelta3(),
            *flags,
            "-e",
            "-s",
            str(tmp / "source"),
            str(tmp / "target"),
            str(tmp / "patch"),
        ],
        check=True,
    )
    return (tmp / "patch").read_bytes()


def public_key() -> bytes:
    import base64

    return base64.b64decode(key_base64("a"))


def signing_key() -> bytes:
    return read_private_key_file(str(vectors_dir() / "keys" / "testkey-a.priv"))


def golden_base_image(path: Path) -> None:
    """The golden 02_ab_uboot image after ``complete`` (checked against the vector's sha256)."""
    step = vector("02_ab_uboot")["steps"][0]
    assert step["name"] == "complete"
    with open(path, "wb") as f:
        f.truncate(IMAGE_SIZE)
    frames = apply_file(vectors_dir() / "fw" / "02_ab_uboot.fw", path, "complete", [public_key()])
    assert frames[-1].type == "OK", frames[-1]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == step["expected"]["image_sha256"]


def slot_a_rootfs(image: Path) -> bytes:
    """The vector's rootfs as installed in slot A."""
    start, length = next(
        r
        for r in vector("02_ab_uboot")["steps"][0]["expected"]["changed_ranges"]
        if r[0] == SLOT_A * BLOCK
    )
    with open(image, "rb") as f:
        f.seek(start)
        return f.read(length)


def upgrade_conf(rootfs: Path, *, delta: bool = True, boot: Path | None = None) -> str:
    """An upgrade.b task writing ``rootfs`` into slot B (a delta against slot A when ``delta``).

    With ``boot``, the task also writes ``boot`` as ``zImage.b`` into a FAT
    filesystem at BOOT_OFFSET, delta against its ``zImage.a``.
    """
    source = (
        f"delta-source-raw-offset = {SLOT_A}\n        delta-source-raw-count = {SLOT_BLOCKS}\n"
        if delta
        else ""
    )
    boot_resource = boot_handler = ""
    if boot is not None:
        boot_resource = f'file-resource zImage {{ host-path = "{boot}" }}\n'
        boot_handler = f"""
    on-resource zImage {{
        delta-source-fat-offset = {BOOT_OFFSET}
        delta-source-fat-path = "zImage.a"
        fat_write({BOOT_OFFSET}, "zImage.b")
    }}"""
    return f"""
meta-product = "nhlink-delta-tests"
meta-version = "2.0.0"
meta-platform = "vectors"
meta-architecture = "any"
meta-author = "nhlink tests"

uboot-environment uboot-env {{
    block-offset = 256
    block-count = 16
}}

file-resource rootfs.img {{ host-path = "{rootfs}" }}
{boot_resource}
task upgrade.b {{
    require-uboot-variable(uboot-env, "nerves_fw_active", "a")
    on-init {{
        info("Upgrading partition B")
        uboot_unsetenv(uboot-env, "b.nerves_fw_version")
        trim({SLOT_B}, {SLOT_BLOCKS})
    }}
    on-resource rootfs.img {{
        {source}raw_write({SLOT_B})
    }}{boot_handler}
    on-finish {{
        uboot_setenv(uboot-env, "b.nerves_fw_version", "2.0.0")
        uboot_setenv(uboot-env, "nerves_fw_active", "b")
    }}
    on-error {{
        info("upgrade.b failed")
    }}
}}
"""


def create_signed(conf_text: str, directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / f"{name}.conf"
    conf.write_text(conf_text)
    archive = directory / f"{name}.fw"
    create_archive(
        conf,
        archive,
        signing_key=signing_key(),
        level=1,
        environ={"SOURCE_DATE_EPOCH": "1700000000"},
    )
    return archive


def replace_entries(archive: Path, output: Path, data: dict[str, bytes]) -> None:
    """Copy ``archive`` to ``output`` with the given entries' data replaced (sizes in local headers)."""
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(output, "w") as target:
        for info in source.infolist():
            body = data.get(info.filename)
            if body is None:
                body = source.read(info)
            copy = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            copy.compress_type = zipfile.ZIP_DEFLATED
            copy.external_attr = info.external_attr
            target.writestr(copy, body)
    missing = set(data) - {i.filename for i in zipfile.ZipFile(output).infolist()}
    assert not missing, missing


def apply(archive: Path, image: Path, backend: str) -> list[tuple[str, int, str]]:
    from nhlink._native import load

    frames = apply_file(archive, image, "upgrade", [public_key()], primitives=load(backend))
    return [(f.type, f.code, f.text) for f in frames]
