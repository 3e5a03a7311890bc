"""Device client configuration: a TOML file with NervesHubLink's key names,
overridden by ``NHLINK_<KEY>`` environment variables, validated into a frozen
:class:`Config`.

Environment variables name a top-level key (``NHLINK_HOST``) or a key of a
table (``NHLINK_SSL_CERTFILE`` for ``[ssl] certfile``). Lists are given
comma-separated, booleans as true/false/1/0/yes/no.
"""

from __future__ import annotations

import datetime
import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nhlink.clock import validate_clock_config
from nhlink.errors import ConfigError

ENV_PREFIX = "NHLINK_"

RUNTIME_ONLY = {"runtime": True}
"""Field metadata of values configurators fill in; the file and environment cannot set them."""


@dataclass(frozen=True)
class SSLConfig:
    """``[ssl]``: the device certificate, its key and the CA bundle for the hub."""

    certfile: str | None = None
    keyfile: str | None = None
    cacertfile: str | None = None
    versions: tuple[str, ...] = ("tlsv1.2",)
    server_name_indication: str | None = None
    cacerts: tuple[bytes, ...] = field(default=(), metadata=RUNTIME_ONLY)
    """DER CA certificates added by ``ca_store`` or a configurator (not a file key)."""


@dataclass(frozen=True)
class SharedSecretConfig:
    """``[shared_secret]``: HMAC authentication (spec section 1.6)."""

    key: str | None = None
    secret: str | None = None
    product_key: str | None = None
    product_secret: str | None = None
    identifier: str | None = None
    key_digest: str = "sha256"
    key_iterations: int = 1000
    key_length: int = 32
    signature_version: str = "NH1"


@dataclass(frozen=True)
class NervesKeyConfig:
    """``[nerves_key]``: an ATECC508A/608A secure element on I2C."""

    i2c_bus: int = 1
    certificate_pair: str = "primary"


@dataclass(frozen=True)
class KVConfig:
    """``[kv]``: where firmware metadata lives (U-Boot env or a key=value file)."""

    fw_env_config: str | None = None
    file: str | None = None


@dataclass(frozen=True)
class RetryConfig:
    """``[retry]``: the downloader's retry rules (spec section 7)."""

    max_disconnects: int = 10
    idle_timeout_msec: int = 60_000
    max_timeout_msec: int = 86_400_000
    time_between_retries_msec: int = 15_000
    worst_case_download_speed: int = 30_000


@dataclass(frozen=True)
class ExtensionsConfig:
    """``[extensions]``: which extensions the device offers and how they behave (spec 4)."""

    enabled: tuple[str, ...] = ("health", "geo", "local_shell", "logging")
    shell: str = "/bin/sh"
    disk_path: str = "/"
    metadata: tuple[str, ...] = ()
    """``key=value`` pairs reported as health metadata."""
    geo_location: str | None = None
    """A fixed location, ``"latitude,longitude[,accuracy_m]"``."""
    forward_app_logs: bool = False
    log_level: str = "info"


@dataclass(frozen=True)
class UpdateConfig:
    """``[update]``: how firmware updates use the link, the disk and the clock."""

    resume: bool = True
    """Keep a journal in ``data_path`` so an interrupted update continues by Range."""
    max_download_bytes: int = 0
    """Data budget per update in bytes, re-fetches included (0: no budget)."""
    download_rate_limit: int = 0
    """Firmware download rate cap in bytes/s (0: as fast as the link allows)."""
    metered: bool = False
    """Metered link: no parallel or repeated full downloads (a resume is required)."""
    preflight: bool = True
    """Check space, keys, slot, actions and clock before the first firmware byte."""


