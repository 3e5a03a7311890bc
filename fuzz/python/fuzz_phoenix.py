"""atheris harness: the Phoenix V2 frame decoder (nhlink.protocol.frames).

Any input must decode or raise ProtocolError; a decoded frame must survive
encode_frame + decode_frame unchanged.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["nhlink"]):
    import nhlink.protocol.frames  # noqa: F401

import fuzz_drivers


def test_one_input(data: bytes) -> None:
    fuzz_drivers.phoenix_outcome(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
