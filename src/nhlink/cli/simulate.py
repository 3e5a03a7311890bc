"""``nhlink simulate --count N``: a fleet of simulated devices against a hub.

By default the devices connect to a local hub started here (certificates
from its PKI, or ``--auth shared-secret``). ``--restart-hub-after S``
restarts that hub once the fleet is up and reports how the fleet came back
(each device's reconnect latency: min, p50, p90, max and a histogram by
second). ``--config-template FILE`` points the fleet at your own hub instead:
the file is a device TOML in which ``{identifier}`` is replaced by each
device's id. Exit status 0 when every device connected (and reconnected
within the spec's backoff bounds), 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from nhlink.errors import ConfigError
from nhlink.simulate import FleetOptions, run_fleet, summarize_spread

PROG = "nhlink simulate"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run many simulated devices in one process and measure (re)connects.",
    )
    parser.add_argument("-n", "--count", type=int, default=10, help="devices (default 10)")
    parser.add_argument(
        "--ramp-up", type=float, default=0.0, metavar="S", help="start them over S seconds"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=0.0,
        metavar="S",
        help="keep the fleet up S seconds after it connected",
    )
    parser.add_argument(
        "--restart-hub-after",
        type=float,
        metavar="S",
        help="restart the local hub S seconds after the fleet connected",
    )
    parser.add_argument(
        "--restart-downtime",
        type=float,
        default=5.0,
        metavar="S",
        help="how long the restarted hub stays down (default 5)",
    )
    parser.add_argument("--auth", choices=("certificate", "shared-secret"), default="certificate")
    parser.add_argument(
        "--config-template",
        type=Path,
        metavar="FILE",
        help="a device TOML for your hub; {identifier} is replaced per device",
    )
    parser.add_argument("--prefix", default="sim", help="device id prefix (default sim)")
    parser.add_argument("--directory", type=Path, metavar="DIR", help="keep the files here")
    parser.add_argument(
        "--seed", type=int, default=1, help="jitter seed (-1: crypto randomness, like a device)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, metavar="S", help="wait this long for (re)connects"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the devices' messages")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulation; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.getLogger("nhlink").setLevel(logging.INFO if args.verbose else logging.CRITICAL)
    try:
        options = FleetOptions(
            count=args.count,
            ramp_up=args.ramp_up,
            duration=args.duration,
            restart_hub_after=args.restart_hub_after,
            restart_downtime=args.restart_downtime,
            auth=args.auth,
            config_template=args.config_template,
            directory=args.directory,
            prefix=args.prefix,
            seed=None if args.seed < 0 else args.seed,
            connect_timeout=args.timeout,
        )
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(run_fleet(options, say=lambda text: print(text, flush=True)))
    except (ConfigError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    print(report.describe())
    if report.reconnects:
        print(
            f"correlation of chosen backoff with reconnect latency: "
            f"{summarize_spread(report.reconnects):.3f}"
        )
    if args.json is not None:
        data = report.as_dict()
        data["backoff_latency_correlation"] = summarize_spread(report.reconnects)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0 if report.ok else 1
