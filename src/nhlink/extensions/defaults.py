"""The extensions a link offers by default, built from ``[extensions]`` and the client.

A client may add health data by defining ``health_metadata()``,
``health_metrics()`` and/or ``health_checks()`` (plain or async), and replace
the location resolver with ``geo_location()`` returning a
:class:`~nhlink.extensions.geo.Location` (or raising
:class:`~nhlink.extensions.geo.GeoError`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nhlink.config import ExtensionsConfig
from nhlink.errors import ConfigError
from nhlink.extensions.base import Extension
from nhlink.extensions.geo import (
    GeoExtension,
    Resolver,
    fixed_location,
    no_resolver,
    parse_location,
)
from nhlink.extensions.health import HealthExtension, HealthSources
from nhlink.extensions.local_shell import LocalShellExtension
from nhlink.extensions.logging_ext import LoggingExtension, level_number

if TYPE_CHECKING:
    from nhlink.aio.link import NervesHubLink

logger = logging.getLogger("nhlink.extensions")

KNOWN = ("health", "geo", "local_shell", "logging")


def parse_metadata(pairs: tuple[str, ...]) -> dict[str, str]:
    """``("key=value", ...)`` as a mapping."""
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"[extensions] metadata entry {pair!r} must look like key=value")
        metadata[key.strip()] = value.strip()
    return metadata


def build_extensions(config: ExtensionsConfig, client: object | None = None) -> list[Extension]:
    """The enabled extensions, configured from ``config`` and the client's optional hooks."""
    extensions: list[Extension] = []
    for name in config.enabled:
        if name == "health":
            sources = HealthSources(
                metadata=parse_metadata(config.metadata),
                metadata_callback=getattr(client, "health_metadata", None),
                metrics_callback=getattr(client, "health_metrics", None),
                checks_callback=getattr(client, "health_checks", None),
            )
            extensions.append(HealthExtension(sources, disk_path=config.disk_path))
        elif name == "geo":
            resolver: Resolver = no_resolver
            if config.geo_location:
                resolver = fixed_location(parse_location(config.geo_location))
            client_resolver = getattr(client, "geo_location", None)
            if callable(client_resolver):
                resolver = client_resolver
            extensions.append(GeoExtension(resolver))
        elif name == "local_shell":
            extensions.append(LocalShellExtension(config.shell))
        elif name == "logging":
            extensions.append(
                LoggingExtension(
                    forward_app_logs=config.forward_app_logs,
                    level=level_number(config.log_level),
                )
            )
        else:
            raise ConfigError(
                f"[extensions] enabled: unknown extension {name!r} ({', '.join(KNOWN)})"
            )
    return extensions


def default_extensions(link: NervesHubLink) -> list[Extension]:
    """The extensions of ``link.config.extensions`` with ``link.client``'s hooks."""
    return build_extensions(link.config.extensions, link.client)
