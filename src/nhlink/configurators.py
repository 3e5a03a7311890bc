"""Configurators: how a device finds its credentials (spec 9.2), and key handling.

A configurator is any object with ``build(config) -> config``, chosen with
``configurator = "package.module:Class"`` (created without arguments). The
built-ins take the device's :class:`~nhlink.kv.KV`:

* :class:`LocalCertKey`: certificate and key files from ``[ssl]``, else the
  PEMs in KV ``nerves_hub_cert`` / ``nerves_hub_key`` (written to
  ``data_path`` with mode 0600), else ``data_path/cert.pem`` / ``key.pem``.
* :class:`SharedSecret`: the ``x-nh-*`` HMAC credentials, looked up as spec
  1.6 says (KV ``nh_shared_*`` before ``[shared_secret]``); drops the
  certificate and key.
* :class:`UBootEnvProvisioning`: whatever manufacturing wrote into the U-Boot
  environment: ``nerves_hub_cert``/``nerves_hub_key``, else ``nh_shared_*``.

Without ``configurator``: NervesKey when ``[nerves_key]`` is set (a later
issue fills :data:`NERVES_KEY_CONFIGURATOR` in), then :class:`LocalCertKey`
when a certificate is configured or provisioned, else :class:`SharedSecret`.
NervesHubLink picks SharedSecret unless LocalCertKey is named; nhlink looks
for a certificate first so ``[ssl] certfile``/``keyfile`` alone just works.

:func:`prepare_config` runs the whole chain: configurator, CA certificates
(``ca_store``), fwup public key names, and the final credentials check.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Protocol, cast, runtime_checkable

from nhlink.client import load_object
from nhlink.config import Config, SharedSecretConfig
from nhlink.errors import ConfigError, NHLinkError
from nhlink.kv import KV

logger = logging.getLogger("nhlink.configurators")

PRODUCT_KEY_PREFIX = "nhp_"
NERVES_KEY_CONFIGURATOR = "nhlink.nerves_key.configurator:NervesKey"
"""Where the NervesKey configurator will live; chosen when ``[nerves_key]`` is set."""
DEFAULT_IDENTIFIER = "unconfigured"
PUBLIC_KEY_SIZE = 32


@runtime_checkable
class Configurator(Protocol):
    """Turns the loaded configuration into the one the link connects with."""

    def build(self, config: Config) -> Config: ...


class LocalCertKey:
    """Certificate authentication from files or the KV's provisioning PEMs."""

    def __init__(self, kv: KV | None = None) -> None:
        self.kv = kv

    def build(self, config: Config) -> Config:
        kv = self.kv if self.kv is not None else KV.load(config.kv)
        certfile, keyfile = config.ssl.certfile, config.ssl.keyfile
        data_path = Path(config.data_path)
        if not certfile:
            pem = kv.get("nerves_hub_cert")
            certfile = (
                str(_write_private(data_path / "nerves_hub_cert.pem", pem))
                if pem
                else str(data_path / "cert.pem")
            )
        if not keyfile:
            pem = kv.get("nerves_hub_key")
            keyfile = (
                str(_write_private(data_path / "nerves_hub_key.pem", pem))
                if pem
                else str(data_path / "key.pem")
            )
        for label, path in (("certificate", certfile), ("key", keyfile)):
            if not os.path.exists(path):
                raise ConfigError(
                    f"device {label} {path!r} does not exist (set [ssl] certfile/keyfile "
                    "or provision nerves_hub_cert/nerves_hub_key)"
                )
        return config.with_changes(ssl=replace(config.ssl, certfile=certfile, keyfile=keyfile))


class SharedSecret:
    """Shared-secret (HMAC) authentication; the lookup order of spec 1.6."""

    def __init__(self, kv: KV | None = None) -> None:
        self.kv = kv

    def build(self, config: Config) -> Config:
        kv = self.kv if self.kv is not None else KV.load(config.kv)
        resolved = resolve_shared_secret(config.shared_secret, kv)
        return config.with_changes(
            shared_secret=resolved,
            ssl=replace(config.ssl, certfile=None, keyfile=None),
        )


