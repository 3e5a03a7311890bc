"""``nhlink demo``: run a whole update end to end on this machine (see nhlink.demo)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nhlink demo",
        description="Start a local hub and a device, publish a signed update and watch it "
        "stream, verify, switch slots and reboot (simulated).",
    )
    parser.add_argument("--dir", default="nhlink-demo", help="working directory (emptied first)")
    parser.add_argument(
        "--size", type=int, default=24, metavar="MIB", help="rootfs size per firmware"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the update"
    )
    args = parser.parse_args(list(argv))
    if not 1 <= args.size <= 28:
        parser.error("--size must be between 1 and 28 MiB (the demo slots are 30 MiB)")

    from nhlink.demo import run_demo

    return run_demo(args.dir, payload_mib=args.size, timeout=args.timeout)
