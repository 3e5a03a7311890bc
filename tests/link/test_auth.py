"""Authentication and connection failures against the real hub: shared secrets, TLS
errors (one clear line each), upgrade redirects and an HTTP proxy."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nhlink.aio.link import NervesHubLink
from nhlink.aio.shared_secret import signed_headers
from nhlink.config import Config, SharedSecretConfig, load_config
from nhlink.testing import LocalHub, Pki
from tests.link.support import Records, device_config, run, running

TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"


def shared_secret_config(hub: LocalHub, directory: Path, table: str, **top: Any) -> Config:
    lines = [f'host = "{hub.host}"', f'data_path = "{directory / "data"}"']
    lines += [f"{key} = {value}" for key, value in top.items()]
    lines += ["[ssl]", f'cacertfile = "{hub.pki.ca.cert_path}"', "[shared_secret]", table]
    path = directory / "ss.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path, environ={})


def test_shared_secret_device_key_is_accepted(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hub.add_device("ss-dev", shared_key="nhd_device1", shared_secret="dev-s3cret")
            config = shared_secret_config(
                hub, tmp_path, 'key = "nhd_device1"\nsecret = "dev-s3cret"\nidentifier = "ss-dev"'
            )
            link = NervesHubLink(config)
            assert link.uses_shared_secret
            async with running(link):
                device = await hub.wait_for_device("ss-dev")
        upgrade = hub.upgrades[0]
        assert device.auth == "shared_secret"
        assert upgrade.path == "/device-socket/websocket" and upgrade.query == "vsn=2.0.0"
        headers = {k: v for k, v in upgrade.headers.items() if k.startswith("x-nh-")}
        signed_at = int(headers["x-nh-time"])
        assert abs(signed_at - time.time()) < 5
        settings = SharedSecretConfig(key="nhd_device1", secret="dev-s3cret", identifier="ss-dev")
        assert headers == signed_headers(settings, signed_at)
        assert headers["x-nh-alg"] == "NH1-HMAC-sha256-1000-32"

    run(scenario())


def test_product_key_from_the_kv_creates_the_device(pki: Pki, tmp_path: Path) -> None:
    kv_file = tmp_path / "kv.txt"
    kv_file.write_text(
        "nh_shared_product_key=nhp_product\nnh_shared_product_secret=prod-secret\n"
        "nerves_serial_number=SN-77\n"
    )

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hub.add_product_key("nhp_product", "prod-secret")
            config = shared_secret_config(
                hub, tmp_path, f'product_secret = "not used"\n[kv]\nfile = "{kv_file}"'
            )
            link = NervesHubLink(config)
            async with running(link):
                device = await hub.wait_for_device("SN-77")
        assert device.auth == "product_key"
        assert hub.upgrades[0].headers["x-nh-key"] == "nhp_product"

    run(scenario())


@pytest.mark.parametrize(("skew", "accepted_first"), [(-60, True), (-100, False)])
def test_shared_secret_max_age_is_90_seconds(
    pki: Pki, tmp_path: Path, nhlink_log: Records, skew: float, accepted_first: bool
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hub.add_device("ss-age", shared_key="nhd_age", shared_secret="age-secret")
            config = shared_secret_config(
                hub, tmp_path, 'key = "nhd_age"\nsecret = "age-secret"\nidentifier = "ss-age"'
            )
            link = NervesHubLink(config, wall_clock=lambda: time.time() + skew)
            async with running(link):
                await hub.wait_until(lambda: hub.upgrades or None, 5, "an upgrade")
                first = hub.upgrades[0]
                if accepted_first:
                    assert first.status == 101
                else:
                    assert first.status == 401 and "expired" in first.reason
                    await hub.wait_until(lambda: link.last_error, 5, "the error line")
                    assert link.last_error is not None
                    assert link.last_error.startswith(
                        "the hub refused the shared-secret signature (HTTP 401)"
                    )

    run(scenario())


def test_server_date_fixes_a_clock_ten_minutes_behind(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hub.add_device("ss-clock", shared_key="nhd_clock", shared_secret="clock-secret")
            config = shared_secret_config(
                hub, tmp_path, 'key = "nhd_clock"\nsecret = "clock-secret"\nidentifier = "ss-clock"'
            )
            link = NervesHubLink(config, wall_clock=lambda: time.time() - 600)
            async with running(link):
                device = await hub.wait_for_device("ss-clock", timeout=8)
        first, second = hub.upgrades[0], hub.upgrades[1]
        assert first.status == 401 and "expired" in first.reason
        assert second.status == 101 and device.auth == "shared_secret"
        assert abs(int(first.headers["x-nh-time"]) - (time.time() - 600)) < 10
        assert abs(int(second.headers["x-nh-time"]) - time.time()) < 10

    run(scenario())


# -- TLS failures: one clear line each ------------------------------------------------


def _single_error(
    pki: Pki,
    tmp_path: Path,
    log: Records,
    identifier: str,
    configure: Callable[[LocalHub], dict[str, Any]],
    before: Callable[[LocalHub], Any] | None = None,
    *,
    tls13: bool = False,
) -> str:
    """Run a link that cannot connect for a few attempts; return its only ERROR line."""

    async def scenario() -> None:
        async with LocalHub(pki=pki, tls13=tls13) as hub:
            if before is not None:
                await before(hub)
            config = device_config(
                hub, identifier, tmp_path, reconnect_after_msec=[50], **configure(hub)
            )
            link = NervesHubLink(config)
            async with running(link):
                await asyncio.sleep(0.6)
            assert not hub.devices.get(identifier) or not hub.devices[identifier].connection_count

    run(scenario())
    errors = [r for r in log.at_least(logging.ERROR) if r.name.startswith("nhlink.aio")]
    attempts = [r for r in log.records if r.getMessage().startswith("connecting to")]
    assert len(attempts) >= 3, "the link should keep retrying"
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].exc_info is None
    message = errors[0].getMessage()
    assert "\n" not in message
    return message


def test_wrong_ca_is_one_clear_line(pki: Pki, tmp_path: Path, nhlink_log: Records) -> None:
    message = _single_error(
        pki,
        tmp_path,
        nhlink_log,
        "tls-ca",
        lambda hub: {"ssl": {"cacertfile": str(hub.pki.signer.cert_path)}},
    )
    assert message.startswith("TLS: the hub's certificate is not trusted (unknown CA: ")
    assert message.endswith(
        f"check that [ssl] cacertfile '{pki.signer.cert_path}' holds the CA that signed the "
        "hub's certificate"
    )


@pytest.mark.parametrize("tls13", [False, True], ids=["tls1.2", "tls1.3"])
def test_expired_device_certificate_is_one_clear_line(
    pki: Pki, tmp_path: Path, nhlink_log: Records, tls13: bool
) -> None:
    # With TLS 1.3 the hub's alert arrives after the handshake, during the upgrade.
    cert = pki.expired_device_certificate("tls-exp")
    versions = ["tlsv1.2", "tlsv1.3"] if tls13 else ["tlsv1.2"]
    message = _single_error(
        pki,
        tmp_path,
        nhlink_log,
        "tls-exp",
        lambda hub: {
            "ssl": {
                "certfile": str(cert.cert_path),
                "keyfile": str(cert.key_path),
                "versions": versions,
            }
        },
        tls13=tls13,
    )
    assert re.fullmatch(
        rf"TLS: the hub rejected the device certificate \(certificate expired\): it expired on "
        rf"{TIME}; renew it \(system clock is {TIME}\)",
        message,
    ), message


def test_unknown_device_certificate_is_one_clear_line(
    pki: Pki, tmp_path: Path, nhlink_log: Records
) -> None:
    cert = pki.unknown_ca_device_certificate("tls-unknown")
    message = _single_error(
        pki,
        tmp_path,
        nhlink_log,
        "tls-unknown",
        lambda hub: {"ssl": {"certfile": str(cert.cert_path), "keyfile": str(cert.key_path)}},
    )
    assert message == (
        "TLS: the hub rejected the device certificate (unknown CA): check the device is "
        f"registered with the hub and its certificate's signer CA is known to it ({cert.cert_path})"
    )


def test_deleted_device_is_one_clear_line(pki: Pki, tmp_path: Path, nhlink_log: Records) -> None:
    async def delete(hub: LocalHub) -> None:
        hub.device_certificate("tls-deleted")
        hub.add_device("tls-deleted")
        await hub.delete_device("tls-deleted")

    message = _single_error(pki, tmp_path, nhlink_log, "tls-deleted", lambda hub: {}, delete)
    assert message.startswith("TLS: the hub rejected the device certificate (certificate revoked)")


def test_clock_before_the_certificate_start_is_one_clear_line(
    pki: Pki, tmp_path: Path, nhlink_log: Records
) -> None:
    cert = pki.not_yet_valid_device_certificate("tls-clock")
    message = _single_error(
        pki,
        tmp_path,
        nhlink_log,
        "tls-clock",
        lambda hub: {"ssl": {"certfile": str(cert.cert_path), "keyfile": str(cert.key_path)}},
    )
    assert re.fullmatch(
        rf"TLS: system clock is {TIME}, certificate valid from {TIME}: set the clock", message
    ), message


def test_hostname_mismatch_names_sni(pki: Pki, tmp_path: Path, nhlink_log: Records) -> None:
    message = _single_error(
        pki, tmp_path, nhlink_log, "tls-sni", lambda hub: {"sni": "device.nerves-hub.org"}
    )
    assert message == (
        "TLS: the hub's certificate is not valid for 'device.nerves-hub.org': set sni (or host) "
        "to a name in the hub's certificate"
    )


# -- redirects and proxies -------------------------------------------------------------


def test_up_to_two_upgrade_redirects_are_followed(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> list[int]:
        async with LocalHub(pki=pki) as hub:
            hub.redirect_next_upgrades(f"https://{hub.host}/socket/websocket?vsn=2.0.0&r=1")
            hub.redirect_next_upgrades("/socket/websocket?vsn=2.0.0&r=2", status=307)
            link = NervesHubLink(device_config(hub, "dev-redir", tmp_path))
            async with running(link):
                await hub.wait_for_device("dev-redir")
            assert hub.upgrades[2].query == "vsn=2.0.0&r=2"
            return [upgrade.status for upgrade in hub.upgrades]

    assert run(scenario()) == [302, 307, 101]


def test_a_third_redirect_is_refused(pki: Pki, tmp_path: Path, nhlink_log: Records) -> None:
    async def scenario() -> str | None:
        async with LocalHub(pki=pki) as hub:
            hub.redirect_next_upgrades("/socket/websocket?vsn=2.0.0", count=3)
            link = NervesHubLink(device_config(hub, "dev-redir3", tmp_path))
            async with running(link):
                await hub.wait_until(lambda: link.last_error, 5, "the error")
                await hub.wait_for_device("dev-redir3", timeout=5)  # the next attempt is fine
            return link.last_error

    run(scenario())
    errors = [r.getMessage() for r in nhlink_log.at_least(logging.ERROR)]
    assert errors == [
        "the hub redirected more than 2 times (last to "
        f"{errors[0].split('(last to ')[1].split(')')[0]}): check host"
    ]
    assert "wss://127.0.0.1:" in errors[0]


class ConnectProxy:
    """A tiny HTTP CONNECT proxy that records the authorities asked for."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, authority, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        self.requests.append(f"{method} {authority}")
        host, _, port = authority.rpartition(":")
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


def test_connects_through_an_http_proxy(pki: Pki, tmp_path: Path) -> None:
    proxy = ConnectProxy()

    async def scenario() -> None:
        await proxy.start()
        try:
            async with LocalHub(pki=pki) as hub:
                config = device_config(hub, "dev-proxy", tmp_path, proxy=proxy.url)
                link = NervesHubLink(config)
                async with running(link):
                    await hub.wait_for_device("dev-proxy")
                assert proxy.requests == [f"CONNECT {hub.host}"]
        finally:
            await proxy.stop()

    run(scenario())
