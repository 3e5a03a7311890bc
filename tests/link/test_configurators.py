"""Configurators, CA stores and fwup key names."""

from __future__ import annotations

import stat
import sys
import types
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from nhlink.config import Config, NervesKeyConfig, SharedSecretConfig, SSLConfig, build_config
from nhlink.configurators import (
    LocalCertKey,
    SharedSecret,
    UBootEnvProvisioning,
    prepare_config,
    resolve_public_keys,
    resolve_shared_secret,
    select_configurator,
)
from nhlink.errors import ConfigError
from nhlink.kv import KV
from nhlink.testing import Pki

KEY = "pUJ3Rd1bH3HI6NNaF1p2pP2zMyWX8PJ1g8Qh9a+TxKE="


@pytest.fixture
def fake_module() -> Iterator[types.ModuleType]:
    module = types.ModuleType("nhlink_test_plugins")
    sys.modules[module.__name__] = module
    try:
        yield module
    finally:
        del sys.modules[module.__name__]


def test_local_cert_key_writes_kv_pems_privately(pki: Pki, tmp_path: Path) -> None:
    cert = pki.issue_device_certificate("kv-dev", name="kv-dev-cfg")
    kv = KV({"nerves_hub_cert": cert.cert_pem.decode(), "nerves_hub_key": cert.key_pem.decode()})
    data = tmp_path / "data"
    config = LocalCertKey(kv).build(Config(data_path=str(data)))
    assert config.ssl.certfile == str(data / "nerves_hub_cert.pem")
    assert config.ssl.keyfile == str(data / "nerves_hub_key.pem")
    for path in (config.ssl.certfile, config.ssl.keyfile):
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    assert Path(config.ssl.certfile).read_bytes() == cert.cert_pem
    assert Path(config.ssl.keyfile).read_bytes() == cert.key_pem
    # the files from config win over the KV
    chosen = LocalCertKey(kv).build(
        Config(ssl=SSLConfig(certfile=str(cert.cert_path), keyfile=str(cert.key_path)))
    )
    assert chosen.ssl.certfile == str(cert.cert_path)