class UBootEnvProvisioning:
    """The credentials manufacturing wrote into the U-Boot environment."""

    def __init__(self, kv: KV | None = None) -> None:
        self.kv = kv

    def build(self, config: Config) -> Config:
        kv = self.kv if self.kv is not None else KV.load(config.kv)
        if kv.get("nerves_hub_cert") and kv.get("nerves_hub_key"):
            plain = config.with_changes(ssl=replace(config.ssl, certfile=None, keyfile=None))
            return LocalCertKey(kv).build(plain)
        if kv.get("nh_shared_key") or kv.get("nh_shared_product_key"):
            return SharedSecret(kv).build(config)
        raise ConfigError(
            "the U-Boot environment holds neither nerves_hub_cert/nerves_hub_key "
            "nor nh_shared_key/nh_shared_product_key (run `nhlink provision`)"
        )


def resolve_shared_secret(settings: SharedSecretConfig, kv: KV) -> SharedSecretConfig:
    """``key``, ``secret`` and ``identifier`` as spec 1.6 looks them up.

    key: KV ``nh_shared_key``, ``[shared_secret] key``, KV ``nh_shared_product_key``,
    ``product_key``. secret: for an ``nhp_`` key KV ``nh_shared_product_secret`` or
    ``product_secret``, else KV ``nh_shared_secret`` or ``secret``. identifier:
    ``identifier``, else KV ``nerves_serial_number``, else ``"unconfigured"``.
    """
    key = _first(
        kv.get("nh_shared_key"),
        settings.key,
        kv.get("nh_shared_product_key"),
        settings.product_key,
    )
    if key is None:
        raise ConfigError(
            "no shared-secret key: set [shared_secret] key or product_key, or provision "
            "nh_shared_key / nh_shared_product_key (or configure a device certificate)"
        )
    if key.startswith(PRODUCT_KEY_PREFIX):
        secret = _first(kv.get("nh_shared_product_secret"), settings.product_secret)
        secret_names = "[shared_secret] product_secret or KV nh_shared_product_secret"
    else:
        secret = _first(kv.get("nh_shared_secret"), settings.secret)
        secret_names = "[shared_secret] secret or KV nh_shared_secret"
    if secret is None:
        raise ConfigError(f"shared-secret key {key!r} has no secret (set {secret_names})")
    identifier = _first(settings.identifier, kv.get("nerves_serial_number"))
    if identifier is None:
        logger.warning(
            "no device identifier ([shared_secret] identifier or KV nerves_serial_number)"
        )
        identifier = DEFAULT_IDENTIFIER
    return replace(settings, key=key, secret=secret, identifier=identifier)


def _first(*values: str | None) -> str | None:
    return next((value for value in values if value), None)


def select_configurator(config: Config, kv: KV) -> Configurator:
    """The configurator ``config`` asks for, or the default choice (module docstring)."""
    if config.configurator is not None:
        return _load_configurator(config.configurator, "configurator")
    if config.nerves_key is not None:
        try:
            return _load_configurator(NERVES_KEY_CONFIGURATOR, "[nerves_key] support")
        except ConfigError:
            raise ConfigError(
                "[nerves_key] is set but this nhlink has no NervesKey support yet "
                "(remove [nerves_key] or name a configurator)"
            ) from None
    if config.ssl.certfile:
        return LocalCertKey(kv)
    if nerves_key_detected(DEFAULT_NERVES_KEY_BUS):
        logger.info(
            "a provisioned NervesKey answers on i2c bus %d; using it", DEFAULT_NERVES_KEY_BUS
        )
        return _load_configurator(NERVES_KEY_CONFIGURATOR, "[nerves_key] support")
    data_path = Path(config.data_path)
    if kv.get("nerves_hub_cert") or (data_path / "cert.pem").exists():
        return LocalCertKey(kv)
    return SharedSecret(kv)


DEFAULT_NERVES_KEY_BUS = 1


