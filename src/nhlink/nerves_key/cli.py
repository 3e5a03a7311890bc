"""``nhlink nerves-key``: show what is on a NervesKey, for a person debugging a device.

    nhlink nerves-key info   [--bus N] [--pair primary|aux] [--simulate FIXTURE]
    nhlink nerves-key certs  [--bus N] [--pair primary|aux] [--simulate FIXTURE]
    nhlink nerves-key serial [--bus N] [--simulate FIXTURE]

``info`` prints the chip, its serial numbers, lock state and certificates;
``certs`` prints the device and signer certificates as PEM; ``serial`` prints
the manufacturer serial number (the certificate CN, NervesHub's identifier).
``--simulate`` uses a simulated chip instead of I2C: ``vectors`` (the upstream
test fixture), ``fresh`` (a newly provisioned NervesKey) or ``blank`` (an
unprovisioned chip). Exit status 0, 1 on failure, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cryptography import x509

from nhlink.errors import NHLinkError
from nhlink.nerves_key.driver import Atecc
from nhlink.nerves_key.errors import AteccCommunicationError
from nhlink.nerves_key.nerves_key import NervesKeyDevice, key_mode, open_atecc

PROG = "nhlink nerves-key"
SIMULATIONS = ("vectors", "fresh", "blank")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Show what is on a NervesKey.")
    parser.add_argument("command", choices=("info", "certs", "serial"))
    parser.add_argument("--bus", type=int, default=1, metavar="N", help="I2C bus (default 1)")
    parser.add_argument("--pair", choices=("primary", "aux"), default="primary")
    parser.add_argument(
        "--simulate", choices=SIMULATIONS, metavar="FIXTURE", help="|".join(SIMULATIONS)
    )
    return parser


def simulated_atecc(fixture: str) -> Atecc:
    """An :class:`Atecc` on a simulated chip loaded with ``fixture``."""
    from nhlink.testing.atecc import (
        SimulatedAtecc,
        fixture_image,
        provisioned_image,
        unprovisioned_image,
    )

    if fixture == "vectors":
        image = fixture_image()
    elif fixture == "fresh":
        image, _ = provisioned_image()
    else:
        image = unprovisioned_image()
    return Atecc(SimulatedAtecc(image))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        atecc = simulated_atecc(args.simulate) if args.simulate else open_atecc(args.bus)
        device = NervesKeyDevice(atecc)
        if args.command == "info":
            _info(device, args.pair)
        elif args.command == "certs":
            sys.stdout.write(device.certificate_pair(args.pair).chain_pem().decode())
        else:
            device.check()
            print(device.manufacturer_sn)
    except NHLinkError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


def _info(device: NervesKeyDevice, pair: str) -> None:
    atecc = device.atecc
    if not atecc.detected():
        raise AteccCommunicationError(f"no ATECC answers at address 0x{atecc.address:02x}")
    config = device.config_zone
    locks = atecc.lock_status()
    rows = [
        ("chip", device.chip_name),
        ("device serial", device.device_sn.hex()),
        ("config zone", "locked" if locks.config_locked else "unlocked"),
        ("data/OTP zones", "locked" if locks.data_locked else "unlocked"),
        ("locked slots", _slots(locks.slot_locked_mask)),
        ("key mode", key_mode(config)),
    ]
    _print(rows)
    if not locks.data_locked:
        print("not provisioned: the data zone is unlocked")
        return
    otp = device.check()
    _print(
        [
            ("board", otp.board_name),
            ("manufacturer serial", otp.manufacturer_sn),
            ("aux certificates", "present" if device.has_aux_certificates() else "absent"),
        ]
    )
    signer = device.signer_certificate(pair)
    _print(_describe(f"{pair} signer", signer))
    try:
        certificate = device.certificate_pair(pair).device
    except NHLinkError as exc:
        print(f"{pair} device certificate: {exc}")
        return
    _print(_describe(f"{pair} device", certificate))


def _slots(mask: int) -> str:
    locked = [str(slot) for slot in range(16) if not (mask >> slot) & 1]
    return ", ".join(locked) or "none"


def _describe(label: str, certificate: x509.Certificate) -> list[tuple[str, str]]:
    return [
        (f"{label} subject", certificate.subject.rfc4514_string()),
        (f"{label} serial", f"{certificate.serial_number:x}"),
        (
            f"{label} valid",
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%MZ} to "
            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%MZ}",
        ),
    ]


def _print(rows: list[tuple[str, str]]) -> None:
    for name, value in rows:
        print(f"{name + ':':24} {value}")
