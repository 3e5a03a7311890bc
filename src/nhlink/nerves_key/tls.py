"""A TLS client whose handshake is signed on the NervesKey (the key never leaves the chip).

Python's ``ssl`` only loads keys from files, so the client side of the
handshake runs in tlslite-ng (pure Python) with :class:`ChipEcdsaKey`, whose
``_sign`` sends the 32-byte digest to the chip (Nonce + Sign). The hub's
certificate is verified here with ``cryptography`` (chain to the configured
CAs and host name), since tlslite does not.

:func:`open_chip_tls` returns a :class:`ChipTlsBridge`: after the handshake
a thread pumps bytes between the tlslite connection and one end of a
socketpair, and the other end is a plain socket that the asyncio
``websockets`` client (its sans-I/O protocol underneath) uses with
``sock=`` over a ``ws://`` URI of the same host and port. Nothing else in the
link changes.

Trade-offs (see docs): tlslite-ng is slow (pure-Python ECDHE and record
crypto; the chip's Sign adds ~40-100 ms) and less scrutinised than OpenSSL,
and the bridge costs a thread and a copy per record. The production
alternative is stdlib ``ssl`` through an OpenSSL 3 pkcs11-provider with a
PKCS#11 module for the ATECC, which needs native packages on the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import socket
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import ecdsa  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

with warnings.catch_warnings():  # tlslite's package imports asyncore (deprecated)
    warnings.simplefilter("ignore", DeprecationWarning)
    from tlslite import HandshakeSettings, TLSConnection  # type: ignore[import-untyped]
    from tlslite.errors import TLSError  # type: ignore[import-untyped]
    from tlslite.utils.ecdsakey import ECDSAKey  # type: ignore[import-untyped]
    from tlslite.x509 import X509  # type: ignore[import-untyped]
    from tlslite.x509certchain import X509CertChain  # type: ignore[import-untyped]

from nhlink.config import Config
from nhlink.errors import NHLinkError

logger = logging.getLogger("nhlink.nerves_key.tls")

VERSIONS = {"tlsv1.2": (3, 3), "tlsv1.3": (3, 4)}
P256_BYTES = 32


class ChipTlsError(NHLinkError):
    """The TLS handshake signed on the NervesKey failed."""


class _CurveStub:
    """tlslite's TLS 1.2 client reads ``privateKey.private_key.curve``; nothing else."""

    curve = ecdsa.NIST256p


class ChipEcdsaKey(ECDSAKey):  # type: ignore[misc]
    """A P-256 key for tlslite whose signatures are made by ``sign_digest`` (on the chip)."""

    key_type = "ecdsa"
    curve_name = "NIST256p"

    def __init__(self, public_key_xy: bytes, sign_digest: Callable[[bytes], bytes]) -> None:
        self.public_key = ecdsa.VerifyingKey.from_string(public_key_xy, curve=ecdsa.NIST256p)
        self.private_key = _CurveStub()
        self._sign_digest = sign_digest
        self.signatures = 0

    def __len__(self) -> int:
        return 256

    def hasPrivateKey(self) -> bool:
        return True

    def acceptsPassword(self) -> bool:
        return False

    def _sign(self, data: bytes | bytearray, hash_alg: str | None = None) -> bytearray:
        digest = bytes(data)
        if len(digest) > P256_BYTES:  # ECDSA uses the leftmost bits of a longer hash
            digest = digest[:P256_BYTES]
        digest = digest.rjust(P256_BYTES, b"\x00")
        self.signatures += 1
        return bytearray(self._sign_digest(digest))

    def _hashAndSign(self, data: bytes, hAlg: str) -> bytearray:
        raise NotImplementedError("the chip signs digests only")

    def _verify(self, signature: bytes | bytearray, hash_bytes: bytes | bytearray) -> bool:
        try:
            return bool(
                self.public_key.verify_digest(
                    bytes(signature), bytes(hash_bytes), sigdecode=ecdsa.util.sigdecode_der
                )
            )
        except (ecdsa.BadSignatureError, ecdsa.der.UnexpectedDER):
            return False


