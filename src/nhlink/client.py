"""Client callbacks (spec 5): what a device application decides and is told.

Subclass :class:`Client`, override what you need and name it in the
configuration (``client = "mypackage.device:MyClient"``). Every callback may
be a plain method or a coroutine; the link runs it through :func:`call_client`,
so an exception is logged (with the callback's name) and never breaks the
connection. Plain methods run in the event loop: keep them short or make
them ``async``. Each callback is typed ``MaybeAwaitable[T]`` so an
``async def`` override type-checks too.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias, TypeVar, cast

from nhlink.errors import ConfigError
from nhlink.protocol.payloads import ArchiveInfo, UpdateInfo

if TYPE_CHECKING:
    from nhlink.kv import KV

logger = logging.getLogger("nhlink.client")

T = TypeVar("T")

MaybeAwaitable: TypeAlias = "T | Awaitable[T]"
"""A callback's result: the value, or (for an ``async def`` override) an awaitable of it."""


@dataclass(frozen=True, slots=True)
class Apply:
    """Download and apply the offered firmware."""


@dataclass(frozen=True, slots=True)
class Ignore:
    """Decline the offer; the hub is told ``ignored`` with ``reason``."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Reschedule:
    """Ask the hub to offer again in ``minutes`` (at least 5 are reported)."""

    minutes: float
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Download:
    """Download the offered archive."""


UpdateDecision = Apply | Ignore | Reschedule
ArchiveDecision = Download | Ignore | Reschedule


@dataclass(frozen=True, slots=True)
class FwupMessage:
    """One message from the applier: ``progress`` (``value`` = percent), or
    ``ok`` / ``warning`` / ``error`` (``value`` = code) with ``text``."""

    kind: Literal["progress", "ok", "warning", "error"]
    value: int
    text: str = ""


class Client:
    """The default behaviour of every callback; subclass it to change some.

    ``kv`` is the device's firmware metadata; the link sets it when the
    client has none.
    """

    kv: KV | None = None

    def __init__(self, kv: KV | None = None) -> None:
        self.kv = kv

    def connected(self) -> MaybeAwaitable[None]:
        """The socket connected (called on every connect)."""
        return None

    def handle_error(self, reason: str) -> MaybeAwaitable[None]:
        """The socket or the device channel failed with ``reason`` (the link logs it already)."""
        logger.debug("handle_error: %s", reason)
        return None

    def identify(self) -> MaybeAwaitable[None]:
        """The hub asks the device to show itself (blink an LED...)."""
        logger.info("identify requested by the hub (override Client.identify to act on it)")
        return None

    def reboot(self) -> MaybeAwaitable[None]:
        """Reboot the device: runs ``reboot`` from PATH."""
        command = shutil.which("reboot")
        if command is None:
            logger.error("cannot reboot: no `reboot` executable on PATH")
            return None
        logger.warning("rebooting with %s", command)
        subprocess.Popen([command], stdin=subprocess.DEVNULL)
        return None

    def reconnect_backoff(self) -> MaybeAwaitable[Sequence[float] | None]:
        """Reconnect delays in milliseconds, or None for the jittered 1 s → 60 s default."""
        return None

    def firmware_validated(self) -> MaybeAwaitable[bool]:
        """Whether the running firmware is validated (the KV's ``nerves_fw_validated``)."""
        kv = self._fresh_kv()
        return True if kv is None else kv.firmware_validated()

    def firmware_auto_revert_detected(self) -> MaybeAwaitable[bool]:
        """Whether the bootloader reverted from an unvalidated firmware."""
        kv = self._fresh_kv()
        return False if kv is None else kv.firmware_auto_revert_detected()

    def update_available(self, info: UpdateInfo) -> MaybeAwaitable[UpdateDecision]:
        """Apply, unless the offered firmware is the one running."""
        running = self.kv.get_active("nerves_fw_uuid") if self.kv is not None else None
        if running is not None and info.firmware_meta.uuid == running:
            return Ignore("firmware is already installed")
        return Apply()

    def handle_fwup_message(self, message: FwupMessage) -> MaybeAwaitable[None]:
        """Progress and results of the applier."""
        if message.kind == "progress":
            logger.debug("fwup progress %d%%", message.value)
        elif message.kind == "error":
            logger.error("fwup error: %s", message.text)
        elif message.kind == "warning":
            logger.warning("fwup warning: %s", message.text)
        else:
            logger.info("fwup finished: %s", message.text or "ok")
        return None

    def archive_available(self, info: ArchiveInfo) -> MaybeAwaitable[ArchiveDecision]:
        """Archives are ignored unless a client wants them."""
        return Ignore()

    def archive_ready(self, info: ArchiveInfo, path: str) -> MaybeAwaitable[None]:
        """A downloaded archive was verified and stored at ``path``."""
        logger.info("archive %s ready at %s", info.uuid or info.url, path)
        return None

    def _fresh_kv(self) -> KV | None:
        if self.kv is None:
            return None
        try:
            self.kv = self.kv.reload()
        except Exception as exc:  # a transient read error keeps the last snapshot
            logger.warning("cannot re-read firmware metadata: %s", exc)
        return self.kv


def normalize_update_decision(value: object) -> UpdateDecision:
    """A client answer as a decision; anything unrecognised counts as :class:`Apply` (spec 5)."""
    if isinstance(value, Apply | Ignore | Reschedule):
        return value
    logger.warning("update_available returned %r; treating it as Apply()", value)
    return Apply()


def normalize_archive_decision(value: object) -> ArchiveDecision:
    """An archive answer as a decision; anything unrecognised counts as :class:`Ignore`."""
    if isinstance(value, Download | Ignore | Reschedule):
        return value
    logger.warning("archive_available returned %r; treating it as Ignore()", value)
    return Ignore()


async def call_client(fn: Callable[..., T | Awaitable[T]], *args: object, default: T) -> T:
    """Run a client callback (plain or async); on an exception log it and return ``default``."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", repr(fn))
    try:
        result = fn(*args)
        if inspect.isawaitable(result):
            result = await result
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.error("client callback %s failed: %s: %s", name, type(exc).__name__, exc)
        return default
    return cast(T, result)


def load_object(spec: str, what: str) -> object:
    """Import ``"package.module:Name"`` and return ``Name``."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"{what} must look like 'package.module:Name', not {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {spec!r}: cannot import {module_name!r}: {exc}") from None
    try:
        return cast(object, getattr(module, attribute))
    except AttributeError:
        raise ConfigError(f"{what} {spec!r}: {module_name} has no {attribute!r}") from None


def load_client(spec: str | None, kv: KV | None = None) -> Client:
    """The client named by ``client = "module:Class"`` (a :class:`Client` subclass), or the default."""
    if spec is None:
        return Client(kv)
    cls = load_object(spec, "client")
    if not (isinstance(cls, type) and issubclass(cls, Client)):
        raise ConfigError(f"client {spec!r} is not a subclass of nhlink.Client")
    try:
        client = cls()
    except Exception as exc:
        raise ConfigError(f"client {spec!r} cannot be created: {exc}") from None
    if client.kv is None:
        client.kv = kv
    return client
