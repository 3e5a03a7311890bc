"""Multi-resource A/B firmware and a device process for the resume tests.

    python -m tests.update.resume_support OFFER.json

runs one update like ``Updater._update`` does (journal in the offer's
``data_path``, resume when it matches) and prints ``RESUME start skip`` or
``FRESH``, then ``READY``, then the outcome frame type. Logs go to stderr.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from nhlink.aio.downloader import Downloader, RetryPolicy
from nhlink.fwup.create import create_archive
from nhlink.fwup.engine import CHECKPOINT_INTERVAL, Engine
from nhlink.fwup.frames import Frame
from nhlink.fwup.identity import meta_uuid
from nhlink.fwup.keys import read_private_key_file
from nhlink.update.journal import JOURNAL_NAME, OfferIdentity, UpdateJournal, verifier_from
from nhlink.update.pipeline import Applier, EngineApplier, prepare_resume, stream_update
from tests.helpers.vectors import vectors_dir
from tests.update.firmware import BLOCK, SLOT_A_BLOCK
from tests.update.support import ssl_context_for

# resource sizes: not multiples of a block or a segment, so boundary segments are shared
RESOURCE_SIZES = (1_300_001, 900_123, 1_650_777, 400_031)
GAP_BLOCKS = 3


@dataclass(frozen=True)
class MultiFirmware:
    path: Path
    uuid: str
    resources: tuple[bytes, ...]
    slot_blocks: int

    @property
    def largest_resource(self) -> int:
        return max(len(r) for r in self.resources)


def _placements(slot_block: int, sizes: tuple[int, ...]) -> list[int]:
    offsets, block = [], slot_block
    for size in sizes:
        offsets.append(block)
        block += -(-size // BLOCK) + GAP_BLOCKS
    return offsets


def _conf(directory: Path, version: str, slot_blocks: int, sizes: tuple[int, ...]) -> str:
    resources = "".join(
        f'file-resource r{i}.img {{ host-path = "{directory / f"r{i}-{version}.img"}" }}\n'
        for i in range(len(sizes))
    )

    def upgrade(slot: str, other: str, first: int) -> str:
        handlers = "".join(
            f"    on-resource r{i}.img {{ raw_write({offset}) }}\n"
            for i, offset in enumerate(_placements(first, sizes))
        )
        return f"""
task upgrade.{slot} {{
    require-uboot-variable(uboot-env, "nerves_fw_active", "{other}")
    on-init {{
        info("Upgrading partition {slot.upper()}")
        uboot_unsetenv(uboot-env, "{slot}.nerves_fw_version")
        trim({first}, {slot_blocks})
    }}
{handlers}    on-finish {{
        uboot_setenv(uboot-env, "{slot}.nerves_fw_version", "{version}")
        uboot_setenv(uboot-env, "nerves_fw_active", "{slot}")
    }}
}}
"""

    complete = "".join(
        f"    on-resource r{i}.img {{ raw_write({offset}) }}\n"
        for i, offset in enumerate(_placements(SLOT_A_BLOCK, sizes))
    )
    return f"""
meta-product = "nhlink-resume-tests"
meta-version = "{version}"
uboot-environment uboot-env {{
    block-offset = 256
    block-count = 16
}}
{resources}
task complete {{
    on-init {{
        uboot_clearenv(uboot-env)
        uboot_setenv(uboot-env, "nerves_fw_active", "a")
        uboot_setenv(uboot-env, "a.nerves_fw_version", "{version}")
    }}
{complete}}}
{upgrade("a", "b", SLOT_A_BLOCK)}{upgrade("b", "a", SLOT_A_BLOCK + slot_blocks)}"""


# 16 symbols: random data that deflates to about 55 %, in blocks with Huffman codes
_NIBBLES = bytes(b"etaoinshrdlucmfw"[i % 16] for i in range(256))


def compressible(size: int) -> bytes:
    """Random bytes over a 16-letter alphabet (about 4 bits of entropy a byte)."""
    return os.urandom(size).translate(_NIBBLES)


def make_multi_firmware(
    directory: Path,
    version: str,
    sizes: tuple[int, ...] = RESOURCE_SIZES,
    *,
    compress: bool = False,
) -> MultiFirmware:
    """A/B firmware with one raw_write resource per size: random bytes (stored by deflate),
    or ``compress``: :func:`compressible` ones deflated at level 6."""
    directory.mkdir(parents=True, exist_ok=True)
    make = compressible if compress else os.urandom
    resources = tuple(make(size) for size in sizes)
    for i, data in enumerate(resources):
        (directory / f"r{i}-{version}.img").write_bytes(data)
    slot_blocks = _placements(0, sizes)[-1] + -(-sizes[-1] // BLOCK) + 64
    conf = directory / f"multi-{version}.conf"
    conf.write_text(_conf(directory, version, slot_blocks, sizes))
    archive = directory / f"multi-{version}.fw"
    key = read_private_key_file(str(vectors_dir() / "keys" / "testkey-a.priv"))
    created = create_archive(
        conf,
        archive,
        signing_key=key,
        level=6 if compress else 1,
        environ={"SOURCE_DATE_EPOCH": "1700000000"},
    )
    return MultiFirmware(archive, meta_uuid(created.meta_conf), resources, slot_blocks)


def image_size(firmware: MultiFirmware) -> int:
    return (SLOT_A_BLOCK + 2 * firmware.slot_blocks) * BLOCK


async def main(offer_path: str) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    offer = json.loads(Path(offer_path).read_text())
    frames: list[Frame] = []

    async def make_applier() -> Applier:
        engine = Engine(
            mode="apply",
            destination=offer["image"],
            task=offer["task"],
            public_keys=[base64.b64decode(offer["public_key"])],
            checkpoint_interval=offer.get("checkpoint_interval", CHECKPOINT_INTERVAL),
        )
        return EngineApplier(engine, frames.append)

    identity = OfferIdentity(
        offer["uuid"],
        offer["size"],
        offer["checksum"],
        tuple(offer["partials_checksums"]) if offer["partials_checksums"] else None,
    )
    journal = UpdateJournal(Path(offer["data_path"]) / JOURNAL_NAME)
    applier, point = await prepare_resume(
        journal,
        identity,
        await make_applier(),
        make_applier,
        checkpoint_period=offer.get("checkpoint_period", 0.0),  # the kill tests count bytes
    )
    start = point.start if point is not None else 0
    if point is not None:
        print("RESUME", point.start, point.skip, flush=True)
    else:
        print("FRESH", flush=True)
    downloader = Downloader(
        offer["url"],
        ssl_context=ssl_context_for(offer["cafile"]),
        policy=RetryPolicy(time_between_retries=0.05, idle_timeout=5),
        expected_size=offer["size"],
    )
    print("READY", flush=True)
    outcome = await stream_update(
        downloader,
        verifier_from(identity, start),
        applier,
        start=start,
        skip=point.skip if point is not None else 0,
    )
    journal.remove()
    print(outcome.type, outcome.text, flush=True)
    return 0 if outcome.type == "OK" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
