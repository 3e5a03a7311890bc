"""Firmware metadata (Nerves KV): the U-Boot environment, or a key=value file.

The U-Boot environment is found through a ``fw_env.config`` in the U-Boot
tools format: each line is ``device offset size [sector_size [sectors]]``
(numbers in decimal, ``0x`` hex or leading-zero octal, ``#`` starts a
comment); one line is a plain environment, two lines a redundant one whose
copies are chosen by fwup's flags rule. Blocks are decoded (CRC checked) by
the applier's own codec. A key=value file holds ``key=value`` lines.

Keys with an ``a.``/``b.`` prefix belong to a firmware slot; ``nerves_fw_active``
names the active one. :meth:`KV.get_all_active` returns the active slot's keys
with the prefix stripped, as ``Nerves.Runtime.KV.get_all_active`` does.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nhlink.config import KVConfig
from nhlink.errors import ConfigError, UBootEnvCRCError, UBootEnvError

logger = logging.getLogger("nhlink.kv")

ACTIVE_SLOT_KEY = "nerves_fw_active"
SLOTS = ("a", "b")
GLOBAL_FW_KEYS = frozenset({"nerves_fw_active", "nerves_fw_devpath", "nerves_fw_booted"})
"""Unprefixed ``nerves_fw_*`` keys that never describe a slot's firmware."""


@dataclass(frozen=True, slots=True)
class EnvLocation:
    """One copy of a U-Boot environment: ``size`` bytes at ``offset`` of ``device``."""

    device: str
    offset: int
    size: int


def parse_fw_env_config(text: str, source: str = "fw_env.config") -> tuple[EnvLocation, ...]:
    """The one or two environment copies a ``fw_env.config`` describes."""
    locations: list[EnvLocation] = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        where = f"{source} line {number}"
        if not 3 <= len(fields) <= 5:
            raise ConfigError(f"{where}: expected 'device offset size [sector_size [sectors]]'")
        offset = _parse_number(fields[1], where, "offset")
        size = _parse_number(fields[2], where, "size")
        if size < 8:
            raise ConfigError(f"{where}: environment size {size} is too small")
        locations.append(EnvLocation(fields[0], offset, size))
    if not locations:
        raise ConfigError(f"{source}: no environment device line")
    if len(locations) > 2:
        raise ConfigError(f"{source}: more than two environment lines")
    if len(locations) == 2 and locations[0].size != locations[1].size:
        raise ConfigError(f"{source}: the two environment copies differ in size")
    return tuple(locations)


def _parse_number(text: str, where: str, what: str) -> int:
    lowered = text.lower()
    try:
        if lowered.startswith("0x"):
            value = int(lowered[2:], 16)
        elif len(lowered) > 1 and lowered.startswith("0"):
            value = int(lowered[1:], 8)
        else:
            value = int(lowered, 10)
    except ValueError:
        raise ConfigError(f"{where}: {what} {text!r} is not a number") from None
    if value < 0:
        raise ConfigError(f"{where}: {what} must not be negative")
    return value


