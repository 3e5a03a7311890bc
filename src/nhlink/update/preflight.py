"""Preflight checks before the first firmware byte (sans-I/O; the fetching is in
:mod:`nhlink.aio.preflight`).

From the archive head (``meta.conf.ed25519`` and ``meta.conf``, read with a
Range request) and what the device knows, decide whether the download is
worth starting: the signature verifies with the configured keys, a task
applies to the destination (selected the way the engine selects it), the
applier can run every action the task uses, the task writes nothing of the
partition the running root filesystem is on, and a block-device destination
is large enough. Each failure is a :class:`PreflightError` with a reason code
of :mod:`nhlink.update.reasons`. A local clock far from the server's ``Date``
is only a warning (:func:`clock_warning`).
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import os
import stat
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from nhlink._native.events import EntryEnd, EntryStart
from nhlink.errors import MetaConfError, NHLinkError, TaskError
from nhlink.fwup import actions
from nhlink.fwup.engine import (
    META_CONF_ENTRY,
    META_CONF_MAX,
    META_CONF_MIN,
    SIGNATURE_ENTRY,
    SIGNATURE_SIZE,
    check_fwup_version,
)
from nhlink.fwup.identity import meta_nickname, meta_uuid
from nhlink.fwup.metaconf import Call, MetaConf, Task, parse_int, parse_meta_conf
from nhlink.fwup.partitions import BLOCK_SIZE, gpt_blocks, mbr_blocks
from nhlink.fwup.primitives import Primitives
from nhlink.fwup.tasks import RequirementContext, select_task, task_applicable
from nhlink.update.errors import UpdateError

logger = logging.getLogger("nhlink.update.preflight")

CLOCK_TOLERANCE = 24 * 3600.0
"""Seconds the local clock may differ from the server's ``Date`` before a warning."""
UNSAFE_ACTIONS = frozenset({"path_write", "pipe_write", "execute"})
"""Actions the applier runs only with ``--unsafe``."""
NOT_IMPLEMENTED = frozenset({"ubi_volume_write"})
"""Actions the built-in engine knows by name but cannot run yet."""
HEAD_LIMIT = 128 * 1024
"""Bytes of the archive head read at most to find meta.conf (it is under 50000)."""
DECIDABLE_REQUIREMENTS = frozenset(
    {
        "require-uboot-variable",
        "require-partition-offset",
        "require-path-on-device",
        "require-path-at-offset",
        "require-fat-file-exists",
        "require-fat-file-match",
    }
)
"""The requirements :mod:`nhlink.fwup.tasks` evaluates, less ``require-execute``: what
preflight decides for an external fwup (which runs require-execute itself)."""
SYSFS = "/sys"
_NOT_FIRST = "Expecting meta.conf to be at the beginning of the archive"


class PreflightError(UpdateError):
    """A preflight check failed; ``code`` says which (``preflight:<kind>``, ``clock``, ...)."""

    code = "preflight:archive"


@dataclass(frozen=True, slots=True)
class ArchiveHead:
    """The signature entry (if any) and meta.conf, as the archive starts."""

    signature: bytes | None
    meta_conf: bytes


