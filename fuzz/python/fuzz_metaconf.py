"""atheris harness: the meta.conf parser (nhlink.fwup.metaconf).

Any input must parse or raise an NHLinkError (MetaConfError); anything else
(IndexError, RecursionError, ...) is a crash.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["nhlink"]):
    import nhlink.fwup.metaconf  # noqa: F401

import fuzz_drivers


def test_one_input(data: bytes) -> None:
    fuzz_drivers.metaconf_outcome(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
