"""A throwaway PKI for the local hub: CA, device signer CA, server and device certificates.

Layout of the directory (PEM files; keys are SEC1 ``EC PRIVATE KEY``, mode 0600):

``ca.pem`` / ``ca-key.pem``
    root CA that signs the server certificate (the devices' ``cacertfile``)
``signer-ca.pem`` / ``signer-ca-key.pem``
    the device signer CA registered with the hub (a separate root, as a
    NervesHub organisation's registered CA is)
``server.pem`` / ``server-key.pem``
    server certificate for ``localhost``, ``127.0.0.1`` and ``::1``
``devices/<name>.pem`` / ``devices/<name>-key.pem``
    device certificates (CN = device identifier)
``unregistered-ca.pem`` / ``unregistered-ca-key.pem``
    a CA the hub does not know, for "unknown CA" tests (made on demand)
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nhlink.testing.errors import HubError

__all__ = [
    "CertificateAuthority",
    "IssuedCertificate",
    "Pki",
    "common_name",
]

_ONE_HOUR = datetime.timedelta(hours=1)
_ONE_DAY = datetime.timedelta(days=1)
_DEFAULT_SERVER_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA whose key we hold (so it can issue certificates and CRLs)."""

    name: str
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class IssuedCertificate:
    """A leaf certificate with its key, as written to disk."""

    common_name: str
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.private_key)

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


