"""Extensions (spec 4): health, geo, local shell and logging over the ``extensions`` channel."""

from nhlink.extensions.base import Extension, ExtensionContext
from nhlink.extensions.geo import GeoError, GeoExtension, Location, fixed_location, geoip_resolver
from nhlink.extensions.health import Check, HealthExtension, HealthSources
from nhlink.extensions.local_shell import LocalShellExtension
from nhlink.extensions.logging_ext import LoggingExtension, TokenBucket
from nhlink.extensions.manager import ExtensionsManager

__all__ = [
    "Check",
    "Extension",
    "ExtensionContext",
    "ExtensionsManager",
    "GeoError",
    "GeoExtension",
    "HealthExtension",
    "HealthSources",
    "LocalShellExtension",
    "Location",
    "LoggingExtension",
    "TokenBucket",
    "fixed_location",
    "geoip_resolver",
]
