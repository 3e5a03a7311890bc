"""Benchmark fixtures: large random-payload archives, made once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

KEY_DIR = (
    Path(
        os.environ.get("NHLINK_VECTORS")
        or Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
    )
    / "keys"
)
MIB = 1 << 20


def make_archive(directory: Path, payload_mib: int) -> tuple[Path, Path]:
    """A signed archive with one random resource raw_write'n at block 2048.

    Returns (archive, payload). Compression level 1: random data is stored
    either way, and the benchmark measures applying, not creating.
    """
    from nhlink.fwup.create import create_archive
    from nhlink.fwup.keys import read_private_key_file

    directory.mkdir(parents=True, exist_ok=True)
    payload = directory / f"payload-{payload_mib}.bin"
    archive = directory / f"bench-{payload_mib}.fw"
    if archive.exists() and payload.exists():
        return archive, payload
    with open(payload, "wb") as out:
        for _ in range(payload_mib):
            out.write(os.urandom(MIB))
    conf = directory / f"bench-{payload_mib}.conf"
    conf.write_text(
        f'file-resource rootfs.img {{ host-path = "{payload}" }}\n'
        "task complete { on-resource rootfs.img { raw_write(2048) } }\n"
    )
    key = read_private_key_file(str(KEY_DIR / "testkey-a.priv"))
    create_archive(str(conf), str(archive), signing_key=key, level=1)
    return archive, payload


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="session")
def archive_256(bench_dir: Path) -> tuple[Path, Path]:
    return make_archive(bench_dir, int(os.environ.get("NHLINK_BENCH_MIB", "256")))


@pytest.fixture(scope="session")
def public_key() -> bytes:
    from nhlink.fwup.keys import read_public_key_file

    return read_public_key_file(str(KEY_DIR / "testkey-a.pub"))


# ru_maxrss of a child started straight from pytest is wrong: exec records the
# high-water mark of the (v)forked parent's memory, i.e. pytest's. A small
# launcher forks (a real fork of a ~10 MiB interpreter), execs the command and
# reports its grandchild's peak, which is then the command's own.
_PEAK_RSS_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
_, status, usage = os.wait4(pid, 0)
with open(os.environ["BENCH_PEAK_RSS_REPORT"], "w") as report:
    report.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def spawn_measured(
    python_args: list[str], report: Path, *, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.Popen[bytes]:
    """Start ``python <python_args>`` so that :func:`peak_rss_kib` can read its peak RSS."""
    environment = dict(os.environ if env is None else env, BENCH_PEAK_RSS_REPORT=str(report))
    return subprocess.Popen(
        [sys.executable, "-c", _PEAK_RSS_LAUNCHER, *python_args], env=environment, **popen
    )


def launched_child(launcher_pid: int) -> int:
    """The pid of the process a :func:`spawn_measured` launcher forked."""
    with open(f"/proc/{launcher_pid}/task/{launcher_pid}/children") as children:
        return int(children.read().split()[0])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by every thread of process ``pid``."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(report: Path) -> int:
    """The peak RSS (KiB) a :func:`spawn_measured` command reported when it exited."""
    return int(report.read_text())


def apply_archive(
    archive: Path,
    image: Path,
    key: bytes,
    *,
    image_size: int,
    primitives: Any = None,
    chunk: int = MIB,
) -> None:
    """Apply ``archive``'s ``complete`` task to a fresh sparse image with the Engine,
    reading the archive in ``chunk``-byte pieces (the bare-applier baseline)."""
    image.unlink(missing_ok=True)
    with open(image, "wb") as f:
        f.truncate(image_size)
    apply_complete(archive, image, primitives, public_keys=[key], chunk=chunk)


def apply_complete(
    archive: Path,
    image: Path,
    primitives: Any = None,
    *,
    public_keys: Sequence[bytes] = (),
    chunk: int = MIB,
) -> None:
    """Apply ``archive``'s ``complete`` task to ``image`` as it is with the Engine,
    reading the archive in ``chunk``-byte pieces."""
    from nhlink.fwup.engine import Engine

    engine = Engine(
        mode="apply",
        destination=str(image),
        task="complete",
        public_keys=public_keys,
        primitives=primitives,
    )
    with open(archive, "rb") as f:
        while not engine.done:
            data = f.read(chunk)
            if not data:
                engine.finish()
                break
            engine.feed(data)
    assert engine.succeeded
