"""Peak RSS of ``nhlink fwup -a -i -`` applying a 512 MiB archive streamed through a pipe.

Target (issue 2): under 48 MiB. Recorded in extra_info and asserted here, since the
bound is a memory budget, not a timing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from benchmarks.conftest import KEY_DIR, make_archive, peak_rss_kib, spawn_measured

RSS_LIMIT_MIB = 48


def _apply_from_pipe(archive: Path, image: Path, policy: str) -> int:
    """Run the apply; return the child's peak RSS in KiB."""
    image.unlink(missing_ok=True)
    env = dict(os.environ, NHLINK_IMPORT_POLICY=policy)
    with open(archive, "rb") as source:
        cat = subprocess.Popen(["cat"], stdin=source, stdout=subprocess.PIPE)
        assert cat.stdout is not None
        report = image.with_suffix(".rss")
        child = spawn_measured(
            [
                "-m",
                "nhlink",
                "fwup",
                "-a",
                "-i",
                "-",
                "-d",
                str(image),
                "-t",
                "complete",
                "-q",
                "-p",
                str(KEY_DIR / "testkey-a.pub"),
            ],
            report,
            stdin=cat.stdout,
            env=env,
        )
        cat.stdout.close()
        status = child.wait()
        cat.wait()
    assert status == 0
    return peak_rss_kib(report)


@pytest.mark.parametrize("policy", ["native", "python"])
def test_peak_rss_512mib_from_stdin(
    benchmark, policy: str, tmp_path_factory: pytest.TempPathFactory
) -> None:  # type: ignore[no-untyped-def]
    if policy == "native":
        try:
            import nhlink._native._core  # noqa: F401
        except ImportError:
            pytest.skip("native backend not built")
    directory = tmp_path_factory.getbasetemp() / "bench512"
    archive, _ = make_archive(directory, int(os.environ.get("NHLINK_BENCH_RSS_MIB", "512")))
    image = directory / f"image-{policy}.img"
    peaks: list[int] = []
    benchmark.pedantic(
        lambda: peaks.append(_apply_from_pipe(archive, image, policy)), rounds=1, iterations=1
    )
    peak_mib = max(peaks) / 1024
    benchmark.extra_info["peak_rss_mib"] = round(peak_mib, 1)
    image.unlink(missing_ok=True)
    assert peak_mib < RSS_LIMIT_MIB, f"peak RSS {peak_mib:.1f} MiB"
