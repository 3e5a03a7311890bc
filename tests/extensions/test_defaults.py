"""Building the extensions from ``[extensions]``: bad settings are ConfigErrors."""

from __future__ import annotations

import pytest

from nhlink.config import ExtensionsConfig
from nhlink.errors import ConfigError
from nhlink.extensions import GeoExtension, HealthExtension, LocalShellExtension, Location
from nhlink.extensions.defaults import build_extensions


def test_defaults_build_every_extension() -> None:
    names = [e.name for e in build_extensions(ExtensionsConfig())]
    assert names == ["health", "geo", "local_shell", "logging"]


def test_settings_reach_the_extensions() -> None:
    config = ExtensionsConfig(
        enabled=("health", "local_shell", "geo"),
        shell="/bin/bash",
        metadata=("site = lab", "rack=4"),
        disk_path="/tmp",
    )
    health, shell, geo = build_extensions(config)
    assert isinstance(health, HealthExtension) and isinstance(shell, LocalShellExtension)
    assert health.sources.metadata == {"site": "lab", "rack": "4"}
    assert health.disk_path == "/tmp" and shell.shell == "/bin/bash"
    assert isinstance(geo, GeoExtension)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (ExtensionsConfig(enabled=("health", "telepathy")), "unknown extension 'telepathy'"),
        (ExtensionsConfig(metadata=("novalue",)), "key=value"),
        (ExtensionsConfig(geo_location="north"), "latitude,longitude"),
        (ExtensionsConfig(geo_location="91,0"), "latitude,longitude"),
        (ExtensionsConfig(geo_location="1,2,3,4"), "latitude,longitude"),
    ],
)
def test_bad_settings_are_config_errors(config: ExtensionsConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_extensions(config)


def test_location_ranges() -> None:
    assert Location(-90, 180).payload() == {"source": "manual", "latitude": -90, "longitude": 180}
    with pytest.raises(Exception, match="longitude"):
        Location(0, 181)
