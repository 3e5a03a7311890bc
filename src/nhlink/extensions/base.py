"""What every extension is: started on attach, fed ``<name>:<action>`` events, stopped on detach."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import ClassVar

from nhlink.protocol.extensions import EXTENSION_VERSION
from nhlink.protocol.frames import JSONObject, JSONValue

logger = logging.getLogger("nhlink.extensions")


class ExtensionContext:
    """How a running extension talks to the hub: ``push(action, payload)``."""

    def __init__(
        self,
        name: str,
        push: Callable[[str, str, Mapping[str, JSONValue], bool], bool],
        now: Callable[[], float],
    ) -> None:
        self.name = name
        self._push = push
        self.now = now

    def push(self, action: str, payload: Mapping[str, JSONValue], *, track: bool = True) -> bool:
        """Push ``<name>:<action>``; False when dropped (not attached or not connected).

        ``track=False`` for high-volume pushes: no reply is awaited for them.
        """
        return self._push(self.name, action, payload, track)


class Extension:
    """Base class: subclasses set ``name`` and override what they need.

    ``start`` raising makes the extension report ``start_failure``. ``handle``
    gets the events in order; raising there is logged and the extension lives on.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = EXTENSION_VERSION

    def __init__(self) -> None:
        self._context: ExtensionContext | None = None

    @property
    def context(self) -> ExtensionContext:
        if self._context is None:
            raise RuntimeError(f"extension {self.name} is not started")
        return self._context

    async def start(self, context: ExtensionContext) -> None:
        """Attach: remember the context (override to do more, calling super)."""
        self._context = context

    async def handle(self, action: str, payload: JSONObject) -> None:
        """A hub event ``<name>:<action>``."""
        logger.warning("%s: unknown event %r ignored", self.name, action)

    async def stop(self) -> None:
        """Detach: release what ``start`` took."""
        self._context = None
