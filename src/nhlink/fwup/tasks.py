"""Task selection: the first task whose name starts with the prefix and whose requirements hold.

A requirement that errors (unreadable U-Boot env, missing MBR, ...) counts as
not met, as in fwup.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nhlink.errors import NHLinkError, TaskError
from nhlink.fwup.fat import FatSessions
from nhlink.fwup.metaconf import Call, MetaConf, Task, parse_int
from nhlink.fwup.partitions import BLOCK_SIZE, mbr_partition_offset
from nhlink.fwup.primitives import BlockCacheAPI, Primitives
from nhlink.fwup.ubootenv import UBootEnv

log = logging.getLogger("nhlink.fwup.tasks")

_DM_DEPTH = 3  # device-mapper levels followed by require-path-on-device
_SYS_DEV_BLOCK = Path("/sys/dev/block")


@dataclass(frozen=True, slots=True)
class RequirementContext:
    conf: MetaConf
    cache: BlockCacheAPI
    primitives: Primitives
    unsafe: bool = False


def _args(call: Call, count: int) -> tuple[str, ...]:
    if len(call.args) != count:
        raise TaskError(f"{call.name} requires {count} arguments")
    return call.args


def _uboot_variable(call: Call, ctx: RequirementContext) -> bool:
    env_name, name, value = _args(call, 3)
    return UBootEnv.lookup(ctx.conf, env_name, ctx.cache, ctx.primitives).get(name) == value


def _partition_offset(ctx: RequirementContext, index: int, offset: int) -> bool:
    return mbr_partition_offset(ctx.cache.read(0, BLOCK_SIZE), index) == offset


def _require_partition_offset(call: Call, ctx: RequirementContext) -> bool:
    index, offset = _args(call, 2)
    return _partition_offset(ctx, parse_int(index), parse_int(offset))


def _device_of(name_or_numbers: str) -> int | None:
    """``os.makedev`` of a ``major:minor`` string."""
    major, _, minor = name_or_numbers.strip().partition(":")
    return os.makedev(int(major), int(minor)) if minor else None


def _underlying_devices(dev: int, depth: int) -> set[int]:
    """``dev`` and the block devices below it through device-mapper ``slaves``."""
    found = {dev}
    if depth == 0:
        return found
    slaves = _SYS_DEV_BLOCK / f"{os.major(dev)}:{os.minor(dev)}" / "slaves"
    if slaves.is_dir():
        for slave in slaves.iterdir():
            numbers = _device_of((slave / "dev").read_text())
            if numbers is not None:
                found |= _underlying_devices(numbers, depth - 1)
    return found


def _require_path_on_device(call: Call, ctx: RequirementContext) -> bool:
    path, devnode = _args(call, 2)
    return os.stat(devnode).st_rdev in _underlying_devices(os.stat(path).st_dev, _DM_DEPTH)


def _require_path_at_offset(call: Call, ctx: RequirementContext) -> bool:
    path, offset = _args(call, 2)
    dev = os.stat(path).st_dev
    start = _SYS_DEV_BLOCK / f"{os.major(dev)}:{os.minor(dev)}" / "start"
    return int(start.read_text().strip()) == parse_int(offset)


def _require_execute(call: Call, ctx: RequirementContext) -> bool:
    (command,) = _args(call, 1)
    if not ctx.unsafe:
        log.debug("require-execute is not met without --unsafe")
        return False
    return subprocess.run(command, shell=True, check=False).returncode == 0


def _require_fat_file_exists(call: Call, ctx: RequirementContext) -> bool:
    offset, path = _args(call, 2)
    return FatSessions(ctx.cache).exists(parse_int(offset), path)


def _require_fat_file_match(call: Call, ctx: RequirementContext) -> bool:
    offset, path, pattern = _args(call, 3)
    return FatSessions(ctx.cache).contains(parse_int(offset), path, pattern)


_REQUIREMENTS: dict[str, Callable[[Call, RequirementContext], bool]] = {
    "require-uboot-variable": _uboot_variable,
    "require-partition-offset": _require_partition_offset,
    "require-path-on-device": _require_path_on_device,
    "require-path-at-offset": _require_path_at_offset,
    "require-execute": _require_execute,
    "require-fat-file-exists": _require_fat_file_exists,
    "require-fat-file-match": _require_fat_file_match,
}


def requirement_met(call: Call, ctx: RequirementContext) -> bool:
    """Whether one requirement holds; errors and unknown requirements count as not met."""
    check = _REQUIREMENTS.get(call.name)
    if check is None:
        log.debug("unknown requirement %s counts as not met", call.name)
        return False
    try:
        return check(call, ctx)
    except (NHLinkError, OSError, ValueError) as error:
        log.debug("%s%s not met: %s", call.name, call.args, error)
        return False


def task_applicable(task: Task, ctx: RequirementContext) -> bool:
    if task.require_partition1_offset is not None:
        try:
            if not _partition_offset(ctx, 1, task.require_partition1_offset):
                return False
        except (NHLinkError, OSError) as error:
            log.debug("require-partition1-offset not met: %s", error)
            return False
    return all(requirement_met(call, ctx) for call in task.requirements)


def select_task(prefix: str, ctx: RequirementContext) -> Task:
    """The first task (meta.conf order) named ``prefix...`` whose requirements all hold."""
    for task in ctx.conf.tasks:
        if task.name.startswith(prefix) and task_applicable(task, ctx):
            log.debug("selected task %s", task.name)
            return task
    raise TaskError(
        f"Couldn't find applicable task '{prefix}'. "
        "If task is available, the task's requirements may not be met."
    )
