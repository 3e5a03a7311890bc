"""Connecting to the local hub with real clients: mutual TLS, shared secrets, rejections."""

from __future__ import annotations

import email.utils
import itertools
import ssl
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from nhlink.testing import LocalHub
from tests.testing.support import DEVICE_PARAMS, device_socket, run
from tests.testing.test_shared_secret import sign_headers


def test_device_joins_and_gets_heartbeat_replies() -> None:
    async def scenario() -> None:
        async with LocalHub(fwup_public_keys=["pUJ3key="]) as hub:
            params = {**DEVICE_PARAMS, "fwup_public_keys": "on_connect"}
            async with device_socket(hub, "dev-1") as client:
                sslobj = client.ws.transport.get_extra_info("ssl_object")
                assert sslobj.version() == "TLSv1.2"
                assert client.ws.response is not None
                extensions = client.ws.response.headers.get("Sec-WebSocket-Extensions", "")
                assert extensions.startswith("permessage-deflate")
                assert await client.join("device", params) == [
                    "1",
                    "1",
                    "device",
                    "phx_reply",
                    {"status": "ok", "response": {}},
                ]
                # after-join sequence (spec 2.6): requested keys, then extensions:get (api >= 2.2.0)
                assert await client.recv() == [
                    None,
                    None,
                    "device",
                    "fwup_public_keys",
                    {"keys": ["pUJ3key="]},
                ]
                assert await client.recv() == [None, None, "device", "extensions:get", {}]
                for expected_ref in ("2", "3"):
                    assert await client.heartbeat() == [
                        None,
                        expected_ref,
                        "phoenix",
                        "phx_reply",
                        {"status": "ok", "response": {}},
                    ]
                device = await hub.wait_for_device("dev-1", 2)
                assert device.join_params == params
                assert (device.connection_count, device.auth, device.firmware_uuid) == (
                    1,
                    "certificate",
                    DEVICE_PARAMS["nerves_fw_uuid"],
                )
                heartbeats = hub.frames("dev-1", "phoenix")
                assert [(f.direction, f.event) for f in heartbeats] == [
                    ("from_device", "heartbeat"),
                    ("to_device", "phx_reply"),
                ] * 2
                assert all(a.at <= b.at for a, b in itertools.pairwise(heartbeats))
            await hub.wait_for_disconnect("dev-1", 2)

    run(scenario())


def test_api_below_2_2_gets_no_extensions_get() -> None:
    async def scenario() -> None:
        async with LocalHub(connecting_code="IO.puts(1)") as hub:
            async with device_socket(
                hub, "dev-1", join={**DEVICE_PARAMS, "device_api_version": "2.1.0"}
            ) as client:
                assert await client.recv() == [
                    None,
                    None,
                    "device",
                    "scripts/run",
                    {"text": "IO.puts(1)", "ref": "connecting_code"},
                ]
                await client.heartbeat()
            assert not hub.frames("dev-1", event="extensions:get")

    run(scenario())


def test_rejected_device_certificates_get_tls_alerts() -> None:
    async def scenario() -> None:
        async with LocalHub() as hub:
            pki = hub.pki
            cases = [
                (pki.expired_device_certificate("dev-1"), "CERTIFICATE_EXPIRED"),
                (pki.unknown_ca_device_certificate("dev-1"), "UNKNOWN_CA"),
                (pki.not_yet_valid_device_certificate("dev-1"), "BAD_CERTIFICATE"),
            ]
            for cert, alert in cases:
                with pytest.raises(ssl.SSLError) as caught:
                    async with device_socket(hub, None, ssl_context=pki.client_ssl_context(cert)):
                        pass
                assert caught.value.reason is not None and alert in caught.value.reason
            assert [f.reason for f in hub.tls_failures] == [
                "certificate verify failed: certificate has expired",
                "certificate verify failed: unable to get local issuer certificate",
                "certificate verify failed: certificate is not yet valid",
            ]
            # A client that does not trust the hub's CA fails on its own side.
            wrong_ca = pki.client_ssl_context(cafile=pki.unregistered_ca.cert_path)
            with pytest.raises(ssl.SSLCertVerificationError):
                async with device_socket(hub, None, ssl_context=wrong_ca):
                    pass

    run(scenario())


def test_deleted_and_unknown_devices_fail_the_handshake() -> None:
    async def scenario() -> None:
        async with LocalHub(allow_unknown_devices=False) as hub:
            hub.add_device("dev-known")
            async with device_socket(hub, "dev-known", join=DEVICE_PARAMS) as client:
                await client.heartbeat()
            with pytest.raises(ssl.SSLError, match="CERTIFICATE_REVOKED"):
                async with device_socket(hub, "dev-stranger"):
                    pass
            await hub.delete_device("dev-known")
            with pytest.raises(ssl.SSLError, match="CERTIFICATE_REVOKED"):
                async with device_socket(hub, "dev-known"):
                    pass
            hub.restore_device("dev-known")
            async with device_socket(hub, "dev-known", join=DEVICE_PARAMS) as client:
                await client.heartbeat()
            assert hub.devices["dev-known"].connection_count == 2

    run(scenario())


