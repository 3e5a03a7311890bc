"""U-Boot environment codec: golden CRCs, round trips, redundant form, errors."""

from __future__ import annotations

import json
import lzma
import struct
import zlib
from typing import Any

import pytest
from backend_support import Vectors

from nhlink.errors import UBootEnvCRCError, UBootEnvError

BLOCK = 512


def golden_envs(vectors: Vectors) -> list[dict[str, Any]]:
    """The decoded primary environments fwup left in the 02 images (valid ones)."""
    envs = []
    for step in vectors.vector("02_ab_uboot")["steps"]:
        env = step["expected"].get("uboot_env")
        if env and env["primary"]["crc_ok"]:
            envs.append(env["primary"])
    return envs


def env_size(vectors: Vectors) -> int:
    spec = json.loads((vectors.root / "spec.json").read_text())
    vector = next(v for v in spec["vectors"] if v["id"] == "02_ab_uboot")
    return int(vector["uboot_env"]["block_count"]) * BLOCK


def test_encoding_reproduces_fwups_environment_blocks(backend: Any, vectors: Vectors) -> None:
    envs = golden_envs(vectors)
    assert len(envs) >= 4
    size = env_size(vectors)
    for env in envs:
        block = backend.uboot_env_encode(env["vars"], size, False, 0)
        assert len(block) == size
        assert f"{struct.unpack_from('<I', block)[0]:08x}" == env["crc32"]
        # used_bytes: the variables plus the terminating extra NUL; 0xFF after that.
        assert block[4 + env["used_bytes"] :] == b"\xff" * (size - 4 - env["used_bytes"])
        assert block[4 + env["used_bytes"] - 2 : 4 + env["used_bytes"]] == b"\0\0"
        assert backend.uboot_env_decode(block, False) == (env["vars"], 0)


def test_blank_vector_image_has_no_valid_environment(backend: Any, vectors: Vectors) -> None:
    path = vectors.root / "expected" / "02_ab_uboot" / "upgrade_blank.img.xz"
    if not path.exists():
        pytest.skip("no 02 image in the vectors")
    image = lzma.decompress(path.read_bytes())
    blank = vectors.step("02_ab_uboot", "upgrade_blank")["expected"]["uboot_env"]["primary"]
    offset = blank["block_offset"] * BLOCK
    block = image[offset : offset + env_size(vectors)]
    with pytest.raises(UBootEnvCRCError) as caught:
        backend.uboot_env_decode(block, False)
    assert f"{caught.value.expected:08x}" == blank["crc32"]
    assert caught.value.got == zlib.crc32(block[4:])


def test_round_trip_sorted_bytewise(backend: Any) -> None:
    variables = {"b": "2", "a.x": "1", "B": "upper", "a": "", "é": "accent", "k": "v=with=equals"}
    block = backend.uboot_env_encode(variables, 4096, False, 0)
    body = block[4:].split(b"\0\0")[0]
    names = [pair.split(b"=")[0] for pair in body.split(b"\0")]
    assert names == sorted(name.encode() for name in variables)
    assert backend.uboot_env_decode(block, False) == (variables, 0)
    assert zlib.crc32(block[4:]) == struct.unpack_from("<I", block)[0]


def test_redundant_form_carries_flags(backend: Any) -> None:
    block = backend.uboot_env_encode({"x": "y"}, 1024, True, 7)
    assert block[4] == 7
    assert block[5:10] == b"x=y\0\0"
    assert zlib.crc32(block[5:]) == struct.unpack_from("<I", block)[0]
    assert backend.uboot_env_decode(block, True) == ({"x": "y"}, 7)
    with pytest.raises(UBootEnvCRCError):
        backend.uboot_env_decode(block, False)


def test_crc_error_carries_stored_and_computed(backend: Any) -> None:
    block = bytearray(backend.uboot_env_encode({"x": "y"}, 1024, False, 0))
    block[100] ^= 1
    with pytest.raises(UBootEnvCRCError) as caught:
        backend.uboot_env_decode(bytes(block), False)
    assert caught.value.expected == struct.unpack_from("<I", block)[0]
    assert caught.value.got == zlib.crc32(block[4:])


def test_room_limit_is_size_minus_two(backend: Any) -> None:
    size = 64
    # header 4 + "n=" + value + NUL must end at or before size - 2.
    fits = {"n": "v" * (size - 2 - 4 - 3)}
    block = backend.uboot_env_encode(fits, size, False, 0)
    assert block[-2:] == b"\0\xff"
    too_big = {"n": "v" * (size - 2 - 4 - 2)}
    with pytest.raises(UBootEnvError) as caught:
        backend.uboot_env_encode(too_big, size, False, 0)
    assert str(caught.value) == "Not enough room in U-boot environment"
    with pytest.raises(UBootEnvError, match="Not enough room"):
        backend.uboot_env_encode(fits, size, True, 0)  # one byte less room when redundant


@pytest.mark.parametrize("name", ["a=b", "a\0b", ""])
def test_bad_names_are_rejected(backend: Any, name: str) -> None:
    with pytest.raises(UBootEnvError):
        backend.uboot_env_encode({name: "x"}, 1024, False, 0)


def test_malformed_environment(backend: Any) -> None:
    body = b"novalue\0\0"
    block = bytearray(b"\xff" * 256)
    block[4 : 4 + len(body)] = body
    struct.pack_into("<I", block, 0, zlib.crc32(block[4:]))
    with pytest.raises(UBootEnvError, match="Invalid U-boot environment"):
        backend.uboot_env_decode(bytes(block), False)
