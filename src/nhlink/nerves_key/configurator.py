"""The NervesKey configurator: device identity from the chip (``[nerves_key]``).

``build`` rebuilds the ``certificate_pair`` from the chip on ``i2c_bus``,
writes device + signer certificate as one PEM chain to
``<data_path>/nerves_key_chain.pem`` (the client sends the chain, as
NervesHubLink does by listing the signer in ``cacerts``) and sets ``[ssl]
keyfile`` to ``nerves-key:i2c-<bus>``: a marker, not a file, telling the
transport to sign the handshake on the chip (:mod:`nhlink.nerves_key.tls`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path

from nhlink.config import Config
from nhlink.errors import ConfigError
from nhlink.nerves_key.errors import NervesKeyError
from nhlink.nerves_key.nerves_key import NervesKeyDevice, open_atecc

logger = logging.getLogger("nhlink.nerves_key.configurator")

CHIP_KEY_PREFIX = "nerves-key:i2c-"
CHAIN_FILE = "nerves_key_chain.pem"


def chip_key_marker(bus: int) -> str:
    """The ``[ssl] keyfile`` value that means "the key in the NervesKey on ``bus``"."""
    return f"{CHIP_KEY_PREFIX}{bus}"


def chip_key_bus(keyfile: str | None) -> int | None:
    """The bus of a :func:`chip_key_marker`, or None for an ordinary key file."""
    if not keyfile or not keyfile.startswith(CHIP_KEY_PREFIX):
        return None
    try:
        return int(keyfile[len(CHIP_KEY_PREFIX) :])
    except ValueError:
        raise ConfigError(f"[ssl] keyfile {keyfile!r} is not a valid NervesKey marker") from None


class NervesKey:
    """Certificates from a provisioned NervesKey; the private key stays on the chip."""

    def build(self, config: Config) -> Config:
        settings = config.nerves_key
        if settings is None:
            raise ConfigError("the NervesKey configurator needs a [nerves_key] section")
        if settings.certificate_pair not in ("primary", "aux"):
            raise ConfigError(
                f"[nerves_key] certificate_pair {settings.certificate_pair!r} is not "
                "'primary' or 'aux'"
            )
        try:
            device = NervesKeyDevice(open_atecc(settings.i2c_bus))
            pair = device.certificate_pair(settings.certificate_pair)
        except NervesKeyError as exc:
            raise ConfigError(f"[nerves_key] on /dev/i2c-{settings.i2c_bus}: {exc}") from None
        logger.info(
            "NervesKey %s: %s certificate for %s",
            device.chip_name,
            settings.certificate_pair,
            pair.device.subject.rfc4514_string(),
        )
        ssl_settings = config.ssl
        certfile = ssl_settings.certfile or str(
            _write(Path(config.data_path) / CHAIN_FILE, pair.chain_pem())
        )
        keyfile = ssl_settings.keyfile or chip_key_marker(settings.i2c_bus)
        return config.with_changes(ssl=replace(ssl_settings, certfile=certfile, keyfile=keyfile))


def _write(path: Path, data: bytes) -> Path:
    try:
        if path.exists() and path.read_bytes() == data:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
