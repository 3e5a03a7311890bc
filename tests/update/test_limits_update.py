"""The ``[update]`` download limits end to end: the real link and Updater against the
LocalHub over TLS (data budget, rate limit)."""

from __future__ import annotations

import time
from pathlib import Path

from nhlink.testing import Fault, LocalHub, Pki
from tests.link.support import run
from tests.update.firmware import Firmware
from tests.update.test_updater import (
    HEAD,
    assert_applied,
    assert_untouched,
    downloads,
    updating_device,
)


def test_an_update_over_the_data_budget_fails_with_the_budget_code(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    size = fw_v2.path.stat().st_size
    drop = size // 2

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            # a drop makes the device fetch the rest again: it fits, but only once
            url = hub.firmware.url("fw/v2.fw", HEAD, Fault(drop_after=drop))
            budget = size + drop // 2
            async with updating_device(
                hub, tmp_path, fw_v1, update={"max_download_bytes": budget}
            ) as device:
                await device.push(hosted, fw_v2, url)
                await device.wait_for("completed")
            served = sum(r.bytes_sent for r in downloads(hub.firmware.requests_for("fw/v2.fw")))
            assert served == size  # resumed by Range: the budget was never reached
            assert_applied(device, fw_v1, fw_v2)

        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            async with updating_device(
                hub, tmp_path / "small", fw_v1, update={"max_download_bytes": size - 1}
            ) as device:
                await device.push(hosted, fw_v2)
                failed = await device.wait_for("failed")
                await device.settle()
            assert failed["reason"].startswith("budget: "), failed
            assert downloads(hub.firmware.requests_for("fw/v2.fw")) == []  # refused up front
            assert_untouched(device, fw_v1)

    (tmp_path / "small").mkdir()
    run(scenario(), timeout=60)


def test_a_rate_limited_update_keeps_to_the_rate_and_completes(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    size = fw_v2.path.stat().st_size
    rate = 2_000_000

    async def scenario() -> float:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            async with updating_device(
                hub, tmp_path, fw_v1, update={"download_rate_limit": rate}
            ) as device:
                started = time.monotonic()
                await device.push(hosted, fw_v2)
                await device.wait_for("completed", timeout=60)
                elapsed = time.monotonic() - started
            assert_applied(device, fw_v1, fw_v2)
            return elapsed

    elapsed = run(scenario(), timeout=90)
    # the bucket starts empty and allows a 0.1 s burst: never faster than the limit
    assert elapsed >= size / rate - 0.1, (elapsed, size / rate)
