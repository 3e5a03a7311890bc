"""`ExtensionsManager`: runs the extensions of one :class:`~nhlink.aio.link.NervesHubLink`.

It adds the ``extensions`` channel to the link's connection (joined when the
hub sends ``extensions:get``), listens to the link's events and gives each
extension its own worker task and bounded inbox, so events reach an
extension in order, a slow one delays nobody else and a flood is dropped
(with a log line) instead of piling up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from nhlink.extensions.base import Extension, ExtensionContext
from nhlink.protocol.events import ChannelJoined, Event, ExtensionsRequested
from nhlink.protocol.extensions import (
    EXTENSIONS_TOPIC,
    ExtensionAttachRequested,
    ExtensionDetached,
    ExtensionMessage,
    ExtensionsChannel,
)
from nhlink.protocol.frames import JSONObject, JSONValue

if TYPE_CHECKING:
    from nhlink.aio.link import NervesHubLink

logger = logging.getLogger("nhlink.extensions.manager")

INBOX_SIZE = 256

_Item = tuple[str, str, JSONObject]
"""(kind, action, payload): kind is ``start``, ``message`` or ``stop``."""


class ExtensionsManager:
    """Starts, feeds and stops ``extensions`` (by default those of the link's config)."""

    def __init__(self, link: NervesHubLink, extensions: Iterable[Extension] | None = None) -> None:
        from nhlink.extensions.defaults import default_extensions

        chosen = list(extensions) if extensions is not None else default_extensions(link)
        self._link = link
        self.extensions: dict[str, Extension] = {ext.name: ext for ext in chosen}
        self.channel = ExtensionsChannel({n: e.version for n, e in self.extensions.items()})
        link.connection.add_channel(self.channel, join=False)
        link.event_listeners.append(self.on_event)
        self._inboxes: dict[str, asyncio.Queue[_Item]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._running: set[str] = set()

    def on_event(self, event: Event) -> None:
        """The link's event listener."""
        match event:
            case ExtensionsRequested():
                if self.extensions:
                    logger.info("joining the extensions channel")
                    self._link.connection.join(EXTENSIONS_TOPIC)
            case ChannelJoined(topic="extensions", response=response):
                logger.info("extensions channel joined; the hub attaches %r", response)
            case ExtensionAttachRequested(name=name):
                self._enqueue(name, ("start", "", {}))
            case ExtensionDetached(name=name, reason=reason):
                logger.info("extension %s detached: %s", name, reason)
                self._enqueue(name, ("stop", "", {}))
            case ExtensionMessage(name=name, action=action, payload=payload):
                self._enqueue(name, ("message", action, payload))
            case _:
                pass

    async def close(self) -> None:
        """Stop every extension and worker (call when the link stops)."""
        for name in list(self._workers):
            self._enqueue(name, ("stop", "", {}))
        workers = list(self._workers.values())
        for name in list(self._inboxes):
            with contextlib.suppress(asyncio.QueueFull):
                self._inboxes[name].put_nowait(("exit", "", {}))
        if workers:
            _done, pending = await asyncio.wait(workers, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._workers.clear()
        self._inboxes.clear()

    # -- internals ----------------------------------------------------------

    def _push(self, name: str, action: str, payload: Mapping[str, JSONValue], track: bool) -> bool:
        return self.channel.push_event(name, action, payload, track=track)

    def _enqueue(self, name: str, item: _Item) -> None:
        if name not in self.extensions:
            return
        inbox = self._inboxes.get(name)
        if inbox is None:
            inbox = self._inboxes[name] = asyncio.Queue(INBOX_SIZE)
            task = asyncio.get_running_loop().create_task(self._work(name, inbox))
            self._workers[name] = task
        try:
            inbox.put_nowait(item)
        except asyncio.QueueFull:
            logger.warning("extension %s is behind; %s %s dropped", name, item[0], item[1])

    async def _work(self, name: str, inbox: asyncio.Queue[_Item]) -> None:
        extension = self.extensions[name]
        try:
            while True:
                kind, action, payload = await inbox.get()
                if kind == "exit":
                    return
                await self._step(name, extension, kind, action, payload)
        finally:
            if name in self._running:
                self._running.discard(name)
                await self._safely(name, "stop", extension.stop())

    async def _step(
        self, name: str, extension: Extension, kind: str, action: str, payload: JSONObject
    ) -> None:
        if kind == "start":
            if name in self._running:
                await self._safely(name, "stop", extension.stop())
                self._running.discard(name)
            context = ExtensionContext(name, self._push, self._link.now)
            if await self._safely(name, "start", extension.start(context)):
                self._running.add(name)
                if not self.channel.confirm_attached(name):  # detached while starting
                    self._running.discard(name)
                    await self._safely(name, "stop", extension.stop())
            else:
                self.channel.attach_failed(name, "start_failure")
        elif kind == "stop":
            if name in self._running:
                self._running.discard(name)
                await self._safely(name, "stop", extension.stop())
        elif name in self._running:
            await self._safely(name, action, extension.handle(action, payload))

    @staticmethod
    async def _safely(name: str, what: str, coroutine: Any) -> bool:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.error("extension %s: %s failed: %s: %s", name, what, type(exc).__name__, exc)
            return False
        return True
