"""Mutual TLS to the local hub with the simulated NervesKey signing the handshake."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from nhlink.config import Config, NervesKeyConfig, SSLConfig
from nhlink.errors import ConfigError
from nhlink.nerves_key.configurator import NervesKey, chip_key_bus
from nhlink.nerves_key.driver import Atecc
from nhlink.nerves_key.nerves_key import NervesKeyDevice, register_atecc
from nhlink.nerves_key.tls import ChipEcdsaKey, ChipTlsError, open_bridge, open_chip_tls
from nhlink.testing import LocalHub
from nhlink.testing.atecc import (
    NervesKeyLocalHub,
    SimulatedAtecc,
    provisioned_image,
    signer_trust_pem,
    unprovisioned_image,
)

TEST_BUS = 97


def _chip(identifier: str) -> tuple[SimulatedAtecc, NervesKeyDevice, bytes]:
    image, signer_key = provisioned_image(identifier)
    simulator = SimulatedAtecc(image)  # real clock: real execution times
    device = NervesKeyDevice(Atecc(simulator))
    trust = signer_trust_pem(device.signer_certificate(), signer_key)
    return simulator, device, trust


async def _join(hub: LocalHub, sock: socket.socket, identifier: str) -> None:
    uri = f"ws://127.0.0.1:{hub.port}/socket/websocket?vsn=2.0.0"
    async with connect(uri, sock=sock) as ws:
        await ws.send(json.dumps(["1", "1", "device", "phx_join", {}]))
        reply = json.loads(await ws.recv())
        assert reply[3] == "phx_reply" and reply[4]["status"] == "ok"
        record = await hub.wait_for_device(identifier)
        assert record.connected


@pytest.mark.parametrize("version", ["tlsv1.2", "tlsv1.3"])
def test_handshake_signed_on_the_chip(version: str) -> None:
    simulator, device, trust = _chip(f"nk-{version}")

    async def scenario() -> None:
        async with NervesKeyLocalHub(trust, tls13=version == "tlsv1.3") as hub:
            key = ChipEcdsaKey(device.atecc.genkey_public(0), device.sign_digest)
            pair = device.certificate_pair()
            signs_before = sum(1 for p in simulator.commands if p[1] == 0x41)
            bridge = await asyncio.to_thread(
                open_chip_tls,
                "127.0.0.1",
                hub.port,
                chain_pem=pair.chain_pem(),
                key=key,
                trusted=[hub.pki.ca.certificate],
                versions=[version],
            )
            try:
                assert bridge.version == {"tlsv1.2": "TLSv1.2", "tlsv1.3": "TLSv1.3"}[version]
                assert key.signatures == 1
                assert sum(1 for p in simulator.commands if p[1] == 0x41) == signs_before + 1
                await _join(hub, bridge.socket, f"nk-{version}")
            finally:
                bridge.close()

    asyncio.run(scenario())


def test_hub_with_another_ca_is_refused() -> None:
    _, device, trust = _chip("nk-wrong-ca")

    async def scenario() -> None:
        async with NervesKeyLocalHub(trust) as hub:
            key = ChipEcdsaKey(device.atecc.genkey_public(0), device.sign_digest)
            wrong_ca = device.signer_certificate()  # not the hub's server CA
            with pytest.raises(ChipTlsError, match="does not verify"):
                await asyncio.to_thread(
                    open_chip_tls,
                    "127.0.0.1",
                    hub.port,
                    chain_pem=device.certificate_pair().chain_pem(),
                    key=key,
                    trusted=[wrong_ca],
                )

    asyncio.run(scenario())


def test_configurator_and_transport_end_to_end(tmp_path: Path) -> None:
    _, device, trust = _chip("nk-configured")
    register_atecc(TEST_BUS, device.atecc)
    try:

        async def scenario() -> None:
            async with NervesKeyLocalHub(trust, tls13=True) as hub:
                config = Config(
                    data_path=str(tmp_path),
                    nerves_key=NervesKeyConfig(i2c_bus=TEST_BUS),
                    ssl=SSLConfig(
                        cacertfile=str(hub.pki.ca.cert_path), versions=("tlsv1.2", "tlsv1.3")
                    ),
                )
                built = NervesKey().build(config)
                assert built.ssl.certfile == str(tmp_path / "nerves_key_chain.pem")
                assert chip_key_bus(built.ssl.keyfile) == TEST_BUS
                started = time.perf_counter()
                bridge, plain_uri = await open_bridge(built, hub.url)
                assert time.perf_counter() - started < 10
                assert plain_uri == f"ws://127.0.0.1:{hub.port}/socket/websocket"
                try:
                    assert bridge.version == "TLSv1.3"
                    await _join(hub, bridge.socket, "nk-configured")
                finally:
                    bridge.close()

        asyncio.run(scenario())
    finally:
        register_atecc(TEST_BUS, None)


def test_configurator_reports_an_unprovisioned_chip(tmp_path: Path) -> None:
    register_atecc(TEST_BUS, Atecc(SimulatedAtecc(unprovisioned_image())))
    try:
        config = Config(data_path=str(tmp_path), nerves_key=NervesKeyConfig(i2c_bus=TEST_BUS))
        with pytest.raises(ConfigError, match="not provisioned"):
            NervesKey().build(config)
        with pytest.raises(ConfigError, match="certificate_pair"):
            NervesKey().build(
                config.with_changes(
                    nerves_key=NervesKeyConfig(i2c_bus=TEST_BUS, certificate_pair="spare")
                )
            )
    finally:
        register_atecc(TEST_BUS, None)
