"""Test helpers: run coroutines with a deadline, a minimal Phoenix V2 client, TLS/HTTP helpers."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect

from nhlink.testing import LocalHub

T = TypeVar("T")

DEVICE_PARAMS: dict[str, Any] = {
    "nerves_fw_uuid": "8a8b902c-d1a9-58aa-6111-04ab57c2f2a8",
    "nerves_fw_product": "my_app",
    "nerves_fw_architecture": "arm",
    "nerves_fw_version": "0.1.0",
    "nerves_fw_platform": "rpi4",
    "fwup_version": "1.13.0",
    "device_api_version": "2.3.0",
    "console_version": "2.0.0",
    "currently_downloading_uuid": None,
    "meta": {"firmware_auto_revert_detected": False, "firmware_validated": True},
}


def run(coro: Awaitable[T], timeout: float = 15.0) -> T:
    """Run `coro` on a fresh event loop, failing after `timeout` seconds."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


class PhoenixClient:
    """Just enough of a Phoenix V2 client to drive the hub from tests."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ref = 0
        self.join_refs: dict[str, str] = {}

    def next_ref(self) -> str:
        self._ref += 1
        return str(self._ref)

    async def send(
        self, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any
    ) -> None:
        await self.ws.send(json.dumps([join_ref, ref, topic, event, payload]))

    async def push(self, topic: str, event: str, payload: Any) -> str:
        ref = self.next_ref()
        await self.send(self.join_refs.get(topic), ref, topic, event, payload)
        return ref

    async def recv(self, timeout: float = 5.0) -> list[Any]:
        async with asyncio.timeout(timeout):
            message = await self.ws.recv()
        frame = json.loads(message)
        assert isinstance(frame, list) and len(frame) == 5, frame
        return frame

    async def recv_until(
        self, predicate: Callable[[list[Any]], bool], timeout: float = 5.0
    ) -> list[Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if predicate(frame):
                    return frame

    async def reply_to(self, ref: str, timeout: float = 5.0) -> list[Any]:
        return await self.recv_until(lambda f: f[1] == ref and f[3] == "phx_reply", timeout)

    async def join(self, topic: str, params: Mapping[str, Any]) -> list[Any]:
        ref = self.next_ref()
        self.join_refs[topic] = ref
        await self.send(ref, ref, topic, "phx_join", dict(params))
        return await self.reply_to(ref)

    async def heartbeat(self) -> list[Any]:
        ref = self.next_ref()
        await self.send(None, ref, "phoenix", "heartbeat", {})
        return await self.reply_to(ref)


@asynccontextmanager
async def device_socket(
    hub: LocalHub,
    identifier: str | None,
    *,
    path: str = "/socket/websocket",
    ssl_context: ssl.SSLContext | None = None,
    headers: Mapping[str, str] | None = None,
    join: Mapping[str, Any] | None = None,
) -> AsyncIterator[PhoenixClient]:
    """Connect to the hub (certificate of `identifier`, or none) and optionally join ``device``."""
    ctx = ssl_context or hub.client_ssl_context(identifier)
    uri = f"wss://{hub.host}{path}?vsn=2.0.0"
    async with connect(uri, ssl=ctx, additional_headers=dict(headers or {}), open_timeout=5) as ws:
        client = PhoenixClient(ws)
        if join is not None:
            reply = await client.join("device", join)
            assert reply[4] == {"status": "ok", "response": {}}, reply
        yield client