def test_no_credentials_is_401_with_a_reason() -> None:
    async def scenario() -> None:
        async with LocalHub() as hub:
            with pytest.raises(InvalidStatus) as caught:
                async with device_socket(hub, None):
                    pass
            response = caught.value.response
            assert response.status_code == 401
            assert response.body == b""
            assert response.headers["nh-connection-error-reason"] == (
                "no certificate pair or shared secrets connection settings were provided"
            )
            assert hub.upgrades[-1].status == 401
            # only the V2 JSON serializer is offered
            ctx = hub.client_ssl_context("dev-1")
            with pytest.raises(InvalidStatus) as caught:
                async with connect(f"wss://{hub.host}/socket/websocket?vsn=1.0.0", ssl=ctx):
                    pass
            assert caught.value.response.status_code == 403

    run(scenario())


def test_tls_12_is_pinned_unless_tls13_is_enabled() -> None:
    async def scenario() -> None:
        async with LocalHub() as hub:
            only13 = hub.client_ssl_context("dev-1", tls13=True)
            only13.minimum_version = ssl.TLSVersion.TLSv1_3
            with pytest.raises(ssl.SSLError):
                async with device_socket(hub, None, ssl_context=only13):
                    pass
        async with LocalHub(tls13=True) as hub:
            ctx = hub.client_ssl_context("dev-1", tls13=True)
            async with device_socket(hub, None, ssl_context=ctx, join=DEVICE_PARAMS) as client:
                assert client.ws.transport.get_extra_info("ssl_object").version() == "TLSv1.3"
                await client.heartbeat()
            # with TLS 1.3 a rejected client certificate is reported after the client's handshake
            expired = hub.pki.client_ssl_context(
                hub.pki.expired_device_certificate("dev-2"), tls13=True
            )
            with pytest.raises((ssl.SSLError, OSError, InvalidHandshake)):
                async with device_socket(hub, None, ssl_context=expired, join=DEVICE_PARAMS):
                    pass

    run(scenario())


def test_shared_secret_headers_accepted_and_checked() -> None:
    async def scenario() -> None:
        async with LocalHub() as hub:
            hub.add_product_key("nhp_product", "productsecret")
            hub.add_device("dev-s", shared_key="dk_dev_s", shared_secret="devsecret")
            anonymous = hub.client_ssl_context()
            now = int(time.time())
            good = sign_headers("nhp_product", "productsecret", "jit-1", now)
            async with device_socket(
                hub,
                None,
                path="/device-socket/websocket",
                ssl_context=anonymous,
                headers=good,
                join=DEVICE_PARAMS,
            ) as client:
                await client.heartbeat()
            assert hub.devices["jit-1"].auth == "product_key"
            # per-device key, on the other path: either path takes either auth
            device_headers = sign_headers("dk_dev_s", "devsecret", "dev-s", now)
            async with device_socket(
                hub, None, ssl_context=anonymous, headers=device_headers, join=DEVICE_PARAMS
            ) as client:
                await client.heartbeat()
            assert hub.devices["dev-s"].auth == "shared_secret"

            stale = sign_headers("nhp_product", "productsecret", "jit-1", now - 91)
            with pytest.raises(InvalidStatus) as caught:
                async with device_socket(hub, None, ssl_context=anonymous, headers=stale):
                    pass
            assert (caught.value.response.status_code, caught.value.response.body) == (401, b"")
            assert hub.upgrades[-1].reason == "shared secret: expired"

            wrong_device = sign_headers("dk_dev_s", "devsecret", "dev-other", now)
            with pytest.raises(InvalidStatus):
                async with device_socket(hub, None, ssl_context=anonymous, headers=wrong_device):
                    pass

    run(scenario())


def test_server_date_lets_a_device_with_a_wrong_clock_recover() -> None:
    async def scenario() -> None:
        async with LocalHub(clock_offset=600.0) as hub:  # the hub is 10 minutes ahead of the device
            hub.add_product_key("nhp_product", "productsecret")
            anonymous = hub.client_ssl_context()
            device_time = int(time.time())
            with pytest.raises(InvalidStatus) as caught:
                async with device_socket(
                    hub,
                    None,
                    ssl_context=anonymous,
                    headers=sign_headers("nhp_product", "productsecret", "dev-1", device_time),
                ):
                    pass
            date = caught.value.response.headers["Date"]
            server_time = int(email.utils.parsedate_to_datetime(date).timestamp())
            assert abs(server_time - (device_time + 600)) <= 2
            retry = sign_headers(
                "nhp_product", "productsecret", "dev-1", max(device_time, server_time)
            )
            async with device_socket(
                hub, None, ssl_context=anonymous, headers=retry, join=DEVICE_PARAMS
            ):
                pass
            assert hub.devices["dev-1"].connection_count == 1

    run(scenario())


def test_shared_secrets_can_be_disabled() -> None:
    async def scenario() -> None:
        async with LocalHub(shared_secrets_enabled=False) as hub:
            hub.add_product_key("nhp_product", "productsecret")
            headers = sign_headers("nhp_product", "productsecret", "dev-1", int(time.time()))
            with pytest.raises(InvalidStatus) as caught:
                async with device_socket(
                    hub, None, ssl_context=hub.client_ssl_context(), headers=headers
                ):
                    pass
            assert "nh-connection-error-reason" in caught.value.response.headers

    run(scenario())
