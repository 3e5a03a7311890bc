"""Build the fuzzers' seed corpora from the golden fwup vectors, at run time.

    python fuzz/corpus/build_seeds.py OUT_DIR

Writes one folder per harness under OUT_DIR (zip, uboot, framing, metaconf,
phoenix, nerveskey, vcdiff). Nothing derived from the vectors is committed: the vectors are read
from $NHLINK_VECTORS or <repo>/../shared/vectors. Inputs use the harnesses'
layouts (see fuzz/c/fuzz_split.h): zip seeds carry a 5-byte split/sink
prefix, framing seeds a 4-byte split seed, U-Boot seeds a mode byte, VCDIFF
seeds ``u32 split seed | u8 flags | u32 source length | source | patch``
(patches made by xdelta3 when it is installed, and hand-assembled ones).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_ARCHIVE_SEED = 400_000
"""Archives larger than this are cut to their first TRUNCATED_SEED bytes."""
TRUNCATED_SEED = 128 * 1024
ZIP_PREFIXES = (b"\x00\x00\x00\x00\x00", b"\x2a\x00\x00\x01\x03", b"\xff\xff\xff\x7f\x04")


def vectors_dir() -> Path:
    env = os.environ.get("NHLINK_VECTORS")
    return Path(env) if env else REPO.parent / "shared" / "vectors"


def _write(folder: Path, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


def _archives(vectors: Path) -> list[bytes]:
    out = []
    for path in sorted((vectors / "fw").glob("*.fw")):
        data = path.read_bytes()
        out.append(data if len(data) <= MAX_ARCHIVE_SEED else data[:TRUNCATED_SEED])
    return out


def zip_seeds(vectors: Path, out: Path) -> None:
    for archive in _archives(vectors):
        for prefix in ZIP_PREFIXES:
            _write(out / "zip", prefix + archive)


def metaconf_seeds(vectors: Path, out: Path) -> None:
    for path in sorted((vectors / "fw").glob("*.fw")):
        try:
            with zipfile.ZipFile(path) as archive:
                _write(out / "metaconf", archive.read("meta.conf"))
        except (zipfile.BadZipFile, KeyError):
            continue
    for conf in sorted((vectors / "conf").glob("*.conf")):
        _write(out / "metaconf", conf.read_bytes())


def framing_seeds(vectors: Path, out: Path) -> None:
    for framed in sorted((vectors / "expected").glob("*/*.framed.bin")):
        _write(out / "framing", b"\x07\x00\x00\x00" + framed.read_bytes())
    small = min(_archives(vectors), key=len)
    packets = b"".join(
        struct.pack(">I", len(small[i : i + 1000])) + small[i : i + 1000]
        for i in range(0, len(small), 1000)
    )
    _write(out / "framing", b"\x01\x00\x00\x00" + packets + b"\x00\x00\x00\x00")


def _uboot_block(variables: dict[str, str], size: int, redundant: bool, flags: int) -> bytes:
    body = b"".join(f"{name}={value}".encode() + b"\0" for name, value in sorted(variables.items()))
    body += b"\0"
    header = 5 if redundant else 4
    body = body.ljust(size - header, b"\xff")
    crc = struct.pack("<I", zlib.crc32(body))
    return crc + (bytes([flags]) if redundant else b"") + body


def uboot_seeds(vectors: Path, out: Path) -> None:
    manifest = json.loads((vectors / "MANIFEST.json").read_text())
    envs: list[dict[str, str]] = [{}]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            env = node.get("uboot_env")
            if isinstance(env, dict):
                for copy in env.values():
                    if isinstance(copy, dict) and isinstance(copy.get("vars"), dict):
                        envs.append(copy["vars"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(manifest)
    for variables in envs[:8]:
        for redundant in (False, True):
            block = _uboot_block(variables, 1024, redundant, 1)
            _write(out / "uboot", bytes([int(redundant)]) + block)


def phoenix_seeds(out: Path) -> None:
    frames = [
        '["1","1","device","phx_join",{"fwup_version":"1.16.0","nerves_fw_uuid":"x"}]',
        '["1","1","device","phx_reply",{"status":"ok","response":{}}]',
        '[null,null,"device","update",{"firmware_url":"https://h/f.fw","firmware_meta":'
        '{"uuid":"u","version":"1.0.0"},"size":66379}]',
        '[null,"2","phoenix","heartbeat",{}]',
        '["1",null,"device","archive",{"url":"https://h/a","size":1,"version":"1"}]',
    ]
    for frame in frames:
        _write(out / "phoenix", frame.encode())


def nerveskey_seeds(vectors: Path, out: Path) -> None:
    """Mode byte | compressed slot | (keys, SN, OTP serial): see fuzz_drivers.nerveskey_outcome."""
    data = json.loads((vectors / "nerveskey" / "vectors.json").read_text())
    nk = data["nerveskey_certificates"]
    slots = {int(k): bytes.fromhex(v) for k, v in nk["expected_slots"].items()}
    device_xy = bytes.fromhex(nk["derived"]["device_public_key_xy_genkey"])
    signer_xy = slots[11][:64]
    device_sn = bytes.fromhex(nk["inputs"]["device_sn"])
    serial = nk["inputs"]["manufacturer_sn"].encode()
    for mode in (0, 4, 8, 12):
        _write(out / "nerveskey", bytes([mode]) + slots[10])
    for mode in (0x18, 0x1C):  # override + OTP serial from the input: rebuilds and verifies
        _write(out / "nerveskey", bytes([mode]) + slots[10] + serial)
    for mode in (1, 5):
        _write(out / "nerveskey", bytes([mode]) + slots[12])
    _write(out / "nerveskey", b"\x02" + slots[10] + device_xy + signer_xy + device_sn + serial)
    _write(out / "nerveskey", b"\x03" + slots[12] + signer_xy)
    tng = data["trust_and_go"]
    tng_signer = bytes.fromhex(tng["derived"]["signer_public_key_xy"])
    tng_device = bytes.fromhex(tng["inputs"]["genkey_slot0_public_key_xy"])
    tng_sn = bytes.fromhex(tng["inputs"]["device_sn"])
    tng10 = bytes.fromhex(tng["inputs"]["slot10_compressed_device_cert"])
    tng12 = bytes.fromhex(tng["inputs"]["slot12_compressed_signer_cert"])
    _write(out / "nerveskey", b"\x03" + tng12 + tng_signer)
    _write(out / "nerveskey", b"\x02" + tng10 + tng_device + tng_signer + tng_sn + b"sn")


def _varint(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _window(
    indicator: int,
    segment: tuple[int, int] | None,
    target_len: int,
    data: bytes,
    inst: bytes,
    addr: bytes,
    adler: int | None = None,
) -> bytes:
    """One VCDIFF window (RFC 3284 5.2) with uncompressed sections."""
    if adler is not None:
        indicator |= 4
    head = bytes([indicator])
    if segment is not None:
        head += _varint(segment[0]) + _varint(segment[1])
    body = _varint(target_len) + b"\x00" + _varint(len(data)) + _varint(len(inst))
    body += _varint(len(addr)) + (b"" if adler is None else adler.to_bytes(4, "big"))
    return head + _varint(len(body) + len(data) + len(inst) + len(addr)) + body + data + inst + addr


def _vcdiff_seed(source: bytes, patch: bytes, flags: int = 1, split: int = 0) -> bytes:
    return struct.pack("<IBI", split, flags, len(source)) + source + patch


def _hand_patches() -> list[tuple[bytes, bytes]]:
    """(source, patch) pairs assembled here: every instruction kind and address mode,
    VCD_TARGET windows, empty windows, an application header, self-overlapping copies."""
    header = b"\xd6\xc3\xc4\x00\x00"
    source = b"0123456789AB"
    target = b"HIxxxx2345HIxxxxxxxx2345"
    first = _window(
        1,
        (8, 2),
        24,
        b"HIx",
        bytes([3, 0, 4, 20, 38, 68, 116]),
        bytes([0, 10, 2, 0]),
        zlib.adler32(target),
    )
    second = _window(2, (4, 0), 4, b"", bytes([20]), bytes([0]))
    empty = _window(0, None, 0, b"", b"", b"", zlib.adler32(b""))
    overlap = _window(0, None, 5000, b"ab", bytes([1, 2, 35]) + _varint(4998), _varint(2))
    app = b"\xd6\xc3\xc4\x00\x04\x03abc"
    return [
        (source, header + first + second),
        (source, header + first + empty),
        (source, header + empty + first + second),
        (b"", header + empty),
        (b"", header + overlap + overlap),
        (source, app + first),
    ]


def _xdelta3_patches() -> list[tuple[bytes, bytes]]:
    xdelta3 = shutil.which("xdelta3")
    if xdelta3 is None:
        return []
    rng = random.Random(8)
    out = []
    flag_sets = (("-A", "-S"), ("-S", "none", "-n"), ("-A", "-S", "-W", "16384"), ("-S", "-0"),
                 ("-S", "-9"))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="nhlink-seeds-") as tmp:
        paths = [os.path.join(tmp, name) for name in ("source", "target", "patch")]
        for index, flags in enumerate(flag_sets):
            source = rng.randbytes(rng.choice((0, 100, 3000, 40000)))
            target = bytearray(source)
            for _ in range(8):
                at = rng.randrange(len(target) + 1)
                if rng.random() < 0.5 and source:
                    start = rng.randrange(len(source))
                    target[at:at] = source[start : start + rng.randrange(1, 2000)]
                else:
                    target[at : at + rng.randrange(200)] = rng.randbytes(rng.randrange(300))
            target += bytes([rng.randrange(256)]) * rng.randrange(1000)
            if index == 3:
                target = bytearray()  # an empty target: one empty window
            for path, data in zip(paths[:2], (source, bytes(target)), strict=True):
                with open(path, "wb") as f:
                    f.write(data)
            subprocess.run([xdelta3, *flags, "-e", "-f", "-s", paths[0], paths[1], paths[2]],
                           check=True)  # fmt: skip
            with open(paths[2], "rb") as f:
                out.append((source, f.read()))
    return out


def vcdiff_seeds(out: Path) -> None:
    for index, (source, patch) in enumerate(_hand_patches() + _xdelta3_patches()):
        _write(out / "vcdiff", _vcdiff_seed(source, patch, 1, index * 0x9E3779B1 & 0xFFFFFFFF))
        _write(out / "vcdiff", _vcdiff_seed(source, patch, 0, 0))
        _write(out / "vcdiff", _vcdiff_seed(source, patch, 3, index))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    vectors = vectors_dir()
    if not (vectors / "MANIFEST.json").is_file():
        print(f"golden vectors not found at {vectors} (set NHLINK_VECTORS)", file=sys.stderr)
        return 1
    zip_seeds(vectors, out)
    metaconf_seeds(vectors, out)
    framing_seeds(vectors, out)
    uboot_seeds(vectors, out)
    phoenix_seeds(out)
    nerveskey_seeds(vectors, out)
    vcdiff_seeds(out)
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        print(f"{folder.name}: {sum(1 for _ in folder.iterdir())} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
