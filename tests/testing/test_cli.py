"""`nhlink hub` (nhlink.testing.cli): files it writes and a device connecting with them."""

from __future__ import annotations

import asyncio
import hashlib
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest

from nhlink.testing.cli import build_parser, main, read_firmware_meta, run_hub
from tests.testing.support import DEVICE_PARAMS, PhoenixClient, run

META_CONF = """\
meta-product = "my_app"
meta-description = "say \\"hi\\""
meta-version = "0.2.0"
meta-platform = "rpi4"
meta-architecture = "arm"
meta-author = "Me"
meta-vcs-identifier = "abc"
meta-uuid = "3c9f2f2e-1c55-5d3b-9a4e-0b1f0e6a7c11"
file-resource rootfs.img {
}
"""


def make_fw(path: Path) -> bytes:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("meta.conf", META_CONF)
        archive.writestr("data/rootfs.img", b"\x00" * 4096)
    return path.read_bytes()


def test_read_firmware_meta(tmp_path: Path) -> None:
    make_fw(tmp_path / "app.fw")
    meta = read_firmware_meta(tmp_path / "app.fw")
    assert meta["uuid"] == "3c9f2f2e-1c55-5d3b-9a4e-0b1f0e6a7c11"
    assert meta["description"] == 'say "hi"'
    assert meta["vcs_identifier"] == "abc"


def test_bad_firmware_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.fw").write_bytes(b"not a zip")
    assert main(["--dir", str(tmp_path / "hub"), "--firmware", str(tmp_path / "bad.fw")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("nhlink hub: error: cannot read meta.conf") and "\n" not in err


def test_hub_command_writes_a_working_device_config(tmp_path: Path) -> None:
    firmware = make_fw(tmp_path / "app.fw")
    args = build_parser().parse_args(
        [
            "--dir",
            str(tmp_path / "hub"),
            "--device",
            "dev-a",
            "--firmware",
            str(tmp_path / "app.fw"),
            "--fwup-public-key",
            "pUJ3key=",
        ]
    )

    async def scenario() -> None:
        from websockets.asyncio.client import connect

        from nhlink.testing.pki import Pki

        stop = asyncio.Event()
        hub_task = asyncio.ensure_future(run_hub(args, stop))
        config_path = tmp_path / "hub" / "dev-a.toml"
        while not config_path.exists():
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        config = tomllib.loads(config_path.read_text())
        assert config["fwup_public_keys"] == ["pUJ3key="]
        ssl_conf = config["ssl"]
        ctx = Pki.load(tmp_path / "hub" / "pki").client_ssl_context()
        ctx.load_verify_locations(ssl_conf["cacertfile"])
        ctx.load_cert_chain(ssl_conf["certfile"], ssl_conf["keyfile"])
        async with connect(f"wss://{config['host']}/socket/websocket?vsn=2.0.0", ssl=ctx) as ws:
            client = PhoenixClient(ws)
            assert (await client.join("device", DEVICE_PARAMS))[4]["status"] == "ok"
            update = await client.recv_until(lambda f: f[3] == "update")
            payload = update[4]
            assert payload["firmware_meta"]["uuid"] == "3c9f2f2e-1c55-5d3b-9a4e-0b1f0e6a7c11"
            assert payload["checksum"] == hashlib.sha256(firmware).hexdigest().upper()

            def download() -> bytes:
                with urllib.request.urlopen(payload["firmware_url"], context=ctx, timeout=5) as r:
                    data: bytes = r.read()
                    return data

            assert await asyncio.to_thread(download) == firmware
        stop.set()
        assert await hub_task == 0

    run(scenario())
    # A second start reuses the PKI, so the device's certificate stays valid.
    cert = tmp_path / "hub" / "pki" / "devices" / "dev-a.pem"
    first_cert = cert.read_bytes()

    async def restart() -> None:
        stop = asyncio.Event()
        stop.set()
        argv = ["--dir", str(tmp_path / "hub"), "--device", "dev-a", "--product-key", "nhp_k=s3"]
        assert await run_hub(build_parser().parse_args(argv), stop) == 0

    run(restart())
    shared = tomllib.loads((tmp_path / "hub" / "dev-a-shared-secret.toml").read_text())
    assert shared["shared_secret"] == {
        "product_key": "nhp_k",
        "product_secret": "s3",
        "identifier": "dev-a",
    }
    assert shared["ssl"] == {"cacertfile": str((tmp_path / "hub" / "pki" / "ca.pem").resolve())}
    assert cert.read_bytes() == first_cert
