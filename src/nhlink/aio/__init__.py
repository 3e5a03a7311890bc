"""The one asyncio layer: the hub websocket, TLS, shared secrets, proxies and the link.

``nhlink.aio.NervesHubLink`` (and ``UpdateHandler``, ``IgnoreUpdates``) are
imported on first use, so importing another ``nhlink.aio`` module stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nhlink.aio.link import IgnoreUpdates, NervesHubLink, UpdateHandler

__all__ = ["IgnoreUpdates", "NervesHubLink", "UpdateHandler"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from nhlink.aio import link

        return getattr(link, name)
    raise AttributeError(f"module 'nhlink.aio' has no attribute {name!r}")
