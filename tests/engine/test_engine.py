"""Engine behaviour beyond the golden vectors, on small archives made by Python zipfile."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from types import ModuleType

import pytest

from nhlink.fwup import Engine, Frame, apply_file
from tests.engine.conftest import blank_image, make_fw, run
from tests.helpers import vectors as v

PAYLOAD = bytes(range(256)) * 8  # 2048 bytes
NOISE = b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(2048))  # 64 KiB
HEAD = 'meta-product = "engine tests"\n'


def _resource(name: str, data: bytes, length: str | None = None) -> str:
    digest = hashlib.blake2b(data, digest_size=32).hexdigest()
    return f'file-resource "{name}" {{ length = {length or len(data)} blake2b-256 = "{digest}" }}\n'


def _conf(tasks: str, resources: dict[str, bytes] | None = None) -> str:
    files = "".join(_resource(n, d) for n, d in (resources or {"r": PAYLOAD}).items())
    return HEAD + files + tasks


def _texts(frames: list[Frame], kind: str) -> list[str]:
    return [f.text for f in frames if f.type == kind]


def _error(frames: list[Frame]) -> str:
    assert frames[-1].type == "ER", frames
    return frames[-1].text


def test_success_frames_and_image(tmp_path: Path, backend: ModuleType) -> None:
    image = blank_image(tmp_path / "img", 1 << 20)
    fw = make_fw(_conf("task complete { on-resource r { raw_write(4) } }"), {"r": PAYLOAD})
    engine, frames = run(backend, fw, destination=image, task="complete")
    assert engine.succeeded and engine.task_name == "complete"
    assert frames[0] == ("PR", 0, "") and frames[-2:] == [("PR", 100, ""), ("OK", 0, "")]
    data = image.read_bytes()
    assert data[2048 : 2048 + len(PAYLOAD)] == PAYLOAD and data[:2048] == bytes(2048)
    assert engine.feed(b"more") == [] and engine.finish() == []


def test_progress_range_is_scaled(tmp_path: Path, backend: ModuleType) -> None:
    image = blank_image(tmp_path / "img", 1 << 20)
    fw = make_fw(_conf("task complete { on-resource r { raw_write(4) } }"), {"r": PAYLOAD})
    _, frames = run(
        backend,
        fw,
        chunk=256,
        destination=image,
        task="complete",
        progress_low=10,
        progress_high=20,
    )
    progress = [f.code for f in frames if f.type == "PR"]
    assert progress[0] == 10 and progress[-1] == 20 and progress == sorted(progress)
    assert all(10 <= p < 20 for p in progress[:-1]) and len(progress) > 2


def test_bad_signature_leaves_the_destination_uncreated(
    tmp_path: Path, backend: ModuleType
) -> None:
    image = tmp_path / "not-created"
    fw = (v.vectors_dir() / v.vector("01_minimal_raw")["fw"]).read_bytes()
    key_b = base64.b64decode(v.key_base64("b"))
    engine, frames = run(backend, fw, destination=image, task="complete", public_keys=[key_b])
    assert not engine.succeeded and not image.exists()
    assert _error(frames) == "Firmware archive's meta.conf fails digital signature verification."
    assert frames == [("PR", 0, ""), frames[-1]]


@pytest.mark.parametrize(
    ("meta_conf", "message"),
    [
        ('meta-product = "unterminated\n', "meta.conf line 1: unterminated string"),
        ('require-fwup-version = "99.0.0"\n', "requires fwup version 99.0.0"),
        ("x=1\n", "Unexpected meta.conf size: 4"),
    ],
)
def test_meta_conf_failures_leave_the_destination_uncreated(
    meta_conf: str, message: str, tmp_path: Path, backend: ModuleType
) -> None:
    image = tmp_path / "not-created"
    _, frames = run(backend, make_fw(meta_conf), destination=image, task="complete")
    assert message in _error(frames) and not image.exists()


def test_meta_conf_must_come_first(tmp_path: Path, backend: ModuleType) -> None:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("data/r", PAYLOAD)
        archive.writestr("meta.conf", _conf("task t {}"))
    _, frames = run(backend, out.getvalue(), destination=tmp_path / "img", task="t")
    assert _error(frames) == "Expecting meta.conf to be at the beginning of the archive"


def test_truncated_archive(tmp_path: Path, backend: ModuleType) -> None:
    fw = (v.vectors_dir() / v.vector("01_minimal_raw")["fw"]).read_bytes()
    image = blank_image(tmp_path / "img", 4 << 20)
    _, frames = run(backend, fw[: len(fw) // 2], destination=image, task="complete")
    assert _error(frames) == "ZIP decompression failed (-5)"


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ("task t { on-init { frobnicate(1) } }", "Unknown function 'frobnicate'"),
        (
            "task t { on-resource r { fat_write(2048, r) } }",
            "fat_write: FAT: not a valid FAT filesystem (no boot signature)",
        ),
        ("task t { on-resource r { path_write(out) } }", "path_write requires --unsafe"),
        ("task t { on-init { execute(true) } }", "execute requires --unsafe"),
        ("task t { on-init { raw_write(0) } }", "raw_write only usable in on-resource"),
        (
            "task t { on-resource r { raw_write(8) raw_write(16) } }",
            "raw_write didn't write anything. Was it called twice in an on-resource for 'r'?",
        ),
        ("task t { on-resource r { raw_write(8) } on-resource s { raw_write(16) } }", "Resource s not found in archive"),
        ("task t { on-init { uboot_setenv(nope, a, b) } }", "uboot-environment 'nope' not found"),
        ("task t { on-init { raw_memset(0, 1, 256) } }", "raw_memset requires value to be between 0 and 255"),
        ("task t { on-init { error(\"stop here\") } }", "stop here"),
    ],
)  # fmt: skip
def test_task_errors(tasks: str, message: str, tmp_path: Path, backend: ModuleType) -> None:
    resources = {"r": PAYLOAD, "s": b"s-data"}
    conf = HEAD + _resource("r", PAYLOAD) + _resource("s", b"s-data") + tasks
    image = blank_image(tmp_path / "img", 1 << 20)
    fw = make_fw(conf, {"r": resources["r"]})
    engine, frames = run(backend, fw, destination=image, task="t")
    assert not engine.succeeded
    assert message in _error(frames)
    assert image.read_bytes() == bytes(1 << 20)


def test_on_error_runs_on_a_clean_cache(tmp_path: Path, backend: ModuleType) -> None:
    tasks = """task t {
        on-init { raw_memset(0, 1, 0x11) info(started) }
        on-resource r { raw_write(8) error("late failure") }
        on-finish { raw_memset(2, 1, 0x33) }
        on-error { raw_memset(1, 1, 0x22) info("cleaned up") bogus_action() }
    }"""
    image = blank_image(tmp_path / "img", 1 << 20)
    engine, frames = run(
        backend, make_fw(_conf(tasks), {"r": PAYLOAD}), destination=image, task="t"
    )
    assert not engine.succeeded
    assert [(f.type, f.text) for f in frames if f.type != "PR"] == [
        ("WN", "started"),
        ("WN", "cleaned up"),
        ("ER", "late failure"),
    ]
    data = image.read_bytes()
    assert data[:512] == bytes(512)  # cached on-init write was discarded
    assert data[512:1024] == b"\x22" * 512  # on-error's write was flushed
    assert data[1024:1536] == bytes(512)  # on-finish never ran
    assert data[4096 : 4096 + len(PAYLOAD)] == bytes(len(PAYLOAD))  # partial segment dropped


def test_actions_around_the_data_consumer_run_in_order(tmp_path: Path, backend: ModuleType) -> None:
    tasks = "task t { on-resource r { info(before) raw_write(8) info(after) } on-finish { info(done) } }"
    image = blank_image(tmp_path / "img", 1 << 20)
    fw = make_fw(_conf(tasks, {"r": NOISE}), {"r": NOISE})
    engine, frames = run(backend, fw, destination=image, task="t")
    assert engine.succeeded
    assert _texts(frames, "WN") == ["before", "after", "done"]
    before, after = frames.index(("WN", 0, "before")), frames.index(("WN", 0, "after"))
    # "after" waits for the end of the resource: the data's progress comes in between
    assert any(f.type == "PR" and 0 < f.code < 100 for f in frames[before:after])
    assert image.read_bytes()[4096 : 4096 + len(NOISE)] == NOISE


def test_size_and_digest_checks(tmp_path: Path, backend: ModuleType) -> None:
    image = blank_image(tmp_path / "img", 1 << 20)
    conf = HEAD + _resource("r", PAYLOAD[:-1] + b"X") + "task t { on-resource r { raw_write(8) } }"
    _, frames = run(backend, make_fw(conf, {"r": PAYLOAD}), destination=image, task="t")
    assert _error(frames) == "raw_write detected blake2b mismatch on 'r'"
    conf = (
        HEAD
        + _resource("r", PAYLOAD, str(len(PAYLOAD) + 10))
        + "task t { on-resource r { raw_write(8) } }"
    )
    _, frames = run(backend, make_fw(conf, {"r": PAYLOAD}), destination=image, task="t")
    assert "size mismatch on 'r'" in _error(frames) or "declared length" in _error(frames)


@pytest.mark.parametrize(
    ("source_offset", "error"),
    [
        (8, "delta source overlaps the raw_write target of 'r'"),
        (64, "VCDIFF: not a VCDIFF patch (bad magic)"),
    ],
)
def test_bad_delta_resources_fail_before_writing(
    tmp_path: Path, backend: ModuleType, source_offset: int, error: str
) -> None:
    image = blank_image(tmp_path / "img", 1 << 20)
    before = image.read_bytes()
    conf = (
        HEAD
        + _resource("r", PAYLOAD, "4096")  # the entry's size differs: it must be a patch
        + (
            f"task t {{ on-resource r {{ delta-source-raw-offset = {source_offset} "
            "delta-source-raw-count = 8 raw_write(8) } }"
        )
    )
    _, frames = run(backend, make_fw(conf, {"r": PAYLOAD}), destination=image, task="t")
    assert _error(frames) == error
    assert image.read_bytes() == before


def test_unsafe_path_and_pipe_writes(tmp_path: Path, backend: ModuleType) -> None:
    sparse = "{4, 4, 4, 3}"  # data, hole, data, hole
    data = b"aaaabbbb"
    conf = (
        HEAD
        + _resource("r", data, sparse)
        + _resource("p", PAYLOAD)
        + f"""task t {{
        on-resource r {{ path_write("{tmp_path / "sparse.bin"}") }}
        on-resource p {{ pipe_write("cat > '{tmp_path / "piped.bin"}'") }}
        on-finish {{ execute("echo ran > '{tmp_path / "executed"}'") reboot_param("0 tryboot") }}
    }}"""
    )
    image = blank_image(tmp_path / "img", 1 << 20)
    engine, frames = run(
        backend,
        make_fw(conf, {"r": data, "p": PAYLOAD}),
        destination=image,
        task="t",
        unsafe=True,
        reboot_param_path=str(tmp_path / "reboot-param"),
    )
    assert engine.succeeded, frames
    assert (tmp_path / "sparse.bin").read_bytes() == b"aaaa\0\0\0\0bbbb\0\0\0"
    assert (tmp_path / "piped.bin").read_bytes() == PAYLOAD
    assert (tmp_path / "executed").read_text() == "ran\n"
    assert (tmp_path / "reboot-param").read_text() == "0 tryboot"


def test_trim_and_memset_progress_units(tmp_path: Path, backend: ModuleType) -> None:
    tasks = "task t { on-init { raw_memset(0, 4, 1) trim(2048, 4096) raw_memset(8, 4, 2) } }"
    image = blank_image(tmp_path / "img", 4 << 20)
    _, frames = run(backend, make_fw(_conf(tasks)), destination=image, task="t")
    # units: 2048 + 16 + 2048 -> 49% after the first memset, 50% after trim, then
    # 100% clamped to 99 until the apply succeeded
    assert [f.code for f in frames if f.type == "PR"] == [0, 49, 50, 99, 100]
    assert image.read_bytes()[: 12 * 512] == b"\x01" * 2048 + bytes(2048) + b"\x02" * 2048


def test_apply_file(tmp_path: Path, backend: ModuleType) -> None:
    step = v.vector("01_minimal_raw")["steps"][0]
    image = tmp_path / "img"
    v.make_base_image(step["base_image"], image, {})
    frames = apply_file(
        v.vectors_dir() / v.vector("01_minimal_raw")["fw"],
        image,
        "complete",
        [base64.b64decode(v.key_base64("a"))],
        primitives=backend,
    )
    assert frames[-1] == ("OK", 0, "")
    assert hashlib.sha256(image.read_bytes()).hexdigest() == step["expected"]["image_sha256"]


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="mode"):
        Engine(mode="create")
    with pytest.raises(ValueError, match="destination and a task"):
        Engine(mode="apply", task="x")


def test_abort_runs_the_error_path(tmp_path: Path, backend: ModuleType) -> None:
    tasks = """task t { on-init { raw_memset(0, 1, 0x11) } on-resource r { raw_write(8) }
                        on-error { info(aborted) } }"""
    image = blank_image(tmp_path / "img", 1 << 20)
    fw = make_fw(_conf(tasks, {"r": NOISE}), {"r": NOISE})
    engine = Engine(mode="apply", destination=image, task="t", primitives=backend)
    frames = engine.feed(fw[: len(fw) // 2])  # on-init done, in the middle of the resource
    frames += engine.abort("Received EOF even though framing indicated more bytes")
    assert frames[-2:] == [
        ("WN", 0, "aborted"),
        ("ER", 0, "Received EOF even though framing indicated more bytes"),
    ]
    assert engine.done and not engine.succeeded and engine.abort("again") == []
    assert image.read_bytes()[:512] == bytes(512)


def test_metadata_key(backend: ModuleType) -> None:
    fw = make_fw(_conf("task t {}"))
    engine = Engine(mode="metadata", metadata_key="meta-product", primitives=backend)
    assert engine.feed(fw) == [("OK", 0, "engine tests\n")]
    engine = Engine(mode="metadata", metadata_key="meta-nope", primitives=backend)
    assert engine.feed(fw) == [("ER", 0, "Metadata key 'meta-nope' not found")]


@pytest.mark.parametrize("mode", ["verify", "list", "metadata"])
def test_newer_fwup_requirement_fails_every_mode(mode: str, backend: ModuleType) -> None:
    fw = make_fw('require-fwup-version = "1.17.0"\n' + _conf("task t {}"))
    frames = Engine(mode=mode, primitives=backend).feed(fw)
    assert frames[-1].type == "ER" and "requires fwup version 1.17.0" in frames[-1].text
    ok = make_fw('require-fwup-version = "1.16.0"\n' + _conf("task t {}"))
    assert Engine(mode=mode, primitives=backend).feed(ok)[-1].type == "OK"


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_a_finished_engine_is_freed_without_a_gc_pass(
    tmp_path: Path, backend: ModuleType, outcome: str
) -> None:
    import gc
    import weakref

    image = blank_image(tmp_path / "img", 1 << 20)
    task = "complete" if outcome == "success" else "failing"
    tasks = (
        "task complete { on-resource r { raw_write(4) } }\n"
        'task failing { on-resource r { raw_write(4) } on-finish { error("late") } }'
    )
    fw = make_fw(_conf(tasks), {"r": PAYLOAD})
    gc.disable()
    try:
        engine, frames = run(backend, fw, destination=image, task=task)
        assert frames[-1][0] == ("OK" if outcome == "success" else "ER")
        alive = weakref.ref(engine)
        del engine
        assert alive() is None  # reference counting alone freed it: no cycle through the engine
    finally:
        gc.enable()