class UBootEnvStore:
    """Reads and writes the variables of a plain or redundant U-Boot environment."""

    def __init__(self, locations: tuple[EnvLocation, ...]) -> None:
        if not 1 <= len(locations) <= 2:
            raise ValueError("a U-Boot environment has one or two copies")
        self.locations = locations

    @classmethod
    def from_fw_env_config(cls, path: str | os.PathLike[str]) -> UBootEnvStore:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"fw_env.config {os.fspath(path)!r}: {exc.strerror}") from None
        return cls(parse_fw_env_config(text, os.fspath(path)))

    @property
    def redundant(self) -> bool:
        return len(self.locations) == 2

    def describe(self) -> str:
        return ", ".join(f"{loc.device} at 0x{loc.offset:x}" for loc in self.locations)

    def read(self) -> tuple[dict[str, str], int, int]:
        """``(variables, flags, copy)`` of the current copy; UBootEnvError if none is valid."""
        from nhlink._native import uboot_env_decode

        decoded: list[tuple[dict[str, str], int] | None] = []
        errors: list[str] = []
        for location in self.locations:
            try:
                decoded.append(uboot_env_decode(self._read_block(location), self.redundant))
            except UBootEnvCRCError as exc:
                decoded.append(None)
                errors.append(f"{location.device} at 0x{location.offset:x}: {exc}")
        order = [0, 1] if self.redundant else [0]
        first, second = decoded[0], decoded[-1]
        if (
            self.redundant
            and first is not None
            and second is not None
            and 1 <= (second[1] - first[1]) % 256 <= 127
        ):
            order = [1, 0]
        for copy in order:
            result = decoded[copy]
            if result is not None:
                return result[0], result[1], copy
        raise UBootEnvError(f"no valid U-Boot environment ({'; '.join(errors)})")

    def write(self, variables: Mapping[str, str], *, create: bool = False) -> None:
        """Store ``variables``: in place, or (redundant) into the other copy with flags + 1.

        With ``create``, an environment without a valid copy is written fresh
        (flags 1 in both copies of a redundant one).
        """
        from nhlink._native import uboot_env_encode

        size = self.locations[0].size
        try:
            _, flags, copy = self.read()
        except UBootEnvError:
            if not create:
                raise
            for location in self.locations:
                self._write_block(location, uboot_env_encode(variables, size, self.redundant, 1))
            return
        if not self.redundant:
            self._write_block(self.locations[0], uboot_env_encode(variables, size, False, 0))
            return
        block = uboot_env_encode(variables, size, True, (flags + 1) % 256)
        self._write_block(self.locations[1 - copy], block)

    @staticmethod
    def _read_block(location: EnvLocation) -> bytes:
        try:
            with open(location.device, "rb") as device:
                device.seek(location.offset)
                block = device.read(location.size)
        except OSError as exc:
            raise UBootEnvError(
                f"cannot read U-Boot environment {location.device}: {exc.strerror}"
            ) from None
        if len(block) != location.size:
            raise UBootEnvError(
                f"{location.device} ends before the U-Boot environment at 0x{location.offset:x}"
            )
        return block

    @staticmethod
    def _write_block(location: EnvLocation, block: bytes) -> None:
        try:
            fd = os.open(location.device, os.O_WRONLY)
        except OSError as exc:
            raise UBootEnvError(
                f"cannot open {location.device} for writing: {exc.strerror}"
            ) from None
        try:
            os.pwrite(fd, block, location.offset)
            os.fsync(fd)
        except OSError as exc:
            raise UBootEnvError(
                f"cannot write U-Boot environment {location.device}: {exc.strerror}"
            ) from None
        finally:
            os.close(fd)


