"""Hostile offers end to end: the real link and Updater against the LocalHub over TLS.
A ``firmware_url`` off https, a redirect to another host, or a file larger than the
offered ``size`` ends the update ``failed`` with a reason code and a clear text, the
same whether preflight (which meets them first) is on or off; the old slot still boots."""

from __future__ import annotations

from pathlib import Path

import pytest

from nhlink.testing import Fault, FirmwareServer, LocalHub, Pki
from nhlink.testing.firmware_server import https_server_context
from tests.link.support import run
from tests.update.firmware import Firmware
from tests.update.test_updater import (
    DEVICE,
    NO_PREFLIGHT,
    assert_untouched,
    downloads,
    is_head,
    updating_device,
)

PREFLIGHT = pytest.mark.parametrize("preflight", [True, False], ids=["preflight", "no-preflight"])


def preflight_settings(preflight: bool) -> dict[str, object]:
    return {} if preflight else dict(NO_PREFLIGHT)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (
            "http://127.0.0.1:9/fw/v2.fw",
            "refused:url: download: refusing a non-https URL (http://127.0.0.1:9/fw/v2.fw)",
        ),
        (
            "ftp://127.0.0.1/fw/v2.fw",
            "refused:url: download: bad URL: unsupported URL scheme 'ftp'",
        ),
        ("file:///etc/passwd", "refused:url: download: bad URL: unsupported URL scheme 'file'"),
        (
            "javascript:alert(1)",
            "refused:url: download: bad URL: unsupported URL scheme 'javascript'",
        ),
        ("//127.0.0.1/fw/v2.fw", "refused:url: download: bad URL: unsupported URL scheme ''"),
    ],
    ids=["http", "ftp", "file", "javascript", "no-scheme"],
)
@PREFLIGHT
def test_a_firmware_url_off_https_fails_with_its_reason(
    pki: Pki,
    tmp_path: Path,
    fw_v1: Firmware,
    fw_v2: Firmware,
    url: str,
    reason: str,
    preflight: bool,
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            settings = preflight_settings(preflight)
            async with updating_device(hub, tmp_path, fw_v1, **settings) as device:
                await device.push(hosted, fw_v2, url)
                failed = await device.wait_for("failed")
                await device.settle()
                assert device.link.device.join_info  # the link stays up
            assert hub.firmware.requests == []
        assert failed == {"status": "failed", "reason": reason}
        assert "completed" not in device.status_names()
        assert_untouched(device, fw_v1)

    run(scenario(), timeout=40)


@PREFLIGHT
def test_a_redirect_to_another_host_fails_the_update(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware, preflight: bool
) -> None:
    async def scenario() -> None:
        async with (
            LocalHub(pki=pki) as hub,
            FirmwareServer(
                ssl_context=https_server_context(pki.server.cert_path, pki.server.key_path),
                directory=tmp_path / "s",
                host="localhost",
            ) as storage,
        ):
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            elsewhere = storage.add_file("fw/v2.fw", fw_v2.path)
            url = hub.firmware.url("fw/v2.fw", Fault(redirect_to=elsewhere.url))
            settings = preflight_settings(preflight)
            async with updating_device(hub, tmp_path, fw_v1, **settings) as device:
                await device.push(hosted, fw_v2, url)
                failed = await device.wait_for("failed")
                await device.settle()
            assert storage.requests == []
            assert [is_head(r) for r in hub.firmware.requests] == [preflight]
        assert failed["reason"] == (
            f"refused:redirect: download: refusing a redirect from 127.0.0.1 to another host ({elsewhere.url}); "
            "allow_cross_host_redirects permits it"
        )
        assert_untouched(device, fw_v1)

    run(scenario(), timeout=40)


@PREFLIGHT
def test_a_file_larger_than_the_offer_fails_before_fwup_sees_it(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware, preflight: bool
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            offer = hosted.update_kwargs()
            offer["size"] = hosted.size - 1
            settings = preflight_settings(preflight)
            async with updating_device(hub, tmp_path, fw_v1, **settings) as device:
                await hub.push_update(DEVICE, hosted.url, fw_v2.meta, **offer)
                failed = await device.wait_for("failed")
                await device.settle()
            requests = hub.firmware.requests
        assert failed["reason"] == (
            f"size: download: the server has {hosted.size} bytes, the offer said {hosted.size - 1}"
        )
        if preflight:  # the head's Content-Range told: the download never started
            assert [is_head(r) for r in requests] == [True]
            assert downloads(requests) == [] and requests[0].bytes_sent <= 16384
        assert_untouched(device, fw_v1)
        assert device.image.read_bytes() == device.image_before

    run(scenario(), timeout=40)
