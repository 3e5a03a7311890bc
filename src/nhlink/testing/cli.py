"""``nhlink hub``: run a local NervesHub-compatible hub until Ctrl-C.

Writes the PKI and one ready-to-use device config per ``--device`` into
``--dir`` (reused on the next start unless ``--fresh``), serves firmware over
HTTPS and, with ``--firmware FILE.fw``, offers that firmware to every device
that connects running another one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import shutil
import signal
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

from nhlink.errors import NHLinkError
from nhlink.testing.config_file import write_device_config
from nhlink.testing.errors import HubError
from nhlink.testing.hub import LocalHub
from nhlink.testing.pki import Pki
from nhlink.testing.records import Release

__all__ = ["build_parser", "main", "read_firmware_meta", "run_hub"]

_META_LINE = re.compile(r'^\s*meta-([a-z-]+)\s*=\s*"((?:[^"\\]|\\.)*)"', re.MULTILINE)


def read_firmware_meta(path: Path) -> dict[str, str]:
    """The ``meta-*`` strings of a .fw archive's meta.conf, keyed as the hub's firmware_meta."""
    try:
        with zipfile.ZipFile(path) as archive:
            text = archive.read("meta.conf").decode("utf-8", "replace")
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise HubError(f"cannot read meta.conf from {path}: {exc}") from None
    meta: dict[str, str] = {}
    for key, value in _META_LINE.findall(text):
        meta[key.replace("-", "_")] = re.sub(r"\\(.)", r"\1", value)
    if not meta.get("uuid"):
        raise HubError(f"{path} has no meta-uuid in meta.conf")
    return meta


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nhlink hub",
        description="Run a local NervesHub-compatible hub (mutual TLS websocket + HTTPS firmware server).",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("nhlink-hub"),
        help="where the PKI and device configs go (default: ./nhlink-hub)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=0, help="device socket port (default: any free port)"
    )
    parser.add_argument(
        "--firmware-port", type=int, default=0, help="firmware server port (default: any free port)"
    )
    parser.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="ID",
        help="device identifier to make a certificate and config for (repeatable; default: nhlink-device-1)",
    )
    parser.add_argument(
        "--firmware",
        type=Path,
        metavar="FILE.fw",
        help="serve this firmware and offer it to connecting devices",
    )
    parser.add_argument(
        "--fwup-public-key",
        action="append",
        default=[],
        metavar="B64",
        help="public key to write into the device configs and push on request (repeatable)",
    )
    parser.add_argument(
        "--product-key",
        metavar="nhp_KEY=SECRET",
        help="accept shared-secret auth with this product key (writes <ID>-shared-secret.toml too)",
    )
    parser.add_argument(
        "--tls13", action="store_true", help="allow TLS 1.3 (the hub pins TLS 1.2 by default)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="discard an existing PKI in --dir and make a new one"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every frame")
    return parser


async def run_hub(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    """Run the hub for parsed `args` until `stop` is set (default: until SIGINT/SIGTERM)."""
    directory: Path = args.dir.resolve()
    product_key = product_secret = None
    if args.product_key is not None:
        product_key, sep, product_secret = args.product_key.partition("=")
        if not sep or not product_secret:
            raise HubError("--product-key wants nhp_KEY=SECRET")
    if args.fresh:
        shutil.rmtree(directory / "pki", ignore_errors=True)
    pki = Pki.load_or_create(directory / "pki")
    hub = LocalHub(
        pki=pki,
        directory=directory,
        host=args.host,
        port=args.port,
        firmware_port=args.firmware_port,
        tls13=args.tls13,
        fwup_public_keys=args.fwup_public_key,
    )
    await hub.start()
    try:
        keys = {"fwup_public_keys": list(args.fwup_public_key)} if args.fwup_public_key else {}
        configs: list[Path] = []
        for identifier in args.device or ["nhlink-device-1"]:
            configs.append(hub.write_device_config(identifier, extra=keys))
            if product_key is not None and product_secret is not None:
                hub.add_product_key(product_key, product_secret)
                configs.append(
                    write_device_config(
                        directory / f"{identifier}-shared-secret.toml",
                        host=hub.host,
                        certfile=None,
                        keyfile=None,
                        cacertfile=pki.ca.cert_path.resolve(),
                        extra={
                            **keys,
                            "shared_secret": {
                                "product_key": product_key,
                                "product_secret": product_secret,
                                "identifier": identifier,
                            },
                        },
                    )
                )
        release_line = None
        if args.firmware is not None:
            meta = read_firmware_meta(args.firmware)
            hosted = hub.firmware.add_file(args.firmware.name, args.firmware)
            await hub.deploy(
                Release(hosted.url, meta, hosted.size, hosted.checksum, hosted.partials_checksums)
            )
            release_line = f"{hosted.url} (uuid {meta['uuid']}, version {meta.get('version', '?')})"
        tls = "TLS 1.2-1.3" if args.tls13 else "TLS 1.2"
        auth = "mutual TLS" + (" or shared secret" if product_key else "")
        print(f"nhlink hub: device socket   {hub.url}  ({auth}, {tls})")
        print(f"            firmware files  {hub.firmware.base_url}/")
        print(
            f"            PKI             {pki.directory}  (devices trust ca.pem; device certs come from signer-ca.pem)"
        )
        for config in configs:
            print(f"            device config   {config}  ->  nhlink run --config {config}")
        if release_line:
            print(f"            deployed        {release_line}")
        print("Press Ctrl-C to stop.", flush=True)
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await hub.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nhlink hub``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        return asyncio.run(run_hub(args))
    except KeyboardInterrupt:
        return 0
    except (NHLinkError, OSError) as exc:
        print(f"nhlink hub: error: {exc}", file=sys.stderr)
        return 1
