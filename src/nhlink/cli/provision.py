"""``nhlink provision``: write a device's certificate, key and serial number into its
U-Boot environment (manufacturing).

    nhlink provision --cert PEM --key PEM --serial SN --fw-env-config FILE
    nhlink provision --cert PEM --key PEM --serial SN --image IMG --offset BLOCKS \\
        --count BLOCKS [--redundant-offset BLOCKS]

Sets ``nerves_hub_cert``, ``nerves_hub_key`` and ``nerves_serial_number`` and
keeps every other variable. The key must belong to the certificate. An image
whose environment is blank (no valid CRC) gets a new environment. Offsets and
counts are 512-byte blocks, as in fwup.conf. Exit status 0, 1 on failure, 2
on bad usage.
"""

from __future__ import annotations

import argparse
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from nhlink.errors import NHLinkError
from nhlink.kv import KV, EnvLocation, UBootEnvStore

PROG = "nhlink provision"
BLOCK_SIZE = 512


class ProvisionError(NHLinkError):
    """The certificate, key or target cannot be used."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Store a device certificate, key and serial number in its U-Boot environment.",
    )
    parser.add_argument("--cert", required=True, metavar="PEM", help="device certificate")
    parser.add_argument("--key", required=True, metavar="PEM", help="device private key")
    parser.add_argument("--serial", required=True, metavar="SN", help="device serial number")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--fw-env-config", metavar="FILE", help="fw_env.config naming the env")
    target.add_argument("--image", metavar="IMG", help="image file or block device")
    parser.add_argument("--offset", type=_blocks, metavar="BLOCKS", help="env block offset")
    parser.add_argument("--count", type=_blocks, metavar="BLOCKS", help="env block count")
    parser.add_argument(
        "--redundant-offset", type=_blocks, metavar="BLOCKS", help="redundant copy's block offset"
    )
    return parser


def _blocks(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a block number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("block numbers must not be negative")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Provision one device; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.image is not None and (args.offset is None or not args.count):
        parser.error("--image needs --offset and --count")
    if args.fw_env_config is not None and any(
        value is not None for value in (args.offset, args.count, args.redundant_offset)
    ):
        parser.error("--offset/--count/--redundant-offset go with --image, not --fw-env-config")
    try:
        cert, key = read_credentials(args.cert, args.key)
        if not args.serial.strip():
            raise ProvisionError("the serial number is empty")
        store = _store(args)
        kv = KV({}, store)
        kv.put(
            {
                "nerves_hub_cert": cert,
                "nerves_hub_key": key,
                "nerves_serial_number": args.serial,
            },
            create=True,
        )
    except NHLinkError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    print(f"provisioned {args.serial} into {store.describe()}")
    return 0


def _store(args: argparse.Namespace) -> UBootEnvStore:
    if args.fw_env_config is not None:
        return UBootEnvStore.from_fw_env_config(args.fw_env_config)
    size = args.count * BLOCK_SIZE
    locations = [EnvLocation(args.image, args.offset * BLOCK_SIZE, size)]
    if args.redundant_offset is not None:
        if abs(args.redundant_offset - args.offset) < args.count:
            raise ProvisionError("--redundant-offset overlaps the primary copy")
        locations.append(EnvLocation(args.image, args.redundant_offset * BLOCK_SIZE, size))
    if not Path(args.image).exists():
        raise ProvisionError(f"{args.image} does not exist")
    return UBootEnvStore(tuple(locations))


def read_credentials(cert_path: str, key_path: str) -> tuple[str, str]:
    """The PEM texts of the certificate and its key, checked to belong together."""
    texts = []
    for label, path, marker in (
        ("certificate", cert_path, "-----BEGIN CERTIFICATE-----"),
        ("key", key_path, "PRIVATE KEY-----"),
    ):
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ProvisionError(f"cannot read {label} {path}: {exc}") from None
        if marker not in text:
            raise ProvisionError(f"{path} is not a PEM {label}")
        texts.append(text.strip() + "\n")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert_path, key_path)
    except ssl.SSLError:
        raise ProvisionError(f"key {key_path} does not belong to certificate {cert_path}") from None
    return texts[0], texts[1]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
