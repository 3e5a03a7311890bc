"""atheris harness: ZipStream of the native backend against the python one.

Input: u32 LE split seed | u8 sink seed | archive (the layout of
fuzz/c/fuzz_zip.c). Both backends get the same pieces and the same sink per
entry; events (DataChunks merged), units, errors and the raw_write image
must be identical, and only NHLinkErrors may escape.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["nhlink"]):
    import nhlink._native._pyimpl  # noqa: F401

import fuzz_drivers

BACKENDS = fuzz_drivers.backends()


def test_one_input(data: bytes) -> None:
    results = [(name, fuzz_drivers.zip_trace(module, data)) for name, module in BACKENDS]
    first_name, (first_trace, first_image) = results[0]
    for name, (trace, image) in results[1:]:
        if trace != first_trace:
            raise AssertionError(
                f"{first_name} vs {name}: {fuzz_drivers.first_difference(first_trace, trace)}"
            )
        if image != first_image:
            raise AssertionError(f"{first_name} vs {name}: raw_write images differ")


if __name__ == "__main__":
    if len(BACKENDS) < 2:
        sys.exit("fuzz_differential: the native backend is not built")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
