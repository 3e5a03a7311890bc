"""Phoenix socket/channel machine, driven by frames and time only."""

from __future__ import annotations

import json

import pytest

from nhlink.errors import ConfigError
from nhlink.protocol import (
    ChannelInterrupted,
    ChannelJoined,
    ChannelJoinFailed,
    ChannelLeft,
    ChannelLogic,
    ChannelState,
    Connection,
    ConnectionLost,
    FrameRejected,
    JSONValue,
    MessageReceived,
    ReplyReceived,
)
from nhlink.protocol.connection import MAX_PENDING_REPLIES
from tests.protocol.harness import Harness

CONSOLE_PARAMS = {"console_version": "2.0.0", "device_api_version": "2.3.0"}


def make(**options: object) -> tuple[Harness, ChannelLogic]:
    conn = Connection(**options)  # type: ignore[arg-type]
    logic = ChannelLogic("console", CONSOLE_PARAMS)
    conn.add_channel(logic)
    return Harness(conn), logic


def joined(**options: object) -> Harness:
    h, _ = make(**options)
    [join] = h.connect()
    h.reply(json.loads(join))
    return h


def test_nothing_happens_before_the_socket_opens() -> None:
    h, logic = make()
    assert h.conn.next_deadline() is None
    assert not h.conn.is_open
    assert h.advance(100.0) == []
    assert h.receive('[null,null,"console","dn",{"data":"x"}]') == []
    assert h.sent() == []
    assert logic.channel.state is ChannelState.CLOSED and not logic.channel.joined


def test_join_uses_its_ref_as_join_ref_and_refs_count_from_one() -> None:
    h, logic = make()
    assert h.connect() == [
        '["1","1","console","phx_join",{"console_version":"2.0.0","device_api_version":"2.3.0"}]'
    ]
    assert logic.channel.state is ChannelState.JOINING
    assert h.receive('["1","1","console","phx_reply",{"status":"ok","response":{"a":1}}]') == [
        ChannelJoined("console", {"a": 1})
    ]
    assert logic.channel.joined and logic.channel.join_ref == "1"
    assert logic.channel.push("up", {"data": "ok"}) == "2"
    assert h.sent() == ['["1","2","console","up",{"data":"ok"}]']


def test_reply_without_response_defaults_to_empty_object() -> None:
    h, _ = make()
    h.connect()
    assert h.receive('["1","1","console","phx_reply",{"status":"ok"}]') == [
        ChannelJoined("console", {})
    ]


def test_heartbeat_cycle_and_timeout() -> None:
    h = joined(heartbeat_interval=30.0)
    start = h.now
    assert h.conn.next_deadline() == start + 30.0
    assert h.advance(29.9) == [] and h.sent() == []
    assert h.advance(0.1) == []
    [beat] = h.sent()
    assert beat == '[null,"2","phoenix","heartbeat",{}]'
    assert h.conn.next_deadline() == start + 60.0
    assert h.receive('[null,"2","phoenix","phx_reply",{"status":"ok","response":{}}]') == []
    assert h.advance(30.0) == []
    assert h.sent() == ['[null,"3","phoenix","heartbeat",{}]']
    # A reply to another ref does not count; the next due time finds "3" unanswered.
    assert h.receive('[null,"99","phoenix","phx_reply",{"status":"ok","response":{}}]') == []
    assert h.advance(30.0) == [ConnectionLost("heartbeat timeout")]
    assert h.sent() == []
    # The core goes quiet until the transport reports the closed socket.
    assert not h.conn.is_open and h.conn.next_deadline() is None
    assert h.conn.push("console", "up", {}) is None
    assert h.receive('[null,null,"console","dn",{}]') == []
    assert h.advance(100.0) == []


def test_late_timer_schedules_the_next_heartbeat_from_now() -> None:
    h = joined(heartbeat_interval=10.0)
    h.advance(25.0)
    assert h.sent() == ['[null,"2","phoenix","heartbeat",{}]']
    assert h.conn.next_deadline() == h.now + 10.0


