"""``nhlink run --config FILE [-v]``: the device client in the foreground.

Logs go to stderr (``-v`` adds debug messages). SIGTERM and SIGINT close the
connection cleanly and exit 0. A configuration problem is one line on stderr
and exit status 2; any other startup failure exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from nhlink.config import Config, load_config
from nhlink.errors import ConfigError, NHLinkError

PROG = "nhlink run"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Connect this device to its NervesHub and stay connected.",
    )
    parser.add_argument("-c", "--config", required=True, metavar="FILE", help="TOML configuration")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return parser


def configure_logging(verbose: bool) -> None:
    """Log nhlink's INFO (or DEBUG) messages to stderr."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("nhlink").setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the device client; returns the exit status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    configure_logging(args.verbose)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(config))
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except NHLinkError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


async def _serve(config: Config) -> int:
    from nhlink.aio.link import NervesHubLink
    from nhlink.aio.updater import Updater

    link = NervesHubLink(config, update_handler=Updater())
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def request_stop(signum: int) -> None:
        if not stopping:
            logging.getLogger("nhlink.cli.run").info(
                "%s received; disconnecting", signal.Signals(signum).name
            )
            stopping.append(loop.create_task(link.stop()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop, signum)
    try:
        await link.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    if stopping:
        await stopping[0]
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
