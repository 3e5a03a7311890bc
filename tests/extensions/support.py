"""A link with extensions attached on a LocalHub, and helpers to read what it pushed."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from nhlink.aio.link import NervesHubLink
from nhlink.client import Client
from nhlink.testing import LocalHub, Pki
from tests.link.support import device_config, running

DEVICE = "dev-ext"


@contextlib.asynccontextmanager
async def attached(
    pki: Pki,
    tmp_path: Path,
    names: Iterable[str],
    *,
    client: Client | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[LocalHub, NervesHubLink]]:
    """A running link whose extensions ``names`` the hub has attached."""
    wanted = list(names)
    async with LocalHub(pki=pki, enabled_extensions=wanted) as hub:
        extensions = {"enabled": wanted, **settings}
        config = device_config(hub, DEVICE, tmp_path, extensions=extensions)
        link = NervesHubLink(config, client)
        async with running(link):
            device = await hub.wait_for_device(DEVICE)
            await hub.wait_until(
                lambda: set(wanted) <= set(device.attached_extensions) or None,
                10,
                f"{wanted} attached",
            )
            yield hub, link


def pushed(hub: LocalHub, event: str, since: int = 0) -> list[Any]:
    """Payloads of ``event`` the device pushed on ``extensions``."""
    return [
        f.payload
        for f in hub.frames(DEVICE, "extensions", event, direction="from_device", since=since)
    ]


async def wait_pushed(
    hub: LocalHub, event: str, since: int = 0, timeout: float = 10.0, count: int = 1
) -> list[Any]:
    return await hub.wait_until(
        lambda: found if len(found := pushed(hub, event, since)) >= count else None,
        timeout,
        f"{count} {event}",
    )


async def send(hub: LocalHub, event: str, payload: Any) -> None:
    await hub.push(DEVICE, "extensions", event, payload)
