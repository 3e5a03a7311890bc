"""Configuration: TOML keys, NHLINK_* overrides, aliases and clear validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from nhlink.config import load_config
from nhlink.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nhlink.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    config = load_config(None, environ={})
    assert config.host == "localhost"
    assert config.socket_url == "wss://localhost"
    assert config.heartbeat_interval_msec == 30_000
    assert config.fwup_task == "upgrade"
    assert config.retry.max_disconnects == 10


def test_file_keys_and_tables(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("y")
    path = write(
        tmp_path,
        f'host = "hub.example.com:4001"\nfwup_public_keys = ["abc", "def"]\n'
        f"remote_iex = true\nremote_iex_timeout = 60\n"
        f'[ssl]\ncertfile = "{cert}"\nkeyfile = "{key}"\n'
        f'[kv]\nfile = "kv.txt"\n',
    )
    config = load_config(path, environ={})
    assert config.socket_url == "wss://hub.example.com:4001"
    assert config.fwup_public_keys == ("abc", "def")
    assert config.remote_console is True and config.remote_console_timeout == 60
    assert config.ssl.certfile == str(cert)
    assert config.kv.file == "kv.txt"


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'host = "a.example"\nheartbeat_interval_msec = 30000\n')
    config = load_config(
        path,
        environ={
            "NHLINK_HOST": "b.example",
            "NHLINK_HEARTBEAT_INTERVAL_MSEC": "5000",
            "NHLINK_FWUP_PUBLIC_KEYS": "k1, k2",
            "NHLINK_RETRY_MAX_DISCONNECTS": "3",
            "NHLINK_REMOTE_CONSOLE": "yes",
            "NHLINK_IMPORT_POLICY": "python",
        },
    )
    assert config.host == "b.example"
    assert config.heartbeat_interval_msec == 5000
    assert config.fwup_public_keys == ("k1", "k2")
    assert config.retry.max_disconnects == 3
    assert config.remote_console is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('hots = "x"\n', "unknown key 'hots' (did you mean 'host'?)"),
        ("[ssl]\ncertfil = 'x'\n", "unknown key 'certfil' in [ssl]"),
        ('host = "bad host"\n', "is not a host name"),
        ('host = "ftp://x"\n', "scheme"),
        ('host = "x:99999"\n', "port"),
        ("heartbeat_interval_msec = 'soon'\n", "must be an integer"),
        ("remote_console = 'maybe'\n", "true or false"),
        (
            "[ssl]\ncertfile = '/nonexistent/cert.pem'\nkeyfile = '/nonexistent/key.pem'\n",
            "does not exist",
        ),
        ("fwup_backend = 'teleport'\n", "fwup_backend"),
        ("client = 'no_colon'\n", "package.module:Name"),
        ("this is not toml\n", "not valid TOML"),
        ("[update]\ndownload_rate_limit = -1\n", "download_rate_limit must be 0"),
        ("[update]\nmax_download_bytes = -5\n", "max_download_bytes must be 0"),
        ("[update]\nmetred = true\n", "unknown key 'metred' in [update] (did you mean 'metered'?)"),
    ],
)
def test_invalid_configurations(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_key_file(tmp_path: Path) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root can read any file")
    key = tmp_path / "key.pem"
    key.write_text("k")
    key.chmod(0)
    cert = tmp_path / "cert.pem"
    cert.write_text("c")
    with pytest.raises(ConfigError, match="not readable"):
        load_config(write(tmp_path, f'[ssl]\ncertfile = "{cert}"\nkeyfile = "{key}"\n'), environ={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_compress_key_and_override(tmp_path: Path) -> None:
    assert load_config(None, environ={}).compress is True
    path = write(tmp_path, "compress = false\n")
    assert load_config(path, environ={}).compress is False
    assert load_config(path, environ={"NHLINK_COMPRESS": "yes"}).compress is True


def test_runtime_only_fields_cannot_be_configured(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'cacerts' in \[ssl\]"):
        load_config(write(tmp_path, '[ssl]\ncacerts = "x"\n'), environ={})
    with pytest.raises(ConfigError, match=r"unknown key 'cacerts' in \[ssl\]"):
        load_config(None, environ={"NHLINK_SSL_CACERTS": "x"})
    assert load_config(None, environ={}).ssl.cacerts == ()


def test_extensions_table(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[extensions]\nenabled = ["health", "geo"]\nshell = "/bin/bash"\n'
        'metadata = ["site=lab"]\ngeo_location = "1.5,2.5"\nforward_app_logs = true\n',
    )
    config = load_config(path, environ={"NHLINK_EXTENSIONS_LOG_LEVEL": "warning"})
    assert config.extensions.enabled == ("health", "geo")
    assert config.extensions.shell == "/bin/bash"
    assert config.extensions.metadata == ("site=lab",)
    assert config.extensions.geo_location == "1.5,2.5"
    assert config.extensions.forward_app_logs is True
    assert config.extensions.log_level == "warning"
    assert load_config(None, environ={}).extensions.enabled == (
        "health",
        "geo",
        "local_shell",
        "logging",
    )
    with pytest.raises(ConfigError, match="unknown key 'shel'"):
        load_config(write(tmp_path, '[extensions]\nshel = "x"\n'), environ={})


def test_update_table_and_environment(tmp_path: Path) -> None:
    defaults = load_config(None, environ={}).update
    assert (defaults.resume, defaults.preflight, defaults.metered) == (True, True, False)
    assert (defaults.max_download_bytes, defaults.download_rate_limit) == (0, 0)
    path = write(
        tmp_path,
        "clock_floor = '2026-05-01'\n[update]\nresume = false\ndownload_rate_limit = 2000000\n",
    )
    config = load_config(path, environ={"NHLINK_UPDATE_MAX_DOWNLOAD_BYTES": "1048576"})
    assert config.clock_floor == "2026-05-01"
    assert config.update.resume is False
    assert config.update.download_rate_limit == 2_000_000
    assert config.update.max_download_bytes == 1_048_576


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("clock_floor = 2026-05-01\n", "2026-05-01"),
        ("clock_floor = 2026-05-01T10:00:00Z\n", "2026-05-01T10:00:00+00:00"),
        ("clock_floor = 1777000000\n", "1777000000"),
    ],
)
def test_clock_floor_accepts_toml_dates_and_numbers(
    tmp_path: Path, line: str, expected: str
) -> None:
    assert load_config(write(tmp_path, line), environ={}).clock_floor == expected


@pytest.mark.parametrize("line", ["clock_floor = 'next week'\n", "clock_floor = true\n"])
def test_clock_floor_must_be_readable(tmp_path: Path, line: str) -> None:
    with pytest.raises(ConfigError, match="clock_floor"):
        load_config(write(tmp_path, line), environ={})