def common_name(certificate: x509.Certificate) -> str | None:
    """The subject CN of a certificate, or None when it has none."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _name(cn: str, organization: str = "nhlink testing") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _base_builder(
    subject: x509.Name,
    issuer_name: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=True,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _make_ca(name: str, cn: str, directory: Path, validity_days: int) -> CertificateAuthority:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    subject = _name(cn)
    cert = (
        _base_builder(
            subject,
            subject,
            key.public_key(),
            key,
            now - _ONE_HOUR,
            now + datetime.timedelta(days=validity_days),
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / f"{name}.pem"
    key_path = directory / f"{name}-key.pem"
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write(key_path, _key_pem(key), secret=True)
    return CertificateAuthority(name, cert, key, cert_path, key_path)


def _load_ca(name: str, directory: Path) -> CertificateAuthority:
    cert_path = directory / f"{name}.pem"
    key_path = directory / f"{name}-key.pem"
    cert, key = _load_pair(cert_path, key_path)
    return CertificateAuthority(name, cert, key, cert_path, key_path)


def _load_pair(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise HubError(f"cannot load {cert_path.name}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise HubError(f"{key_path} is not an EC private key")
    return cert, key


class Pki:
    """The hub's certificates, created fresh (`create`) or reloaded (`load`)."""

    def __init__(
        self,
        directory: Path,
        ca: CertificateAuthority,
        signer: CertificateAuthority,
        server: IssuedCertificate,
    ) -> None:
        self.directory = directory
        self.ca = ca
        self.signer = signer
        self.server = server
        self._issued: dict[int, IssuedCertificate] = {}
        self._unregistered_ca: CertificateAuthority | None = None

    # -- construction -------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        *,
        server_hosts: Iterable[str] = _DEFAULT_SERVER_HOSTS,
        validity_days: int = 3650,
        server_validity: tuple[datetime.datetime, datetime.datetime] | None = None,
    ) -> Pki:
        """Generate a new CA, signer CA and server certificate into `directory`.

        `server_validity` (notBefore, notAfter) replaces the server certificate's
        default dates (an hour ago until `validity_days`, at most 825, from now),
        e.g. to make a certificate that only becomes valid in the future.
        """
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        ca = _make_ca("ca", "nhlink testing root CA", path, validity_days)
        signer = _make_ca("signer-ca", "nhlink testing device signer CA", path, validity_days)
        server = _issue_server(ca, path, tuple(server_hosts), validity_days, server_validity)
        return cls(path, ca, signer, server)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Pki:
        """Reload a PKI written by `create` (device certificates included)."""
        path = Path(directory)
        ca = _load_ca("ca", path)
        signer = _load_ca("signer-ca", path)
        cert, key = _load_pair(path / "server.pem", path / "server-key.pem")
        pki = cls(
            path,
            ca,
            signer,
            IssuedCertificate("server", cert, key, path / "server.pem", path / "server-key.pem"),
        )
        for cert_path in sorted((path / "devices").glob("*.pem")):
            if cert_path.name.endswith("-key.pem"):
                continue
            key_path = cert_path.with_name(cert_path.stem + "-key.pem")
            if not key_path.is_file():
                continue
            dcert, dkey = _load_pair(cert_path, key_path)
            if _issued_by(dcert, signer):
                issued = IssuedCertificate(
                    common_name(dcert) or "", dcert, dkey, cert_path, key_path
                )
                pki._issued[issued.serial] = issued
        return pki

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str]) -> Pki:
        """`load` when the directory already holds a PKI, else `create`."""
        path = Path(directory)
        if (path / "ca.pem").is_file() and (path / "signer-ca.pem").is_file():
            return cls.load(path)
        return cls.create(path)

    # -- device certificates ------------------------------------------------

    @property
    def issued_device_certificates(self) -> list[IssuedCertificate]:
        """Every device certificate issued by the signer CA (in issue order)."""
        return list(self._issued.values())

    def find_device_certificate(self, identifier: str) -> IssuedCertificate | None:
        """A currently valid signer-CA certificate written as devices/<identifier>.pem."""
        now = _now()
        for cert in reversed(self._issued.values()):
            if (
                cert.common_name == identifier
                and cert.cert_path.stem == identifier
                and cert.certificate.not_valid_before_utc
                <= now
                < cert.certificate.not_valid_after_utc
            ):
                return cert
        return None

    def issue_device_certificate(
        self,
        identifier: str,
        *,
        name: str | None = None,
        issuer: CertificateAuthority | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> IssuedCertificate:
        """Issue a client certificate with CN `identifier`, written as devices/<name>.pem."""
        ca = issuer or self.signer
        now = _now()
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            _base_builder(
                _name(identifier),
                ca.certificate.subject,
                key.public_key(),
                ca.private_key,
                not_before or now - _ONE_HOUR,
                not_after or now + datetime.timedelta(days=3650),
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_usage(), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca.private_key, hashes.SHA256())
        )
        stem = name or identifier
        if "/" in stem or stem.startswith("."):
            raise HubError(f"bad certificate file name: {stem!r}")
        cert_path = self.directory / "devices" / f"{stem}.pem"
        key_path = self.directory / "devices" / f"{stem}-key.pem"
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        _write(key_path, _key_pem(key), secret=True)
        issued = IssuedCertificate(identifier, cert, key, cert_path, key_path)
        if ca is self.signer:
            self._issued[issued.serial] = issued
        return issued

    def expired_device_certificate(self, identifier: str) -> IssuedCertificate:
        """A signer-CA certificate whose validity ended yesterday."""
        now = _now()
        return self.issue_device_certificate(
            identifier,
            name=f"{identifier}-expired",
            not_before=now - datetime.timedelta(days=30),
            not_after=now - _ONE_DAY,
        )

    def not_yet_valid_device_certificate(self, identifier: str) -> IssuedCertificate:
        """A signer-CA certificate whose validity starts tomorrow."""
        now = _now()
        return self.issue_device_certificate(
            identifier,
            name=f"{identifier}-not-yet-valid",
            not_before=now + _ONE_DAY,
            not_after=now + datetime.timedelta(days=30),
        )

    def unknown_ca_device_certificate(self, identifier: str) -> IssuedCertificate:
        """A certificate signed by a CA the hub has never registered."""
        return self.issue_device_certificate(
            identifier, name=f"{identifier}-unknown-ca", issuer=self.unregistered_ca
        )

    @property
    def unregistered_ca(self) -> CertificateAuthority:
        """A CA (made on first use) that the hub does not trust for devices."""
        if self._unregistered_ca is None:
            self._unregistered_ca = _make_ca(
                "unregistered-ca", "nhlink testing unregistered CA", self.directory, 3650
            )
        return self._unregistered_ca

    # -- revocation ---------------------------------------------------------

    def crl_pem(
        self,
        revoked_serials: Iterable[int],
        *,
        generation: int,
        ca: CertificateAuthority | None = None,
    ) -> bytes:
        """A CRL of `ca` (default: the signer CA).

        OpenSSL picks the CRL with the latest lastUpdate, so each new CRL for
        the same CA must carry a larger `generation` (seconds added to a base
        one day in the past).
        """
        issuer = ca or self.signer
        now = _now()
        last_update = now - _ONE_DAY + datetime.timedelta(seconds=generation)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.certificate.subject)
            .last_update(last_update)
            .next_update(now + datetime.timedelta(days=365))
        )
        for serial in sorted(set(revoked_serials)):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - _ONE_DAY)
                .build()
            )
        crl = builder.sign(issuer.private_key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)

    # -- SSL contexts for clients -------------------------------------------

    def client_ssl_context(
        self,
        device: IssuedCertificate | None = None,
        *,
        tls13: bool = False,
        cafile: Path | None = None,
    ) -> ssl.SSLContext:
        """A client context trusting the hub's CA (or `cafile`), with `device`'s cert if given."""
        ctx = ssl.create_default_context(cafile=str(cafile or self.ca.cert_path))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_3 if tls13 else ssl.TLSVersion.TLSv1_2
        if device is not None:
            ctx.load_cert_chain(str(device.cert_path), str(device.key_path))
        return ctx


def _issued_by(cert: x509.Certificate, ca: CertificateAuthority) -> bool:
    try:
        cert.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _issue_server(
    ca: CertificateAuthority,
    directory: Path,
    hosts: tuple[str, ...],
    validity_days: int,
    validity: tuple[datetime.datetime, datetime.datetime] | None = None,
) -> IssuedCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_before, not_after = validity or (
        now - _ONE_HOUR,
        now + datetime.timedelta(days=min(validity_days, 825)),
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        _base_builder(
            _name(hosts[0] if hosts else "localhost"),
            ca.certificate.subject,
            key.public_key(),
            ca.private_key,
            not_before,
            not_after,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    cert_path = directory / "server.pem"
    key_path = directory / "server-key.pem"
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write(key_path, _key_pem(key), secret=True)
    return IssuedCertificate("server", cert, key, cert_path, key_path)
