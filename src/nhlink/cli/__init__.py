"""The ``nhlink`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

from nhlink import __version__

Handler = Callable[[list[str]], int]


def _fwup(argv: list[str]) -> int:
    from nhlink.cli.fwup import main as fwup_main

    return fwup_main(argv)


def _hub(argv: list[str]) -> int:
    from nhlink.testing.cli import main as hub_main

    return hub_main(argv)


def _run(argv: list[str]) -> int:
    from nhlink.cli.run import main as run_main

    return run_main(argv)


def _provision(argv: list[str]) -> int:
    from nhlink.cli.provision import main as provision_main

    return provision_main(argv)


def _demo(argv: list[str]) -> int:
    from nhlink.cli.demo import main as demo_main

    return demo_main(argv)


def _nerves_key(argv: list[str]) -> int:
    from nhlink.nerves_key.cli import main as nerves_key_main

    return nerves_key_main(argv)


def _simulate(argv: list[str]) -> int:
    from nhlink.cli.simulate import main as simulate_main

    return simulate_main(argv)


SUBCOMMANDS: dict[str, tuple[Handler, str]] = {
    "demo": (_demo, "show a whole signed A/B update end to end on this machine"),
    "run": (_run, "run the device client in the foreground (--config FILE)"),
    "fwup": (_fwup, "fwup-compatible applier, verifier and archive tool (drop-in for `fwup`)"),
    "hub": (_hub, "run a local NervesHub-compatible hub to try a device against"),
    "nerves-key": (_nerves_key, "show what is on a NervesKey (serial, certificates, lock state)"),
    "simulate": (_simulate, "a fleet of simulated devices against a hub (reconnect storms)"),
    "provision": (_provision, "write a device's certificate, key and serial into its U-Boot env"),
}


def _usage() -> str:
    lines = ["usage: nhlink <command> [options]", "", "commands:"]
    width = max(len(name) for name in SUBCOMMANDS)
    for name, (_, summary) in SUBCOMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {summary}")
    lines += [
        "",
        "`nhlink <command> --help` describes a command. `nhlink --version` prints the version.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nhlink`` command; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"nhlink {__version__}")
        return 0
    entry = SUBCOMMANDS.get(args[0])
    if entry is None:
        print(f"nhlink: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    handler, _ = entry
    try:
        return handler(args[1:])
    except KeyboardInterrupt:
        print("nhlink: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
