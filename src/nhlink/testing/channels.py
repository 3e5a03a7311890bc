"""One device's websocket on the local hub: Phoenix V2 frames and the channel behaviour.

Topics ``device``, ``console`` and ``extensions`` behave as the hub's
channels do (spec 2, 3, 4, 10): heartbeats are answered, joins are answered
``{"status":"ok","response":...}``, device pushes are recorded and never
answered, unknown topics get ``{"reason":"unmatched topic"}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from nhlink.testing import orchestrator
from nhlink.testing.errors import HubError
from nhlink.testing.records import DeviceRecord, strict_version

if TYPE_CHECKING:
    from nhlink.testing.hub import LocalHub

__all__ = ["CHANNEL_TOPICS", "FASTLANE_EVENTS", "DeviceSession", "decode_frame", "encode_frame"]

log = logging.getLogger("nhlink.testing.channels")

CHANNEL_TOPICS = ("device", "console", "extensions")
FASTLANE_EVENTS = frozenset(
    {
        "update",
        "reboot",
        "identify",
        "archive",
        "fwup_public_keys",
        "archive_public_keys",
        "extensions:get",
        "scripts/run",
    }
)
_EXTENSION_GREETINGS = {"health": "health:check", "geo": "geo:location:request"}

Frame = tuple[str | None, str | None, str, str, Any]


def encode_frame(
    join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any
) -> str:
    return json.dumps([join_ref, ref, topic, event, payload], separators=(",", ":"))


def decode_frame(message: str | bytes) -> Frame:
    """Parse a Phoenix V2 JSON text frame; ValueError when it is not one."""
    if isinstance(message, bytes):
        raise ValueError("binary frame on a JSON (vsn 2.0.0) socket")
    data = json.loads(message)
    if not isinstance(data, list) or len(data) != 5:
        raise ValueError("not a 5-element array")
    join_ref, ref, topic, event, payload = data
    for value in (join_ref, ref):
        if value is not None and not isinstance(value, str):
            raise ValueError("refs must be strings or null")
    if not isinstance(topic, str) or not isinstance(event, str):
        raise ValueError("topic and event must be strings")
    return join_ref, ref, topic, event, payload


class DeviceSession:
    """The server side of one authenticated device socket."""

    def __init__(
        self, hub: LocalHub, ws: ServerConnection, device: DeviceRecord, connection_id: int
    ) -> None:
        self.hub = hub
        self.ws = ws
        self.device = device
        self.connection_id = connection_id
        self.joined: dict[str, str | None] = {}
        self.offered_extensions: list[str] = []

    @property
    def identifier(self) -> str:
        return self.device.identifier

    # -- I/O ----------------------------------------------------------------

    async def run(self) -> None:
        """Read frames until the socket closes or stays silent for the inactivity timeout."""
        loop = asyncio.get_running_loop()
        last_inbound = loop.time()
        while True:
            remaining = self.hub.inactivity_timeout - (loop.time() - last_inbound)
            try:
                async with asyncio.timeout(max(remaining, 0.0)):
                    message = await self.ws.recv()
            except TimeoutError:
                log.info(
                    "closing %s: no frame for %g s", self.identifier, self.hub.inactivity_timeout
                )
                await self.ws.close(1000, "")
                return
            except ConnectionClosed:
                return
            last_inbound = loop.time()
            try:
                frame = decode_frame(message)
            except ValueError as exc:
                self.hub.record_frame(self, "from_device", None, None, "", "", None, message, True)
                log.warning("malformed frame from %s: %s", self.identifier, exc)
                await self.ws.close(1011, "malformed frame")
                return
            self.hub.record_frame(self, "from_device", *frame, raw=message)
            try:
                await self._dispatch(frame)
            except ConnectionClosed:
                return

    async def send(
        self, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any
    ) -> None:
        text = encode_frame(join_ref, ref, topic, event, payload)
        self.hub.record_frame(self, "to_device", join_ref, ref, topic, event, payload, raw=text)
        await self.ws.send(text)

    async def send_raw(self, data: str | bytes) -> None:
        try:
            frame = decode_frame(data)
        except ValueError:
            self.hub.record_frame(self, "to_device", None, None, "", "", None, data, True)
        else:
            self.hub.record_frame(self, "to_device", *frame, raw=data)
        await self.ws.send(data)

    async def push(
        self, topic: str, event: str, payload: Any, *, fastlane: bool | None = None
    ) -> None:
        """A server push: ``[null,null,...]`` when fastlaned, else with the channel's join_ref."""
        if topic not in self.joined:
            raise HubError(f"device {self.identifier} has not joined {topic!r}")
        if fastlane is None:
            fastlane = topic == "device" and event in FASTLANE_EVENTS
        join_ref = None if fastlane else self.joined[topic]
        await self.send(join_ref, None, topic, event, payload)

    async def reply(self, frame: Frame, status: str, response: Any) -> None:
        join_ref, ref, topic, _event, _payload = frame
        await self.send(join_ref, ref, topic, "phx_reply", {"status": status, "response": response})

    async def close_channel(self, topic: str, event: str = "phx_close") -> None:
        """End a joined channel from the server side (``phx_close`` or ``phx_error``)."""
        if topic not in self.joined:
            raise HubError(f"device {self.identifier} has not joined {topic!r}")
        join_ref = self.joined.pop(topic)
        if topic == "device":
            self.device.device_joined = False
        await self.send(join_ref, join_ref, topic, event, {})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code, reason)

    def abort(self) -> None:
        self.ws.transport.abort()

    # -- dispatch -------------------------------------------------------------

    async def _dispatch(self, frame: Frame) -> None:
        _join_ref, _ref, topic, event, payload = frame
        if topic == "phoenix":
            if event == "heartbeat":
                await self.reply(frame, "ok", {})
            else:
                log.debug("ignoring %s on phoenix from %s", event, self.identifier)
            return
        if event == "phx_join":
            await self._join(frame)
            return
        if topic not in self.joined:
            await self.reply(frame, "error", {"reason": "unmatched topic"})
            return
        if event == "phx_leave":
            self.joined.pop(topic)
            if topic == "device":
                self.device.device_joined = False
            await self.reply(frame, "ok", {})
            return
        body = payload if isinstance(payload, Mapping) else {}
        if topic == "device":
            await self._device_event(event, body)
        elif topic == "console":
            self._console_event(event, body)
        else:
            await self._extensions_event(frame, event, body)
        self.hub.notify()

    async def _join(self, frame: Frame) -> None:
        join_ref, _ref, topic, _event, payload = frame
        if topic not in CHANNEL_TOPICS:
            await self.reply(frame, "error", {"reason": "unmatched topic"})
            return
        failure = self.hub.take_join_failure(topic)
        if failure is not None:
            await self.reply(frame, "error", failure)
            return
        if topic in self.joined:  # a duplicate join closes the previous channel
            old = self.joined.pop(topic)
            await self.send(old, old, topic, "phx_close", {})
        params: dict[str, Any] = dict(payload) if isinstance(payload, Mapping) else {}
        self.joined[topic] = join_ref
        device = self.device
        if topic == "device":
            orchestrator.apply_join(device, params, self.hub.now())
            device.join_params = params
            device.join_count += 1
            device.device_joined = True
            self.hub.notify()
            await self.reply(frame, "ok", self.hub.device_join_response)
            await self._after_device_join(params)
        elif topic == "console":
            device.console_join_params = params
            self.hub.notify()
            await self.reply(frame, "ok", {})
        else:
            device.extensions_join_params = params
            self.offered_extensions = [
                name
                for name, version in params.items()
                if name in self.hub.enabled_extensions and strict_version(version) is not None
            ]
            device.attached_extensions = []
            self.hub.notify()
            await self.reply(frame, "ok", list(self.offered_extensions))

    async def _after_device_join(self, params: Mapping[str, Any]) -> None:
        """The hub's after_join sequence (spec 2.6 step 2)."""
        hub = self.hub
        api = self.device.api_version
        if params.get("fwup_public_keys") == "on_connect" and hub.fwup_public_keys:
            await self.push("device", "fwup_public_keys", {"keys": list(hub.fwup_public_keys)})
        if params.get("archive_public_keys") == "on_connect" and hub.archive_public_keys:
            await self.push(
                "device", "archive_public_keys", {"keys": list(hub.archive_public_keys)}
            )
        if (
            hub.archive is not None
            and hub.release is not None
            and api >= (2, 0, 0)
            and self.device.updates_enabled
            and self.device.updates_blocked_until <= hub.now()
        ):
            await self.push("device", "archive", dict(hub.archive))
        if api >= (2, 2, 0):
            await self.push("device", "extensions:get", {})
        if api >= (2, 1, 0) and hub.connecting_code:
            await self.push(
                "device", "scripts/run", {"text": hub.connecting_code, "ref": "connecting_code"}
            )
        await hub.run_orchestrator()

    async def _device_event(self, event: str, payload: Mapping[str, Any]) -> None:
        device = self.device
        now = self.hub.now()
        if event in ("fwup_progress", "update_progress"):
            orchestrator.apply_progress(device, payload, now)
        elif event == "status_update":
            log.info("device %s: status_update %s", self.identifier, dict(payload))
            orchestrator.apply_status(device, payload, now, self.hub.policy)
            self.hub.notify()
            await self.hub.run_orchestrator()
        elif event == "rebooting":
            device.rebooting_count += 1
        elif event == "firmware_validated":
            device.firmware_validated = True
        elif event == "report_network_interface":
            interface = payload.get("interface")
            device.network_interface = interface if isinstance(interface, str) else None
        elif event == "scripts/run":
            device.script_results.append(dict(payload))
        elif event == "connection_types":
            pass
        else:
            log.info("unknown event %r from %s ignored", event, self.identifier)

    def _console_event(self, event: str, payload: Mapping[str, Any]) -> None:
        if event == "up":
            data = payload.get("data")
            if isinstance(data, str):
                self.device.console_output.append(data)

    async def _extensions_event(self, frame: Frame, event: str, payload: Mapping[str, Any]) -> None:
        name, _, action = event.partition(":")
        device = self.device
        if action == "attached" and name in self.offered_extensions:
            if name not in device.attached_extensions:
                device.attached_extensions.append(name)
            greeting = _EXTENSION_GREETINGS.get(name)
            if greeting is not None:
                await self.push("extensions", greeting, {})
            return
        if action == "detached":
            if name in device.attached_extensions:
                device.attached_extensions.remove(name)
            return
        if action == "error":
            device.extension_errors.append({"extension": name, **payload})
            return
        if name not in device.attached_extensions:
            await self.reply(frame, "error", "detach")
            return
        if event == "health:report":
            device.health_reports.append(payload.get("value"))
        elif event == "geo:location:update":
            device.locations.append(dict(payload))
