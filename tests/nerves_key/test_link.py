"""The real device client (NervesHubLink) connects with its key on the simulated NervesKey:
the configurator reads the certificates from the chip, the chip signs the TLS handshake,
and the device joins the hub's device channel."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nhlink.aio.link import NervesHubLink
from nhlink.config import Config, NervesKeyConfig, SSLConfig
from nhlink.nerves_key.driver import Atecc
from nhlink.nerves_key.nerves_key import NervesKeyDevice, register_atecc
from nhlink.testing.atecc import (
    NervesKeyLocalHub,
    SimulatedAtecc,
    provisioned_image,
    signer_trust_pem,
)

TEST_BUS = 96


@pytest.mark.parametrize("versions", [("tlsv1.2",), ("tlsv1.2", "tlsv1.3")])
def test_link_joins_with_the_key_on_the_chip(tmp_path: Path, versions: tuple[str, ...]) -> None:
    identifier = f"nk-link-{len(versions)}"
    image, signer_key = provisioned_image(identifier)
    simulator = SimulatedAtecc(image)
    device = NervesKeyDevice(Atecc(simulator))
    trust = signer_trust_pem(device.signer_certificate(), signer_key)
    register_atecc(TEST_BUS, device.atecc)

    async def scenario() -> None:
        async with NervesKeyLocalHub(trust, tls13="tlsv1.3" in versions) as hub:
            config = Config(
                host=hub.host,
                data_path=str(tmp_path),
                heartbeat_interval_msec=1000,
                nerves_key=NervesKeyConfig(i2c_bus=TEST_BUS),
                ssl=SSLConfig(cacertfile=str(hub.pki.ca.cert_path), versions=versions),
            )
            link = NervesHubLink(config)
            task = asyncio.create_task(link.run())
            try:
                record = await hub.wait_for_device(identifier, timeout=30)
                assert record.auth == "certificate"
                assert record.join_params["device_api_version"] == "2.3.0"
                signs = sum(1 for packet in simulator.commands if packet[1] == 0x41)
                assert signs >= 1  # the handshake was signed on the chip
                mark = hub.frame_mark()
                await hub.wait_for_frame(
                    lambda f: f.topic == "phoenix" and f.event == "heartbeat", 10, since=mark
                )
            finally:
                await link.stop()
                await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        register_atecc(TEST_BUS, None)
