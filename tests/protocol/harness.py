"""A fake transport for the sans-I/O core: feeds frames and time, records what it sends."""

from __future__ import annotations

import json
from typing import Any

from nhlink.protocol import Connection, Event

# Spec section 14: the device join frame and its reply, verbatim.
FIXTURE_DEVICE_JOIN = (
    '["1","1","device","phx_join",{"nerves_fw_uuid":"8a8b902c-d1a9-58aa-6111-04ab57c2f2a8",'
    '"nerves_fw_product":"my_app","nerves_fw_architecture":"arm","nerves_fw_version":"0.1.0",'
    '"nerves_fw_platform":"rpi4","nerves_fw_author":"The Nerves Team","nerves_fw_description":"",'
    '"nerves_fw_misc":"","nerves_fw_vcs_identifier":"","fwup_version":"1.13.0",'
    '"device_api_version":"2.3.0","console_version":"2.0.0","fwup_public_keys":"on_connect",'
    '"archive_public_keys":"on_connect","currently_downloading_uuid":null,'
    '"meta":{"firmware_auto_revert_detected":false,"firmware_validated":true}}]'
)
FIXTURE_DEVICE_JOIN_REPLY = '["1","1","device","phx_reply",{"status":"ok","response":{}}]'
FIXTURE_ACTIVE_KV = {
    "nerves_fw_uuid": "8a8b902c-d1a9-58aa-6111-04ab57c2f2a8",
    "nerves_fw_product": "my_app",
    "nerves_fw_architecture": "arm",
    "nerves_fw_version": "0.1.0",
    "nerves_fw_platform": "rpi4",
    "nerves_fw_author": "The Nerves Team",
    "nerves_fw_description": "",
    "nerves_fw_misc": "",
    "nerves_fw_vcs_identifier": "",
}


class Harness:
    """Drives a Connection like a transport would, at a settable clock."""

    def __init__(self, conn: Connection, now: float = 1000.0) -> None:
        self.conn = conn
        self.now = now

    def connect(self) -> list[str]:
        self.conn.connection_made(self.now)
        return self.sent()

    def receive(self, frame: str | bytes | list[Any]) -> list[Event]:
        text = json.dumps(frame) if isinstance(frame, list) else frame
        self.conn.receive_text(text, self.now)
        return self.conn.events_received()

    def advance(self, seconds: float) -> list[Event]:
        self.now += seconds
        self.conn.on_timer(self.now)
        return self.conn.events_received()

    def sent(self) -> list[str]:
        return self.conn.data_to_send()

    def sent_frames(self) -> list[list[Any]]:
        return [json.loads(text) for text in self.sent()]

    def reply(self, frame: list[Any], status: str = "ok", response: Any = None) -> list[Event]:
        """Answer a sent frame the way a Phoenix server does."""
        join_ref, ref, topic, _, _ = frame
        payload = {"status": status, "response": {} if response is None else response}
        return self.receive([join_ref, ref, topic, "phx_reply", payload])
