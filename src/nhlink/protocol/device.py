"""The ``device`` channel: join params, hub events and device pushes (spec 2, 6)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from nhlink.protocol.backoff import round_half_up
from nhlink.protocol.connection import ChannelLogic
from nhlink.protocol.events import (
    ArchiveOffered,
    ArchivePublicKeysUpdated,
    Event,
    ExtensionsRequested,
    FwupPublicKeysUpdated,
    IdentifyRequested,
    PayloadRejected,
    RebootRequested,
    ScriptRunRequested,
    UnknownEvent,
    UpdateOffered,
)
from nhlink.protocol.frames import JSONObject, JSONValue, ProtocolError
from nhlink.protocol.payloads import parse_archive, parse_public_keys, parse_update

logger = logging.getLogger("nhlink.protocol.device")

DEVICE_TOPIC = "device"
DEVICE_API_VERSION = "2.3.0"
CONSOLE_VERSION = "2.0.0"
SCRIPTS_UNSUPPORTED = "nhlink cannot run Elixir scripts"
PROGRESS_MIN_INTERVAL = 0.5
MIN_RESCHEDULE_MINUTES = 5

ProgressStage = Literal["downloading", "updating"]


@dataclass(frozen=True, slots=True)
class DeviceJoinInfo:
    """What the device join params (spec 2.1) are built from.

    ``active_kv`` holds the active slot's firmware KV keys with the ``a.``/``b.``
    prefix already stripped; ``*_keys_configured`` say whether keys were
    configured locally, ``request_*`` mirror ``request_*_public_keys``.
    """

    active_kv: Mapping[str, str]
    fwup_version: str
    currently_downloading_uuid: str | None = None
    fwup_keys_configured: bool = False
    archive_keys_configured: bool = False
    request_fwup_public_keys: bool = False
    request_archive_public_keys: bool = False
    firmware_validated: bool = True
    firmware_auto_revert_detected: bool = False


def build_join_params(info: DeviceJoinInfo) -> JSONObject:
    """The ``phx_join`` payload of the device channel, in NervesHubLink's key order."""
    params: JSONObject = dict(info.active_kv)
    params["fwup_version"] = info.fwup_version
    params["device_api_version"] = DEVICE_API_VERSION
    params["console_version"] = CONSOLE_VERSION
    if info.request_fwup_public_keys or not info.fwup_keys_configured:
        params["fwup_public_keys"] = "on_connect"
    if info.request_archive_public_keys or not (
        info.archive_keys_configured or info.fwup_keys_configured
    ):
        params["archive_public_keys"] = "on_connect"
    params["currently_downloading_uuid"] = info.currently_downloading_uuid
    params["meta"] = {
        "firmware_auto_revert_detected": info.firmware_auto_revert_detected,
        "firmware_validated": info.firmware_validated,
    }
    return params


def reschedule_minutes(milliseconds: float) -> int:
    """``delay_for`` of a ``{:reschedule, ms}`` answer: whole minutes, at least 5."""
    return max(MIN_RESCHEDULE_MINUTES, round_half_up(milliseconds / 60000))


class ProgressThrottle:
    """The ``fwup_progress`` rate limit of one stage (spec 6.4).

    The first value always passes; later ones only when their rounded value
    is above the last one sent and ``min_interval`` seconds have passed.
    """

    def __init__(self, min_interval: float = PROGRESS_MIN_INTERVAL) -> None:
        self.min_interval = min_interval
        self._last_value: int | None = None
        self._last_time = 0.0

    def allows(self, value: int, now: float) -> bool:
        """Whether ``value`` may be sent at ``now``."""
        return self._last_value is None or (
            value > self._last_value and now - self._last_time >= self.min_interval
        )

    def record(self, value: int, now: float) -> None:
        """Note that ``value`` was sent at ``now``."""
        self._last_value = value
        self._last_time = now


