"""mbr_write / gpt_write bytes against vector 04's images (made by fwup)."""

from __future__ import annotations

import lzma
import struct
import zipfile
import zlib

import pytest

from nhlink.errors import TaskError
from nhlink.fwup.metaconf import MetaConf, parse_meta_conf
from nhlink.fwup.partitions import gpt_blocks, mbr_blocks, mbr_partition_offset
from tests.helpers import vectors as v


@pytest.fixture(scope="module")
def conf() -> MetaConf:
    path = v.vectors_dir() / v.vector("04_mbr")["fw"]
    return parse_meta_conf(zipfile.ZipFile(path).read("meta.conf").decode(), {})


def _image(step: str) -> bytes:
    return lzma.decompress((v.vectors_dir() / f"expected/04_mbr/{step}.img.xz").read_bytes())


def _assert_blocks_in(image: bytes, blocks: list[tuple[int, bytes]]) -> None:
    for block, data in blocks:
        assert image[block * 512 : block * 512 + len(data)] == data, f"block {block}"


def test_mbr_with_bootstrap_signature_and_expand(conf: MetaConf) -> None:
    image = _image("complete")
    blocks = mbr_blocks(conf.mbrs["mbr-a"], len(image) // 512)
    assert [b for b, _ in blocks] == [0]
    _assert_blocks_in(image, blocks)
    # partition 3 (expand = true) grew to the end of the 16 MiB image
    assert struct.unpack_from("<II", blocks[0][1], 446 + 3 * 16 + 8) == (26624, 32768 - 26624)


def test_mbr_extended_partition_and_ebr_chain(conf: MetaConf) -> None:
    image = _image("complete_ext")
    blocks = mbr_blocks(conf.mbrs["mbr-ext"], len(image) // 512)
    assert [b for b, _ in blocks] == [0, 12288, 12289, 12290]
    _assert_blocks_in(image, blocks)


def test_gpt_primary_and_backup(conf: MetaConf) -> None:
    image = _image("complete_gpt")
    blocks = gpt_blocks(conf.gpts["my-gpt"], len(image) // 512)
    assert [(b, len(d)) for b, d in blocks] == [(0, 34 * 512), (32768 - 33, 33 * 512)]
    _assert_blocks_in(image, blocks)
    header = blocks[0][1][512:1024]
    (crc,) = struct.unpack_from("<I", header, 16)
    assert zlib.crc32(header[:16] + bytes(4) + header[20:92]) == crc


def test_gpt_boot_sets_attribute_bit_2_and_size_defaults() -> None:
    text = """gpt g {
        guid = "b443fbeb-2c93-481b-88b3-0ecb0aeba911"
        partition 0 { block-offset = 64 block-count = 100 type = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
                      guid = "5278721d-0089-4768-85df-b8f1b97e6684" name = "boot" boot = true expand = true }
    }"""
    gpt = parse_meta_conf(text, {}).gpts["g"]
    primary, backup = gpt_blocks(gpt, 0)  # unknown size: last partition end + 34
    entry = primary[1][1024:1152]
    first, last, flags = struct.unpack_from("<QQQ", entry, 32)
    assert (first, last, flags) == (64, 163, 4)
    assert backup[0] == 164 + 34 - 33
    assert entry[56:64] == "boot".encode("utf-16-le")


def test_partition_offset_reader(conf: MetaConf) -> None:
    image = _image("complete")
    assert mbr_partition_offset(image[:512], 1) == 10240
    with pytest.raises(TaskError, match="MBR signature missing"):
        mbr_partition_offset(bytes(512), 1)


@pytest.mark.parametrize(
    ("partitions", "message"),
    [
        ("partition 0 { block-offset = 10 block-count = 10 type = 0x83 }"
         "partition 1 { block-offset = 15 block-count = 10 type = 0x83 }", "overlap"),
        ("partition 1 { block-offset = 10 block-count = 10 type = 0xf }", "only partition 3"),
        ("partition 4 { block-offset = 10 block-count = 10 type = 0x83 }", "partition 3 must have extended"),
        ("partition 0 { block-offset = 10 type = 0x83 }", "block-count must be specified"),
        ("partition 0 { block-count = 10 type = 0x83 }", "block_offset is required"),
        ("partition 0 { block-offset = 1 block-count = 1 type = 300 }", "between 0 and 255"),
        ("partition 0 { block-offset = 1 block-count = 1 type = 1 expand = true }"
         "partition 1 { block-offset = 5 block-count = 1 type = 1 }", "expand"),
    ],
)  # fmt: skip
def test_mbr_definition_errors(partitions: str, message: str) -> None:
    mbr = parse_meta_conf(f"mbr m {{ {partitions} }}", {}).mbrs["m"]
    with pytest.raises(TaskError, match=message):
        mbr_blocks(mbr, 1000)