@dataclass(frozen=True)
class Config:
    """Everything the device client needs to run."""

    host: str = "localhost"
    sni: str | None = None
    data_path: str = "/data/nerves-hub"
    fwup_public_keys: tuple[str, ...] = ()
    fwup_key_dir: str | None = None
    archive_public_keys: tuple[str, ...] = ()
    request_fwup_public_keys: bool = False
    request_archive_public_keys: bool = False
    fwup_devpath: str | None = None
    fwup_task: str = "upgrade"
    fwup_backend: str = "native"
    fwup_env: tuple[str, ...] = ()
    fwup_extra_options: tuple[str, ...] = ()
    heartbeat_interval_msec: int = 30_000
    rejoin_after_msec: int = 5_000
    reconnect_after_msec: tuple[int, ...] = ()
    remote_console: bool = False
    remote_console_timeout: int = 300
    client: str | None = None
    configurator: str | None = None
    ca_store: str | None = None
    proxy: str | None = None
    allow_cross_host_redirects: bool = False
    """Follow a firmware download redirect to another host (a CDN or storage front)."""
    compress: bool = True
    clock_floor: str | None = None
    """Earliest believable time (ISO 8601 or Unix seconds); default: the build time."""
    set_clock: bool = False
    """Set the system clock forward to the floor when it is behind (needs root)."""
    ssl: SSLConfig = field(default_factory=SSLConfig)
    shared_secret: SharedSecretConfig = field(default_factory=SharedSecretConfig)
    nerves_key: NervesKeyConfig | None = None
    kv: KVConfig = field(default_factory=KVConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    extensions: ExtensionsConfig = field(default_factory=ExtensionsConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)

    @property
    def socket_url(self) -> str:
        """The websocket URL: ``host`` as is when it has a scheme, else ``wss://host``."""
        base = self.host if "://" in self.host else f"wss://{self.host}"
        return base.rstrip("/")

    def with_changes(self, **changes: Any) -> Config:
        """A copy with some fields replaced (what configurators return)."""
        return replace(self, **changes)


TABLES: dict[str, type[Any]] = {
    "ssl": SSLConfig,
    "shared_secret": SharedSecretConfig,
    "nerves_key": NervesKeyConfig,
    "kv": KVConfig,
    "retry": RetryConfig,
    "extensions": ExtensionsConfig,
    "update": UpdateConfig,
}

ALIASES = {"remote_iex": "remote_console", "remote_iex_timeout": "remote_console_timeout"}

FWUP_BACKENDS = ("native", "fwup")


def load_config(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> Config:
    """Read ``path`` (TOML; None for defaults only), apply environment overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(Path(path))
    env = os.environ if environ is None else environ
    _apply_environment(raw, env)
    config = build_config(raw, source=str(path) if path else "defaults")
    validate(config)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: configuration file is not readable") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    top_level = {f.name for f in fields(Config)} - set(TABLES) | set(ALIASES)
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in ("import_policy", "require_native", "vectors") or key.startswith("bench"):
            continue  # nhlink's own process settings, not configuration
        table = next((t for t in TABLES if key.startswith(t + "_")), None)
        if table is not None and key not in top_level:
            raw.setdefault(table, {})[key[len(table) + 1 :]] = value
        else:
            raw[key] = value


def build_config(raw: Mapping[str, Any], *, source: str = "configuration") -> Config:
    """Turn a parsed TOML mapping into a Config, converting and checking each value."""
    values: dict[str, Any] = {}
    known = _settable_fields(Config)
    for key, value in raw.items():
        name = ALIASES.get(key, key)
        if name not in known:
            raise ConfigError(
                f"{source}: unknown key {key!r}{_suggest(key, list(known) + list(ALIASES))}"
            )
        if name in TABLES:
            values[name] = _build_table(name, value, source)
        elif name == "clock_floor" and isinstance(value, int | float | datetime.date):
            if isinstance(value, bool):
                raise ConfigError(f"{source}: clock_floor must be a date/time or Unix seconds")
            # TOML dates and numbers are as good as their text
            values[name] = value.isoformat() if isinstance(value, datetime.date) else str(value)
        else:
            values[name] = _convert(known[name].type, value, f"{source}: {key}")
    return Config(**values)


def _build_table(name: str, value: Any, source: str) -> Any:
    cls = TABLES[name]
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: [{name}] must be a table")
    known = _settable_fields(cls)
    converted: dict[str, Any] = {}
    for key, item in value.items():
        if key not in known:
            raise ConfigError(
                f"{source}: unknown key {key!r} in [{name}]{_suggest(key, list(known))}"
            )
        converted[key] = _convert(known[key].type, item, f"{source}: [{name}] {key}")
    return cls(**converted)


def _settable_fields(cls: type[Any]) -> dict[str, Any]:
    return {f.name: f for f in fields(cls) if not f.metadata.get("runtime")}


def _suggest(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _convert(annotation: Any, value: Any, where: str) -> Any:
    kind = str(annotation)
    if "tuple[str" in kind:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{where} must be a list of strings")
        return tuple(i.strip() for i in items if i.strip())
    if "tuple[int" in kind:
        items = value.split(",") if isinstance(value, str) else value
        try:
            return tuple(int(i) for i in items)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a list of integers") from None
    if kind.startswith("bool"):
        return _to_bool(value, where)
    if kind.startswith("int"):
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be an integer, not {value!r}") from None
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string")
    return value


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{where} must be true or false, not {value!r}")


def validate(config: Config) -> None:
    """Check values that must make sense together; raise ConfigError with the reason."""
    _check_host(config.host)
    validate_clock_config(config)
    if config.fwup_backend not in FWUP_BACKENDS:
        raise ConfigError(f"fwup_backend must be one of {', '.join(FWUP_BACKENDS)}")
    if config.heartbeat_interval_msec < 1000:
        raise ConfigError("heartbeat_interval_msec must be at least 1000")
    for label, number in (
        ("[update] max_download_bytes", config.update.max_download_bytes),
        ("[update] download_rate_limit", config.update.download_rate_limit),
    ):
        if number < 0:
            raise ConfigError(f"{label} must be 0 (no limit) or a positive number")
    if config.remote_console_timeout < 1:
        raise ConfigError("remote_console_timeout must be a positive number of seconds")
    for label, path in (
        ("[ssl] certfile", config.ssl.certfile),
        ("[ssl] keyfile", config.ssl.keyfile),
        ("[ssl] cacertfile", config.ssl.cacertfile),
        ("[kv] fw_env_config", config.kv.fw_env_config),
    ):
        if path is not None:
            _check_readable(label, path)
    if config.kv.fw_env_config and config.kv.file:
        raise ConfigError("[kv] takes fw_env_config or file, not both")
    if bool(config.ssl.certfile) != bool(config.ssl.keyfile):
        raise ConfigError("[ssl] certfile and keyfile must be given together")
    for version in config.ssl.versions:
        if version not in ("tlsv1.2", "tlsv1.3"):
            raise ConfigError(f"[ssl] versions: {version!r} is not supported (tlsv1.2, tlsv1.3)")
    if config.nerves_key is not None and config.nerves_key.certificate_pair not in (
        "primary",
        "aux",
    ):
        raise ConfigError("[nerves_key] certificate_pair must be 'primary' or 'aux'")
    for label, spec in (
        ("client", config.client),
        ("configurator", config.configurator),
        ("ca_store", config.ca_store),
    ):
        if spec is not None and spec.count(":") != 1:
            raise ConfigError(f"{label} must look like 'package.module:Name', not {spec!r}")


def _check_host(host: str) -> None:
    url = host if "://" in host else f"wss://{host}"
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss", "http", "https"):
        raise ConfigError(f"host {host!r}: the scheme must be wss:// (or ws:// for tests)")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"host {host!r}: the port is not a number between 0 and 65535") from None
    if not parts.hostname or any(c.isspace() for c in host) or port == 0:
        raise ConfigError(f"host {host!r} is not a host name or URL")


def _check_readable(label: str, path: str) -> None:
    if not os.path.exists(path):
        raise ConfigError(f"{label} {path!r} does not exist")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{label} {path!r} is not readable (check its owner and mode)")
