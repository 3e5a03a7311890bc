"""Firmware metadata: fw_env.config parsing, plain and redundant U-Boot envs, key=value files."""

from __future__ import annotations

from pathlib import Path

import pytest

from nhlink._native import uboot_env_decode, uboot_env_encode
from nhlink.config import KVConfig
from nhlink.errors import ConfigError, UBootEnvError
from nhlink.kv import KV, EnvLocation, parse_fw_env_config
from tests.link.support import ACTIVE_FIRMWARE, ENV_OFFSET, ENV_SIZE, slot_env, write_env_image


def test_fw_env_config_formats() -> None:
    text = (
        "# MTD device name   Device offset   Env. size   Flash sector size  Sectors\n"
        "/dev/mmcblk0        0x2000          0x2000\n"
        "\n"
        "/dev/mmcblk0  16384 8192  512 16   # redundant copy\n"
    )
    assert parse_fw_env_config(text) == (
        EnvLocation("/dev/mmcblk0", 0x2000, 0x2000),
        EnvLocation("/dev/mmcblk0", 16384, 8192),
    )
    assert parse_fw_env_config("/dev/x 020000 0x100")[0].offset == 0o20000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no environment device line"),
        ("# only a comment\n", "no environment device line"),
        ("/dev/x 0x2000\n", "line 1: expected 'device offset size"),
        ("/dev/x zero 0x2000\n", "line 1: offset 'zero' is not a number"),
        ("/dev/x 0 4\n", "environment size 4 is too small"),
        ("/dev/x 0 0x2000\n/dev/x 0x2000 0x1000\n", "differ in size"),
        ("a 0 64\nb 0 64\nc 0 64\n", "more than two"),
    ],
)
def test_fw_env_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_fw_env_config(text, "fw_env.config")


def test_plain_env_active_slot_keys(tmp_path: Path) -> None:
    kv = KV.load(KVConfig(fw_env_config=str(write_env_image(tmp_path, slot_env("b")))))
    assert kv.active_slot == "b" and kv.inactive_slot == "a"
    assert kv.get_all_active() == ACTIVE_FIRMWARE
    assert kv.get("nerves_serial_number") == "SN-0042"
    assert kv.get_active("nerves_fw_version") == "0.1.0"
    assert kv.get("a.nerves_fw_version") == "0.0.9"
    assert kv.firmware_validated()  # no nerves_fw_validated at all
    assert not kv.firmware_auto_revert_detected()


def test_validation_flags(tmp_path: Path) -> None:
    env = slot_env("a", nerves_fw_validated="0")
    assert not KV(env).firmware_validated()
    env["a.nerves_fw_validated"] = "1"  # tryboot systems keep it per slot
    assert KV(env).firmware_validated()
    env.update({"b.nerves_fw_validated": "0", "b.nerves_fw_platform": "rpi4"})
    assert not KV(env).firmware_auto_revert_detected()  # no architecture: not bootable firmware
    env["b.nerves_fw_architecture"] = "arm"
    assert KV(env).firmware_auto_revert_detected()


def test_without_an_active_slot_unprefixed_firmware_keys_are_active() -> None:
    kv = KV({"nerves_fw_uuid": "u", "nerves_fw_devpath": "/dev/sda", "serial": "x", "a.k": "v"})
    assert kv.active_slot is None and kv.inactive_slot is None
    assert kv.get_all_active() == {"nerves_fw_uuid": "u"}


def _redundant(tmp_path: Path, flags: tuple[int, int]) -> KV:
    config = write_env_image(
        tmp_path, {"copy": "first"}, redundant_flags=flags, second={"copy": "second"}
    )
    return KV.load(KVConfig(fw_env_config=str(config)))


@pytest.mark.parametrize(
    ("flags", "current"),
    [
        ((5, 6), "second"),
        ((6, 5), "first"),
        ((7, 7), "first"),
        ((255, 0), "second"),  # the counter wraps
        ((0, 255), "first"),
        ((1, 129), "first"),  # a difference over 127 is "wrapped": primary first
    ],
)
def test_redundant_env_picks_the_newer_copy(
    tmp_path: Path, flags: tuple[int, int], current: str
) -> None:
    assert _redundant(tmp_path, flags).get("copy") == current


def test_redundant_env_falls_back_when_the_newer_copy_is_corrupt(tmp_path: Path) -> None:
    config = write_env_image(
        tmp_path, {"copy": "first"}, redundant_flags=(1, 2), second={"copy": "second"}
    )
    image = tmp_path / "disk.img"
    with open(image, "r+b") as disk:
        disk.seek(ENV_OFFSET + ENV_SIZE + 100)
        disk.write(b"corruption")
    assert KV.load(KVConfig(fw_env_config=str(config))).get("copy") == "first"