def test_error_reply_to_heartbeat_still_answers_it() -> None:
    h = joined(heartbeat_interval=10.0)
    h.advance(10.0)
    h.sent()
    h.receive('[null,"2","phoenix","phx_reply",{"status":"error","response":{}}]')
    assert h.advance(10.0) == []
    assert h.sent() == ['[null,"3","phoenix","heartbeat",{}]']


@pytest.mark.parametrize("event", ["phx_error", "phx_close"])
def test_channel_end_rejoins_after_five_seconds(event: str) -> None:
    h = joined()
    t = h.now
    assert h.receive(["1", None, "console", event, {}]) == [
        ChannelInterrupted("console", event, t + 5.0)
    ]
    channel = h.conn.channel("console")
    assert channel.state is ChannelState.WAITING_TO_REJOIN and channel.push("up", {}) is None
    assert h.conn.next_deadline() == t + 5.0
    # While waiting, the old join's messages are ignored.
    assert h.receive('["1",null,"console","dn",{}]') == []
    assert h.advance(4.9) == [] and h.sent() == []
    h.advance(0.1)
    assert h.sent() == [
        '["2","2","console","phx_join",{"console_version":"2.0.0","device_api_version":"2.3.0"}]'
    ]
    assert h.receive('["2","2","console","phx_reply",{"status":"ok","response":{}}]') == [
        ChannelJoined("console", {})
    ]
    # Stale frames of the previous join are dropped; current and fastlaned ones pass.
    assert h.receive('["1",null,"console","dn",{"data":"old"}]') == []
    assert h.receive('["1",null,"console","phx_close",{}]') == []
    assert h.receive('["2",null,"console","dn",{"data":"new"}]') == [
        MessageReceived("console", "dn", {"data": "new"})
    ]
    assert h.receive('[null,null,"console","dn",{"data":"fast"}]') == [
        MessageReceived("console", "dn", {"data": "fast"})
    ]


def test_error_while_joining_also_rejoins() -> None:
    h, _ = make()
    h.connect()
    assert h.receive('[null,null,"console","phx_error",{}]') == [
        ChannelInterrupted("console", "phx_error", h.now + 5.0)
    ]
    # The late reply to the abandoned join is ignored.
    assert h.receive('["1","1","console","phx_reply",{"status":"ok","response":{}}]') == []


def test_refused_join_retries_with_the_rejoin_list_and_resets_on_success() -> None:
    h, _ = make(rejoin_after=[1.0, 2.0])
    [first] = h.connect()
    refusal: dict[str, JSONValue] = {"error": "could not connect"}
    assert h.reply(json.loads(first), "error", refusal) == [
        ChannelJoinFailed("console", refusal, h.now + 1.0)
    ]
    h.advance(1.0)
    [join] = h.sent_frames()
    assert join[:2] == ["2", "2"]
    assert h.reply(join, "error", refusal) == [ChannelJoinFailed("console", refusal, h.now + 2.0)]
    h.advance(2.0)
    [join] = h.sent_frames()
    assert h.reply(join, "error", refusal) == [ChannelJoinFailed("console", refusal, h.now + 2.0)]
    h.advance(2.0)
    [join] = h.sent_frames()
    assert h.reply(join) == [ChannelJoined("console", {})]
    assert h.receive([join[0], None, "console", "phx_error", {}]) == [
        ChannelInterrupted("console", "phx_error", h.now + 1.0)
    ]


def test_rejoin_after_accepts_a_single_number() -> None:
    h = joined(rejoin_after=0.0)
    [event] = h.receive('["1",null,"console","phx_close",{}]')
    assert event == ChannelInterrupted("console", "phx_close", h.now)
    h.advance(0.0)
    assert h.sent_frames()[0][3] == "phx_join"


