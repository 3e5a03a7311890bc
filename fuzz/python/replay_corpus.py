"""Replay fuzz corpora through the native backend (used by scripts/sanitize.sh under ASan).

    python fuzz/python/replay_corpus.py build/fuzz/work

Every file of <dir>/{c-zip,py-differential}, <dir>/{c-framing,py-framing} and
<dir>/{c-uboot,py-uboot} and <dir>/{c-vcdiff,py-vcdiff} goes through the matching driver on the native
backend only; backend disagreements are the differential harnesses' business,
here only crashes and sanitizer reports count. NHLinkErrors are expected.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import fuzz_drivers

from nhlink import _native

DRIVERS: dict[str, list[Callable[[ModuleType, bytes], Any]]] = {
    "c-zip": [fuzz_drivers.zip_trace],
    "py-differential": [fuzz_drivers.zip_trace],
    "c-framing": [fuzz_drivers.packet_trace, fuzz_drivers.frame_trace],
    "py-framing": [fuzz_drivers.packet_trace, fuzz_drivers.frame_trace],
    "c-uboot": [fuzz_drivers.uboot_trace],
    "py-uboot": [fuzz_drivers.uboot_trace],
    "c-vcdiff": [fuzz_drivers.vcdiff_trace],
    "py-vcdiff": [fuzz_drivers.vcdiff_trace],
}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    native = _native.load("native")
    root = Path(argv[1])
    total = 0
    for folder, drivers in DRIVERS.items():
        files = sorted((root / folder).glob("*")) if (root / folder).is_dir() else []
        for path in files:
            data = path.read_bytes()
            for driver in drivers:
                driver(native, data)
        total += len(files)
        print(f"replayed {len(files)} inputs of {folder}")
    print(f"replayed {total} corpus inputs through {native.__file__}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
