"""Frame caps on the live link: the LocalHub sends frames at and just past the 1 MiB and
depth-64 limits over real TLS; the link drops or reconnects, and keeps working."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nhlink.aio.link import NervesHubLink
from nhlink.client import Client
from nhlink.protocol.frames import DEFAULT_MAX_DEPTH, DEFAULT_MAX_FRAME_SIZE
from nhlink.testing import LocalHub, Pki
from tests.link.support import Records, device_config, run, running


class IdentifyClient(Client):
    def __init__(self) -> None:
        super().__init__()
        self.identified = 0

    def identify(self) -> None:
        self.identified += 1


def nested(depth: int) -> str:
    """A frame whose deepest value sits at ``depth`` (outer array = 1, payload = 2)."""
    inner = "[" * (depth - 2) + "]" * (depth - 2)
    return '[null,null,"device","deep",{"v":' + inner + "}]"


def sized(size: int) -> str:
    head = '[null,null,"device","blob",{"d":"'
    tail = '"}]'
    return head + "x" * (size - len(head) - len(tail)) + tail


def test_frames_past_the_caps_are_refused_and_the_link_lives_on(
    pki: Pki, tmp_path: Path, nhlink_log: Records
) -> None:
    client = IdentifyClient()

    async def identify(hub: LocalHub) -> None:
        before = client.identified
        await hub.push_identify("dev-caps")
        await hub.wait_until(lambda: client.identified > before or None, 5, "identify")

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            link = NervesHubLink(device_config(hub, "dev-caps", tmp_path), client)
            async with running(link):
                device = await hub.wait_for_device("dev-caps")
                await hub.send_raw("dev-caps", nested(DEFAULT_MAX_DEPTH))
                await hub.send_raw("dev-caps", nested(DEFAULT_MAX_DEPTH + 1))
                await hub.send_raw("dev-caps", "[" * 500 + "]" * 500)
                await hub.send_raw("dev-caps", sized(DEFAULT_MAX_FRAME_SIZE))
                await identify(hub)
                assert device.connection_count == 1
                # past the websocket cap: the socket closes (1009), the link reconnects
                await hub.send_raw("dev-caps", sized(DEFAULT_MAX_FRAME_SIZE + 1))
                await hub.wait_until(
                    lambda: device.connection_count == 2 or None, 10, "a reconnect"
                )
                await asyncio.sleep(0.2)
                await identify(hub)

    run(scenario())
    messages = [r.getMessage() for r in nhlink_log.records]
    assert "unknown device event 'deep' ignored" in messages
    assert "unknown device event 'blob' ignored" in messages
    dropped = [m for m in messages if m.startswith("malformed frame dropped")]
    assert (
        dropped
        == [f"malformed frame dropped: frame nests deeper than {DEFAULT_MAX_DEPTH} levels"] * 2
    )
    assert not [r for r in nhlink_log.records if r.exc_info]
