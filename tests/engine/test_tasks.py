"""Task selection and requirements."""

from __future__ import annotations

import lzma
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from nhlink.errors import TaskError
from nhlink.fwup.metaconf import Call, parse_meta_conf
from nhlink.fwup.primitives import BlockCacheAPI
from nhlink.fwup.tasks import RequirementContext, requirement_met, select_task
from nhlink.fwup.ubootenv import UBootEnv
from tests.helpers import vectors as v

CONF = parse_meta_conf(
    """
    uboot-environment env { block-offset = 8 block-count = 2 }
    task upgrade.a { require-uboot-variable(env, active, b) }
    task upgrade.b { require-uboot-variable(env, active, a) }
    task upgrade.fallback { }
    task other { require-partition-offset(1, 10240) }
    task legacy { require-partition1-offset = 10240 }
    """,
    {},
)


@pytest.fixture
def cache(tmp_path: Path, backend: ModuleType) -> Iterator[BlockCacheAPI]:
    image = tmp_path / "image"
    image.write_bytes(bytes(1 << 20))
    cache: BlockCacheAPI = backend.BlockCache(str(image))
    yield cache
    cache.close()


def _ctx(cache: BlockCacheAPI, backend: ModuleType, unsafe: bool = False) -> RequirementContext:
    return RequirementContext(CONF, cache, backend, unsafe)


def test_prefix_picks_the_first_task_whose_requirements_hold(
    cache: BlockCacheAPI, backend: ModuleType
) -> None:
    ctx = _ctx(cache, backend)
    # blank env: the CRC error makes require-uboot-variable "not met"
    assert select_task("upgrade", ctx).name == "upgrade.fallback"
    env = UBootEnv.lookup(CONF, "env", cache, backend)
    env.clearenv()
    env.setenv("active", "a")
    assert select_task("upgrade", ctx).name == "upgrade.b"
    env.setenv("active", "b")
    assert select_task("upgrade", ctx).name == "upgrade.a"
    assert select_task("upgrade.f", ctx).name == "upgrade.fallback"


def test_no_applicable_task(cache: BlockCacheAPI, backend: ModuleType) -> None:
    with pytest.raises(TaskError) as info:
        select_task("other", _ctx(cache, backend))
    assert str(info.value) == (
        "Couldn't find applicable task 'other'. "
        "If task is available, the task's requirements may not be met."
    )


def test_partition_offsets_read_the_mbr(cache: BlockCacheAPI, backend: ModuleType) -> None:
    image = lzma.decompress((v.vectors_dir() / "expected/04_mbr/complete.img.xz").read_bytes())
    ctx = _ctx(cache, backend)
    assert not requirement_met(Call("require-partition-offset", ("1", "10240")), ctx)
    cache.write(0, image[:512])
    assert requirement_met(Call("require-partition-offset", ("1", "10240")), ctx)
    assert requirement_met(Call("require-partition-offset", ("0", "2048")), ctx)
    assert not requirement_met(Call("require-partition-offset", ("0", "10240")), ctx)
    assert select_task("legacy", ctx).name == "legacy"


def test_execute_needs_unsafe(cache: BlockCacheAPI, backend: ModuleType) -> None:
    assert not requirement_met(Call("require-execute", ("true",)), _ctx(cache, backend))
    assert requirement_met(Call("require-execute", ("true",)), _ctx(cache, backend, True))
    assert not requirement_met(Call("require-execute", ("false",)), _ctx(cache, backend, True))


@pytest.mark.parametrize(
    "call",
    [
        Call("require-fat-file-exists", ("2048", "kernel.img")),
        Call("require-fat-file-match", ("2048", "kernel.img", "x")),
        Call("require-something-new", ()),
        Call("require-uboot-variable", ("no-such-env", "a", "b")),
        Call("require-uboot-variable", ("env", "too few")),
        Call("require-path-at-offset", ("/no/such/path", "0")),
        Call("require-path-on-device", ("/no/such/path", "/dev/null")),
    ],
)
def test_unsupported_or_failing_requirements_are_not_met(
    call: Call, cache: BlockCacheAPI, backend: ModuleType
) -> None:
    assert not requirement_met(call, _ctx(cache, backend, True))


def test_path_on_device_compares_device_numbers(
    tmp_path: Path, cache: BlockCacheAPI, backend: ModuleType
) -> None:
    # a regular file is no block device, so no path is "on" it
    assert not requirement_met(
        Call("require-path-on-device", (str(tmp_path), str(tmp_path / "image"))),
        _ctx(cache, backend),
    )
