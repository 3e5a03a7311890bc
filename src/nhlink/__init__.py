"""nhlink: a NervesHub device client with a native, fwup-compatible streaming applier."""

from __future__ import annotations

from nhlink.errors import NHLinkError

__version__ = "0.1.0"

__all__ = ["NHLinkError", "__version__"]
