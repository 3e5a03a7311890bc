"""fwup's progress arithmetic."""

from __future__ import annotations

import pytest

from nhlink.fwup.progress import Progress


def test_floor_clamp_and_only_increases() -> None:
    progress = Progress()
    assert progress.start() == ("PR", 0, "")
    progress.total = 3
    assert progress.update() is None
    progress.add(1)
    assert progress.update() == ("PR", 33, "")
    assert progress.update() is None  # unchanged: no frame
    assert progress.update(in_flight=1) == ("PR", 66, "")
    progress.add(2)
    assert progress.update() == ("PR", 99, "")  # 100 is only sent on success
    assert progress.finish() == ("PR", 100, "")


def test_zero_total_sends_nothing_until_the_end() -> None:
    progress = Progress()
    progress.add(5)
    assert progress.update() is None
    assert progress.finish() == ("PR", 100, "")


def test_custom_range() -> None:
    progress = Progress(20, 40)
    progress.total = 10
    progress.add(5)
    assert progress.start() == ("PR", 20, "") and progress.update() == ("PR", 30, "")
    progress.add(5)
    assert progress.update() == ("PR", 39, "") and progress.finish() == ("PR", 40, "")


def test_bad_range() -> None:
    with pytest.raises(ValueError):
        Progress(50, 10)
