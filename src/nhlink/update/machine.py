"""The update state machine (spec 6), sans-I/O: ``idle`` or ``updating``.

It turns what happens to an offer into the device channel's pushes: the
offer (``received``), the client's decision (``ignored`` / ``rescheduled`` /
start), every HTTP (re)connect (``started``), applier progress
(``fwup_progress`` under the 500 ms / only-when-rising throttle of the
channel), and the outcome (``updating 100`` + ``completed``, or ``failed``).
Times are passed in; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import logging
from typing import Literal, Protocol

from nhlink.client import Apply, Ignore, Reschedule, UpdateDecision
from nhlink.protocol.device import ProgressStage
from nhlink.protocol.payloads import UpdateInfo
from nhlink.update.reasons import reason

logger = logging.getLogger("nhlink.update.machine")

NO_PUBLIC_KEYS = "refusing unverified firmware: no fwup public keys are configured"
NO_PUBLIC_KEYS_CODE = "refused:no_keys"
NOT_VALIDATED = "the running firmware is not validated yet; refusing to update on top of it"
NOT_VALIDATED_CODE = "not_validated"
NOT_VALIDATED_RESCHEDULE_MINUTES = 5
"""Minutes until the hub offers again when the running firmware is not validated yet
(validation usually follows shortly after boot; the hub's minimum delay is 5)."""
UpdateState = Literal["idle", "updating"]


class UpdateReporter(Protocol):
    """The pushes the machine makes (what :class:`nhlink.protocol.DeviceChannel` offers)."""

    def status_received(self) -> bool: ...

    def status_started(self, network_interface: str | None) -> bool: ...

    def status_completed(self) -> bool: ...

    def status_ignored(self, reason: str = "") -> bool: ...

    def status_rescheduled(self, minutes: float, reason: str | None = None) -> bool: ...

    def status_failed(self, reason: str) -> bool: ...

    def fwup_progress(
        self, stage: ProgressStage, value: float, now: float, *, force: bool = False
    ) -> bool: ...

    def set_downloading(self, uuid: str | None) -> None: ...


def running_uuid_decision(info: UpdateInfo, running_uuid: str | None) -> UpdateDecision:
    """The default decision: ignore the firmware that is already running, else apply."""
    if running_uuid is not None and info.firmware_meta.uuid == running_uuid:
        return Ignore("firmware is already installed")
    return Apply()


class UpdateMachine:
    """One device's update state; see the module docstring."""

    def __init__(self, reporter: UpdateReporter) -> None:
        self.reporter = reporter
        self.state: UpdateState = "idle"
        self.current: UpdateInfo | None = None
        self._pending: UpdateInfo | None = None

    @property
    def downloading_uuid(self) -> str | None:
        """``currently_downloading_uuid`` for the join params."""
        return None if self.current is None else self.current.firmware_meta.uuid

    def offer(self, info: UpdateInfo) -> bool:
        """An ``update`` arrived. Pushes ``received`` and returns True when the client
        must now decide; while ``updating`` the offer is dropped (False, nothing pushed)."""
        if self.state == "updating" or self._pending is not None:
            logger.info(
                "update %s dropped: an update is already in progress",
                info.firmware_meta.uuid,
            )
            return False
        self._pending = info
        self.reporter.status_received()
        return True

    def decide(
        self,
        decision: UpdateDecision,
        *,
        have_public_keys: bool,
        firmware_validated: bool = True,
    ) -> UpdateInfo | None:
        """The client's answer to the pending offer; returns the offer to start, or None.

        Applying without a public key is refused (``failed`` with
        ``refused:no_keys``): unverified firmware is never installed. Applying
        while the running firmware is not validated is put off (``rescheduled``
        in :data:`NOT_VALIDATED_RESCHEDULE_MINUTES` with a ``not_validated``
        reason, not ``failed``, which would block the device for a day): a
        reboot into the new slot now would leave no known-good slot to fall back
        to, but validation usually comes shortly after boot.
        """
        info, self._pending = self._pending, None
        if info is None:
            raise RuntimeError("decide() without a pending offer")
        if isinstance(decision, Ignore):
            self.reporter.status_ignored(decision.reason)
            return None
        if isinstance(decision, Reschedule):
            self.reporter.status_rescheduled(decision.minutes, decision.reason)
            return None
        if not have_public_keys:
            refusal = reason(NO_PUBLIC_KEYS_CODE, NO_PUBLIC_KEYS)
            logger.error("update %s refused: %s", info.firmware_meta.uuid, refusal)
            self.reporter.status_failed(refusal)
            return None
        if not firmware_validated:
            later = reason(NOT_VALIDATED_CODE, NOT_VALIDATED)
            minutes = NOT_VALIDATED_RESCHEDULE_MINUTES
            logger.warning(
                "update %s rescheduled in %g min: %s", info.firmware_meta.uuid, minutes, later
            )
            self.reporter.status_rescheduled(minutes, later)
            return None
        self.state = "updating"
        self.current = info
        self.reporter.set_downloading(info.firmware_meta.uuid)
        return info

    def connected(self, network_interface: str | None) -> None:
        """The download (re)connected (first attempt, retry, redirect or re-fetch)."""
        if self.state == "updating":
            self.reporter.status_started(network_interface)

    def progress(self, percent: int, now: float, stage: ProgressStage = "updating") -> None:
        """Applier progress (throttled by the channel: first value, then rising and 500 ms apart)."""
        if self.state == "updating":
            self.reporter.fwup_progress(stage, percent, now)

    def succeeded(self, now: float) -> None:
        """The applier said OK: ``updating 100`` (always sent), then ``completed``.
        The caller reboots afterwards."""
        self._require_updating()
        self.reporter.fwup_progress("updating", 100, now, force=True)
        self.reporter.status_completed()
        self._idle()

    def failed(self, code: str, text: str) -> None:
        """The update failed: ``failed`` with ``"<code>: <text>"`` (a code of
        :data:`nhlink.update.reasons.CATALOGUE`), back to ``idle`` (no retry)."""
        self.failed_with(reason(code, text))

    def failed_with(self, reason_text: str) -> None:
        """Like :meth:`failed` with a ready ``"<code>: <text>"`` reason."""
        if ": " not in reason_text:
            raise ValueError(f"a failed reason needs a code: {reason_text!r}")
        self._require_updating()
        logger.error("update %s failed: %s", self.downloading_uuid, reason_text)
        self.reporter.status_failed(reason_text)
        self._idle()

    def rescheduled(self, minutes: float, reason_text: str) -> None:
        """The update cannot start now but waiting helps (e.g. the firmware server is
        unreachable before the first byte): ``rescheduled``, back to ``idle``. The hub
        offers it again later; the device keeps no timer (spec 6)."""
        self._require_updating()
        logger.warning(
            "update %s rescheduled in %g min: %s", self.downloading_uuid, minutes, reason_text
        )
        self.reporter.status_rescheduled(minutes, reason_text)
        self._idle()

    def _require_updating(self) -> None:
        if self.state != "updating":
            raise RuntimeError("no update is in progress")

    def _idle(self) -> None:
        self.state = "idle"
        self.current = None
        self.reporter.set_downloading(None)