def test_replies_are_matched_by_ref_and_topic() -> None:
    h = joined()
    ref = h.conn.push("console", "ask", {"q": 1}, want_reply=True)
    assert ref == "2"
    assert h.sent() == ['["1","2","console","ask",{"q":1}]']
    assert h.receive('["1","2","other","phx_reply",{"status":"ok","response":{}}]') == []
    assert h.receive('["1",null,"console","phx_reply",{"status":"ok","response":{}}]') == []
    assert h.receive('["1","77","console","phx_reply",{"status":"ok","response":{}}]') == []
    assert h.receive('["1","2","console","phx_reply",{"status":"error","response":"detach"}]') == [
        ReplyReceived("console", "2", "error", "detach")
    ]
    # Answered once: a repeated reply is unknown.
    assert h.receive('["1","2","console","phx_reply",{"status":"ok","response":{}}]') == []
    # Pushes without want_reply are fire-and-forget.
    assert h.conn.push("console", "up", {}) == "3"
    assert h.receive('["1","3","console","phx_reply",{"status":"ok","response":{}}]') == []


def test_pending_replies_are_bounded() -> None:
    h = joined()
    refs = [
        h.conn.push("console", "ask", {}, want_reply=True) for _ in range(MAX_PENDING_REPLIES + 1)
    ]
    assert refs[0] is not None and refs[1] is not None
    assert h.receive(["1", refs[0], "console", "phx_reply", {"status": "ok", "response": {}}]) == []
    assert h.receive(["1", refs[1], "console", "phx_reply", {"status": "ok", "response": {}}]) == [
        ReplyReceived("console", refs[1], "ok", {})
    ]


def test_bounding_pending_replies_never_forgets_a_join() -> None:
    conn = Connection()
    for topic in ("console", "extensions"):
        conn.add_channel(ChannelLogic(topic, CONSOLE_PARAMS))
    h = Harness(conn)
    console_join, extensions_join = (json.loads(frame) for frame in h.connect())
    h.reply(console_join)
    for _ in range(MAX_PENDING_REPLIES + 5):
        h.conn.push("console", "ask", {}, want_reply=True)
    # the join sent before all those pushes is still awaited
    assert h.reply(extensions_join) == [ChannelJoined("extensions", {})]


def test_pending_replies_are_dropped_when_the_channel_ends() -> None:
    h = joined()
    ref = h.conn.push("console", "ask", {}, want_reply=True)
    h.receive('["1",null,"console","phx_error",{}]')
    assert h.receive(["1", ref, "console", "phx_reply", {"status": "ok", "response": {}}]) == []


def test_malformed_frames_are_reported_and_the_connection_lives_on() -> None:
    h = joined(max_frame_size=200, max_depth=4)
    assert h.receive("garbage") == [
        FrameRejected("frame is not valid JSON: Expecting value: line 1 column 1 (char 0)")
    ]
    assert h.receive('["1",null,"console","dn",{"a":[[[1]]]}]') == [
        FrameRejected("frame nests deeper than 4 levels")
    ]
    assert h.receive('["1",null,"console","dn",{"d":"' + "x" * 200 + '"}]') == [
        FrameRejected("frame of 234 bytes exceeds the 200-byte limit")
    ]
    assert h.receive('["1","1","console","phx_reply",{"response":{}}]') == [
        FrameRejected("phx_reply on 'console' has no status string")
    ]
    assert h.receive(b'["1",null,"console","dn",{}]') == [MessageReceived("console", "dn", {})]
    assert h.conn.is_open


def test_frames_for_unknown_topics_are_ignored() -> None:
    h = joined()
    assert h.receive('[null,null,"nope","dn",{}]') == []
    assert h.receive('[null,null,"phoenix","something",{}]') == []


def test_reconnect_resets_refs_and_rejoins() -> None:
    h = joined(heartbeat_interval=30.0)
    h.conn.push("console", "up", {})
    h.conn.connection_lost()
    assert h.sent() == []  # unsent frames die with the socket
    assert h.conn.channel("console").state is ChannelState.CLOSED
    assert h.conn.next_deadline() is None
    h.now += 100.0
    assert h.connect() == [
        '["1","1","console","phx_join",{"console_version":"2.0.0","device_api_version":"2.3.0"}]'
    ]
    assert h.conn.next_deadline() == h.now + 30.0