class DeviceChannel(ChannelLogic):
    """Logic of the ``device`` topic.

    Hub events become typed events (see :mod:`nhlink.protocol.events`); the
    core answers ``scripts/run`` itself (with an error) and queues the
    ``rebooting`` push itself before reporting :class:`RebootRequested`.
    Push methods return whether the push was queued: pushes made while the
    channel is not joined are dropped, as NervesHubLink drops them.
    Replace :attr:`join_info` at any time; every (re)join uses the current one.
    """

    def __init__(
        self, join_info: DeviceJoinInfo, *, progress_interval: float = PROGRESS_MIN_INTERVAL
    ) -> None:
        super().__init__(DEVICE_TOPIC)
        self.join_info = join_info
        self._progress_interval = progress_interval
        self._throttles: dict[str, ProgressThrottle] = {}
        self._validation_pending = False
        self._handlers: dict[str, Callable[[JSONObject], list[Event]]] = {
            "update": self._on_update,
            "reboot": self._on_reboot,
            "identify": lambda _: [IdentifyRequested()],
            "fwup_public_keys": self._on_fwup_public_keys,
            "archive_public_keys": self._on_archive_public_keys,
            "archive": lambda payload: [ArchiveOffered(parse_archive(payload))],
            "scripts/run": self._on_scripts_run,
            "extensions:get": lambda _: [ExtensionsRequested()],
        }

    # -- ChannelLogic hooks --------------------------------------------------

    def join_params(self) -> JSONObject:
        """Built from :attr:`join_info` at each join."""
        return build_join_params(self.join_info)

    def on_joined(self, response: JSONValue, now: float) -> list[Event]:
        """The reply is ignored (as since NervesHubLink 2.10); arms the validation report."""
        self._validation_pending = not self.join_info.firmware_validated
        return []

    def on_message(self, event: str, payload: JSONObject, now: float) -> list[Event]:
        """Dispatch a hub event; bad payloads and unknown events are logged and ignored."""
        handler = self._handlers.get(event)
        if handler is None:
            logger.info("unknown device event %r ignored", event)
            return [UnknownEvent(self.topic, event, payload)]
        try:
            return handler(payload)
        except ProtocolError as exc:
            logger.warning("device event %r ignored: %s", event, exc)
            return [PayloadRejected(self.topic, event, str(exc))]

    # -- state for the caller ----------------------------------------------

    @property
    def validation_pending(self) -> bool:
        """The device joined with ``firmware_validated: false`` and has not yet
        pushed ``firmware_validated``: poll validation (every 10 s) while true."""
        return self._validation_pending

    def set_downloading(self, uuid: str | None) -> None:
        """Set ``currently_downloading_uuid`` for the next joins."""
        self.join_info = replace(self.join_info, currently_downloading_uuid=uuid)

    def reset_progress(self) -> None:
        """Forget what progress was sent; the next value of each stage passes."""
        self._throttles.clear()

    # -- device -> hub pushes ------------------------------------------------

    def status_update(self, status: str, **fields: JSONValue) -> bool:
        """Push ``status_update {"status": status, **fields}``."""
        return self._push("status_update", {"status": status, **fields})

    def status_received(self) -> bool:
        """An update offer arrived; also resets the progress throttle."""
        self.reset_progress()
        return self.status_update("received")

    def status_started(self, network_interface: str | None) -> bool:
        """The download (re)connected over ``network_interface``."""
        return self.status_update("started", downloader_network_interface=network_interface)

    def status_completed(self) -> bool:
        """The update was applied."""
        return self.status_update("completed")

    def status_ignored(self, reason: str = "") -> bool:
        """The client declined the update."""
        return self.status_update("ignored", reason=reason)

    def status_rescheduled(self, minutes: float, reason: str | None = None) -> bool:
        """``{:reschedule, minutes, reason}``: ask again in ``minutes`` (at least 5)."""
        delay_for = max(MIN_RESCHEDULE_MINUTES, round_half_up(minutes))
        if reason is None:
            return self.status_update("rescheduled", delay_for=delay_for)
        return self.status_update("rescheduled", delay_for=delay_for, reason=reason)

    def status_rescheduled_ms(self, milliseconds: float) -> bool:
        """``{:reschedule, ms}``: reported in minutes, at least 5."""
        return self.status_update("rescheduled", delay_for=reschedule_minutes(milliseconds))

    def status_failed(self, reason: str) -> bool:
        """The update failed (reason like ``FWUP error : "..."``)."""
        return self.status_update("failed", reason=reason)

    def fwup_progress(
        self, stage: ProgressStage, value: float, now: float, *, force: bool = False
    ) -> bool:
        """Push progress of ``stage`` under the throttle; ``force`` bypasses it
        (the final ``updating 100`` and ``downloading 100``)."""
        if stage not in ("downloading", "updating"):
            raise ValueError(f"unknown progress stage {stage!r}")
        percent = min(100, max(0, round_half_up(value)))
        throttle = self._throttles.setdefault(stage, ProgressThrottle(self._progress_interval))
        if not (force or throttle.allows(percent, now)):
            return False
        sent = self._push("fwup_progress", {"stage": stage, "value": percent})
        if sent:
            throttle.record(percent, now)
        return sent

    def rebooting(self) -> bool:
        """The device is about to reboot."""
        return self._push("rebooting", {})

    def firmware_validated(self) -> bool:
        """The firmware became validated after the join; later joins report it."""
        sent = self._push("firmware_validated", {})
        if sent:
            self._validation_pending = False
            self.join_info = replace(self.join_info, firmware_validated=True)
        return sent

    def report_network_interface(self, interface: str) -> bool:
        """The interface the hub connection uses (retry every 60 s if unknown)."""
        return self._push("report_network_interface", {"interface": interface})

    # -- internals -------------------------------------------------------------

    def _push(self, event: str, payload: JSONObject) -> bool:
        return self.channel.push(event, payload) is not None

    def _on_update(self, payload: JSONObject) -> list[Event]:
        return [UpdateOffered(parse_update(payload))]

    def _on_reboot(self, payload: JSONObject) -> list[Event]:
        self.rebooting()
        return [RebootRequested()]

    def _on_fwup_public_keys(self, payload: JSONObject) -> list[Event]:
        return [FwupPublicKeysUpdated(self._public_keys(payload, "fwup_public_keys"))]

    def _on_archive_public_keys(self, payload: JSONObject) -> list[Event]:
        return [ArchivePublicKeysUpdated(self._public_keys(payload, "archive_public_keys"))]

    @staticmethod
    def _public_keys(payload: JSONObject, event: str) -> tuple[str, ...]:
        keys, dropped = parse_public_keys(payload, event)
        if dropped:
            logger.warning("%s: %d invalid key(s) left out", event, dropped)
        return keys

    def _on_scripts_run(self, payload: JSONObject) -> list[Event]:
        ref = payload.get("ref")
        if not isinstance(ref, str):
            raise ProtocolError("scripts/run payload has no ref string")
        text = payload.get("text")
        logger.warning("scripts/run %s refused: %s", ref, SCRIPTS_UNSUPPORTED)
        self._push(
            "scripts/run",
            {
                "ref": ref,
                "result": "error",
                "reason": SCRIPTS_UNSUPPORTED,
                "output": f"Error running script: {SCRIPTS_UNSUPPORTED}",
                "return": "",
            },
        )
        return [ScriptRunRequested(ref, text if isinstance(text, str) else "")]