def nerves_key_detected(bus: int) -> bool:
    """A provisioned NervesKey answers on ``bus`` (no I2C bus or no chip: False, quickly)."""
    if not Path(f"/dev/i2c-{bus}").exists():
        return False
    try:
        from nhlink.nerves_key.nerves_key import nerves_key_answers

        return nerves_key_answers(bus)
    except (NHLinkError, OSError, ImportError) as exc:
        logger.debug("no NervesKey on i2c bus %d: %s", bus, exc)
        return False


def _load_configurator(spec: str, what: str) -> Configurator:
    target = load_object(spec, what)
    instance = target() if isinstance(target, type) else target
    if not isinstance(instance, Configurator):
        raise ConfigError(f"{what} {spec!r} has no build(config) method")
    return instance


def prepare_config(config: Config, kv: KV) -> Config:
    """Run the configurator, then add CA certificates and resolve fwup public keys."""
    configurator = select_configurator(config, kv)
    built = configurator.build(config)
    if not isinstance(built, Config):
        raise ConfigError(f"{type(configurator).__name__}.build() did not return a Config")
    built = with_ca_certificates(built)
    built = built.with_changes(
        fwup_public_keys=resolve_public_keys(built.fwup_public_keys, _key_dir(built)),
        archive_public_keys=resolve_public_keys(built.archive_public_keys, _key_dir(built)),
    )
    check_credentials(built)
    return built


def check_credentials(config: Config) -> None:
    """There is a certificate pair or a complete shared secret to connect with."""
    if config.ssl.certfile and config.ssl.keyfile:
        return
    secret = config.shared_secret
    if secret.key and secret.secret:
        return
    raise ConfigError(
        "no device credentials: set [ssl] certfile and keyfile, or [shared_secret] key and secret, "
        "or provision them into the U-Boot environment"
    )


def with_ca_certificates(config: Config) -> Config:
    """Add ``ca_store``'s DER certificates unless ``[ssl] cacertfile`` names the CAs."""
    if config.ssl.cacertfile or config.ca_store is None:
        return config
    function = load_object(config.ca_store, "ca_store")
    if not callable(function):
        raise ConfigError(f"ca_store {config.ca_store!r} is not a function")
    try:
        certificates = cast(Callable[[], Iterable[object]], function)()
        ders = tuple(certificates)
    except Exception as exc:
        raise ConfigError(f"ca_store {config.ca_store!r} failed: {exc}") from None
    if not ders or not all(isinstance(der, bytes | bytearray) for der in ders):
        raise ConfigError(f"ca_store {config.ca_store!r} must return DER certificates (bytes)")
    cacerts = config.ssl.cacerts + tuple(bytes(cast(bytes, der)) for der in ders)
    return config.with_changes(ssl=replace(config.ssl, cacerts=cacerts))


def _key_dir(config: Config) -> Path:
    return Path(config.fwup_key_dir or config.data_path)


def resolve_public_keys(entries: Iterable[str], key_dir: Path) -> tuple[str, ...]:
    """Base64 keys as they are; other entries are key names read from ``<key_dir>/<name>.pub``."""
    keys: list[str] = []
    for entry in entries:
        if _is_public_key(entry):
            keys.append(entry)
            continue
        path = key_dir / f"{entry}.pub"
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            raise ConfigError(
                f"fwup public key {entry!r} is not a base64 Ed25519 key, and key file {path} "
                "does not exist (set fwup_key_dir)"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"fwup public key file {path}: cannot read it ({exc})") from None
        if not _is_public_key(text):
            raise ConfigError(f"fwup public key file {path} does not hold a base64 Ed25519 key")
        keys.append(text)
    return tuple(keys)


def _is_public_key(text: str) -> bool:
    try:
        return len(base64.b64decode(text, validate=True)) == PUBLIC_KEY_SIZE
    except (binascii.Error, ValueError):
        return False


def _write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` with mode 0600 (atomically; unchanged files are left alone)."""
    data = text if text.endswith("\n") else text + "\n"
    try:
        if path.exists() and path.read_text() == data and (path.stat().st_mode & 0o077) == 0:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
