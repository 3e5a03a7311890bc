"""``nhlink demo`` end to end (small payload): the update lands and the slots switch."""

from __future__ import annotations

from pathlib import Path

from nhlink.config import KVConfig
from nhlink.demo import DemoPaths, run_demo
from nhlink.kv import KV
from tests.conftest import run_nhlink


def test_demo_switches_slots(tmp_path: Path) -> None:
    lines: list[str] = []
    status = run_demo(tmp_path / "demo", payload_mib=2, say=lines.append, interactive=False)
    assert status == 0, "\n".join(lines)
    paths = DemoPaths((tmp_path / "demo").resolve())
    kv = KV.load(KVConfig(fw_env_config=str(paths.fw_env_config)))
    assert kv.active_slot == "b"
    assert kv.get("b.nerves_fw_version") == "2.0.0"
    assert kv.get("a.nerves_fw_version") == "1.0.0"
    assert kv.get("nerves_fw_validated") == "0"
    text = "\n".join(lines)
    assert "received, started, completed" in text
    assert "verified" in text and "Rebooting" in text
    assert paths.log.stat().st_size > 0


def test_demo_command_line(tmp_path: Path) -> None:
    result = run_nhlink(["demo", "--dir", str(tmp_path / "d"), "--size", "1"], timeout=120)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"slot b active, firmware 2.0.0" in result.stdout
    assert result.stderr == b""
