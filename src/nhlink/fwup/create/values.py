"""Conversions between configuration text and typed values (libconfuse rules)."""

from __future__ import annotations

import re

# The fwup release whose behaviour this implementation follows.
FWUP_COMPAT_VERSION = "1.16.0"

_LONG_MIN = -(2**63)
_LONG_MAX = 2**63 - 1
_HEX = re.compile(r"[+-]?0[xX][0-9a-fA-F]+")
_OCTAL = re.compile(r"[+-]?0[0-7]*")
_DECIMAL = re.compile(r"[+-]?[1-9][0-9]*")
_SEMVER = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")
_TRUE_WORDS = frozenset({"true", "yes", "on"})
_FALSE_WORDS = frozenset({"false", "no", "off"})


def parse_c_integer(text: str) -> int | None:
    """Parse like C ``strtol(text, &end, 0)`` requiring the whole string to be used.

    Leading whitespace is skipped; ``0x`` means hex and a leading ``0`` octal.
    An empty string is 0 (libconfuse accepts it). Returns None when invalid or
    out of the 64-bit range.
    """
    body = text.lstrip(" \t\n\r\f\v")
    if body == "":
        return 0 if text == body else None
    if _HEX.fullmatch(body):
        sign = -1 if body[0] == "-" else 1
        value = sign * int(body.lstrip("+-")[2:], 16)
    elif _DECIMAL.fullmatch(body):
        value = int(body, 10)
    elif _OCTAL.fullmatch(body):
        sign = -1 if body[0] == "-" else 1
        value = sign * int(body.lstrip("+-"), 8)
    else:
        return None
    return value if _LONG_MIN <= value <= _LONG_MAX else None


def parse_bool(text: str) -> bool | None:
    """libconfuse booleans: true/yes/on and false/no/off, any case."""
    word = text.lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    return None


def check_required_fwup_version(required: str) -> str | None:
    """Return an error message if *required* is not satisfied by this implementation."""
    wanted = _parse_semver(required)
    if wanted is None:
        return f"Invalid version '{required}' passed to require-fwup-version"
    current = _parse_semver(FWUP_COMPAT_VERSION)
    assert current is not None
    if wanted > current:
        return f"fwup version '{required}' required. This is fwup version '{FWUP_COMPAT_VERSION}'."
    return None


def _parse_semver(text: str) -> tuple[int, int, int, int] | None:
    if text in ("0", "0.0"):
        return (0, 0, 0, 1)
    match = _SEMVER.fullmatch(text)
    if match is None:
        return None
    major, minor, patch, prerelease = match.groups()
    # A pre-release sorts before its release.
    return (int(major), int(minor), int(patch), 0 if prerelease else 1)
