"""The hub's update bookkeeping (spec 2.6 and 10), as plain functions over `DeviceRecord`.

No I/O here: the hub calls these with its clock (``now``: hub-clock unix seconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nhlink.testing.records import FIRMWARE_META_KEYS, DeviceRecord, InflightUpdate, Release

__all__ = [
    "HubPolicy",
    "apply_join",
    "apply_progress",
    "apply_status",
    "apply_update_sent",
    "eligible_for_release",
    "expire_inflight",
    "penalty_check",
    "update_payload",
]


@dataclass(frozen=True)
class HubPolicy:
    """Update policy numbers (defaults are the hub's)."""

    penalty_timeout_minutes: float = 1440
    device_failure_threshold: int = 3
    device_failure_rate_amount: int = 5
    device_failure_rate_seconds: float = 180
    inflight_timeout_seconds: float = 30 * 60
    concurrent_updates: int = 10
    # The hub reads a "rescheduled" delay_for as milliseconds while clients send
    # minutes (spec 10). 0.001 mirrors the hub; 60 gives the intended meaning.
    reschedule_unit_seconds: float = 0.001
    # The orchestrator re-runs on events and every 120-140 s; None: events only.
    orchestrator_interval: float | None = 130.0


def update_payload(
    firmware_url: str,
    firmware_meta: Mapping[str, Any],
    *,
    size: int | None = None,
    checksum: str | None = None,
    partials_checksums: list[str] | None = None,
    deployment_id: int | None = None,
) -> dict[str, Any]:
    """An ``update`` payload as the hub's UpdatePayload encodes it (2.5).

    ``firmware_meta`` is whitelisted to the nine hub keys (missing ones are "");
    ``size``/``checksum``/``partials_checksums`` are included when given.
    """
    payload: dict[str, Any] = {
        "update_available": True,
        "firmware_url": firmware_url,
        "firmware_meta": {key: firmware_meta.get(key, "") for key in FIRMWARE_META_KEYS},
    }
    if size is not None:
        payload["size"] = size
    if checksum is not None:
        payload["checksum"] = checksum
    if partials_checksums is not None:
        payload["partials_checksums"] = list(partials_checksums)
    payload["deployment_id"] = deployment_id
    return payload


def apply_join(device: DeviceRecord, params: Mapping[str, Any], now: float) -> None:
    """A device join: firmware metadata, validation and in-flight bookkeeping (2.6 step 1)."""
    uuid = params.get("nerves_fw_uuid")
    if isinstance(uuid, str) and uuid:
        if device.firmware_uuid is not None and uuid != device.firmware_uuid:
            # A different firmware came back: the previous update succeeded.
            if device.inflight is not None:
                device.successful_updates += 1
            device.inflight = None
            device.update_attempts.clear()
        device.firmware_uuid = uuid
    if not params.get("currently_downloading_uuid"):
        device.inflight = None
    meta = params.get("meta")
    if isinstance(meta, Mapping) and "firmware_validated" in meta:
        device.firmware_validated = bool(meta["firmware_validated"])
    del now


def apply_update_sent(
    device: DeviceRecord, firmware_url: str, payload: Mapping[str, Any], now: float
) -> None:
    """Record the in-flight update after an ``update`` push."""
    meta = payload.get("firmware_meta")
    uuid = meta.get("uuid", "") if isinstance(meta, Mapping) else ""
    deployment_id = payload.get("deployment_id")
    device.inflight = InflightUpdate(
        uuid=str(uuid),
        deployment_id=deployment_id if isinstance(deployment_id, int) else None,
        firmware_url=firmware_url,
        sent_at_wall=now,
        last_progress_at_wall=now,
    )


def apply_progress(device: DeviceRecord, payload: Mapping[str, Any], now: float) -> None:
    """``fwup_progress`` / ``update_progress``: keeps the in-flight update alive."""
    device.progress.append(dict(payload))
    if device.inflight is not None:
        device.inflight.last_progress_at_wall = now


def _is_failure(status: str) -> bool:
    return status in ("failed", "ignored", "update failed") or "fwup error" in status


def apply_status(
    device: DeviceRecord, payload: Mapping[str, Any], now: float, policy: HubPolicy
) -> None:
    """``status_update`` (spec 10): attempts, penalty for failures, reschedule blocks."""
    device.statuses.append(dict(payload))
    status = str(payload.get("status", ""))
    inflight = device.inflight
    if inflight is not None:
        if inflight.state == "requested":
            device.update_attempts.append(now)
            inflight.state = "in_progress"
        inflight.last_progress_at_wall = now
    if _is_failure(status):
        device.inflight = None
        if inflight is not None and inflight.deployment_id is not None:
            device.updates_blocked_until = now + policy.penalty_timeout_minutes * 60
    elif status == "rescheduled":
        device.inflight = None
        delay = payload.get("delay_for")
        if isinstance(delay, (int, float)) and not isinstance(delay, bool):
            device.updates_blocked_until = now + delay * policy.reschedule_unit_seconds


def penalty_check(device: DeviceRecord, now: float, policy: HubPolicy) -> None:
    """Penalty box at resolve time: too many attempts, or too many in a short window."""
    attempts = device.update_attempts
    recent = [t for t in attempts if now - t <= policy.device_failure_rate_seconds]
    if (
        len(attempts) >= policy.device_failure_threshold
        or len(recent) >= policy.device_failure_rate_amount
    ):
        device.updates_blocked_until = now + policy.penalty_timeout_minutes * 60
        attempts.clear()


def expire_inflight(device: DeviceRecord, now: float, policy: HubPolicy) -> None:
    inflight = device.inflight
    if (
        inflight is not None
        and now - inflight.last_progress_at_wall > policy.inflight_timeout_seconds
    ):
        device.inflight = None


def eligible_for_release(device: DeviceRecord, release: Release, now: float) -> bool:
    """Whether the orchestrator would send `release` to `device` now (2.6 step 3)."""
    return (
        device.connected
        and device.device_joined
        and not device.deleted
        and device.updates_enabled
        and bool(device.firmware_uuid)
        and device.firmware_validated is not False
        and device.updates_blocked_until <= now
        and device.firmware_uuid != release.uuid
        and device.inflight is None
    )
