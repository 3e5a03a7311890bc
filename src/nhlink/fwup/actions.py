"""The actions of fwup's event funlists, their progress units, and the resource data consumers.

An action is either *immediate* (``run`` does its work) or a *data consumer*
(raw_write, path_write, pipe_write, fat_write, ubi_volume_write): in an
``on-resource`` handler it chooses the ZipStream sink for the resource's data
and checks size and BLAKE2b-256 when the entry ends.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Protocol

from nhlink._native.events import EntryEnd
from nhlink.errors import MetaConfError, TaskError
from nhlink.fwup.fat import FatSessions, FileWriter, Volume
from nhlink.fwup.metaconf import Call, DeltaSource, FileResource, MetaConf, parse_int
from nhlink.fwup.partitions import BLOCK_SIZE, GPT_SIZE_BLOCKS, gpt_blocks, mbr_blocks
from nhlink.fwup.primitives import BlockCacheAPI, Primitives, ZipStreamAPI
from nhlink.fwup.ubootenv import UBootEnv

log = logging.getLogger("nhlink.fwup.actions")

_MEMSET_CHUNK = 1 << 20
_INT32_MAX = 0x7FFFFFFF
_REBOOT_PARAM_PATHS = ("/run/systemd/reboot-param", "/run/reboot-param")


@dataclass(slots=True)
class ActionContext:
    """What actions work with; ``resource`` is set inside an ``on-resource`` handler."""

    conf: MetaConf
    cache: BlockCacheAPI
    primitives: Primitives
    warn: Callable[[str], None]
    unsafe: bool = False
    reboot_param_path: str | None = None
    resource: FileResource | None = None
    fat: FatSessions | None = None
    delta: DeltaSource | None = None  # set while the current entry is an xdelta3 patch

    def fat_sessions(self) -> FatSessions:
        if self.fat is None:
            self.fat = FatSessions(self.cache)
        return self.fat

    def require_resource(self, call: Call) -> FileResource:
        if self.resource is None:
            raise TaskError(f"{call.name} only usable in on-resource")
        return self.resource


class DataConsumer(Protocol):
    """An action that takes a resource's data from the ZipStream."""

    def begin(self, zs: ZipStreamAPI) -> None:
        """Choose the sink (called right after EntryStart)."""

    def chunk(self, data: bytes) -> None:
        """Take one DataChunk (``chunks`` sink only)."""

    def progress(self, zs: ZipStreamAPI) -> int:
        """Units done so far for this resource."""

    def end(self, entry: EntryEnd) -> None:
        """Check size and digest once the entry's data is complete."""

    def abort(self) -> None:
        """Release what ``begin`` acquired after an error."""


Units = Callable[[Call, ActionContext], int]
Runner = Callable[[Call, ActionContext], None]
ConsumerFactory = Callable[[Call, ActionContext], DataConsumer]


@dataclass(frozen=True, slots=True)
class ActionSpec:
    units: Units
    run: Runner | None = None
    consumer: ConsumerFactory | None = None


# --------------------------------------------------------------------------- arguments


def _args(call: Call, count: int, usage: str) -> tuple[str, ...]:
    if len(call.args) != count:
        raise TaskError(usage)
    return call.args


def _uint(text: str, what: str, maximum: int | None = None) -> int:
    try:
        value = parse_int(text)
    except MetaConfError:
        value = -1
    if value < 0 or (maximum is not None and value > maximum):
        raise TaskError(what)
    return value


def _unsafe(call: Call, ctx: ActionContext) -> None:
    if not ctx.unsafe:
        raise TaskError(f"{call.name} requires --unsafe")


def _env(call: Call, ctx: ActionContext) -> UBootEnv:
    if not call.args:
        raise TaskError(f"{call.name} requires a uboot-environment name")
    return UBootEnv.lookup(ctx.conf, call.args[0], ctx.cache, ctx.primitives)


def _digest_matches(resource: FileResource, digest: bytes | None) -> bool:
    expected = resource.blake2b_256
    if expected is None or len(expected) != 64:
        raise TaskError(f"invalid blake2b-256 hash for '{resource.name}'")
    return digest is not None and digest.hex() == expected


# --------------------------------------------------------------------------- immediate actions


def _raw_memset(call: Call, ctx: ActionContext) -> None:
    offset, count, value = _memset_args(call)
    fill = bytes([value]) * min(count * BLOCK_SIZE, _MEMSET_CHUNK)
    position, end = offset * BLOCK_SIZE, (offset + count) * BLOCK_SIZE
    while position < end:
        piece = fill[: end - position]
        ctx.cache.write(position, piece, streamed=True)
        position += len(piece)


