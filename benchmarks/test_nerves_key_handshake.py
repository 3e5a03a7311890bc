"""The cost of a mutual-TLS handshake signed on a (simulated) NervesKey.

Against a LocalHub (running in a background thread), per TLS version:

* ``chip``: tlslite-ng with the simulated ATECC608A signing, at its typical
  execution times (Sign ~40 ms, plus wake/Nonce/sleep and polling);
* ``software-key``: the same tlslite client signing with the key in memory
  (no chip), i.e. the pure-Python TLS cost alone;
* ``stdlib``: CPython ``ssl`` with the key in a file, the baseline the chip
  route is compared with.

Recorded: the handshake median in ``extra_info`` (seconds) and the number of
chip signatures (1 per handshake).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from nhlink.nerves_key.driver import Atecc
from nhlink.nerves_key.nerves_key import NervesKeyDevice
from nhlink.nerves_key.tls import ChipEcdsaKey, open_chip_tls
from nhlink.testing import LocalHub
from nhlink.testing.atecc import (
    NervesKeyLocalHub,
    SimulatedAtecc,
    provisioned_image,
    signer_trust_pem,
)

VERSIONS = ["tlsv1.2", "tlsv1.3"]


class _HubThread:
    def __init__(self, trust: bytes | None, tls13: bool) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.hub = (
            LocalHub(tls13=tls13, firmware_server=False)
            if trust is None
            else NervesKeyLocalHub(trust, tls13=tls13, firmware_server=False)
        )
        asyncio.run_coroutine_threadsafe(self.hub.start(), self.loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.hub.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _software_signer(private_key: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    def sign(digest: bytes) -> bytes:
        return private_key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))

    return sign


@pytest.fixture(scope="module")
def provisioned() -> Iterator[tuple[Any, Any, bytes]]:
    image, signer_key = provisioned_image("nk-bench")
    device = NervesKeyDevice(Atecc(SimulatedAtecc(image)))
    trust = signer_trust_pem(device.signer_certificate(), signer_key)
    yield image, signer_key, trust


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("signer", ["chip", "software-key"])
def test_chip_handshake(
    benchmark: Any, provisioned: tuple[Any, Any, bytes], version: str, signer: str
) -> None:
    image, _, trust = provisioned
    device = NervesKeyDevice(Atecc(SimulatedAtecc(image)))
    chain = device.certificate_pair().chain_pem()
    key = ChipEcdsaKey(
        device.atecc.genkey_public(0),
        device.sign_digest if signer == "chip" else _software_signer(image.private_key),
    )
    hub = _HubThread(trust, tls13=version == "tlsv1.3")
    try:
        trusted = [hub.hub.pki.ca.certificate]

        def handshake() -> None:
            bridge = open_chip_tls(
                "127.0.0.1",
                hub.hub.port,
                chain_pem=chain,
                key=key,
                trusted=trusted,
                versions=[version],
            )
            bridge.close()

        benchmark.pedantic(handshake, rounds=8, warmup_rounds=1)
    finally:
        hub.stop()
    if benchmark.stats is not None:  # None with --benchmark-disable
        benchmark.extra_info["handshake_median_s"] = benchmark.stats.stats.median
    benchmark.extra_info["chip_signatures"] = key.signatures


@pytest.mark.parametrize("version", VERSIONS)
def test_stdlib_handshake_baseline(benchmark: Any, tmp_path: Any, version: str) -> None:
    hub = _HubThread(None, tls13=version == "tlsv1.3")
    try:
        issued = hub.hub.pki.issue_device_certificate("nk-baseline")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(hub.hub.pki.ca.cert_path))
        context.load_cert_chain(str(issued.cert_path), str(issued.key_path))
        wanted = ssl.TLSVersion.TLSv1_3 if version == "tlsv1.3" else ssl.TLSVersion.TLSv1_2
        context.minimum_version = context.maximum_version = wanted

        def handshake() -> None:
            with (
                socket.create_connection(("127.0.0.1", hub.hub.port)) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                pass

        benchmark.pedantic(handshake, rounds=8, warmup_rounds=1)
    finally:
        hub.stop()
    if benchmark.stats is not None:  # None with --benchmark-disable
        benchmark.extra_info["handshake_median_s"] = benchmark.stats.stats.median