def test_local_cert_key_falls_back_to_data_path_files(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("c")
    (tmp_path / "key.pem").write_text("k")
    config = LocalCertKey(KV({})).build(Config(data_path=str(tmp_path)))
    assert config.ssl.certfile == str(tmp_path / "cert.pem")
    assert config.ssl.keyfile == str(tmp_path / "key.pem")
    (tmp_path / "key.pem").unlink()
    with pytest.raises(ConfigError, match=r"device key '.*key.pem' does not exist"):
        LocalCertKey(KV({})).build(Config(data_path=str(tmp_path)))


def test_shared_secret_lookup_order() -> None:
    settings = SharedSecretConfig(
        key="cfg_key", secret="cfg_secret", product_key="nhp_cfg", product_secret="cfg_psecret"
    )
    # KV device key first, with the KV secret; identifier from the serial number
    kv = KV(
        {"nh_shared_key": "kv_key", "nh_shared_secret": "kv_secret", "nerves_serial_number": "SN"}
    )
    assert resolve_shared_secret(settings, kv) == replace(
        settings, key="kv_key", secret="kv_secret", identifier="SN"
    )
    # config device key next; its secret from the KV when there, else config
    kv = KV({"nh_shared_product_key": "nhp_kv", "nh_shared_product_secret": "kv_psecret"})
    resolved = resolve_shared_secret(settings, kv)
    assert (resolved.key, resolved.secret, resolved.identifier) == (
        "cfg_key",
        "cfg_secret",
        "unconfigured",
    )
    # then the KV product key with the product secret
    product = resolve_shared_secret(replace(settings, key=None), kv)
    assert (product.key, product.secret) == ("nhp_kv", "kv_psecret")
    # then the configured product key
    last = resolve_shared_secret(replace(settings, key=None, identifier="id-1"), KV({}))
    assert (last.key, last.secret, last.identifier) == ("nhp_cfg", "cfg_psecret", "id-1")
    with pytest.raises(ConfigError, match="no shared-secret key"):
        resolve_shared_secret(SharedSecretConfig(), KV({}))
    with pytest.raises(ConfigError, match="'nhp_x' has no secret"):
        resolve_shared_secret(SharedSecretConfig(product_key="nhp_x", secret="s"), KV({}))


def test_shared_secret_configurator_drops_the_certificate() -> None:
    config = Config(
        ssl=SSLConfig(certfile="c.pem", keyfile="k.pem"),
        shared_secret=SharedSecretConfig(key="k", secret="s", identifier="i"),
    )
    built = SharedSecret(KV({})).build(config)
    assert built.ssl.certfile is None and built.ssl.keyfile is None
    assert built.shared_secret.key == "k"


def test_uboot_env_provisioning_prefers_the_certificate(pki: Pki, tmp_path: Path) -> None:
    cert = pki.issue_device_certificate("prov-dev", name="prov-dev-cfg")
    kv = KV(
        {
            "nerves_hub_cert": cert.cert_pem.decode(),
            "nerves_hub_key": cert.key_pem.decode(),
            "nh_shared_key": "k",
            "nh_shared_secret": "s",
        }
    )
    built = UBootEnvProvisioning(kv).build(Config(data_path=str(tmp_path)))
    assert built.ssl.certfile == str(tmp_path / "nerves_hub_cert.pem")
    only_secret = KV({"nh_shared_key": "k", "nh_shared_secret": "s"})
    built = UBootEnvProvisioning(only_secret).build(Config(data_path=str(tmp_path)))
    assert built.ssl.certfile is None and built.shared_secret.key == "k"
    with pytest.raises(ConfigError, match="run `nhlink provision`"):
        UBootEnvProvisioning(KV({})).build(Config())


def test_default_selection(tmp_path: Path) -> None:
    assert isinstance(select_configurator(Config(data_path=str(tmp_path)), KV({})), SharedSecret)
    with_cert = Config(ssl=SSLConfig(certfile="c", keyfile="k"))
    assert isinstance(select_configurator(with_cert, KV({})), LocalCertKey)
    assert isinstance(
        select_configurator(Config(data_path=str(tmp_path)), KV({"nerves_hub_cert": "x"})),
        LocalCertKey,
    )
    (tmp_path / "cert.pem").write_text("c")
    assert isinstance(select_configurator(Config(data_path=str(tmp_path)), KV({})), LocalCertKey)
    from nhlink.nerves_key.configurator import NervesKey

    assert isinstance(select_configurator(Config(nerves_key=NervesKeyConfig()), KV({})), NervesKey)


def test_configurator_from_config(fake_module: types.ModuleType, tmp_path: Path) -> None:
    class Custom:
        def build(self, config: Config) -> Config:
            return config.with_changes(
                shared_secret=SharedSecretConfig(key="ck", secret="cs", identifier="custom")
            )

    class NoBuild:
        pass

    fake_module.Custom = Custom  # type: ignore[attr-defined]
    fake_module.NoBuild = NoBuild  # type: ignore[attr-defined]
    config = build_config(
        {"configurator": "nhlink_test_plugins:Custom", "data_path": str(tmp_path)}
    )
    assert prepare_config(config, KV({})).shared_secret.identifier == "custom"
    with pytest.raises(ConfigError, match="has no build"):
        prepare_config(config.with_changes(configurator="nhlink_test_plugins:NoBuild"), KV({}))
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        prepare_config(config.with_changes(configurator="no_such_module:X"), KV({}))
    with pytest.raises(ConfigError, match="has no 'Missing'"):
        prepare_config(config.with_changes(configurator="nhlink_test_plugins:Missing"), KV({}))


def test_prepare_config_requires_credentials(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no shared-secret key"):
        prepare_config(Config(data_path=str(tmp_path)), KV({}))


def test_ca_store_adds_der_certificates(
    fake_module: types.ModuleType, pki: Pki, tmp_path: Path
) -> None:
    import ssl

    der = ssl.PEM_cert_to_DER_cert(pki.ca.cert_pem.decode())
    fake_module.ca_certs = lambda: [der]  # type: ignore[attr-defined]
    fake_module.broken = lambda: ["not bytes"]  # type: ignore[attr-defined]
    secret = SharedSecretConfig(key="k", secret="s")
    config = Config(
        data_path=str(tmp_path), ca_store="nhlink_test_plugins:ca_certs", shared_secret=secret
    )
    assert prepare_config(config, KV({})).ssl.cacerts == (der,)
    with_file = config.with_changes(ssl=SSLConfig(cacertfile=str(pki.ca.cert_path)))
    assert prepare_config(with_file, KV({})).ssl.cacerts == ()  # cacertfile wins
    with pytest.raises(ConfigError, match="must return DER certificates"):
        prepare_config(config.with_changes(ca_store="nhlink_test_plugins:broken"), KV({}))


def test_cacerts_cannot_come_from_the_file() -> None:
    with pytest.raises(ConfigError, match="unknown key 'cacerts' in \\[ssl\\]"):
        build_config({"ssl": {"cacerts": "x"}})


def test_public_key_names_resolve_to_pub_files(tmp_path: Path) -> None:
    (tmp_path / "devkey.pub").write_text(KEY)  # as `nhlink fwup -g -o devkey` writes it
    (tmp_path / "bad.pub").write_text("not base64!")
    assert resolve_public_keys([KEY, "devkey"], tmp_path) == (KEY, KEY)
    with pytest.raises(
        ConfigError, match=r"'prodkey' is not a base64 .*/prodkey.pub does not exist"
    ):
        resolve_public_keys(["prodkey"], tmp_path)
    with pytest.raises(ConfigError, match=r"bad\.pub does not hold a base64 Ed25519 key"):
        resolve_public_keys(["bad"], tmp_path)


def test_a_provisioned_nerves_key_is_chosen_automatically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As NervesHubLink does: with no configurator and no certificate configured, a
    NervesKey that answers on the default bus is used; an explicit certificate wins."""
    from nhlink import configurators
    from nhlink.nerves_key.configurator import NervesKey

    probed: list[int] = []

    def answers(bus: int) -> bool:
        probed.append(bus)
        return True

    monkeypatch.setattr(configurators, "nerves_key_detected", answers)
    chosen = select_configurator(Config(data_path=str(tmp_path)), KV({}))
    assert isinstance(chosen, NervesKey) and probed == [1]
    with_cert = Config(ssl=SSLConfig(certfile="c", keyfile="k"))
    assert isinstance(select_configurator(with_cert, KV({})), LocalCertKey)


def test_no_i2c_bus_means_no_nerves_key() -> None:
    from nhlink.configurators import nerves_key_detected

    assert nerves_key_detected(250) is False
