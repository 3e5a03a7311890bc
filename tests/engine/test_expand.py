"""${NAME} / ${NAME:-default} expansion."""

from __future__ import annotations

from nhlink.fwup.expand import expand, resolve


def test_resolve_plain_and_default() -> None:
    env = {"SET": "value", "EMPTY": ""}
    assert resolve("SET", env) == "value"
    assert resolve("UNSET", env) == ""
    assert resolve("UNSET:-dflt", env) == "dflt"
    assert resolve("EMPTY:-dflt", env) == "dflt"
    assert resolve("SET:-dflt", env) == "value"


def test_expand_text() -> None:
    env = {"FWUP_META_UUID": "1234", "N": "serial"}
    assert (
        expand("uuid=${FWUP_META_UUID};sn=${N:-none};x=${MISSING}", env) == "uuid=1234;sn=serial;x="
    )
    assert expand("no variables $ here", env) == "no variables $ here"
    assert expand("unterminated ${N", env) == "unterminated ${N"
