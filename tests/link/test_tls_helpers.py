"""Certificate dates and the wording of handshake failures."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from nhlink.aio.tls import (
    certificate_validity,
    client_context,
    describe_handshake_failure,
    file_validity,
    format_time,
)
from nhlink.config import Config, SSLConfig
from nhlink.testing import Pki


def test_validity_matches_the_certificate(pki: Pki) -> None:
    cert = pki.expired_device_certificate("dates")
    validity = certificate_validity(cert.der)
    assert validity.not_before == cert.certificate.not_valid_before_utc.timestamp()
    assert validity.not_after == cert.certificate.not_valid_after_utc.timestamp()
    assert file_validity(str(cert.cert_path)) == validity
    assert file_validity(str(cert.key_path)) is None


def test_generalized_time_after_2049(pki: Pki) -> None:
    late = datetime.datetime(2051, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    cert = pki.issue_device_certificate("late", name="late", not_after=late)
    assert certificate_validity(cert.der).not_after == late.timestamp()


def test_context_settings(pki: Pki, tmp_path: Path) -> None:
    cert = pki.issue_device_certificate("ctx", name="ctx")
    config = Config(
        ssl=SSLConfig(
            certfile=str(cert.cert_path),
            keyfile=str(cert.key_path),
            cacertfile=str(pki.ca.cert_path),
        )
    )
    context = client_context(config)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == context.maximum_version == ssl.TLSVersion.TLSv1_2
    both = client_context(
        Config(ssl=SSLConfig(cacertfile=str(pki.ca.cert_path), versions=("tlsv1.3", "tlsv1.2")))
    )
    assert both.maximum_version == ssl.TLSVersion.TLSv1_3


def test_mismatched_key_is_a_config_error(pki: Pki) -> None:
    import pytest

    from nhlink.errors import ConfigError

    one = pki.issue_device_certificate("one", name="one")
    two = pki.issue_device_certificate("two", name="two")
    config = Config(ssl=SSLConfig(certfile=str(one.cert_path), keyfile=str(two.key_path)))
    with pytest.raises(ConfigError, match=r"\[ssl\] keyfile .* does not match certfile"):
        client_context(config)
    with pytest.raises(ConfigError, match=r"cacertfile .* holds no usable PEM certificate"):
        client_context(Config(ssl=SSLConfig(cacertfile=str(one.key_path))))


def test_version_and_unknown_alerts() -> None:
    error = ssl.SSLError(1, "[SSL: TLSV1_ALERT_PROTOCOL_VERSION] tlsv1 alert protocol version")
    error.reason = "TLSV1_ALERT_PROTOCOL_VERSION"
    assert describe_handshake_failure(error, Config(), "h") == (
        "TLS handshake failed: the hub and the device share no TLS version (device allows "
        "tlsv1.2): adjust [ssl] versions"
    )
    odd = ssl.SSLError(1, "odd")
    odd.reason = "SOMETHING_ELSE"
    assert describe_handshake_failure(odd, Config(), "h") == (
        "TLS handshake with the hub failed: SOMETHING_ELSE"
    )


def test_format_time() -> None:
    assert format_time(0) == "1970-01-01 00:00:00 UTC"