def handshake_settings(versions: Sequence[str]) -> Any:
    """tlslite settings: the allowed versions, SHA-256 ECDSA, no certificate compression."""
    wanted = sorted(VERSIONS[v] for v in versions if v in VERSIONS) or [VERSIONS["tlsv1.2"]]
    settings = HandshakeSettings()
    settings.minVersion = wanted[0]
    settings.maxVersion = wanted[-1]
    settings.ecdsaSigHashes = ["sha256"]
    # tlslite 0.8.2 would send a CompressedCertificate that OpenSSL 3.0 rejects.
    settings.certificate_compression_send = []
    settings.certificate_compression_receive = []
    return settings


def verify_server_chain(
    chain_der: Sequence[bytes], server_name: str, trusted: Sequence[x509.Certificate]
) -> x509.Certificate:
    """Verify the hub's certificate chain to ``trusted`` and its name; the leaf certificate."""
    if not chain_der:
        raise ChipTlsError(f"TLS to {server_name}: the server sent no certificate")
    certificates = [x509.load_der_x509_certificate(der) for der in chain_der]
    try:
        subject: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(server_name))
    except ValueError:
        subject = x509.DNSName(server_name)
    verifier = (
        PolicyBuilder()
        .store(Store(list(trusted)))
        .time(datetime.datetime.now(datetime.UTC))
        .build_server_verifier(subject)  # type: ignore[arg-type]
    )
    try:
        verifier.verify(certificates[0], certificates[1:])
    except VerificationError as exc:
        raise ChipTlsError(
            f"TLS to {server_name}: the hub's certificate does not verify ({exc}); "
            "check [ssl] cacertfile"
        ) from None
    return certificates[0]


def parse_chain(chain_pem: bytes) -> Any:
    """A tlslite certificate chain from PEM (device certificate first)."""
    certificates = x509.load_pem_x509_certificates(chain_pem)
    items = []
    for certificate in certificates:
        item = X509()
        item.parseBinary(bytearray(certificate.public_bytes(_der_encoding())))
        items.append(item)
    return X509CertChain(items)


def _der_encoding() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def chip_tls_handshake(
    sock: socket.socket,
    *,
    server_name: str,
    chain_pem: bytes,
    key: ChipEcdsaKey,
    trusted: Sequence[x509.Certificate],
    versions: Sequence[str] = ("tlsv1.2",),
    sni: str | None = None,
) -> Any:
    """Run the client handshake on ``sock``; the connected tlslite ``TLSConnection``."""
    connection = TLSConnection(sock)
    server_name_indication = sni or server_name
    try:
        ipaddress.ip_address(server_name_indication)
        sni_value = None  # SNI carries host names only
    except ValueError:
        sni_value = server_name_indication
    try:
        connection.handshakeClientCert(
            parse_chain(chain_pem), key, settings=handshake_settings(versions), serverName=sni_value
        )
    except (TLSError, OSError) as exc:
        connection.sock.close()
        raise ChipTlsError(f"TLS handshake with {server_name} failed: {exc!r}") from None
    server_chain = [bytes(item.bytes) for item in connection.session.serverCertChain.x509List]
    try:
        verify_server_chain(server_chain, server_name_indication, trusted)
    except ChipTlsError:
        connection.close()
        raise
    return connection


class ChipTlsBridge:
    """A tlslite connection exposed as a plain socket (one end of a socketpair)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.socket, self._inner = socket.socketpair()
        self._closed = threading.Event()
        self._threads = [
            threading.Thread(target=self._tls_to_plain, name="nerves-key-tls-in", daemon=True),
            threading.Thread(target=self._plain_to_tls, name="nerves-key-tls-out", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _tls_to_plain(self) -> None:
        try:
            while not self._closed.is_set():
                data = self.connection.recv(65536)
                if not data:
                    break
                self._inner.sendall(bytes(data))
        except (OSError, TLSError) as exc:
            logger.debug("NervesKey TLS read ended: %r", exc)
        finally:
            self._shutdown_inner()

    def _plain_to_tls(self) -> None:
        try:
            while not self._closed.is_set():
                data = self._inner.recv(65536)
                if not data:
                    break
                self.connection.sendall(data)
        except (OSError, TLSError) as exc:
            logger.debug("NervesKey TLS write ended: %r", exc)
        finally:
            self.close()

    def _shutdown_inner(self) -> None:
        with contextlib.suppress(OSError):
            self._inner.shutdown(socket.SHUT_WR)

    @property
    def version(self) -> str:
        major, minor = self.connection.version
        return {(3, 3): "TLSv1.2", (3, 4): "TLSv1.3"}.get((major, minor), f"{major}.{minor}")

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError, TLSError):
            self.connection.close()
        with contextlib.suppress(OSError):
            self.connection.sock.close()
        self._shutdown_inner()
        self._inner.close()


def open_chip_tls(
    host: str,
    port: int,
    *,
    chain_pem: bytes,
    key: ChipEcdsaKey,
    trusted: Sequence[x509.Certificate],
    versions: Sequence[str] = ("tlsv1.2",),
    sni: str | None = None,
    timeout: float = 30.0,
) -> ChipTlsBridge:
    """Connect, handshake with the chip signing, and bridge to a plain socket."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ChipTlsError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    connection = chip_tls_handshake(
        sock,
        server_name=host,
        chain_pem=chain_pem,
        key=key,
        trusted=trusted,
        versions=versions,
        sni=sni,
    )
    sock.settimeout(None)
    return ChipTlsBridge(connection)


