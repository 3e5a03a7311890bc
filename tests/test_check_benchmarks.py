"""scripts/check_benchmarks.py on small synthetic pytest-benchmark JSON files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_benchmarks.py"
PAYLOAD = 256 << 20


def bench(name: str, median: float, mean: float | None = None, **extra_info: Any) -> dict[str, Any]:
    """One entry shaped like pytest-benchmark's JSON."""
    mean = median if mean is None else mean
    return {
        "group": None,
        "name": name,
        "fullname": f"benchmarks/test_x.py::{name}",
        "extra_info": extra_info,
        "stats": {
            "min": median,
            "max": max(median, mean),
            "mean": mean,
            "median": median,
            "rounds": 3,
        },
    }


def issue2_results(native_s: float = 0.33, python_rss: float = 31.0) -> list[dict[str, Any]]:
    """The issue-2 benchmarks: bare BLAKE2b takes 0.30 s for the payload."""
    return [
        bench("test_bare_blake2b", 0.30, bytes=PAYLOAD),
        bench("test_apply[native]", native_s, bytes=PAYLOAD),
        bench("test_apply[python]", 2.5, bytes=PAYLOAD),
        bench("test_peak_rss_512mib_from_stdin[native]", 4.0, peak_rss_mib=21.0),
        bench("test_peak_rss_512mib_from_stdin[python]", 9.0, peak_rss_mib=python_rss),
    ]


def run_check(
    tmp_path: Path, benchmarks: list[dict[str, Any]], *args: str
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_all_targets_met(tmp_path: Path) -> None:
    result = run_check(tmp_path, issue2_results())
    assert result.returncode == 0, result.stderr
    assert "ok       test_apply[native] >= 0.85x test_bare_blake2b: 0.91x" in result.stdout
    assert "ok       test_peak_rss_512mib_from_stdin[python] peak_rss_mib < 48: 31" in result.stdout
    # the table: 256 MiB in 0.30 s
    assert "894.8" in result.stdout


def test_native_apply_below_ratio_fails(tmp_path: Path) -> None:
    result = run_check(tmp_path, issue2_results(native_s=0.36))  # 0.83x
    assert result.returncode == 1
    assert "test_apply[native] >= 0.85x test_bare_blake2b: 0.83x" in result.stderr
    assert "1 target(s) missed" in result.stderr


def test_ratio_uses_the_median_not_the_mean(tmp_path: Path) -> None:
    benchmarks = issue2_results()
    benchmarks[1] = bench("test_apply[native]", 0.33, mean=0.9, bytes=PAYLOAD)
    assert run_check(tmp_path, benchmarks).returncode == 0


def test_peak_rss_over_limit_fails_for_that_parametrization(tmp_path: Path) -> None:
    result = run_check(tmp_path, issue2_results(python_rss=48.0))
    assert result.returncode == 1
    assert "test_peak_rss_512mib_from_stdin[python] peak_rss_mib < 48: 48" in result.stderr
    assert "[native]" not in result.stderr


def test_required_benchmark_absent_fails_unless_allowed(tmp_path: Path) -> None:
    benchmarks = [b for b in issue2_results() if b["name"] != "test_apply[native]"]
    result = run_check(tmp_path, benchmarks)
    assert result.returncode == 1
    assert "test_apply[native] not in the results (required)" in result.stderr
    assert run_check(tmp_path, benchmarks, "--allow-missing").returncode == 0


def test_optional_target_skipped_when_absent_and_checked_when_present(tmp_path: Path) -> None:
    result = run_check(tmp_path, issue2_results())
    assert "skipped  test_update_https[native]" in result.stdout
    # 0.75x the bare applier's throughput on the same archive
    bare = bench("test_update_bare_apply[native]", 0.33, bytes=PAYLOAD)
    slow_update = bench("test_update_https[native]", 0.33 / 0.75, bytes=PAYLOAD)
    result = run_check(tmp_path, [*issue2_results(), bare, slow_update])
    assert result.returncode == 1
    assert (
        "test_update_https[native] >= 0.80x test_update_bare_apply[native]: 0.75x" in result.stderr
    )


def test_throughput_benchmark_without_bytes_fails(tmp_path: Path) -> None:
    benchmarks = issue2_results()
    benchmarks[1] = bench("test_apply[native]", 0.33)
    result = run_check(tmp_path, benchmarks)
    assert result.returncode == 1
    assert "no extra_info['bytes']" in result.stderr


def test_unreadable_json_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    path.write_text("{not json")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "cannot read" in result.stderr
