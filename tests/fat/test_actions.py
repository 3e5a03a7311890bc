"""fat_* actions and requirements through the Engine: semantics, errors, and failure cleanup."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType

import pytest

import nhlink._native
from tests.conftest import backend_params
from tests.engine.conftest import make_fw, run
from tests.fat import helpers as h

PART, BLOCKS = 2048, 8192
MKFS = f"fat_mkfs({PART}, {BLOCKS})"


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> ModuleType:
    return nhlink._native.load(request.param)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes((PART + BLOCKS) * 512))
    return path


def _resource(name: str, data: bytes, length: str | None = None) -> str:
    digest = hashlib.blake2b(data, digest_size=32).hexdigest()
    return f'file-resource "{name}" {{\n length = {length or len(data)}\n blake2b-256 = "{digest}"\n}}\n'


def _apply(
    backend: ModuleType,
    image: Path,
    tasks: str,
    resources: dict[str, bytes] | None = None,
    **kw: str,
) -> tuple[str, str]:
    resources = resources or {}
    conf = "".join(_resource(n, d, kw.get(n)) for n, d in resources.items()) + tasks
    _, frames = run(backend, make_fw(conf, resources), destination=image, task="t")
    return frames[-1][0], frames[-1][2]


def _init(*calls: str) -> str:
    return "task t { on-init { " + " ".join(calls) + " } }\n"


def test_file_operations(backend: ModuleType, image: Path) -> None:
    data = b"x" * 1500
    tasks = (
        "task t {\n on-init { " + MKFS + f' fat_mkdir({PART}, "dir") fat_mkdir({PART}, "dir") }}\n'
        f' on-resource data.bin {{ fat_write({PART}, "dir/A Long Name.bin") }}\n'
        f' on-finish {{ fat_cp({PART}, "dir/A Long Name.bin", {PART}, "copy.bin")'
        f' fat_touch({PART}, "t.txt") fat_mv({PART}, "t.txt", "u.txt")'
        f' fat_attrib({PART}, "missing", "R") fat_rm({PART}, "missing") }}\n}}\n'
    )
    assert _apply(backend, image, tasks, {"data.bin": data}) == ("OK", "")
    files = h.files(image, PART)
    assert set(files) == {"/dir/A Long Name.bin", "/copy.bin", "/u.txt"}
    assert files["/copy.bin"][1] == 1500 and files["/u.txt"][1] == 0
    volume = h.open_volume(image, PART)
    entry = volume.lookup("DIR/a long name.BIN")  # names match case-insensitively
    assert entry is not None and volume.read_file(entry) == data


@pytest.mark.parametrize(
    ("calls", "message"),
    [
        (
            f'fat_touch({PART}, "a") fat_touch({PART}, "b") fat_mv({PART}, "a", "b")',
            "fat_mv: 'b' already exists",
        ),
        (f'fat_rm!({PART}, "nothing")', "fat_rm!: 'nothing' not found"),
        (f'fat_mkdir({PART}, "no/such/dir")', "fat_mkdir: FAT: no directory 'no'"),
        (f'fat_touch({PART}, "bad?name")', "invalid file name"),
        (f"fat_mkfs({PART})", "fat_mkfs requires a block offset and block count"),
    ],
)
def test_errors(backend: ModuleType, image: Path, calls: str, message: str) -> None:
    assert _apply(backend, image, _init(MKFS)) == ("OK", "")
    before = image.read_bytes()
    outcome, text = _apply(backend, image, _init(f'fat_touch({PART}, "new")', calls))
    assert outcome == "ER" and message in text
    assert image.read_bytes() == before  # nothing of the failed task reached the image


def test_one_argument_fat_write_uses_the_resource_name(backend: ModuleType, image: Path) -> None:
    tasks = "task t { on-init { " + MKFS + f" }} on-resource uEnv.txt {{ fat_write({PART}) }} }}\n"
    assert _apply(backend, image, tasks, {"uEnv.txt": b"bootcmd=run x\n"}) == ("OK", "")
    volume = h.open_volume(image, PART)
    entry = volume.lookup("uEnv.txt")
    assert entry is not None and entry.name == "uEnv.txt"
    assert volume.read_file(entry) == b"bootcmd=run x\n"


def test_mv_force_replaces(backend: ModuleType, image: Path) -> None:
    tasks = _init(
        MKFS, f'fat_touch({PART}, "a")', f'fat_touch({PART}, "b")', f'fat_mv!({PART}, "a", "b")'
    )
    assert _apply(backend, image, tasks) == ("OK", "")
    assert set(h.files(image, PART)) == {"/b"}


def test_sparse_resource_holes_are_zeros(backend: ModuleType, image: Path) -> None:
    assert _apply(backend, image, _init(MKFS)) == ("OK", "")
    data = b"A" * 700 + b"B" * 100
    tasks = f'task t {{ on-resource s {{ fat_write({PART}, "s.bin") }} }}\n'
    assert _apply(backend, image, tasks, {"s": data}, s="{700, 1000, 100, 300}") == ("OK", "")
    volume = h.open_volume(image, PART)
    entry = volume.lookup("s.bin")
    assert entry is not None
    assert volume.read_file(entry) == b"A" * 700 + bytes(1000) + b"B" * 100 + bytes(300)


def test_bad_digest_leaves_image_untouched(backend: ModuleType, image: Path) -> None:
    assert _apply(backend, image, _init(MKFS)) == ("OK", "")
    before = image.read_bytes()
    conf = _resource("k", b"other").replace(str(len(b"other")), "5") + (
        f'task t {{ on-init {{ fat_mkdir({PART}, "x") }} on-resource k {{ fat_write({PART}, "k") }} }}\n'
    )
    _, frames = run(backend, make_fw(conf, {"k": b"right"}), destination=image, task="t")
    assert frames[-1][0] == "ER" and "blake2b mismatch" in frames[-1][2]
    assert image.read_bytes() == before


def test_fat_requirements(backend: ModuleType, image: Path) -> None:
    setup = (
        "task t { on-resource c { fat_write("
        + str(PART)
        + ', "cfg.txt") } on-init { '
        + MKFS
        + " } }\n"
    )
    assert _apply(backend, image, setup, {"c": b"mode=tryboot\n"}) == ("OK", "")
    conf = (
        f'task t.missing {{ require-fat-file-exists({PART}, "nope") }}\n'
        f'task t.nomatch {{ require-fat-file-match({PART}, "cfg.txt", "mode=normal") }}\n'
        f'task t.match {{ require-fat-file-exists({PART}, "CFG.TXT")'
        f' require-fat-file-match({PART}, "cfg.txt", "tryboot") on-init {{ info("picked") }} }}\n'
    )
    engine, frames = run(backend, make_fw(conf), destination=image, task="t")
    assert frames[-1] == ("OK", 0, "") and engine.task_name == "t.match"
    blank = image.with_name("blank.img")
    blank.write_bytes(bytes(1 << 20))
    _, frames = run(backend, make_fw(conf), destination=blank, task="t")
    assert frames[-1][0] == "ER" and "Couldn't find applicable task" in frames[-1][2]
