"""atheris harness: U-Boot environment decode/encode, native against python.

Input: u8 mode (bit 0 redundant) | block (the layout of fuzz/c/fuzz_uboot.c).
Both backends must decode to the same variables and flags or fail the same
way, and a decoded environment must encode and decode back to itself.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["nhlink"]):
    import nhlink._native._pyimpl  # noqa: F401

import fuzz_drivers

BACKENDS = fuzz_drivers.backends()


def test_one_input(data: bytes) -> None:
    results = [(name, fuzz_drivers.uboot_trace(module, data)) for name, module in BACKENDS]
    first_name, first = results[0]
    for name, other in results[1:]:
        if other != first:
            raise AssertionError(f"{first_name} {first!r:.500} != {name} {other!r:.500}")
    if len(first) == 3 and first[2] is False:
        raise AssertionError(f"U-Boot environment does not survive encode + decode: {first!r:.500}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
