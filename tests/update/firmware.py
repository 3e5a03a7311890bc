"""Signed A/B firmware for the update tests, made with ``nhlink.fwup.create.create_archive``.

The layout is Nerves-like (like the golden vector conf 02_ab_uboot): a plain
U-Boot environment at block 256, rootfs slot A at block 4096 and slot B right
after it. ``complete`` installs slot A; ``upgrade`` picks ``upgrade.b`` when A
is active (writes B, switches ``nerves_fw_active`` in on-finish) and
``upgrade.a`` when B is.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from nhlink._native import uboot_env_decode
from nhlink.fwup import apply_file
from nhlink.fwup.create import create_archive
from nhlink.fwup.identity import meta_uuid
from nhlink.fwup.keys import read_private_key_file
from tests.helpers.vectors import vectors_dir

BLOCK = 512
ENV_OFFSET = 256 * BLOCK
ENV_SIZE = 16 * BLOCK
SLOT_A_BLOCK = 4096


def public_key(name: str = "a") -> str:
    return (vectors_dir() / "keys" / f"testkey-{name}.pub").read_text().strip()


def raw_public_key(name: str = "a") -> bytes:
    return base64.b64decode(public_key(name))


def conf_text(rootfs: Path, version: str, slot_blocks: int, *, delta: bool = False) -> str:
    """The fwup.conf; ``delta`` makes the upgrade tasks accept a delta rootfs patched
    against the other slot (``delta-source-raw-*``, as NervesHub's delta files need)."""
    slot_b = SLOT_A_BLOCK + slot_blocks

    def upgrade(slot: str, other: str, offset: int) -> str:
        source = SLOT_A_BLOCK if slot == "b" else slot_b
        delta_keys = (
            f"delta-source-raw-offset = {source} delta-source-raw-count = {slot_blocks} "
            if delta
            else ""
        )
        return f"""
task upgrade.{slot} {{
    require-uboot-variable(uboot-env, "nerves_fw_active", "{other}")
    require-uboot-variable(uboot-env, "nerves_fw_validated", "1")
    on-init {{
        info("Upgrading partition {slot.upper()}")
        uboot_unsetenv(uboot-env, "{slot}.nerves_fw_version")
        uboot_unsetenv(uboot-env, "{slot}.nerves_fw_uuid")
        trim({offset}, {slot_blocks})
    }}
    on-resource rootfs.img {{ {delta_keys}raw_write({offset}) }}
    on-finish {{
        uboot_setenv(uboot-env, "{slot}.nerves_fw_platform", "test")
        uboot_setenv(uboot-env, "{slot}.nerves_fw_architecture", "any")
        uboot_setenv(uboot-env, "{slot}.nerves_fw_version", "{version}")
        uboot_setenv(uboot-env, "{slot}.nerves_fw_uuid", "\\${{FWUP_META_UUID}}")
        uboot_setenv(uboot-env, "nerves_fw_active", "{slot}")
    }}
    on-error {{
        info("upgrade.{slot} failed")
    }}
}}
"""

    return (
        f"""
meta-product = "nhlink-update-tests"
meta-description = "A/B image with a U-Boot environment"
meta-version = "{version}"
meta-platform = "test"
meta-architecture = "any"
meta-author = "nhlink tests"

uboot-environment uboot-env {{
    block-offset = 256
    block-count = 16
}}

file-resource rootfs.img {{
    host-path = "{rootfs}"
}}

task complete {{
    on-init {{
        uboot_clearenv(uboot-env)
        uboot_setenv(uboot-env, "nerves_fw_active", "a")
        uboot_setenv(uboot-env, "nerves_fw_validated", "1")
        uboot_setenv(uboot-env, "nerves_fw_devpath", "/dev/mmcblk0")
        uboot_setenv(uboot-env, "a.nerves_fw_platform", "test")
        uboot_setenv(uboot-env, "a.nerves_fw_architecture", "any")
        uboot_setenv(uboot-env, "a.nerves_fw_version", "{version}")
        uboot_setenv(uboot-env, "a.nerves_fw_uuid", "\\${{FWUP_META_UUID}}")
    }}
    on-resource rootfs.img {{ raw_write({SLOT_A_BLOCK}) }}
}}
"""
        + upgrade("a", "b", SLOT_A_BLOCK)
        + upgrade("b", "a", slot_b)
    )


@dataclass(frozen=True)
class Firmware:
    """One signed archive and what it holds."""

    path: Path
    rootfs: bytes
    uuid: str
    version: str
    slot_blocks: int

    @property
    def meta(self) -> dict[str, str]:
        """``firmware_meta`` of an update offer."""
        return {
            "uuid": self.uuid,
            "version": self.version,
            "product": "nhlink-update-tests",
            "platform": "test",
            "architecture": "any",
            "author": "nhlink tests",
            "description": "A/B image with a U-Boot environment",
            "misc": "",
            "vcs_identifier": "",
        }


def make_firmware(
    directory: Path,
    version: str,
    rootfs_size: int,
    *,
    slot_blocks: int | None = None,
    key: str = "a",
    rootfs: bytes | None = None,
    delta: bool = False,
) -> Firmware:
    """A signed archive whose rootfs is ``rootfs`` (default: ``rootfs_size`` random bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    rootfs = os.urandom(rootfs_size) if rootfs is None else rootfs
    rootfs_path = directory / f"rootfs-{version}.img"
    rootfs_path.write_bytes(rootfs)
    blocks = slot_blocks or max(2048, -(-rootfs_size // BLOCK) + 64)
    conf = directory / f"fw-{version}.conf"
    conf.write_text(conf_text(rootfs_path, version, blocks, delta=delta))
    archive = directory / f"fw-{version}.fw"
    signing_key = read_private_key_file(str(vectors_dir() / "keys" / f"testkey-{key}.priv"))
    created = create_archive(
        conf, archive, signing_key=signing_key, level=1, environ={"SOURCE_DATE_EPOCH": "1700000000"}
    )
    return Firmware(archive, rootfs, meta_uuid(created.meta_conf), version, blocks)


def install(image: Path, firmware: Firmware) -> None:
    """Make ``image`` a device running ``firmware`` in slot A (its ``complete`` task)."""
    image.unlink(missing_ok=True)
    frames = apply_file(firmware.path, image, "complete", [raw_public_key()])
    assert frames[-1].type == "OK", frames
    with open(image, "r+b") as f:  # room for slot B
        f.truncate(SLOT_A_BLOCK * BLOCK + 2 * firmware.slot_blocks * BLOCK)


def write_fw_env_config(directory: Path, image: Path) -> Path:
    path = directory / "fw_env.config"
    path.write_text(f"{image} 0x{ENV_OFFSET:x} 0x{ENV_SIZE:x}\n")
    return path


def read_env(image: Path) -> dict[str, str]:
    with open(image, "rb") as f:
        f.seek(ENV_OFFSET)
        block = f.read(ENV_SIZE)
    variables, _ = uboot_env_decode(block, False)
    return variables


def slot_digest(image: Path, firmware: Firmware, slot: str) -> str:
    """SHA-256 of the first ``len(rootfs)`` bytes of a slot."""
    block = SLOT_A_BLOCK if slot == "a" else SLOT_A_BLOCK + firmware.slot_blocks
    with open(image, "rb") as f:
        f.seek(block * BLOCK)
        data = f.read(len(firmware.rootfs))
    return hashlib.sha256(data).hexdigest()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
