"""The ``extensions`` channel (spec 4), without any I/O.

The device joins with ``{name: version}`` of the extensions it supports; the
join reply (and later ``attach``/``detach`` pushes) say which to run. The core
reports :class:`ExtensionAttachRequested`; whoever runs extensions starts the
extension and answers :meth:`ExtensionsChannel.confirm_attached` (pushes
``<name>:attached``) or :meth:`ExtensionsChannel.attach_failed` (pushes
``<name>:error``). Detaching pushes ``<name>:detached`` and reports
:class:`ExtensionDetached`. Hub events ``<name>:<action>`` for an attached
extension become :class:`ExtensionMessage`. Extension pushes ask for a reply:
the hub answers ``{"status":"error","response":"detach"}`` to events of an
extension it does not consider attached, and that extension is detached.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from nhlink.protocol.connection import ChannelLogic
from nhlink.protocol.events import Event
from nhlink.protocol.frames import JSONObject, JSONValue

logger = logging.getLogger("nhlink.protocol.extensions")

EXTENSIONS_TOPIC = "extensions"
EXTENSION_VERSION = "0.0.1"
MAX_TRACKED_REFS = 512
"""Refs of extension pushes remembered to match a ``detach`` reply to its extension."""


@dataclass(frozen=True, slots=True)
class ExtensionAttachRequested(Event):
    """The hub wants ``name`` running: start it, then confirm or report the failure."""

    name: str


@dataclass(frozen=True, slots=True)
class ExtensionDetached(Event):
    """``name`` is detached (``<name>:detached`` already queued when the hub knew it): stop it."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class ExtensionMessage(Event):
    """The hub sent ``<name>:<action>`` to an attached extension."""

    name: str
    action: str
    payload: JSONObject


def requested_names(value: JSONValue, available: Mapping[str, str]) -> list[str] | None:
    """Names in a join reply or ``attach``/``detach`` payload: a list, ``"all"`` or one name.

    ``None`` when the value is none of these.
    """
    if value == "all":
        return list(available)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(dict.fromkeys(item for item in value if isinstance(item, str)))
    return None


class ExtensionsChannel(ChannelLogic):
    """Logic of the ``extensions`` topic; ``available`` maps names to versions."""

    def __init__(self, available: Mapping[str, str]) -> None:
        super().__init__(EXTENSIONS_TOPIC)
        self.available = dict(available)
        self.attached: dict[str, str | None] = {}
        """Attached extensions and the ref of their ``<name>:attached`` push."""
        self._starting: set[str] = set()
        self._push_refs: OrderedDict[str, str] = OrderedDict()

    # -- hooks --------------------------------------------------------------

    def join_params(self) -> JSONObject:
        return dict(self.available)

    def on_joined(self, response: JSONValue, now: float) -> list[Event]:
        names = requested_names(response, self.available)
        if names is None:
            logger.warning(
                "extensions join reply %r is not a list of names; none attached", response
            )
            names = []
        events: list[Event] = []
        for name in [n for n in [*self.attached, *self._starting] if n not in names]:
            self.attached.pop(name, None)
            self._starting.discard(name)
            events.append(ExtensionDetached(name, "not attached after rejoin"))
        self._push_refs.clear()
        return events + self._attach(names, rejoin=True)

    def on_message(self, event: str, payload: JSONObject, now: float) -> list[Event]:
        if event in ("attach", "detach"):
            names = requested_names(payload.get("extensions"), self.available)
            if names is None:
                logger.warning("extensions %s with unusable payload %r ignored", event, payload)
                return []
            if event == "attach":
                return self._attach(names, rejoin=False)
            return [e for name in names for e in self.detach(name, "detached by the hub")]
        name, sep, action = event.partition(":")
        if not sep or not action:
            logger.warning("unknown extensions event %r ignored", event)
            return []
        if name not in self.attached:
            logger.info("extensions event %r for an extension that is not attached ignored", event)
            return []
        return [ExtensionMessage(name, action, payload)]

    def on_reply(self, ref: str, status: str, response: JSONValue, now: float) -> list[Event]:
        name = self._push_refs.pop(ref, None)
        if status == "error" and response == "detach" and name is not None:
            logger.info("the hub says %s is not attached; detaching it", name)
            return self.detach(name, "the hub replied detach")
        if status != "ok":
            logger.debug("extensions reply %s %r to ref %s", status, response, ref)
        return []

    # -- application inputs ------------------------------------------------

    def confirm_attached(self, name: str) -> bool:
        """``name`` started: push ``<name>:attached``.

        False (nothing pushed) when it was detached while starting.
        """
        if name not in self._starting and name not in self.attached:
            return False
        self._starting.discard(name)
        self.attached[name] = None
        self.attached[name] = self.channel.push(f"{name}:attached", {}, want_reply=True)
        self._remember(self.attached[name], name)
        return True

    def attach_failed(self, name: str, reason: str = "start_failure") -> None:
        """``name`` could not start: push ``<name>:error``."""
        self._starting.discard(name)
        self.attached.pop(name, None)
        self.channel.push(f"{name}:error", {"reason": reason})

    def detach(self, name: str, reason: str) -> list[Event]:
        """Detach ``name`` if attached (or starting): push ``<name>:detached``."""
        if name not in self.attached and name not in self._starting:
            return []
        self.attached.pop(name, None)
        self._starting.discard(name)
        self.channel.push(f"{name}:detached", {})
        return [ExtensionDetached(name, reason)]

    def push_event(
        self, name: str, action: str, payload: Mapping[str, JSONValue], *, track: bool = True
    ) -> bool:
        """Push ``<name>:<action>`` for an attached extension; False when dropped.

        ``track`` asks for the hub's reply (a ``detach`` reply detaches ``name``);
        high-volume pushes such as shell output leave it off, so they cannot
        crowd other channels' joins out of the connection's pending replies.
        """
        if name not in self.attached:
            logger.debug("%s:%s dropped: %s is not attached", name, action, name)
            return False
        ref = self.channel.push(f"{name}:{action}", payload, want_reply=track)
        if track:
            self._remember(ref, name)
        return ref is not None

    # -- internals ----------------------------------------------------------

    def _attach(self, names: list[str], *, rejoin: bool) -> list[Event]:
        events: list[Event] = []
        for name in names:
            if name not in self.available:
                logger.warning("the hub asked for unknown extension %r", name)
                self.channel.push(f"{name}:error", {"reason": "unknown_extension"})
            elif name in self.attached and rejoin:
                self.confirm_attached(name)  # still running: tell the new channel
            elif name not in self.attached and name not in self._starting:
                self._starting.add(name)
                events.append(ExtensionAttachRequested(name))
        return events

    def _remember(self, ref: str | None, name: str) -> None:
        if ref is None:
            return
        self._push_refs[ref] = name
        while len(self._push_refs) > MAX_TRACKED_REFS:
            self._push_refs.popitem(last=False)