def _memset_args(call: Call) -> tuple[int, int, int]:
    offset, count, value = _args(call, 3, "raw_memset requires a block offset, count, and value")
    return (
        _uint(offset, "raw_memset requires a non-negative integer block offset"),
        _uint(count, "raw_memset requires a non-negative integer block count", _INT32_MAX // 512),
        _uint(value, "raw_memset requires value to be between 0 and 255", 255),
    )


def _trim_args(call: Call) -> tuple[int, int]:
    offset, count = _args(call, 2, "trim requires a block offset and count")
    return (
        _uint(offset, "trim requires a non-negative integer block offset"),
        _uint(count, "trim requires a non-negative integer block count"),
    )


def _trim(call: Call, ctx: ActionContext) -> None:
    offset, count = _trim_args(call)
    ctx.cache.trim(offset * BLOCK_SIZE, count * BLOCK_SIZE)


def _write_blocks(ctx: ActionContext, blocks: list[tuple[int, bytes]]) -> None:
    for block, data in blocks:
        ctx.cache.write(block * BLOCK_SIZE, data)


def _mbr_write(call: Call, ctx: ActionContext) -> None:
    (name,) = _args(call, 1, "mbr_write requires an mbr")
    mbr = ctx.conf.mbrs.get(name)
    if mbr is None:
        raise TaskError(f"mbr_write can't find mbr reference '{name}'")
    _write_blocks(ctx, mbr_blocks(mbr, ctx.cache.size // BLOCK_SIZE))


def _gpt_write(call: Call, ctx: ActionContext) -> None:
    (name,) = _args(call, 1, "gpt_write requires a gpt")
    gpt = ctx.conf.gpts.get(name)
    if gpt is None:
        raise TaskError(f"gpt_write can't find gpt reference '{name}'")
    _write_blocks(ctx, gpt_blocks(gpt, ctx.cache.size // BLOCK_SIZE))


def _uboot_clearenv(call: Call, ctx: ActionContext) -> None:
    _args(call, 1, "uboot_clearenv requires a uboot-environment reference")
    _env(call, ctx).clearenv()


def _uboot_recover(call: Call, ctx: ActionContext) -> None:
    _args(call, 1, "uboot_recover requires a uboot-environment reference")
    _env(call, ctx).recover()


def _uboot_setenv(call: Call, ctx: ActionContext) -> None:
    _, name, value = _args(
        call, 3, "uboot_setenv requires a uboot-environment reference, name and value"
    )
    _env(call, ctx).setenv(name, value)


def _uboot_unsetenv(call: Call, ctx: ActionContext) -> None:
    _, name = _args(
        call, 2, "uboot_unsetenv requires a uboot-environment reference and a variable name"
    )
    _env(call, ctx).unsetenv(name)


def _info(call: Call, ctx: ActionContext) -> None:
    (message,) = _args(call, 1, "info requires a message")
    ctx.warn(message)


def _error(call: Call, ctx: ActionContext) -> None:
    (message,) = _args(call, 1, "error requires a message")
    raise TaskError(message)


def _reboot_param(call: Call, ctx: ActionContext) -> None:
    (param,) = _args(call, 1, "reboot_param requires a parameter")
    path = ctx.reboot_param_path
    if path is None:
        path = _REBOOT_PARAM_PATHS[0 if os.path.isdir("/run/systemd") else 1]
    with open(path, "w", encoding="utf-8") as f:
        f.write(param)


def _execute(call: Call, ctx: ActionContext) -> None:
    (command,) = _args(call, 1, "execute requires a command")
    _unsafe(call, ctx)
    status = subprocess.run(command, shell=True, check=False).returncode
    if status != 0:
        raise TaskError(f"execute '{command}' failed with exit status {status}")


def _fat_block(call: Call) -> int:
    return _uint(call.args[0], f"{call.name} requires a non-negative integer block offset")


def _fat_call(call: Call, run: Callable[[FatSessions], None]) -> Callable[[FatSessions], None]:
    """``run`` with FAT errors reported under the action's name."""

    def guarded(sessions: FatSessions) -> None:
        try:
            run(sessions)
        except TaskError as error:
            text = str(error)
            raise TaskError(
                text if text.startswith(call.name) else f"{call.name}: {text}"
            ) from None

    return guarded


def _fat_action(call: Call, ctx: ActionContext) -> None:
    name, args = call.name, call.args
    usage = {
        "fat_mkfs": (2, "fat_mkfs requires a block offset and block count"),
        "fat_setlabel": (2, "fat_setlabel requires a block offset and name"),
        "fat_mkdir": (2, "fat_mkdir requires a block offset and directory name"),
        "fat_touch": (2, "fat_touch requires a block offset and filename"),
        "fat_rm": (2, "fat_rm requires a block offset and filename"),
        "fat_rm!": (2, "fat_rm! requires a block offset and filename"),
        "fat_mv": (3, "fat_mv requires a block offset, old filename, new filename"),
        "fat_mv!": (3, "fat_mv! requires a block offset, old filename, new filename"),
        "fat_attrib": (3, "fat_attrib requires a block offset, filename, and attributes"),
    }
    if name == "fat_cp":
        if len(args) not in (3, 4):
            raise TaskError("fat_cp requires a block offset, from filename, and to filename")
    else:
        _args(call, *usage[name])
    block = _fat_block(call)
    runners: dict[str, Callable[[FatSessions], None]] = {
        "fat_mkfs": lambda s: s.mkfs(block, _uint(args[1], "fat_mkfs requires a block count")),
        "fat_setlabel": lambda s: s.setlabel(block, args[1]),
        "fat_mkdir": lambda s: s.mkdir(block, args[1]),
        "fat_touch": lambda s: s.touch(block, args[1]),
        "fat_rm": lambda s: s.rm(block, args[1], must_exist=False),
        "fat_rm!": lambda s: s.rm(block, args[1], must_exist=True),
        "fat_mv": lambda s: s.mv(block, args[1], args[2], force=False),
        "fat_mv!": lambda s: s.mv(block, args[1], args[2], force=True),
        "fat_attrib": lambda s: s.attrib(block, args[1], args[2]),
        "fat_cp": lambda s: (
            s.copy(block, args[1], block, args[2])
            if len(args) == 3
            else s.copy(block, args[1], _uint(args[2], "fat_cp requires a block offset"), args[3])
        ),
    }
    try:
        _fat_call(call, runners[name])(ctx.fat_sessions())
    except TaskError as error:
        if name != "fat_attrib":
            raise
        log.info("ignoring fat_attrib failure: %s", error)  # fwup ignores its result too


# --------------------------------------------------------------------------- data consumers


class RawWrite:
    """raw_write(offset): the ZipStream writes the data into the block cache itself."""

    def __init__(self, call: Call, ctx: ActionContext) -> None:
        if not call.args:
            raise TaskError("raw_write requires a block offset")
        if len(call.args) > 1:
            raise TaskError("raw_write with cipher/secret options is not supported yet")
        self.offset = _uint(call.args[0], "raw_write requires a non-negative integer block offset")
        self.resource = ctx.require_resource(call)
        self.cache = ctx.cache
        _digest_matches(self.resource, None)  # validates the hash up front
        self._start = 0

    def begin(self, zs: ZipStreamAPI) -> None:
        self._start = zs.units
        resource = self.resource
        zs.sink_raw_write(
            self.cache, self.offset * BLOCK_SIZE, resource.sparse_map, resource.data_size
        )

    def chunk(self, data: bytes) -> None:
        raise RuntimeError("raw_write does not take DataChunks")

    def progress(self, zs: ZipStreamAPI) -> int:
        return zs.units - self._start

    def end(self, entry: EntryEnd) -> None:
        name, expected = self.resource.name, self.resource.data_size
        if entry.size != expected:
            raise TaskError(
                f"raw_write detected size mismatch on '{name}' (expected {expected}, got {entry.size})"
            )
        if not _digest_matches(self.resource, entry.blake2b):
            raise TaskError(f"raw_write detected blake2b mismatch on '{name}'")

    def abort(self) -> None:
        pass


def _placements(
    length_map: tuple[int, ...], position: int, data: bytes
) -> Iterator[tuple[int, bytes]]:
    """Where bytes at ``position`` of the concatenated data runs go in the full resource."""
    data_start = file_start = 0
    for index, run in enumerate(length_map):
        if index % 2 == 0 and data:
            run_end = data_start + run
            if position < run_end:
                take = min(len(data), run_end - position)
                yield file_start + position - data_start, data[:take]
                data, position = data[take:], position + take
            data_start = run_end
        file_start += run
    if data:  # beyond the declared runs: appended; the size check reports it
        yield file_start + position - data_start, data


class _StreamingConsumer:
    """A consumer fed through the ``chunks`` sink that places data runs itself."""

    name = ""

    def __init__(self, call: Call, ctx: ActionContext) -> None:
        _unsafe(call, ctx)
        self.resource = ctx.require_resource(call)
        _digest_matches(self.resource, None)
        self.position = 0
        self.units = 0

    def begin(self, zs: ZipStreamAPI) -> None:
        zs.sink_chunks()

    def chunk(self, data: bytes) -> None:
        for offset, piece in _placements(self.resource.length_map, self.position, data):
            self.place(offset, piece)
        self.position += len(data)
        self.units += len(data)

    def place(self, offset: int, data: bytes) -> None:
        raise NotImplementedError

    def progress(self, zs: ZipStreamAPI) -> int:
        return self.units

    def check(self, entry: EntryEnd) -> None:
        name, expected = self.resource.name, self.resource.data_size
        if entry.size != expected:
            raise TaskError(
                f"{self.name} detected size mismatch on '{name}' (expected {expected}, got {entry.size})"
            )
        if not _digest_matches(self.resource, entry.blake2b):
            raise TaskError(f"{self.name} detected blake2b mismatch on '{name}'")

    def end(self, entry: EntryEnd) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        pass


class PathWrite(_StreamingConsumer):
    """path_write(path): the resource into a host file (holes skipped); needs --unsafe."""

    name = "path_write"

    def __init__(self, call: Call, ctx: ActionContext) -> None:
        (path,) = _args(call, 1, "path_write requires a path")
        super().__init__(call, ctx)
        self.file: IO[bytes] = open(path, "wb")  # noqa: SIM115 (closed in end/abort)

    def place(self, offset: int, data: bytes) -> None:
        self.file.seek(offset)
        self.file.write(data)

    def end(self, entry: EntryEnd) -> None:
        try:
            self.check(entry)
            self.file.truncate(self.resource.total_size)
        finally:
            self.file.close()

    def abort(self) -> None:
        self.file.close()


class PipeWrite(_StreamingConsumer):
    """pipe_write(command): the resource (holes as zeros) into a shell command; needs --unsafe."""

    name = "pipe_write"

    def __init__(self, call: Call, ctx: ActionContext) -> None:
        (self.command,) = _args(call, 1, "pipe_write requires a command")
        super().__init__(call, ctx)
        self.process = subprocess.Popen(self.command, shell=True, stdin=subprocess.PIPE)
        self.written = 0

    def _zeros(self, count: int) -> None:
        assert self.process.stdin is not None
        self.written += count
        while count > 0:
            piece = min(count, _MEMSET_CHUNK)
            self.process.stdin.write(bytes(piece))
            count -= piece

    def place(self, offset: int, data: bytes) -> None:
        assert self.process.stdin is not None
        if offset > self.written:
            self._zeros(offset - self.written)
        self.process.stdin.write(data)
        self.written += len(data)

    def end(self, entry: EntryEnd) -> None:
        assert self.process.stdin is not None
        try:
            self.check(entry)
            if self.resource.total_size > self.written:
                self._zeros(self.resource.total_size - self.written)
        finally:
            self.process.stdin.close()
            status = self.process.wait()
        if status != 0:
            raise TaskError(f"pipe_write '{self.command}' failed with exit status {status}")

    def abort(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.kill()
        self.process.wait()


class FatWrite:
    """fat_write(offset[, file]): the resource (holes as zeros) into a file of a FAT filesystem."""

    def __init__(self, call: Call, ctx: ActionContext) -> None:
        if len(call.args) not in (1, 2):
            raise TaskError("fat_write requires a block offset and destination filename")
        block = _fat_block(call)
        self.resource = ctx.require_resource(call)
        _digest_matches(self.resource, None)
        self.path = call.args[1] if len(call.args) == 2 else self.resource.name
        self.sessions = ctx.fat_sessions()
        self.sparse = len(self.resource.length_map) > 1
        self.data_position = 0
        opened: list[tuple[Volume, FileWriter]] = []
        _fat_call(
            call,
            lambda s: opened.append(s.write_file(block, self.path, self.resource.total_size)),
        )(self.sessions)
        self.volume, self.writer = opened[0]

    def begin(self, zs: ZipStreamAPI) -> None:
        zs.sink_chunks()

    def chunk(self, data: bytes) -> None:
        if not self.sparse:
            self.writer.feed(data)
            return
        writer = self.writer
        for offset, piece in _placements(self.resource.length_map, self.data_position, data):
            if offset > writer.position:
                writer.zeros(offset - writer.position)
            writer.feed(piece)
        self.data_position += len(data)

    def progress(self, zs: ZipStreamAPI) -> int:
        return self.writer.position

    def end(self, entry: EntryEnd) -> None:
        name, expected = self.resource.name, self.resource.data_size
        if entry.size != expected:
            raise TaskError(
                f"fat_write detected size mismatch on '{name}' (expected {expected}, got {entry.size})"
            )
        if not _digest_matches(self.resource, entry.blake2b):
            raise TaskError(f"fat_write detected blake2b mismatch on '{name}'")
        self.sessions.finish_file(self.volume, self.writer)

    def abort(self) -> None:
        pass


def _unsupported_consumer(call: Call, ctx: ActionContext) -> DataConsumer:
    ctx.require_resource(call)
    raise TaskError(f"{call.name} is not supported yet")


# --------------------------------------------------------------------------- the table


def _fixed(units: int) -> Units:
    return lambda call, ctx: units


def _data_units(call: Call, ctx: ActionContext) -> int:
    return ctx.require_resource(call).data_size


def _full_units(call: Call, ctx: ActionContext) -> int:
    return max(ctx.require_resource(call).total_size, 1)


def _env_units(call: Call, ctx: ActionContext) -> int:
    return _env(call, ctx).units


ACTIONS: dict[str, ActionSpec] = {
    "raw_write": ActionSpec(_data_units, consumer=RawWrite),
    "raw_memset": ActionSpec(lambda c, x: _memset_args(c)[1] * BLOCK_SIZE, _raw_memset),
    "trim": ActionSpec(lambda c, x: _trim_args(c)[1] // 256, _trim),
    "mbr_write": ActionSpec(_fixed(BLOCK_SIZE), _mbr_write),
    "gpt_write": ActionSpec(_fixed(2 * GPT_SIZE_BLOCKS * BLOCK_SIZE), _gpt_write),
    "uboot_clearenv": ActionSpec(_env_units, _uboot_clearenv),
    "uboot_setenv": ActionSpec(_env_units, _uboot_setenv),
    "uboot_unsetenv": ActionSpec(_env_units, _uboot_unsetenv),
    "uboot_recover": ActionSpec(_env_units, _uboot_recover),
    "info": ActionSpec(_fixed(0), _info),
    "error": ActionSpec(_fixed(0), _error),
    "reboot_param": ActionSpec(_fixed(BLOCK_SIZE), _reboot_param),
    "execute": ActionSpec(_fixed(BLOCK_SIZE), _execute),
    "path_write": ActionSpec(_data_units, consumer=PathWrite),
    "pipe_write": ActionSpec(_full_units, consumer=PipeWrite),
    "fat_write": ActionSpec(_full_units, consumer=FatWrite),
    "ubi_volume_write": ActionSpec(_full_units, consumer=_unsupported_consumer),
}
for _name in (
    "fat_mkfs", "fat_setlabel", "fat_mkdir", "fat_touch", "fat_cp",
    "fat_mv", "fat_mv!", "fat_rm", "fat_rm!", "fat_attrib",
):  # fmt: skip
    ACTIONS[_name] = ActionSpec(_fixed(BLOCK_SIZE), _fat_action)


def lookup(call: Call) -> ActionSpec:
    spec = ACTIONS.get(call.name)
    if spec is None:
        raise TaskError(f"Unknown function '{call.name}'")
    return spec


def units(call: Call, ctx: ActionContext) -> int:
    """Progress units ``call`` adds to the task's total."""
    return lookup(call).units(call, ctx)


def is_consumer(call: Call) -> bool:
    return lookup(call).consumer is not None


def run(call: Call, ctx: ActionContext) -> None:
    """Run an immediate action (a data consumer here is an error, as outside on-resource)."""
    spec = lookup(call)
    if spec.run is None:
        resource = ctx.require_resource(call).name
        hint = " Try fat_cp instead." if call.name == "fat_write" else ""
        raise TaskError(
            f"{call.name} didn't write anything. Was it called twice in an on-resource for '{resource}'?{hint}"
        )
    log.debug("running %s%s", call.name, call.args)
    spec.run(call, ctx)


def patch_delta(
    delta: DeltaSource | None, entry_size: int | None, resource: FileResource
) -> DeltaSource | None:
    """``delta`` when the entry is an xdelta3 patch: fwup's rule is a handler with a delta
    source and an entry whose size (known from its local header) differs from ``length``."""
    if delta is None or entry_size is None or entry_size == resource.data_size:
        return None
    return delta


def open_consumer(call: Call, ctx: ActionContext) -> DataConsumer:
    """Prepare the data consumer ``call`` for the current resource (a patch decoder when ``ctx.delta``)."""
    spec = lookup(call)
    factory = spec.consumer
    assert factory is not None
    log.debug("consuming %s with %s%s", ctx.resource and ctx.resource.name, call.name, call.args)
    if ctx.delta is not None:
        from nhlink.fwup.delta import DeltaConsumer  # delta builds on this module

        return DeltaConsumer(call, ctx, lambda: factory(call, ctx), ctx.delta)
    return factory(call, ctx)
