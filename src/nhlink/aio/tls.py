"""TLS towards the hub: the client context, and one clear line per handshake failure.

The context carries the device certificate and key, trusts ``[ssl] cacertfile``
and the configurator's DER ``cacerts`` (else the OS store), verifies the
hub's hostname (``sni`` / ``[ssl] server_name_indication`` when set, else the
host) and speaks TLS 1.2 unless ``[ssl] versions`` allows 1.3 (spec 1.5).
"""

from __future__ import annotations

import datetime
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nhlink.config import Config
from nhlink.errors import ConfigError, NHLinkError

_VERSIONS = {"tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3}

# OpenSSL X509_V_ERR_* codes seen when verifying the hub's certificate.
_UNTRUSTED = {2, 18, 19, 20, 21, 27}
_NOT_YET_VALID = 9
_EXPIRED = 10
_HOSTNAME_MISMATCH = 62

# Alerts the hub sends when it refuses the device certificate.
_PEER_REJECTED = {
    "TLSV1_ALERT_UNKNOWN_CA": "unknown CA",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "certificate expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad certificate",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "certificate revoked",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate unknown",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "unsupported certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "certificate required",
    "TLSV1_ALERT_ACCESS_DENIED": "access denied",
}
_VERSION_MISMATCH = {
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "UNSUPPORTED_PROTOCOL",
    "WRONG_VERSION_NUMBER",
    "NO_PROTOCOLS_AVAILABLE",
}


class TLSHandshakeError(NHLinkError):
    """The TLS handshake with the hub failed (the message says why and what to do)."""


def client_context(config: Config) -> ssl.SSLContext:
    """The SSLContext for the hub socket; ConfigError when a file cannot be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode REQUIRED, check_hostname on
    versions = sorted(_VERSIONS[v] for v in config.ssl.versions) or [ssl.TLSVersion.TLSv1_2]
    context.minimum_version = versions[0]
    context.maximum_version = versions[-1]
    load_trust(context, config)
    if uses_chip_key(config):
        return context  # the handshake is signed on the NervesKey (nhlink.nerves_key.tls)
    if config.ssl.certfile and config.ssl.keyfile:
        try:
            context.load_cert_chain(config.ssl.certfile, config.ssl.keyfile)
        except FileNotFoundError as exc:
            raise ConfigError(f"[ssl] certfile/keyfile: {exc.filename} does not exist") from None
        except ssl.SSLError as exc:
            raise ConfigError(
                f"[ssl] keyfile {config.ssl.keyfile!r} does not match certfile "
                f"{config.ssl.certfile!r}, or one is not PEM ({exc.reason or exc})"
            ) from None
        except OSError as exc:
            raise ConfigError(f"[ssl] certfile/keyfile: {exc.strerror or exc}") from None
    return context


def uses_chip_key(config: Config) -> bool:
    """The device key lives in a secure element: ``[ssl] keyfile`` holds a chip marker."""
    return bool(config.ssl.keyfile) and str(config.ssl.keyfile).startswith("nerves-key:")


def load_trust(context: ssl.SSLContext, config: Config) -> None:
    """Trust ``cacertfile`` and ``cacerts``; the OS store when neither is given."""
    if config.ssl.cacertfile:
        try:
            context.load_verify_locations(cafile=config.ssl.cacertfile)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"[ssl] cacertfile {config.ssl.cacertfile!r} holds no usable PEM certificate ({exc})"
            ) from None
    if config.ssl.cacerts:
        try:
            context.load_verify_locations(cadata=b"".join(config.ssl.cacerts))
        except ssl.SSLError as exc:
            raise ConfigError(f"CA certificates from ca_store are not valid DER ({exc})") from None
    if not (config.ssl.cacertfile or config.ssl.cacerts):
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)


def server_hostname(config: Config, url_host: str) -> str:
    """The name sent as SNI and checked against the hub's certificate."""
    return config.sni or config.ssl.server_name_indication or url_host


# -- certificate dates ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Validity:
    not_before: float
    not_after: float


def certificate_validity(der: bytes) -> Validity:
    """notBefore/notAfter of an X.509 certificate (a minimal DER walk)."""
    certificate, _ = _der_item(der, 0)
    tbs, _ = _der_item(certificate.value, 0)
    items = list(_der_children(tbs.value))
    index = 1 if items and items[0].tag == 0xA0 else 0  # skip [0] version
    validity = items[index + 3]  # serial, signature algorithm, issuer, validity
    times = list(_der_children(validity.value))
    if len(times) != 2:
        raise ValueError("certificate validity is not two times")
    return Validity(_der_time(times[0]), _der_time(times[1]))


def file_validity(path: str) -> Validity | None:
    """The validity of the first certificate of a PEM file, or None if unreadable."""
    try:
        text = Path(path).read_text()
        begin = text.index("-----BEGIN CERTIFICATE-----")
        end = text.index("-----END CERTIFICATE-----", begin) + len("-----END CERTIFICATE-----")
        return certificate_validity(ssl.PEM_cert_to_DER_cert(text[begin:end]))
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


@dataclass(frozen=True, slots=True)
class _DER:
    tag: int
    value: bytes


def _der_item(data: bytes, pos: int) -> tuple[_DER, int]:
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return _DER(tag, data[pos : pos + length]), pos + length


def _der_children(data: bytes) -> Iterator[_DER]:
    pos = 0
    while pos < len(data):
        item, pos = _der_item(data, pos)
        yield item


def _der_time(item: _DER) -> float:
    text = item.value.decode("ascii")
    if item.tag == 0x17:  # UTCTime YYMMDDHHMMSSZ
        parsed = datetime.datetime.strptime(text, "%y%m%d%H%M%SZ")
    elif item.tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        parsed = datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ")
    else:
        raise ValueError("not a certificate time")
    return parsed.replace(tzinfo=datetime.UTC).timestamp()


def format_time(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC"
    )


# -- handshake failures ----------------------------------------------------------

DATE_KINDS = frozenset({"expired", "not_yet_valid"})
"""The :func:`tls_kind` values of a certificate date check (a wrong clock's symptom)."""


def tls_kind(error: ssl.SSLError) -> str:
    """A stable name for a handshake failure, for reason codes (``tls:<kind>``).

    ``not_yet_valid``, ``expired``, ``hostname``, ``unknown_ca`` and ``verify``
    concern the hub's certificate; ``rejected`` means the hub refused the
    device certificate; ``version`` no common TLS version; else ``handshake``.
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        code = error.verify_code
        if code == _NOT_YET_VALID:
            return "not_yet_valid"
        if code == _EXPIRED:
            return "expired"
        if code == _HOSTNAME_MISMATCH:
            return "hostname"
        return "unknown_ca" if code in _UNTRUSTED else "verify"
    reason = error.reason or ""
    if reason in _PEER_REJECTED:
        return "rejected"
    if reason in _VERSION_MISMATCH:
        return "version"
    return "handshake"


def find_ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The SSLError in ``exc``'s cause/context chain, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def describe_handshake_failure(
    error: ssl.SSLError, config: Config, hostname: str, now: float | None = None
) -> str:
    """One line: what failed in the handshake, the likely cause and the fix."""
    now = time.time() if now is None else now
    if isinstance(error, ssl.SSLCertVerificationError):
        return _describe_hub_certificate(error, config, hostname, now)
    reason = error.reason or ""
    if reason in _PEER_REJECTED:
        return _describe_rejection(_PEER_REJECTED[reason], config, now)
    if reason in _VERSION_MISMATCH:
        allowed = ", ".join(config.ssl.versions)
        return (
            f"TLS handshake failed: the hub and the device share no TLS version (device allows "
            f"{allowed}): adjust [ssl] versions"
        )
    if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE":
        allowed = ", ".join(config.ssl.versions)
        return (
            f"TLS handshake failed: the hub refused it (handshake_failure: usually no TLS "
            f"version or cipher suite in common; device allows {allowed}): check that the hub "
            "speaks TLS 1.2 or newer, and [ssl] versions"
        )
    return f"TLS handshake with the hub failed: {reason or error}"


def _describe_hub_certificate(
    error: ssl.SSLCertVerificationError, config: Config, hostname: str, now: float
) -> str:
    code = error.verify_code
    if code == _HOSTNAME_MISMATCH:
        return (
            f"TLS: the hub's certificate is not valid for {hostname!r}: set sni (or host) "
            "to a name in the hub's certificate"
        )
    if code == _NOT_YET_VALID:
        return (
            f"TLS: system clock is {format_time(now)}, before the hub certificate's start: "
            "set the clock"
        )
    if code == _EXPIRED:
        return (
            f"TLS: the hub's certificate has expired (system clock is {format_time(now)}): "
            "check the clock or renew the hub's certificate"
        )
    if code in _UNTRUSTED:
        source = (
            f"[ssl] cacertfile {config.ssl.cacertfile!r}"
            if config.ssl.cacertfile
            else "the ca_store certificates"
            if config.ssl.cacerts
            else "the OS certificate store"
        )
        return (
            f"TLS: the hub's certificate is not trusted (unknown CA: {error.verify_message}): "
            f"check that {source} holds the CA that signed the hub's certificate"
        )
    return f"TLS: cannot verify the hub's certificate: {error.verify_message or error.reason}"


def _describe_rejection(alert: str, config: Config, now: float) -> str:
    certfile = config.ssl.certfile
    validity = file_validity(certfile) if certfile else None
    if validity is not None and now < validity.not_before:
        return (
            f"TLS: system clock is {format_time(now)}, certificate valid from "
            f"{format_time(validity.not_before)}: set the clock"
        )
    if validity is not None and now > validity.not_after:
        return (
            f"TLS: the hub rejected the device certificate ({alert}): it expired on "
            f"{format_time(validity.not_after)}; renew it (system clock is {format_time(now)})"
        )
    if not certfile:
        return (
            f"TLS: the hub demands a device certificate ({alert}): configure [ssl] certfile/keyfile"
        )
    return (
        f"TLS: the hub rejected the device certificate ({alert}): check the device is "
        f"registered with the hub and its certificate's signer CA is known to it ({certfile})"
    )