def test_reconnect_after_heartbeat_timeout() -> None:
    h = joined(heartbeat_interval=1.0)
    h.advance(1.0)
    assert h.advance(1.0) == [ConnectionLost("heartbeat timeout")]
    h.conn.connection_lost()
    assert h.connect()[0].startswith('["1","1","console","phx_join"')
    assert h.advance(1.0) == []
    assert h.sent() == ['[null,"2","phoenix","heartbeat",{}]']


def test_leave_a_joined_channel() -> None:
    h = joined()
    ref = h.conn.push("console", "ask", {}, want_reply=True)
    h.sent()
    h.conn.leave("console")
    [leave] = h.sent_frames()
    assert leave == ["1", "3", "console", "phx_leave", {}]
    assert h.conn.channel("console").state is ChannelState.LEAVING
    assert h.receive(["1", ref, "console", "phx_reply", {"status": "ok", "response": {}}]) == []
    assert h.receive('["1",null,"console","dn",{}]') == []
    assert h.reply(leave) == [ChannelLeft("console")]
    assert h.receive('["1",null,"console","phx_close",{}]') == []
    h.conn.connection_lost()
    assert h.connect() == []  # no longer wanted


def test_join_while_leaving_rejoins_once_left() -> None:
    h = joined()
    h.conn.leave("console")
    [leave] = h.sent_frames()
    h.conn.join("console")
    assert h.sent() == []
    assert h.reply(leave, "error", {"reason": "unmatched topic"}) == [ChannelLeft("console")]
    assert h.sent_frames() == [["3", "3", "console", "phx_join", CONSOLE_PARAMS]]


def test_leave_while_waiting_to_rejoin_cancels_the_rejoin() -> None:
    h = joined()
    h.receive('["1",null,"console","phx_error",{}]')
    h.conn.leave("console")
    assert h.conn.events_received() == [ChannelLeft("console")]
    assert h.advance(10.0) == [] and h.sent() == []


def test_leave_when_there_is_nothing_to_leave() -> None:
    h, _ = make()
    h.conn.leave("console")  # not connected
    h.connect()  # not wanted any more
    assert h.sent() == []
    h.conn.leave("console")  # connected, channel closed
    assert h.sent() == [] and h.conn.events_received() == []


def test_join_on_demand() -> None:
    conn = Connection()
    logic = ChannelLogic("extensions", {"health": "0.0.1"})
    channel = conn.add_channel(logic, join=False)
    assert channel is logic.channel and channel.topic == "extensions"
    h = Harness(conn)
    assert h.connect() == []
    conn.join("extensions")
    assert h.sent() == ['["1","1","extensions","phx_join",{"health":"0.0.1"}]']
    conn.join("extensions")  # already joining: nothing more
    assert h.sent() == []
    assert h.receive(
        '["1","1","extensions","phx_reply",{"status":"ok","response":["health"]}]'
    ) == [ChannelJoined("extensions", ["health"])]


def test_channels_join_in_registration_order() -> None:
    conn = Connection()
    conn.add_channel(ChannelLogic("device"))
    conn.add_channel(ChannelLogic("console"))
    assert [json.loads(f)[:3] for f in Harness(conn).connect()] == [
        ["1", "1", "device"],
        ["2", "2", "console"],
    ]


def test_setup_errors() -> None:
    conn = Connection()
    conn.add_channel(ChannelLogic("device"))
    with pytest.raises(ValueError, match="already in use"):
        conn.add_channel(ChannelLogic("device"))
    with pytest.raises(ValueError, match="already in use"):
        conn.add_channel(ChannelLogic("phoenix"))
    with pytest.raises(RuntimeError, match="not attached"):
        _ = ChannelLogic("lonely").channel
    with pytest.raises(KeyError):
        conn.push("nope", "x", {})
    with pytest.raises(ConfigError, match="heartbeat interval must be positive"):
        Connection(heartbeat_interval=0)
    with pytest.raises(ConfigError, match="rejoin_after must be delays >= 0"):
        Connection(rejoin_after=[])
    with pytest.raises(ConfigError, match="rejoin_after must be delays >= 0"):
        Connection(rejoin_after=[5.0, -1.0])