class KeyValueFileStore:
    """``key=value`` lines; blank lines and ``#`` comments are skipped."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return str(self.path)

    def read(self) -> dict[str, str]:
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise ConfigError(f"[kv] file {str(self.path)!r}: {exc.strerror}") from None
        values: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            key, sep, value = stripped.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{self.path} line {number}: expected key=value")
            values[key.strip()] = value.strip()
        return values

    def write(self, variables: Mapping[str, str]) -> None:
        lines = []
        for key, value in sorted(variables.items()):
            if "\n" in value or "\n" in key or "=" in key:
                raise UBootEnvError(f"{key!r} cannot be stored in a key=value file")
            lines.append(f"{key}={value}\n")
        directory = self.path.parent
        fd, temporary = tempfile.mkstemp(prefix=".kv-", dir=directory)
        try:
            with os.fdopen(fd, "w") as out:
                out.writelines(lines)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


Store = UBootEnvStore | KeyValueFileStore


class KV:
    """A snapshot of the firmware metadata; :meth:`reload` reads it again."""

    def __init__(self, values: Mapping[str, str], store: Store | None = None) -> None:
        self._values = dict(values)
        self.store = store

    @classmethod
    def load(cls, config: KVConfig) -> KV:
        """Read the source ``[kv]`` names (an empty KV when it names none)."""
        if config.fw_env_config:
            return cls.from_store(UBootEnvStore.from_fw_env_config(config.fw_env_config))
        if config.file:
            return cls.from_store(KeyValueFileStore(config.file))
        return cls({})

    @classmethod
    def from_store(cls, store: Store) -> KV:
        if isinstance(store, UBootEnvStore):
            values, _, _ = store.read()
        else:
            values = store.read()
        return cls(values, store)

    def reload(self) -> KV:
        """A fresh snapshot from the same source (this one if it has none)."""
        return self if self.store is None else KV.from_store(self.store)

    # -- reading -------------------------------------------------------------

    def get(self, key: str) -> str | None:
        return self._values.get(key)

    def get_all(self) -> dict[str, str]:
        return dict(self._values)

    @property
    def active_slot(self) -> str | None:
        """``nerves_fw_active`` (``"a"`` or ``"b"``), or None when unset."""
        return self._values.get(ACTIVE_SLOT_KEY) or None

    @property
    def inactive_slot(self) -> str | None:
        slot = self.active_slot
        if slot not in SLOTS:
            return None
        return SLOTS[1 - SLOTS.index(slot)]

    def get_active(self, key: str) -> str | None:
        """``key`` of the active slot."""
        return self.get_all_active().get(key)

    def get_all_active(self) -> dict[str, str]:
        """The active slot's keys, prefix stripped.

        Without ``nerves_fw_active`` (e.g. a hand-written key=value file) the
        unprefixed ``nerves_fw_*`` keys describing firmware are returned instead.
        """
        slot = self.active_slot
        if slot is None:
            return {
                key: value
                for key, value in self._values.items()
                if key.startswith("nerves_fw_") and key not in GLOBAL_FW_KEYS
            }
        return self._slot_keys(slot)

    def _slot_keys(self, slot: str) -> dict[str, str]:
        prefix = slot + "."
        return {
            key[len(prefix) :]: value
            for key, value in self._values.items()
            if key.startswith(prefix)
        }

    def firmware_validated(self) -> bool:
        """``nerves_fw_validated`` of the active slot, else the global one; true when neither exists."""
        value = self.get_active("nerves_fw_validated")
        if value is None:
            value = self.get("nerves_fw_validated")
        return value is None or value == "1"

    def firmware_auto_revert_detected(self) -> bool:
        """The inactive slot holds firmware that was never validated (spec 5)."""
        slot = self.inactive_slot
        if slot is None:
            return False
        other = self._slot_keys(slot)
        return (
            other.get("nerves_fw_validated") == "0"
            and bool(other.get("nerves_fw_platform"))
            and bool(other.get("nerves_fw_architecture"))
        )

    # -- writing -------------------------------------------------------------

    def put(self, changes: Mapping[str, str | None], *, create: bool = False) -> KV:
        """Set (or, with None, delete) keys in the source; returns the new snapshot.

        ``create`` lets a U-Boot environment without a valid copy be replaced
        by one holding only ``changes`` (for provisioning blank images).
        """
        if self.store is None:
            raise ConfigError("[kv] names no U-Boot environment or key=value file to write")
        store = self.store
        if isinstance(store, UBootEnvStore):
            try:
                current, _, _ = store.read()
            except UBootEnvError:
                if not create:
                    raise
                logger.warning("no valid U-Boot environment at %s; creating one", store.describe())
                current = {}
            merged = _merge(current, changes)
            store.write(merged, create=create)
        else:
            current = store.read() if store.path.exists() or not create else {}
            merged = _merge(current, changes)
            store.write(merged)
        return KV(merged, store)


def _merge(current: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    merged = dict(current)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged
