"""Archives (spec 6.4) verified with the archive keys, else the fwup keys, else refused."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from nhlink.aio.link import NervesHubLink
from nhlink.aio.updater import Updater
from nhlink.client import ArchiveDecision, Client, Download
from nhlink.fwup.create import create_archive
from nhlink.fwup.keys import read_private_key_file
from nhlink.protocol import ArchiveInfo
from nhlink.testing import LocalHub, Pki, RequestRecord
from tests.helpers.vectors import vectors_dir
from tests.link.support import device_config, run, running

DEVICE = "dev-archive-ext"


def key(name: str) -> str:
    return (vectors_dir() / "keys" / f"testkey-{name}.pub").read_text().strip()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small archive signed with test key b."""
    directory = tmp_path_factory.mktemp("archive")
    payload = directory / "payload.bin"
    payload.write_bytes(os.urandom(300_000))
    conf = directory / "archive.conf"
    conf.write_text(
        f'file-resource payload.bin {{ host-path = "{payload}" }}\n'
        "task complete { on-resource payload.bin { raw_write(0) } }\n"
    )
    output = directory / "extra.fw"
    signing_key = read_private_key_file(str(vectors_dir() / "keys" / "testkey-b.priv"))
    create_archive(conf, output, signing_key=signing_key, environ={"SOURCE_DATE_EPOCH": "1"})
    return output


class ArchiveClient(Client):
    def __init__(self) -> None:
        super().__init__()
        self.asked = 0
        self.ready: list[tuple[ArchiveInfo, str]] = []

    def archive_available(self, info: ArchiveInfo) -> ArchiveDecision:
        self.asked += 1
        return Download()

    def archive_ready(self, info: ArchiveInfo, path: str) -> None:
        self.ready.append((info, path))


def offer(
    pki: Pki, tmp_path: Path, archive: Path, **keys: list[str]
) -> tuple[ArchiveClient, list[RequestRecord]]:
    client = ArchiveClient()
    requests: list[RequestRecord] = []

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("a/extra.fw", archive)
            config = device_config(hub, DEVICE, tmp_path, extensions={"enabled": []}, **keys)
            link = NervesHubLink(config, client, update_handler=Updater())
            async with running(link):
                await hub.wait_for_device(DEVICE)
                await hub.push_archive(
                    DEVICE,
                    hub.firmware.url("a/extra.fw"),
                    size=hosted.size,
                    uuid="u-1",
                    version="1.0.0",
                )
                await hub.wait_until(lambda: client.asked or None, 10, "the offer")
                for _ in range(40):
                    if client.ready:
                        break
                    await asyncio.sleep(0.05)
            requests.extend(hub.firmware.requests)

    run(scenario())
    return client, requests


def test_verified_with_the_archive_keys(pki: Pki, tmp_path: Path, archive: Path) -> None:
    client, _ = offer(
        pki, tmp_path, archive, archive_public_keys=[key("b")], fwup_public_keys=[key("a")]
    )
    ((info, path),) = client.ready
    assert info.uuid == "u-1"
    assert Path(path) == tmp_path / "data" / "archives" / "extra.fw"
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert digest == hashlib.sha256(archive.read_bytes()).hexdigest()


def test_falls_back_to_the_fwup_keys(pki: Pki, tmp_path: Path, archive: Path) -> None:
    client, _ = offer(pki, tmp_path, archive, fwup_public_keys=[key("b")])
    assert len(client.ready) == 1


def test_refused_with_the_wrong_key_none_or_tampered(
    pki: Pki, tmp_path: Path, archive: Path
) -> None:
    wrong, _ = offer(pki, tmp_path / "wrong", archive, archive_public_keys=[key("a")])
    assert wrong.asked == 1 and wrong.ready == []
    assert list((tmp_path / "wrong" / "data" / "archives").iterdir()) == []
    none, requests = offer(pki, tmp_path / "none", archive)
    assert none.asked == 1 and none.ready == [] and requests == []
    data = bytearray(archive.read_bytes())
    data[-1000] ^= 0x40
    tampered = tmp_path / "tampered.fw"
    tampered.write_bytes(bytes(data))
    bad, _ = offer(pki, tmp_path / "bad", tampered, archive_public_keys=[key("b")])
    assert bad.asked == 1 and bad.ready == []


def test_an_interrupted_download_is_resumed(pki: Pki, tmp_path: Path, archive: Path) -> None:
    data = archive.read_bytes()
    archives = tmp_path / "data" / "archives"
    archives.mkdir(parents=True)
    (archives / "extra.fw.download").write_bytes(data[:100_000])
    client, requests = offer(pki, tmp_path, archive, archive_public_keys=[key("b")])
    ((_, path),) = client.ready
    assert Path(path).read_bytes() == data
    assert [r.range_start for r in requests] == [100_000]
    assert not (archives / "extra.fw.download").exists()


def test_a_corrupt_partial_download_is_refused_and_removed(
    pki: Pki, tmp_path: Path, archive: Path
) -> None:
    archives = tmp_path / "data" / "archives"
    archives.mkdir(parents=True)
    (archives / "extra.fw.download").write_bytes(os.urandom(100_000))
    client, _ = offer(pki, tmp_path, archive, archive_public_keys=[key("b")])
    assert client.asked == 1 and client.ready == []
    assert list(archives.iterdir()) == []