def trusted_certificates(
    cacertfile: str | None, cacerts: Sequence[bytes]
) -> list[x509.Certificate]:
    """The CAs to verify the hub with: ``cacertfile`` and ``cacerts``, else the OS bundle."""
    trusted = [x509.load_der_x509_certificate(der) for der in cacerts]
    path = cacertfile
    if path is None and not trusted:
        import ssl

        path = ssl.get_default_verify_paths().cafile
    if path:
        try:
            with open(path, "rb") as handle:
                trusted += x509.load_pem_x509_certificates(handle.read())
        except (OSError, ValueError) as exc:
            raise ChipTlsError(f"cannot load CA certificates from {path}: {exc}") from None
    if not trusted:
        raise ChipTlsError("no CA certificates to verify the hub with (set [ssl] cacertfile)")
    return trusted


def open_for_config(
    config: Config, host: str, port: int, *, timeout: float = 30.0
) -> ChipTlsBridge:
    """The NervesKey TLS bridge for a configuration built by the NervesKey configurator."""
    from nhlink.nerves_key.configurator import chip_key_bus
    from nhlink.nerves_key.nerves_key import NervesKeyDevice, open_atecc

    bus = chip_key_bus(config.ssl.keyfile)
    if bus is None or not config.ssl.certfile:
        raise ChipTlsError(
            "[ssl] keyfile does not name a NervesKey (run the NervesKey configurator)"
        )
    device = NervesKeyDevice(open_atecc(bus))
    try:
        with open(config.ssl.certfile, "rb") as handle:
            chain_pem = handle.read()
    except OSError as exc:
        raise ChipTlsError(f"cannot read {config.ssl.certfile}: {exc.strerror or exc}") from None
    key = ChipEcdsaKey(device.atecc.genkey_public(0), device.sign_digest)
    return open_chip_tls(
        host,
        port,
        chain_pem=chain_pem,
        key=key,
        trusted=trusted_certificates(config.ssl.cacertfile, config.ssl.cacerts),
        versions=config.ssl.versions,
        sni=config.ssl.server_name_indication,
        timeout=timeout,
    )


def websocket_target(uri: str) -> tuple[str, int, str]:
    """``(host, port, ws_uri)`` for a ``wss://`` URI: the bridge carries the TLS."""
    parts = urlsplit(uri)
    if parts.scheme != "wss" or not parts.hostname:
        raise ChipTlsError(f"a NervesKey connection needs a wss:// URI, not {uri!r}")
    port = parts.port or 443
    return parts.hostname, port, urlunsplit(("ws", parts.netloc, parts.path, parts.query, ""))


async def open_bridge(
    config: Config, uri: str, *, timeout: float = 30.0
) -> tuple[ChipTlsBridge, str]:
    """Handshake (in a thread) for ``uri``; the bridge and the ``ws://`` URI to connect with.

    Use as ``websockets.asyncio.client.connect(ws_uri, sock=bridge.socket)`` and
    close the bridge after the websocket.
    """
    host, port, plain_uri = websocket_target(uri)
    bridge = await asyncio.to_thread(open_for_config, config, host, port, timeout=timeout)
    return bridge, plain_uri
