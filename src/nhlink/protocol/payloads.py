"""Typed, validated views of the hub's device-channel payloads (spec 2.3, 2.5)."""

from __future__ import annotations

import binascii
import re
from base64 import b64decode
from dataclasses import dataclass

from nhlink.protocol.frames import JSONObject, JSONValue, ProtocolError

_SHA256_HEX = re.compile(r"[0-9A-Fa-f]{64}")
_ED25519_PUBLIC_KEY_SIZE = 32


@dataclass(frozen=True, slots=True)
class FirmwareMetadata:
    """The ``firmware_meta`` of an update offer (every field may be absent)."""

    uuid: str | None = None
    version: str | None = None
    product: str | None = None
    platform: str | None = None
    architecture: str | None = None
    author: str | None = None
    description: str | None = None
    misc: str | None = None
    vcs_identifier: str | None = None
    fwup_version: str | None = None


_METADATA_FIELDS = tuple(FirmwareMetadata.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class UpdateInfo:
    """An ``update`` offer: where to download the firmware and what it is.

    For a delta update, ``firmware_url``, ``size`` and the checksums describe
    the delta file while ``firmware_meta`` describes the target firmware.
    Checksums are SHA-256 hex strings as sent (the hub uses upper case);
    ``partials_checksums`` cover consecutive 1 MiB chunks.
    """

    firmware_url: str
    firmware_meta: FirmwareMetadata
    size: int | None = None
    checksum: str | None = None
    partials_checksums: tuple[str, ...] | None = None
    deployment_id: int | None = None


@dataclass(frozen=True, slots=True)
class ArchiveInfo:
    """An ``archive`` offer (spec 2.3 / 6.4)."""

    url: str
    uuid: str | None = None
    version: str | None = None
    description: str | None = None
    platform: str | None = None
    architecture: str | None = None
    uploaded_at: str | None = None
    size: int | None = None


def parse_update(payload: JSONObject) -> UpdateInfo:
    """Validate an ``update`` payload; raise :class:`ProtocolError` if unusable."""
    if payload.get("update_available", True) is False:
        raise ProtocolError("update payload says update_available is false")
    url = payload.get("firmware_url")
    if not isinstance(url, str) or not url:
        raise ProtocolError("update payload has no firmware_url string")
    meta = payload.get("firmware_meta")
    if not isinstance(meta, dict):
        raise ProtocolError("update payload firmware_meta is not an object")
    partials_value = payload.get("partials_checksums")
    partials: tuple[str, ...] | None = None
    if partials_value is not None:
        if not isinstance(partials_value, list):
            raise ProtocolError("update payload partials_checksums is not a list")
        partials = tuple(_sha256(item, "partials_checksums entry") for item in partials_value)
    deployment_id = payload.get("deployment_id")
    return UpdateInfo(
        firmware_url=url,
        firmware_meta=FirmwareMetadata(
            **{name: _optional_str(meta, name, "firmware_meta") for name in _METADATA_FIELDS}
        ),
        size=_optional_size(payload, "size", "update payload"),
        checksum=_optional_sha256(payload.get("checksum")),
        partials_checksums=partials,
        deployment_id=_int_or_none(deployment_id),
    )


def parse_archive(payload: JSONObject) -> ArchiveInfo:
    """Validate an ``archive`` payload; raise :class:`ProtocolError` if unusable."""
    url = payload.get("url")
    if not isinstance(url, str) or not url:
        raise ProtocolError("archive payload has no url string")
    fields = ("uuid", "version", "description", "platform", "architecture", "uploaded_at")
    return ArchiveInfo(
        url=url,
        **{name: _optional_str(payload, name, "archive payload") for name in fields},
        size=_optional_size(payload, "size", "archive payload"),
    )


def parse_public_keys(payload: JSONObject, event: str) -> tuple[tuple[str, ...], int]:
    """The valid base64 Ed25519 keys of a ``*_public_keys`` payload.

    Returns ``(keys, dropped)`` where ``dropped`` counts invalid entries left
    out. Raises :class:`ProtocolError` when no valid key remains, so an empty
    or broken list never replaces the keys in use.
    """
    entries = payload.get("keys")
    if not isinstance(entries, list):
        raise ProtocolError(f"{event} payload keys is not a list; keeping the current keys")
    keys = tuple(entry for entry in entries if isinstance(entry, str) and _is_public_key(entry))
    if not keys:
        raise ProtocolError(f"{event} payload has no valid key; keeping the current keys")
    return keys, len(entries) - len(keys)


def _is_public_key(entry: str) -> bool:
    try:
        return len(b64decode(entry, validate=True)) == _ED25519_PUBLIC_KEY_SIZE
    except (binascii.Error, ValueError):
        return False


def _optional_str(container: JSONObject, name: str, where: str) -> str | None:
    value = container.get(name)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"{where} {name} is not a string")
    return value


def _optional_size(container: JSONObject, name: str, where: str) -> int | None:
    value = container.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"{where} {name} is not a non-negative integer")
    return value


def _optional_sha256(value: JSONValue) -> str | None:
    return None if value is None else _sha256(value, "checksum")


def _sha256(value: JSONValue, what: str) -> str:
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise ProtocolError(f"update payload {what} is not a SHA-256 hex string")
    return value


def _int_or_none(value: JSONValue) -> int | None:
    """``deployment_id`` is informational: anything but an integer reads as none."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
