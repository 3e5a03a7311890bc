"""atheris harness: fwup packet and frame decoders, native against python.

Input: u32 LE split seed | bytes (the layout of fuzz/c/fuzz_framing.c). Both
backends get the same pieces; payloads, frames, pending bytes and errors
must agree, and only FramingError may escape.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["nhlink"]):
    import nhlink._native._pyimpl  # noqa: F401

import fuzz_drivers

BACKENDS = fuzz_drivers.backends()


def test_one_input(data: bytes) -> None:
    for trace in (fuzz_drivers.packet_trace, fuzz_drivers.frame_trace):
        results = [(name, trace(module, data)) for name, module in BACKENDS]
        first_name, first = results[0]
        for name, other in results[1:]:
            if other != first:
                raise AssertionError(
                    f"{trace.__name__}: {first_name} {first!r:.500} != {name} {other!r:.500}"
                )


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
