"""Preflight checks before the first firmware byte (sans-I/O; the fetching is in
:mod:`nhlink.aio.preflight`).

From the archive head (``meta.conf.ed25519`` and ``meta.conf``, read with a
Range request) and what the device knows, decide whether the download is
worth starting: the signature verifies with the configured keys, a task
applies to the destination (selected the way the engine selects it), the
applier can run every action the task uses, the task does not write the slot
the device runs from, a block-device destination is large enough, and the
local clock agrees with the hub's ``Date``. Each failure is a
:class:`PreflightError` with a reason code of :mod:`nhlink.update.reasons`.
"""

from __future__ import annotations

import email.utils
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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
from nhlink.fwup.partitions import BLOCK_SIZE
from nhlink.fwup.primitives import Primitives
from nhlink.fwup.tasks import RequirementContext, select_task
from nhlink.update.errors import UpdateError

CLOCK_TOLERANCE = 24 * 3600.0
"""Seconds the local clock may differ from the hub's ``Date`` before ``clock``."""
UNSAFE_ACTIONS = frozenset({"path_write", "pipe_write", "execute"})
"""Actions the applier runs only with ``--unsafe``."""
NOT_IMPLEMENTED = frozenset({"ubi_volume_write"})
"""Actions the built-in engine knows by name but cannot run yet."""
HEAD_LIMIT = 128 * 1024
"""Bytes of the archive head read at most to find meta.conf (it is under 50000)."""
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
        self.size = 0
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise PreflightError(
                f"cannot open {path}: {exc.strerror}", code="preflight:destination"
            ) from None

        mode = os.fstat(self._fd).st_mode
        self.is_block_device = stat.S_ISBLK(mode)
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
) -> Task:
    """The task the engine would select on ``destination`` (``preflight:task`` if none)."""
    context = RequirementContext(conf, destination, primitives, unsafe)
    try:
        return select_task(prefix, context)
    except TaskError as exc:
        raise PreflightError(str(exc), code="preflight:task") from None


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


def target_slot(task: Task) -> str | None:
    """The slot a task installs: ``nerves_fw_active`` set in on-finish (or on-init), else a
    ``.a``/``.b`` suffix of the task name (fwup's convention), else None."""
    for call in (*task.on_finish, *task.on_init):
        if (
            call.name == "uboot_setenv"
            and len(call.args) == 3
            and call.args[1] == "nerves_fw_active"
        ):
            return call.args[2]
    suffix = task.name.rsplit(".", 1)[-1] if "." in task.name else ""
    return suffix if suffix in ("a", "b") else None


def check_slot(task: Task, active_slot: str | None) -> None:
    """The task must not install into the slot the device runs from (``preflight:slot``)."""
    slot = target_slot(task)
    if slot is not None and active_slot is not None and slot == active_slot:
        raise PreflightError(
            f"task {task.name} writes slot {slot}, the slot the device runs from",
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


def clock_skew(local_time: float, date_header: str | None) -> float | None:
    """Local time minus the server's ``Date`` in seconds, or None without a usable Date."""
    if not date_header:
        return None
    try:
        server = email.utils.parsedate_to_datetime(date_header)
    except (TypeError, ValueError, IndexError):
        return None
    if server.tzinfo is None:
        return None
    return local_time - server.timestamp()


def check_clock(
    local_time: float, date_header: str | None, tolerance: float = CLOCK_TOLERANCE
) -> None:
    """``clock`` when the local time is more than ``tolerance`` from the hub's Date."""
    skew = clock_skew(local_time, date_header)
    if skew is not None and abs(skew) > tolerance:
        direction = "ahead of" if skew > 0 else "behind"
        raise PreflightError(
            f"the local clock is {abs(skew) / 3600:.1f} h {direction} the firmware server's "
            f"Date ({date_header})",
            code="clock",
        )