class HeadReader:
    """Push parser for the archive head: feed bytes from offset 0 until :attr:`head` is set.

    Uses the backend's ZipStream (the same parser as the engine), collecting
    only the first one or two entries; raises :class:`PreflightError` when the
    archive does not start the way the engine requires.
    """

    def __init__(self, primitives: Primitives | None = None) -> None:
        self._primitives = primitives if primitives is not None else _default_primitives()
        self._zs = self._primitives.ZipStream()
        self._signature: bytes | None = None
        self._expect = "first"
        self.head: ArchiveHead | None = None
        self.consumed = 0

    def feed(self, data: bytes) -> ArchiveHead | None:
        """Take the next bytes; returns the head once meta.conf is complete."""
        view = memoryview(data)
        try:
            while self.head is None:
                consumed, event = self._zs.feed(view)
                self.consumed += consumed
                view = view[consumed:]
                if event is None:
                    break
                self._handle(event)
        except PreflightError:
            self.close()
            raise
        except NHLinkError as exc:
            self.close()
            raise PreflightError(f"archive head: {exc}") from None
        if self.head is not None:
            self.close()
        return self.head

    def _handle(self, event: object) -> None:
        if isinstance(event, EntryStart):
            if self._expect == "first" and event.name == SIGNATURE_ENTRY:
                if event.size is not None and event.size != SIGNATURE_SIZE:
                    raise PreflightError(
                        f"Unexpected meta.conf.ed25519 size: {event.size}", code="signature"
                    )
                self._zs.sink_collect(SIGNATURE_SIZE)
            elif self._expect in ("first", "meta") and event.name == META_CONF_ENTRY:
                self._zs.sink_collect(META_CONF_MAX - 1)
            else:
                raise PreflightError(f"archive head: {_NOT_FIRST}")
        elif isinstance(event, EntryEnd):
            data = event.data or b""
            if event.name == SIGNATURE_ENTRY:
                if len(data) != SIGNATURE_SIZE:
                    raise PreflightError(
                        f"Unexpected meta.conf.ed25519 size: {len(data)}", code="signature"
                    )
                self._signature = data
                self._expect = "meta"
            else:
                if not META_CONF_MIN <= len(data) < META_CONF_MAX:
                    raise PreflightError(f"archive head: Unexpected meta.conf size: {len(data)}")
                self.head = ArchiveHead(self._signature, data)
        else:  # ArchiveEnd before meta.conf
            raise PreflightError(f"archive head: {_NOT_FIRST}")

    def close(self) -> None:
        """Release the parser (idempotent)."""
        if self._expect != "closed":
            self._expect = "closed"
            self._zs.close()


def _default_primitives() -> Primitives:
    import nhlink._native

    return cast(Primitives, nhlink._native)


# ------------------------------------------------------------------------- the archive


def check_signature(head: ArchiveHead, keys: Sequence[bytes], primitives: Primitives) -> None:
    """The engine's signature rule: with keys, meta.conf must verify with one of them."""
    if head.signature is None:
        raise PreflightError("Expecting signed firmware archive.", code="signature")
    if not any(primitives.verify_ed25519(head.signature, head.meta_conf, k) for k in keys):
        raise PreflightError(
            "Firmware archive's meta.conf fails digital signature verification.",
            code="signature",
        )


def parse_head(head: ArchiveHead, environ: Mapping[str, str], *, check_version: bool) -> MetaConf:
    """meta.conf parsed as the engine parses it (``${FWUP_META_UUID}`` etc. expanded)."""
    env = dict(environ)
    env["FWUP_META_UUID"] = meta_uuid(head.meta_conf)
    nickname = meta_nickname(head.meta_conf)
    if nickname is not None:
        env["FWUP_META_NICKNAME"] = nickname
    try:
        conf = parse_meta_conf(head.meta_conf.decode("utf-8"), env)
    except UnicodeDecodeError:
        raise PreflightError("meta.conf is not valid UTF-8") from None
    except MetaConfError as exc:
        raise PreflightError(f"meta.conf: {exc}") from None
    if check_version:
        try:
            check_fwup_version(conf.require_fwup_version)
        except MetaConfError as exc:
            raise PreflightError(str(exc), code="preflight:version") from None
    return conf


