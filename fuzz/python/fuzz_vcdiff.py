"""atheris harness: VcdiffDecoder of the native backend against the python one.

Input: u32 LE split seed | u8 flags | u32 LE source length | source | patch
(the layout of fuzz/c/fuzz_vcdiff.c). Both backends get the same pieces;
the sink's pieces, ``target_size`` after every feed, the decoded target and
the outcome (error class and text) must be identical, errors must be sticky,
reads must stay inside the source and the target written so far, and only
NHLinkErrors may escape.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["nhlink"]):
    import nhlink._native._pyimpl  # noqa: F401

import fuzz_drivers

BACKENDS = fuzz_drivers.backends()


def test_one_input(data: bytes) -> None:
    results = [(name, fuzz_drivers.vcdiff_trace(module, data)) for name, module in BACKENDS]
    first_name, first = results[0]
    for name, trace in results[1:]:
        if trace != first:
            raise AssertionError(
                f"{first_name} vs {name}: {fuzz_drivers.first_difference(first, trace)}"
            )


if __name__ == "__main__":
    if len(BACKENDS) < 2:
        sys.exit("fuzz_vcdiff: the native backend is not built")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
