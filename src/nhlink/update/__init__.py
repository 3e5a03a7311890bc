"""Firmware updates: the sans-I/O state machine, stream verification and the
download -> verify -> apply pipeline.

The asyncio parts live in :mod:`nhlink.aio`: :class:`nhlink.aio.updater.Updater`
(the link's update handler), :mod:`nhlink.aio.downloader`, :mod:`nhlink.aio.http`
and :mod:`nhlink.aio.fwup_process` (an installed ``fwup`` as the applier).
"""

from nhlink.update.errors import DownloadError, UpdateError, VerificationError
from nhlink.update.machine import NO_PUBLIC_KEYS, UpdateMachine, UpdateReporter
from nhlink.update.meter import TransferMeter, UpdateMessage
from nhlink.update.pipeline import Applier, EngineApplier, stream_update
from nhlink.update.verify import PART_SIZE, PartMismatch, StreamVerifier

__all__ = [
    "NO_PUBLIC_KEYS",
    "PART_SIZE",
    "Applier",
    "DownloadError",
    "EngineApplier",
    "PartMismatch",
    "StreamVerifier",
    "TransferMeter",
    "UpdateError",
    "UpdateMachine",
    "UpdateMessage",
    "UpdateReporter",
    "VerificationError",
    "stream_update",
]
