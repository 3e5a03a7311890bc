"""file-resource handling: sparse maps, concatenation, assertions and names."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from nhlink.errors import MetaConfError
from nhlink.fwup.create import create_archive
from nhlink.fwup.create.resources import SPARSE_MAP_MAX_ENTRIES, file_resource
from tests.create.vector_resources import reported_layout, seeded_bytes, write_sparse

ENV = {"SOURCE_DATE_EPOCH": "1700000000"}
BLOCK = 65536


def _create(tmp_path: Path, resource_body: str) -> tuple[str, bytes]:
    """Create an archive with one resource 'r'; return (meta.conf, archived data)."""
    conf = tmp_path / "fwup.conf"
    conf.write_text(
        f"file-resource r {{\n{resource_body}\n}}\ntask t {{ on-resource r {{ raw_write(0) }} }}\n"
    )
    create_archive(conf, tmp_path / "out.fw", environ=ENV)
    with zipfile.ZipFile(tmp_path / "out.fw") as archive:
        assert archive.testzip() is None
        return archive.read("meta.conf").decode(), archive.read("data/r")


def _length_line(meta: str) -> str:
    return next(line for line in meta.splitlines() if line.startswith("length="))


def _digest_line(data: bytes) -> str:
    return "blake2b-256=" + hashlib.blake2b(data, digest_size=32).hexdigest()


@pytest.mark.usefixtures("sparse_files_supported")
@pytest.mark.parametrize(
    "layout",
    [
        [("hole", 2 * BLOCK), ("data", BLOCK), ("hole", BLOCK), ("data", 3 * BLOCK)],
        [("data", BLOCK), ("hole", 4 * BLOCK)],
        [("hole", 3 * BLOCK)],
    ],
    ids=["starts-with-hole", "ends-with-hole", "all-hole"],
)
def test_sparse_maps(tmp_path: Path, layout: list[tuple[str, int]]) -> None:
    data = write_sparse(tmp_path / "image.bin", "sparse", layout)
    meta, archived = _create(tmp_path, 'host-path = "image.bin"')
    expected = [length for _, length in layout]
    if layout[0][0] == "hole":
        expected.insert(0, 0)
    assert _length_line(meta) == "length={" + ",".join(map(str, expected)) + "}"
    assert archived == data
    assert _digest_line(data) in meta


@pytest.mark.usefixtures("sparse_files_supported")
def test_skip_holes_false_stores_the_zeros(tmp_path: Path) -> None:
    write_sparse(tmp_path / "image.bin", "sparse", [("data", BLOCK), ("hole", BLOCK)])
    meta, archived = _create(tmp_path, 'host-path = "image.bin"\nskip-holes = false')
    assert _length_line(meta) == f"length={2 * BLOCK}"
    assert archived == (tmp_path / "image.bin").read_bytes()
    assert archived[BLOCK:] == bytes(BLOCK)
    assert "skip-holes" not in meta


@pytest.mark.usefixtures("sparse_files_supported")
def test_long_sparse_maps_fold_the_rest_into_one_data_run(tmp_path: Path) -> None:
    runs = 140  # 140 data runs + 140 holes: more entries than fwup keeps
    layout = [("data", 4096), ("hole", 8192)] * runs
    write_sparse(tmp_path / "image.bin", "many", layout)
    if reported_layout(tmp_path / "image.bin") != layout:
        pytest.skip("the filesystem does not keep 4 KiB data runs and 8 KiB holes apart")
    resource = file_resource("r", [("image.bin", str(tmp_path / "image.bin"))], skip_holes=True)
    assert len(resource.sparse_map) == SPARSE_MAP_MAX_ENTRIES
    kept = SPARSE_MAP_MAX_ENTRIES - 1
    assert list(resource.sparse_map[:kept]) == [length for _, length in layout][:kept]
    assert resource.total_size == (tmp_path / "image.bin").stat().st_size
    content = (tmp_path / "image.bin").read_bytes()
    folded_start = sum(resource.sparse_map[:-1])
    assert b"".join(resource.iter_data()).endswith(content[folded_start:])

    meta, archived = _create(tmp_path, 'host-path = "image.bin"')
    assert _length_line(meta).count(",") == SPARSE_MAP_MAX_ENTRIES - 1
    assert _digest_line(archived) in meta
    assert len(archived) == resource.data_size


def test_host_paths_are_concatenated(tmp_path: Path) -> None:
    parts = [seeded_bytes(f"part{i}", size) for i, size in enumerate([1000, 0, 70000])]
    for i, part in enumerate(parts):
        (tmp_path / f"p{i}.bin").write_bytes(part)
    meta, archived = _create(tmp_path, 'host-path = "p0.bin;;p1.bin;p2.bin"')
    assert archived == b"".join(parts)
    assert _length_line(meta) == "length=71000"
    assert _digest_line(archived) in meta


def test_empty_file_and_contents(tmp_path: Path) -> None:
    (tmp_path / "empty.bin").write_bytes(b"")
    meta, archived = _create(tmp_path, 'host-path = "empty.bin"')
    assert archived == b""
    assert "length=" not in meta  # an empty map prints nothing, like fwup
    meta, archived = _create(tmp_path, 'contents = "line one\\nline ${X:-two}\\n"')
    assert archived == b"line one\nline two\n"
    assert _length_line(meta) == "length=18"
    assert "contents" not in meta


def test_size_assertions(tmp_path: Path) -> None:
    (tmp_path / "img.bin").write_bytes(bytes(1025))
    meta, _ = _create(tmp_path, 'host-path = "img.bin"\nassert-size-lte = 3\nassert-size-gte = 2')
    assert "assert" not in meta
    with pytest.raises(MetaConfError) as caught:
        _create(tmp_path, 'host-path = "img.bin"\nassert-size-lte = 2')
    assert str(caught.value) == (
        "file size assertion failed on 'img.bin'. Size is 1025 bytes. "
        "It must be <= 1024 bytes (2 blocks)"
    )
    with pytest.raises(MetaConfError) as caught:
        _create(tmp_path, 'host-path = "img.bin"\nassert-size-gte = 4')
    assert str(caught.value) == (
        "file size assertion failed on 'img.bin'. Size is 1025 bytes. "
        "It must be >= 2048 bytes (4 blocks)"
    )


def test_missing_host_file(tmp_path: Path) -> None:
    with pytest.raises(MetaConfError) as caught:
        _create(tmp_path, 'host-path = "missing.bin"')
    assert str(caught.value) == "can't open path 'missing.bin' in file-resource 'r'"
    assert not (tmp_path / "out.fw").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fwup.conf"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/meta.conf", "resources can't be named /meta.conf"),
        ("/", "resource name '/' can't end in a '/'"),
        ("/data/x", "use a normal resource name rather than specifying /data"),
        ("/data", "use a normal resource name rather than specifying /data"),
        ("dir/", "resource name 'dir/' can't end in a '/'"),
        ("", "resource name can't be empty"),
        ("x" * 507, f"resource name '{'x' * 507}' is too long"),
    ],
)
def test_bad_resource_names(tmp_path: Path, name: str, message: str) -> None:
    conf = tmp_path / "fwup.conf"
    conf.write_text(f'file-resource "{name}" {{ contents = "x" }}\n')
    with pytest.raises(MetaConfError) as caught:
        create_archive(conf, tmp_path / "out.fw", environ=ENV)
    assert str(caught.value) == message


def test_longest_resource_name_is_accepted(tmp_path: Path) -> None:
    conf = tmp_path / "fwup.conf"
    conf.write_text(f'file-resource "{"x" * 506}" {{ contents = "x" }}\n')
    create_archive(conf, tmp_path / "out.fw", environ=ENV)
    with zipfile.ZipFile(tmp_path / "out.fw") as archive:
        assert archive.namelist()[1] == "data/" + "x" * 506


def test_fwup_size_variable_and_bootstrap_code(tmp_path: Path) -> None:
    (tmp_path / "kernel.img").write_bytes(bytes(3000))
    (tmp_path / "boot.bin").write_bytes(seeded_bytes("boot", 500))
    conf = tmp_path / "fwup.conf"
    conf.write_text(
        'file-resource kernel.img { host-path = "kernel.img" }\n'
        'meta-misc = "${FWUP_SIZE_kernel_img}"\n'
        'mbr m { bootstrap-code-host-path = "boot.bin" }\n'
    )
    result = create_archive(conf, tmp_path / "out.fw", environ=ENV)
    meta = result.meta_conf.decode()
    assert "meta-misc=3000\n" in meta
    assert f"bootstrap-code={seeded_bytes('boot', 440).hex()}\n" in meta
    assert "host-path" not in meta

    (tmp_path / "boot.bin").write_bytes(bytes(439))
    with pytest.raises(MetaConfError, match="should be 440 bytes"):
        create_archive(conf, tmp_path / "out.fw", environ=ENV)


def test_source_date_epoch_sets_meta_conf_time(tmp_path: Path) -> None:
    conf = tmp_path / "fwup.conf"
    conf.write_text('file-resource r { contents = "x" }\n')
    create_archive(conf, tmp_path / "out.fw", environ={"SOURCE_DATE_EPOCH": "1234567890"})
    with zipfile.ZipFile(tmp_path / "out.fw") as archive:
        meta_info, resource_info = archive.infolist()
    assert meta_info.date_time == (2009, 2, 13, 23, 31, 30)
    assert resource_info.date_time == (1980, 1, 1, 0, 0, 0)
    assert os.stat(tmp_path / "out.fw").st_size > 0
