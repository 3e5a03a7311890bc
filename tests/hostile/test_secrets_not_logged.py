"""No secret reaches the logs: a certificate connect, a whole update and shared-secret
connects (accepted and refused) run with every logger at DEBUG, and the formatted
records (tracebacks included) hold no key material."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from nhlink.aio.link import NervesHubLink
from nhlink.aio.shared_secret import connect_salt
from nhlink.testing import LocalHub, Pki
from tests.helpers.vectors import vectors_dir
from tests.link.support import run, running
from tests.link.test_auth import shared_secret_config
from tests.update.firmware import Firmware
from tests.update.test_updater import DEVICE, assert_applied, updating_device

SECRET = "s3cret-for-the-log-test-7f3a"
WRONG_SECRET = "wrong-s3cret-for-the-log-test-91c2"


class Everything(logging.Handler):
    """Every record of every logger, formatted as a real handler would write it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, self.format(record)))


@pytest.fixture
def all_logs() -> Iterator[Everything]:
    handler = Everything()
    root = logging.getLogger()
    loggers = [root] + [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if name.startswith(("nhlink", "websockets", "asyncio"))
    ]
    levels = [logger.level for logger in loggers]
    root.addHandler(handler)
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def b64_forms(data: bytes) -> list[str]:
    forms = [base64.b64encode(data).decode(), base64.urlsafe_b64encode(data).decode()]
    return forms + [form.rstrip("=") for form in forms]


def pem_body_lines(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


HUB_SIDE = ("websockets.server", "nhlink.testing")
"""Loggers of the LocalHub running in the same process (not the device's logs)."""


@pytest.mark.parametrize(
    "source",
    ["device", "all"],
)
def test_debug_logs_hold_no_key_or_secret(
    pki: Pki,
    tmp_path: Path,
    fw_v1: Firmware,
    fw_v2: Firmware,
    all_logs: Everything,
    source: str,
) -> None:
    found: dict[str, object] = {}

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            (tmp_path / "cert").mkdir()
            async with updating_device(hub, tmp_path / "cert", fw_v1) as device:
                await device.push(hosted, fw_v2)
                await device.wait_for("completed")
                await device.wait_for_reboot()
            found["device_key_pem"] = hub.device_certificate(DEVICE).key_path.read_text()
            assert_applied(device, fw_v1, fw_v2)

            hub.add_device("ss-log", shared_key="nhd_logtest", shared_secret=SECRET)
            for directory, secret in ((tmp_path / "ss", SECRET), (tmp_path / "bad", WRONG_SECRET)):
                directory.mkdir()
                config = shared_secret_config(
                    hub,
                    directory,
                    f'key = "nhd_logtest"\nsecret = "{secret}"\nidentifier = "ss-log"',
                    reconnect_after_msec="[50]",
                )
                async with running(NervesHubLink(config)):
                    if secret == SECRET:
                        await hub.wait_for_device("ss-log")
                    else:
                        await asyncio.sleep(0.5)
            found["upgrades"] = [u.headers for u in hub.upgrades if "x-nh-signature" in u.headers]

    run(scenario(), timeout=60)

    secrets: list[str] = [SECRET, WRONG_SECRET]
    pem = str(found["device_key_pem"])
    secrets += pem_body_lines(pem)
    secrets.append("".join(pem_body_lines(pem)))
    fwup_key_text = (vectors_dir() / "keys" / "testkey-a.priv").read_text().strip()
    fwup_key = base64.b64decode(fwup_key_text)
    secrets += [fwup_key_text, fwup_key.hex(), fwup_key[:32].hex(), *b64_forms(fwup_key[:32])]
    upgrades = found["upgrades"]
    assert isinstance(upgrades, list) and len(upgrades) >= 2  # accepted and refused connects
    for headers in upgrades:
        signature = headers["x-nh-signature"]
        secrets += [signature, signature.rsplit(".", 1)[1]]
        salt = connect_salt(headers["x-nh-alg"], headers["x-nh-key"], int(headers["x-nh-time"]))
        for secret in (SECRET, WRONG_SECRET):
            derived = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, 1000, 32)
            secrets += [derived.hex(), derived.hex().upper(), *b64_forms(derived)]

    device = [(n, line) for n, line in all_logs.lines if not n.startswith(HUB_SIDE)]
    if source == "device":  # every device-side logger but websockets' own
        device = [(n, line) for n, line in device if not n.startswith("websockets")]
    text = "\n".join(line for _, line in device)
    assert "connecting to" in text and "update" in text  # the logs really were captured
    assert any(" DEBUG " in line for _, line in device)
    if source == "all":
        assert "> GET /device-socket/websocket" in text  # websockets' handshake lines too
    leaked = [secret for secret in secrets if len(secret) >= 8 and secret in text]
    assert leaked == []
