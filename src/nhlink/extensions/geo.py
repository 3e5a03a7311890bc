"""The ``geo`` extension: ``geo:location:update`` on ``geo:location:request`` (spec 4).

Where the device is comes from a resolver the user can replace: a fixed
location (:func:`fixed_location`, e.g. from ``[extensions] geo_location``),
a callback such as a GPS reader, or a GeoIP lookup (:func:`geoip_resolver`
around a function that fetches the lookup service's JSON). A resolver
returns a :class:`Location` or raises :class:`GeoError`; both outcomes are
reported, the error as ``{"error_code", "error_description"}``.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nhlink.errors import ConfigError
from nhlink.extensions.base import Extension
from nhlink.protocol.frames import JSONObject

logger = logging.getLogger("nhlink.extensions.geo")


@dataclass(frozen=True)
class Location:
    """A position in degrees; ``accuracy`` in metres when known."""

    latitude: float
    longitude: float
    accuracy: int | None = None
    source: str = "manual"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.latitude) and -90 <= self.latitude <= 90):
            raise GeoError("invalid_location", f"latitude {self.latitude!r} is out of range")
        if not (math.isfinite(self.longitude) and -180 <= self.longitude <= 180):
            raise GeoError("invalid_location", f"longitude {self.longitude!r} is out of range")

    def payload(self) -> JSONObject:
        result: JSONObject = {
            "source": self.source,
            "latitude": self.latitude,
            "longitude": self.longitude,
        }
        if self.accuracy is not None:
            result["accuracy"] = self.accuracy
        return result


class GeoError(Exception):
    """The location is unknown: ``code`` and ``description`` go to the hub."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


Resolver = Callable[[], "Location | Awaitable[Location]"]


def fixed_location(location: Location) -> Resolver:
    """A resolver that always answers ``location``."""
    return lambda: location


def parse_location(text: str) -> Location:
    """``"lat,lon"`` or ``"lat,lon,accuracy_m"`` (the ``geo_location`` setting)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        accuracy = int(parts[2]) if len(parts) == 3 else None
        return Location(float(parts[0]), float(parts[1]), accuracy)
    except (ValueError, GeoError):
        raise ConfigError(
            f"geo_location {text!r} must be 'latitude,longitude[,accuracy]'"
        ) from None


def no_resolver() -> Location:
    raise GeoError("unavailable", "no location resolver is configured")


def geoip_resolver(fetch: Callable[[], Any]) -> Resolver:
    """A resolver from a GeoIP lookup: ``fetch()`` (plain or async) returns the service's JSON
    with ``latitude``/``longitude`` (or ``lat``/``lon``) and optionally ``accuracy``."""

    async def resolve() -> Location:
        try:
            answer = fetch()
            if inspect.isawaitable(answer):
                answer = await answer
        except GeoError:
            raise
        except Exception as exc:
            raise GeoError("geoip_failed", f"{type(exc).__name__}: {exc}") from None
        if not isinstance(answer, Mapping):
            raise GeoError("geoip_failed", "the lookup did not answer a JSON object")
        latitude = answer.get("latitude", answer.get("lat"))
        longitude = answer.get("longitude", answer.get("lon"))
        accuracy = answer.get("accuracy")
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in (latitude, longitude)
        ):
            raise GeoError("geoip_failed", "the lookup's answer has no latitude/longitude")
        return Location(
            float(latitude),
            float(longitude),
            int(accuracy) if isinstance(accuracy, int | float) else None,
            source="geoip",
        )

    return resolve


class GeoExtension(Extension):
    """Answers ``geo:location:request`` with what ``resolver`` says."""

    name = "geo"

    def __init__(self, resolver: Resolver = no_resolver) -> None:
        super().__init__()
        self.resolver = resolver

    async def handle(self, action: str, payload: JSONObject) -> None:
        if action != "location:request":
            await super().handle(action, payload)
            return
        self.context.push("location:update", await self.locate())

    async def locate(self) -> JSONObject:
        """The ``geo:location:update`` payload: a location or an error."""
        try:
            answer = self.resolver()
            if inspect.isawaitable(answer):
                answer = await answer
            if not isinstance(answer, Location):
                raise GeoError("resolver_failed", f"the resolver returned {type(answer).__name__}")
            return answer.payload()
        except GeoError as exc:
            logger.warning("location unknown: %s", exc)
            return {"error_code": exc.code, "error_description": exc.description}
        except Exception as exc:
            logger.error("location resolver failed: %s: %s", type(exc).__name__, exc)
            return {"error_code": "resolver_failed", "error_description": f"{type(exc).__name__}"}