def test_put_writes_the_other_redundant_copy_with_flags_plus_one(tmp_path: Path) -> None:
    kv = _redundant(tmp_path, (9, 8))  # primary is current
    updated = kv.put({"copy": None, "nerves_fw_validated": "1"})
    assert updated.get_all() == {"nerves_fw_validated": "1"}
    image = (tmp_path / "disk.img").read_bytes()
    primary = uboot_env_decode(image[ENV_OFFSET : ENV_OFFSET + ENV_SIZE], True)
    second = uboot_env_decode(image[ENV_OFFSET + ENV_SIZE : ENV_OFFSET + 2 * ENV_SIZE], True)
    assert primary == ({"copy": "first"}, 9)
    assert second == ({"nerves_fw_validated": "1"}, 10)
    assert updated.reload().get_all() == {"nerves_fw_validated": "1"}
    assert updated.reload().put({"x": "y"}).reload().get_all() == {
        "nerves_fw_validated": "1",
        "x": "y",
    }
    again = (tmp_path / "disk.img").read_bytes()
    assert uboot_env_decode(again[ENV_OFFSET : ENV_OFFSET + ENV_SIZE], True)[1] == 11


def test_put_on_a_plain_env_rewrites_it_in_place(tmp_path: Path) -> None:
    kv = KV.load(KVConfig(fw_env_config=str(write_env_image(tmp_path, slot_env("a")))))
    kv.put({"nerves_serial_number": "SN-1"})
    block = (tmp_path / "disk.img").read_bytes()[ENV_OFFSET : ENV_OFFSET + ENV_SIZE]
    variables, flags = uboot_env_decode(block, False)
    assert variables["nerves_serial_number"] == "SN-1" and flags == 0
    assert variables["a.nerves_fw_uuid"] == ACTIVE_FIRMWARE["nerves_fw_uuid"]


def test_blank_env_is_an_error_unless_created(tmp_path: Path) -> None:
    image = tmp_path / "blank.img"
    image.write_bytes(b"\xff" * (ENV_OFFSET + 2 * ENV_SIZE))
    config = tmp_path / "fw_env.config"
    config.write_text(
        f"{image} {ENV_OFFSET} {ENV_SIZE}\n{image} {ENV_OFFSET + ENV_SIZE} {ENV_SIZE}\n"
    )
    with pytest.raises(UBootEnvError, match=r"^no valid U-Boot environment \(.*CRC32 mismatch"):
        KV.load(KVConfig(fw_env_config=str(config)))
    from nhlink.kv import UBootEnvStore

    store = UBootEnvStore.from_fw_env_config(config)
    with pytest.raises(UBootEnvError):
        KV({}, store).put({"a": "1"})
    KV({}, store).put({"a": "1"}, create=True)
    data = image.read_bytes()
    for offset in (ENV_OFFSET, ENV_OFFSET + ENV_SIZE):
        assert uboot_env_decode(data[offset : offset + ENV_SIZE], True) == ({"a": "1"}, 1)


def test_env_too_small_for_the_changes(tmp_path: Path) -> None:
    kv = KV.load(KVConfig(fw_env_config=str(write_env_image(tmp_path, {"a": "1"}))))
    with pytest.raises(UBootEnvError, match="Not enough room in U-boot environment"):
        kv.put({"big": "x" * ENV_SIZE})


def test_missing_device_and_short_device_are_one_line_errors(tmp_path: Path) -> None:
    config = tmp_path / "fw_env.config"
    config.write_text(f"{tmp_path / 'missing.img'} 0 8192\n")
    with pytest.raises(UBootEnvError, match=r"cannot read U-Boot environment .*missing\.img"):
        KV.load(KVConfig(fw_env_config=str(config)))
    short = tmp_path / "short.img"
    short.write_bytes(b"\0" * 100)
    config.write_text(f"{short} 0 8192\n")
    with pytest.raises(UBootEnvError, match="ends before the U-Boot environment at 0x0"):
        KV.load(KVConfig(fw_env_config=str(config)))


def test_key_value_file(tmp_path: Path) -> None:
    path = tmp_path / "kv.txt"
    path.write_text("# firmware\nnerves_fw_active=a\na.nerves_fw_uuid = 1234\n\nserial=SN=1\n")
    kv = KV.load(KVConfig(file=str(path)))
    assert kv.get_all() == {"nerves_fw_active": "a", "a.nerves_fw_uuid": "1234", "serial": "SN=1"}
    assert kv.get_all_active() == {"nerves_fw_uuid": "1234"}
    kv.put({"serial": None, "new": "v"})
    assert path.read_text() == "a.nerves_fw_uuid=1234\nnerves_fw_active=a\nnew=v\n"
    path.write_text("no equals sign\n")
    with pytest.raises(ConfigError, match="line 1: expected key=value"):
        KV.load(KVConfig(file=str(path)))
    with pytest.raises(ConfigError, match=r"nope\.txt"):
        KV.load(KVConfig(file=str(tmp_path / "nope.txt")))


def test_empty_kv_without_a_source() -> None:
    kv = KV.load(KVConfig())
    assert kv.get_all() == {} and kv.reload() is kv
    with pytest.raises(ConfigError, match="names no U-Boot environment"):
        kv.put({"a": "b"})


def test_encode_matches_what_kv_reads(tmp_path: Path) -> None:
    block = uboot_env_encode({"b": "2", "a": "1"}, 64, False, 0)
    image = tmp_path / "env.bin"
    image.write_bytes(block)
    config = tmp_path / "fw_env.config"
    config.write_text(f"{image} 0 64\n")
    assert KV.load(KVConfig(fw_env_config=str(config))).get_all() == {"a": "1", "b": "2"}
