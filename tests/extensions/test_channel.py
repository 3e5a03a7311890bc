"""The sans-I/O extensions channel: join params, attach/detach, routing, the detach reply."""

from __future__ import annotations

import json
from typing import Any

from nhlink.protocol import ChannelJoined, Connection
from nhlink.protocol.extensions import (
    ExtensionAttachRequested,
    ExtensionDetached,
    ExtensionMessage,
    ExtensionsChannel,
)
from tests.protocol.harness import Harness

AVAILABLE = {"health": "0.0.1", "geo": "0.0.1", "local_shell": "0.0.1"}


def joined(response: Any) -> tuple[Harness, ExtensionsChannel, list[Any]]:
    """A connection with the extensions channel joined; the join reply is ``response``."""
    channel = ExtensionsChannel(AVAILABLE)
    harness = Harness(Connection())
    harness.conn.add_channel(channel)
    (join,) = harness.connect()
    join_frame = json.loads(join)
    assert join_frame[3] == "phx_join" and join_frame[4] == AVAILABLE
    events = harness.reply(join_frame, "ok", response)
    assert isinstance(events[0], ChannelJoined)
    return harness, channel, events[1:]


def events_of(harness: Harness) -> list[tuple[str, Any]]:
    return [(f[3], f[4]) for f in harness.sent_frames()]


def test_join_reply_asks_to_attach_and_confirmation_pushes_attached() -> None:
    harness, channel, events = joined(["health", "geo"])
    assert events == [ExtensionAttachRequested("health"), ExtensionAttachRequested("geo")]
    channel.confirm_attached("health")
    channel.attach_failed("geo", "start_failure")
    assert events_of(harness) == [
        ("health:attached", {}),
        ("geo:error", {"reason": "start_failure"}),
    ]
    assert list(channel.attached) == ["health"]


def test_unknown_names_get_an_error_and_all_or_a_string_work() -> None:
    harness, _channel, events = joined(["health", "network_identity"])
    assert events == [ExtensionAttachRequested("health")]
    assert events_of(harness) == [("network_identity:error", {"reason": "unknown_extension"})]
    events = harness.receive([None, None, "extensions", "attach", {"extensions": "all"}])
    assert events == [ExtensionAttachRequested("geo"), ExtensionAttachRequested("local_shell")]
    events = harness.receive([None, None, "extensions", "attach", {"extensions": "geo"}])
    assert events == []  # already starting


def test_messages_route_to_attached_extensions_only() -> None:
    harness, channel, _ = joined(["health"])
    channel.confirm_attached("health")
    harness.sent()
    events = harness.receive([None, None, "extensions", "health:check", {}])
    assert events == [ExtensionMessage("health", "check", {})]
    assert harness.receive([None, None, "extensions", "geo:location:request", {}]) == []
    assert harness.receive([None, None, "extensions", "nonsense", {}]) == []
    assert harness.receive([None, None, "extensions", "attach", {"extensions": 42}]) == []


def test_detach_push_and_detach_reply() -> None:
    harness, channel, _ = joined(["health", "geo"])
    channel.confirm_attached("health")
    channel.confirm_attached("geo")
    harness.sent()
    events = harness.receive([None, None, "extensions", "detach", {"extensions": ["geo"]}])
    assert events == [ExtensionDetached("geo", "detached by the hub")]
    assert events_of(harness) == [("geo:detached", {})]
    assert channel.push_event("health", "report", {"value": {}})
    (report,) = harness.sent_frames()
    assert not channel.push_event("geo", "location:update", {})
    # the hub no longer thinks health is attached: it answers the push with detach
    events = harness.reply(report, "error", "detach")
    assert events == [ExtensionDetached("health", "the hub replied detach")]
    assert events_of(harness) == [("health:detached", {})]
    assert channel.attached == {}
    # an unrelated error reply detaches nothing
    assert harness.reply([report[0], "999", "extensions", "x", {}], "error", "detach") == []


def test_rejoin_reconfirms_running_and_stops_dropped_extensions() -> None:
    harness, channel, _ = joined(["health", "geo"])
    channel.confirm_attached("health")
    channel.confirm_attached("geo")
    harness.conn.connection_lost()
    (join,) = harness.connect()
    events = harness.reply(json.loads(join), "ok", ["health"])
    assert events[1:] == [ExtensionDetached("geo", "not attached after rejoin")]
    assert events_of(harness) == [("health:attached", {})]


def test_a_malformed_join_reply_attaches_nothing() -> None:
    _harness, channel, events = joined({"weird": True})
    assert events == [] and channel.attached == {}


def test_an_extension_detached_while_starting_is_not_confirmed() -> None:
    harness, channel, _ = joined(["health"])
    events = harness.receive([None, None, "extensions", "detach", {"extensions": "health"}])
    assert events == [ExtensionDetached("health", "detached by the hub")]
    assert events_of(harness) == [("health:detached", {})]
    assert channel.confirm_attached("health") is False
    assert harness.sent() == [] and channel.attached == {}


def test_untracked_pushes_are_not_matched_to_replies() -> None:
    harness, channel, _ = joined(["local_shell"])
    channel.confirm_attached("local_shell")
    harness.sent()
    assert channel.push_event("local_shell", "shell_output", {"data": "x"}, track=False)
    (output,) = harness.sent_frames()
    assert output[3:] == ["local_shell:shell_output", {"data": "x"}]
    assert harness.reply(output, "error", "detach") == []
    assert list(channel.attached) == ["local_shell"]
