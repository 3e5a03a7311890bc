"""The GeoIP resolver hook: a lookup's JSON becomes a location or a coded error."""

from __future__ import annotations

import asyncio
from typing import Any

from nhlink.extensions import GeoExtension, geoip_resolver


def locate(fetch: Any) -> dict[str, Any]:
    return asyncio.run(GeoExtension(geoip_resolver(fetch)).locate())


def test_a_lookup_answer_becomes_a_geoip_location() -> None:
    assert locate(lambda: {"lat": 52.5, "lon": 13.4, "accuracy": 5000}) == {
        "source": "geoip",
        "latitude": 52.5,
        "longitude": 13.4,
        "accuracy": 5000,
    }

    async def fetch() -> dict[str, Any]:
        return {"latitude": -33.9, "longitude": 18.4}

    assert locate(fetch) == {"source": "geoip", "latitude": -33.9, "longitude": 18.4}


def test_lookup_failures_are_coded_errors() -> None:
    def offline() -> dict[str, Any]:
        raise OSError("network is unreachable")

    assert locate(offline) == {
        "error_code": "geoip_failed",
        "error_description": "OSError: network is unreachable",
    }
    assert locate(lambda: ["not", "an", "object"])["error_code"] == "geoip_failed"
    assert locate(lambda: {"lat": "52", "lon": 13})["error_code"] == "geoip_failed"
    assert locate(lambda: {"lat": 95.0, "lon": 13})["error_code"] == "invalid_location"