class ReadOnlyDestination:
    """The destination as the requirement checks see it: reads only, never writes.

    A missing regular file reads as zeros (the engine would create it).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self.is_block_device = False
        self.rdev: int | None = None
        """The device number of a block-device destination."""
        self.size = 0
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise PreflightError(
                f"cannot open {path}: {exc.strerror}", code="preflight:destination"
            ) from None

        st = os.fstat(self._fd)
        self.is_block_device = stat.S_ISBLK(st.st_mode)
        self.rdev = st.st_rdev if self.is_block_device else None
        self.size = os.lseek(self._fd, 0, os.SEEK_END)

    def read(self, offset: int, length: int) -> bytes:
        if self._fd is None:
            return bytes(length)
        data = os.pread(self._fd, length, offset)
        return data + bytes(length - len(data))

    def write(self, offset: int, data: bytes, streamed: bool = False) -> None:
        raise PreflightError("preflight never writes the destination", code="internal")

    def trim(self, offset: int, length: int) -> None:
        raise PreflightError("preflight never writes the destination", code="internal")

    def flush(self) -> None:
        pass

    def discard(self) -> None:
        pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def choose_task(
    conf: MetaConf,
    prefix: str,
    destination: ReadOnlyDestination,
    primitives: Primitives,
    *,
    unsafe: bool,
    external: bool = False,
) -> Task | None:
    """The task the applier would select on ``destination`` (``preflight:task`` if none).

    ``external``: the applier is an installed fwup. Requirements nhlink does not know
    (a newer fwup may) and ``require-execute`` (never run twice) are then undecided:
    a task ruled out by the others is skipped, but when the first task the others
    allow has an undecided one, the choice is fwup's and None is returned.
    """
    if not external:
        context = RequirementContext(conf, destination, primitives, unsafe)
        try:
            return select_task(prefix, context)
        except TaskError as exc:
            raise PreflightError(str(exc), code="preflight:task") from None
    context = RequirementContext(conf, destination, primitives, unsafe=False)
    for task in conf.tasks:
        if not task.name.startswith(prefix):
            continue
        undecided = tuple(c for c in task.requirements if c.name not in DECIDABLE_REQUIREMENTS)
        decidable = tuple(c for c in task.requirements if c.name in DECIDABLE_REQUIREMENTS)
        if not task_applicable(dataclasses.replace(task, requirements=decidable), context):
            continue
        if undecided:
            logger.info(
                "preflight: task %s has requirements fwup decides (%s); task checks skipped",
                task.name,
                ", ".join(sorted({c.name for c in undecided})),
            )
            return None
        return task
    raise PreflightError(
        f"Couldn't find applicable task '{prefix}'. "
        "If task is available, the task's requirements may not be met.",
        code="preflight:task",
    )


def task_calls(task: Task) -> Iterable[Call]:
    """Every action call of a task (events and on-resource handlers)."""
    yield from task.on_init
    yield from task.on_finish
    yield from task.on_error
    for handler in task.on_resource.values():
        yield from handler.calls


def check_actions(task: Task, *, unsafe: bool, fwup_actions: bool = False) -> None:
    """Every action of ``task`` can run here (``preflight:action`` otherwise).

    ``fwup_actions``: the applier is an external fwup, which implements all of
    fwup's actions; only the ``--unsafe`` rule is checked then.
    """
    for call in task_calls(task):
        if not fwup_actions and (call.name not in actions.ACTIONS or call.name in NOT_IMPLEMENTED):
            raise PreflightError(
                f"task {task.name} uses {call.name}, which this applier does not implement",
                code="preflight:action",
            )
        if call.name in UNSAFE_ACTIONS and not unsafe:
            raise PreflightError(
                f"task {task.name} uses {call.name}, which needs --unsafe", code="preflight:action"
            )


# ------------------------------------------------------------------------- the running slot


@dataclass(frozen=True, slots=True)
class WriteRange:
    """Destination bytes ``start..end-1`` an action of a task may write."""

    start: int
    end: int
    action: str


@dataclass(frozen=True, slots=True)
class RunningPartition:
    """The partition (or whole disk) the running root filesystem is on, in bytes of ``disk``."""

    device: str
    """``MAJ:MIN`` of the partition."""
    disk: int
    """Device number of the disk holding it."""
    start: int
    end: int


def running_root_partitions(
    sysfs: str | os.PathLike[str] = SYSFS, root_device: int | None = None
) -> list[RunningPartition]:
    """Where the running root filesystem lies: the partition of ``st_dev`` of ``/`` (or
    ``root_device``) found under ``<sysfs>/dev/block/MAJ:MIN`` (``start`` and ``size`` in
    512-byte sectors, the disk from the parent directory's ``dev``). Device-mapper
    devices are followed through ``slaves``; a root without a block device (tmpfs,
    overlay, NFS) gives nothing."""
    if root_device is None:
        try:
            root_device = os.stat("/").st_dev
        except OSError:
            return []
    return _partitions(Path(sysfs) / "dev" / "block", root_device, depth=3)


def _partitions(block: Path, device: int, depth: int) -> list[RunningPartition]:
    name = f"{os.major(device)}:{os.minor(device)}"
    try:
        node = (block / name).resolve(strict=True)
        size = int((node / "size").read_text().strip()) * BLOCK_SIZE
    except (OSError, ValueError):
        return []
    slaves = node / "slaves"
    if depth > 0 and slaves.is_dir():
        below: list[RunningPartition] = []
        for slave in sorted(slaves.iterdir()):
            numbers = _device_number(slave / "dev")
            if numbers is not None:
                below += _partitions(block, numbers, depth - 1)
        if below:
            return below
    try:
        start = int((node / "start").read_text().strip()) * BLOCK_SIZE
    except FileNotFoundError:  # a whole disk
        return [RunningPartition(name, device, 0, size)]
    except (OSError, ValueError):
        return []
    disk = _device_number(node.parent / "dev")
    if disk is None:
        return []
    return [RunningPartition(name, disk, start, start + size)]


def _device_number(path: Path) -> int | None:
    """``os.makedev`` of a sysfs ``dev`` file (``MAJ:MIN``), None if unreadable."""
    try:
        major, _, minor = path.read_text().strip().partition(":")
        return os.makedev(int(major), int(minor))
    except (OSError, ValueError):
        return None


def task_write_ranges(
    conf: MetaConf, task: Task, destination: ReadOnlyDestination
) -> list[WriteRange]:
    """The destination bytes ``task`` may write (every event and on-resource handler):
    raw_write (offset plus the resource's length), raw_memset, trim, the FAT file
    systems of fat_* and fat_write, the MBR/GPT blocks and the U-Boot environments."""
    blocks = destination.size // BLOCK_SIZE
    fat_sizes = {
        _blocks(call.args[0]): _blocks(call.args[1])
        for call in task_calls(task)
        if call.name == "fat_mkfs" and len(call.args) == 2
    }
    ranges: list[WriteRange] = []

    def add(start_block: int, count: int, action: str) -> None:
        if count > 0:
            ranges.append(
                WriteRange(start_block * BLOCK_SIZE, (start_block + count) * BLOCK_SIZE, action)
            )

    calls: list[tuple[Call, str | None]] = [
        (call, None) for call in (*task.on_init, *task.on_finish, *task.on_error)
    ]
    for name, handler in task.on_resource.items():
        calls += [(call, name) for call in handler.calls]
    for call, resource_name in calls:
        name, args = call.name, call.args
        if name == "raw_write" and args and resource_name in conf.resources:
            size = conf.resources[resource_name].total_size
            add(_blocks(args[0]), -(-size // BLOCK_SIZE), name)
        elif name in ("raw_memset", "trim") and len(args) >= 2:
            add(_blocks(args[0]), _blocks(args[1]), name)
        elif name.startswith("fat_") and args:
            offset = _blocks(args[0])
            size = fat_sizes.get(offset) or _fat_blocks(destination, offset)
            add(offset, size, name)
        elif name in ("mbr_write", "gpt_write") and len(args) == 1:
            for block, data in _table_blocks(conf, name, args[0], blocks):
                add(block, -(-len(data) // BLOCK_SIZE), name)
        elif name.startswith("uboot_") and args and args[0] in conf.uboot_environments:
            env = conf.uboot_environments[args[0]]
            for env_block in (env.block_offset, env.block_offset_redund):
                if env_block is not None:
                    add(env_block, env.block_count or 0, name)
    return ranges


_BPB_FIELDS = (("<H", 11), ("<H", 19), ("<I", 32))
"""A FAT boot sector's bytes per sector, 16-bit and 32-bit sector counts."""


def _fat_blocks(destination: ReadOnlyDestination, offset: int) -> int:
    """The size (blocks) of the FAT file system at ``offset`` from its boot sector (1 when
    unreadable: at least its first block is written)."""
    try:
        boot = destination.read(offset * BLOCK_SIZE, BLOCK_SIZE)
    except OSError:
        return 1
    sector, total16, total32 = (int(struct.unpack_from(f, boot, at)[0]) for f, at in _BPB_FIELDS)
    total = total16 or total32
    if sector not in (512, 1024, 2048, 4096) or total == 0 or boot[510:512] != b"\x55\xaa":
        return 1
    return total * (sector // BLOCK_SIZE)


def _table_blocks(conf: MetaConf, action: str, name: str, blocks: int) -> list[tuple[int, bytes]]:
    try:
        if action == "mbr_write" and name in conf.mbrs:
            return list(mbr_blocks(conf.mbrs[name], blocks))
        if action == "gpt_write" and name in conf.gpts:
            return list(gpt_blocks(conf.gpts[name], blocks))
    except NHLinkError:  # a bad table: the applier reports it
        pass
    return []


def check_running_slot(
    conf: MetaConf,
    task: Task,
    destination: ReadOnlyDestination,
    running: Sequence[RunningPartition],
) -> None:
    """On a block-device destination, ``task`` must write nothing of the partition the
    running root filesystem is on (``preflight:slot``): e.g. after an update switched
    ``nerves_fw_active`` but the device has not rebooted, the next offer would select
    the task for the running slot. A regular-file destination is never the running disk."""
    if not destination.is_block_device or destination.rdev is None:
        return
    for partition in running:
        if partition.disk != destination.rdev:
            continue
        for write in task_write_ranges(conf, task, destination):
            if write.start < partition.end and partition.start < write.end:
                raise PreflightError(
                    f"task {task.name} {write.action} writes bytes {write.start}-{write.end - 1} "
                    f"of {destination.path}, where the running root filesystem is "
                    f"(partition {partition.device}, bytes {partition.start}-{partition.end - 1})",
                    code="preflight:slot",
                )


def task_extent(conf: MetaConf, task: Task) -> int:
    """The end (bytes) of the furthest raw write of ``task`` (raw_write, raw_memset)."""
    end = 0
    for name, handler in task.on_resource.items():
        resource = conf.resources.get(name)
        for call in handler.calls:
            if call.name == "raw_write" and call.args and resource is not None:
                start = _blocks(call.args[0]) * BLOCK_SIZE
                end = max(end, start + _round_up(resource.total_size))
    for call in (*task.on_init, *task.on_finish):
        if call.name == "raw_memset" and len(call.args) == 3:
            end = max(end, (_blocks(call.args[0]) + _blocks(call.args[1])) * BLOCK_SIZE)
    return end


def check_room(conf: MetaConf, task: Task, destination: ReadOnlyDestination) -> None:
    """A block device must hold everything the task writes (``no_space``); a regular
    file grows, as with fwup."""
    if not destination.is_block_device:
        return
    end = task_extent(conf, task)
    if end > destination.size:
        raise PreflightError(
            f"task {task.name} writes up to byte {end} but {destination.path} "
            f"has {destination.size} bytes",
            code="no_space",
        )


def _blocks(text: str) -> int:
    try:
        return max(0, parse_int(text))
    except MetaConfError:
        return 0


def _round_up(size: int) -> int:
    return -(-size // BLOCK_SIZE) * BLOCK_SIZE


# ------------------------------------------------------------------------- the clock


def clock_skew(local_time: float, date_header: str | None, age: str | None = None) -> float | None:
    """Local time minus the server's time in seconds, or None without a usable ``Date``.

    A cache's ``Age`` (seconds the response spent in it) is added to the ``Date``.
    """
    if not date_header:
        return None
    try:
        server = email.utils.parsedate_to_datetime(date_header)
    except (TypeError, ValueError, IndexError):
        return None
    if server.tzinfo is None:
        return None
    return local_time - (server.timestamp() + _age_seconds(age))


def _age_seconds(age: str | None) -> float:
    try:
        return max(0.0, float(int((age or "0").strip())))
    except ValueError:
        return 0.0


def clock_warning(
    local_time: float,
    date_header: str | None,
    age: str | None = None,
    tolerance: float = CLOCK_TOLERANCE,
) -> str | None:
    """A warning when the local time is more than ``tolerance`` from the firmware server's
    ``Date`` (plus ``Age``), else None. Never a failure: applying firmware does not depend
    on the clock, devices without an RTC are often off before NTP, and a cached ``Date``
    may be old; a certificate date failure is what reports ``clock``."""
    skew = clock_skew(local_time, date_header, age)
    if skew is None or abs(skew) <= tolerance:
        return None
    direction = "ahead of" if skew > 0 else "behind"
    cached = f", Age {age.strip()}" if age and _age_seconds(age) else ""
    return (
        f"the local clock is {abs(skew) / 3600:.1f} h {direction} the firmware server's "
        f"Date ({date_header}{cached})"
    )
