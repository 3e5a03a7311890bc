"""Archive offers (spec 6.4): downloaded, verified while streaming, handed to the client."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nhlink.aio.link import NervesHubLink
from nhlink.aio.updater import Updater
from nhlink.client import ArchiveDecision, Client, Download, Ignore
from nhlink.protocol import ArchiveInfo
from nhlink.testing import Fault, LocalHub, Pki, RequestRecord
from tests.link.support import device_config, run, running
from tests.update.firmware import Firmware, public_key

DEVICE = "dev-archive"


class ArchiveClient(Client):
    def __init__(self, decision: ArchiveDecision) -> None:
        super().__init__()
        self.decision = decision
        self.ready: list[tuple[ArchiveInfo, str]] = []
        self.asked = 0

    def archive_available(self, info: ArchiveInfo) -> ArchiveDecision:
        self.asked += 1
        return self.decision

    def archive_ready(self, info: ArchiveInfo, path: str) -> None:
        self.ready.append((info, path))


async def offer_archive(
    pki: Pki,
    tmp_path: Path,
    archive: Path,
    client: ArchiveClient,
    *,
    keys: bool = True,
    fault: Fault | None = None,
    expect_ready: bool = False,
) -> list[RequestRecord]:
    """Offer ``archive``; returns the firmware server's requests."""
    async with LocalHub(pki=pki) as hub:
        hosted = hub.firmware.add_file("archives/extra.fw", archive)
        url = hub.firmware.url("archives/extra.fw", *([fault] if fault else []))
        extra = {"fwup_public_keys": [public_key()]} if keys else {}
        config = device_config(
            hub, DEVICE, tmp_path, retry={"time_between_retries_msec": 50}, **extra
        )
        link = NervesHubLink(config, client, update_handler=Updater())
        async with running(link):
            await hub.wait_for_device(DEVICE)
            await hub.push_archive(DEVICE, url, size=hosted.size, uuid="arch-1", version="1.0.0")
            await hub.wait_until(lambda: client.asked or None, 10, "the archive offer")
            if expect_ready:
                await hub.wait_until(lambda: client.ready or None, 10, "the archive")
            else:
                await asyncio.sleep(1.0)
        return hub.firmware.requests


def test_a_downloaded_archive_is_verified_and_handed_over(
    pki: Pki, tmp_path: Path, fw_v2: Firmware
) -> None:
    client = ArchiveClient(Download())
    requests = run(
        offer_archive(
            pki, tmp_path, fw_v2.path, client, fault=Fault(drop_after=500_000), expect_ready=True
        )
    )
    ((info, path),) = client.ready
    assert info.uuid == "arch-1"
    assert Path(path) == tmp_path / "data" / "archives" / "extra.fw"
    assert Path(path).read_bytes() == fw_v2.path.read_bytes()
    assert not (tmp_path / "data" / "archives" / "extra.fw.download").exists()
    assert [r.range_start for r in requests] == [None, 500_000]


def test_a_tampered_archive_is_not_handed_over(pki: Pki, tmp_path: Path, fw_v2: Firmware) -> None:
    data = bytearray(fw_v2.path.read_bytes())
    data[len(data) // 2] ^= 1
    tampered = tmp_path / "tampered.fw"
    tampered.write_bytes(bytes(data))
    client = ArchiveClient(Download())
    run(offer_archive(pki, tmp_path, tampered, client))
    assert client.ready == []
    assert list((tmp_path / "data" / "archives").iterdir()) == []


def test_archives_need_keys_and_a_download_decision(
    pki: Pki, tmp_path: Path, fw_v2: Firmware
) -> None:
    client = ArchiveClient(Download())
    requests = run(offer_archive(pki, tmp_path / "nokeys", fw_v2.path, client, keys=False))
    assert client.ready == [] and requests == []
    ignoring = ArchiveClient(Ignore())
    requests = run(offer_archive(pki, tmp_path / "ignore", fw_v2.path, ignoring))
    assert ignoring.asked == 1 and ignoring.ready == [] and requests == []
