"""A device process for the SIGKILL tests: streams one update into an image and exits.

    python -m tests.update.apply_child OFFER.json

The offer file holds ``url``, ``cafile``, ``image``, ``task``, ``public_key``
(base64), ``size``, ``checksum`` and ``partials_checksums``. Prints ``READY``
when it starts downloading and the applier's last frame type at the end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

from nhlink.aio.downloader import Downloader, RetryPolicy
from nhlink.fwup.engine import Engine
from nhlink.fwup.frames import Frame
from nhlink.update.pipeline import EngineApplier, stream_update
from nhlink.update.verify import StreamVerifier
from tests.update.support import ssl_context_for


async def main(offer_path: str) -> int:
    offer = json.loads(Path(offer_path).read_text())
    engine = Engine(
        mode="apply",
        destination=offer["image"],
        task=offer["task"],
        public_keys=[base64.b64decode(offer["public_key"])],
    )
    frames: list[Frame] = []
    applier = EngineApplier(engine, frames.append)
    downloader = Downloader(
        offer["url"],
        ssl_context=ssl_context_for(offer["cafile"]),
        policy=RetryPolicy(time_between_retries=0.05, idle_timeout=5),
        expected_size=offer["size"],
    )
    verifier = StreamVerifier(
        size=offer["size"], checksum=offer["checksum"], partials=offer["partials_checksums"]
    )
    print("READY", flush=True)
    outcome = await stream_update(downloader, verifier, applier)
    print(outcome.type, outcome.text, flush=True)
    return 0 if outcome.type == "OK" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
