"""The commands behind ``nhlink fwup``: engine runs (apply, verify, list, metadata),
archive creation, key generation and re-signing."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from nhlink.cli.fwup import Options, UsageError, read_chunks
from nhlink.cli.fwup_output import ProgressPrinter
from nhlink.errors import FramingError

if TYPE_CHECKING:
    from nhlink.fwup.engine import Engine

MAX_PUBLIC_KEYS = 10


def public_keys(opts: Options) -> list[bytes]:
    """Every public key given with ``--public-key`` or ``-p``, as raw 32-byte keys."""
    from nhlink.fwup import keys

    loaded = [keys.load_public_key(text) for text in opts.public_keys]
    loaded += [keys.read_public_key_file(path) for path in opts.public_key_files]
    if len(loaded) > MAX_PUBLIC_KEYS:
        raise UsageError(f"too many public keys (at most {MAX_PUBLIC_KEYS})")
    return loaded


def private_key(opts: Options) -> bytes | None:
    """The signing key given with ``--private-key`` or ``-s``, if any."""
    from nhlink.fwup import keys

    if opts.private_key is not None:
        return keys.load_private_key(opts.private_key)
    if opts.private_key_file is not None:
        return keys.read_private_key_file(opts.private_key_file)
    return None


def _input_chunks(opts: Options) -> Iterator[bytes]:
    """The archive bytes: from a file, raw stdin, or framed stdin."""
    path = opts.input if opts.input is not None else "-"
    if path != "-":
        with open(path, "rb") as stream:
            yield from read_chunks(stream)
        return
    stdin = sys.stdin.buffer
    if not opts.framing:
        yield from read_chunks(stdin)
        return
    from nhlink._native import PacketDecoder

    decoder = PacketDecoder()
    for chunk in read_chunks(stdin):
        yield from decoder.feed(chunk)
        if decoder.finished:
            return
    decoder.check_eof()


def _make_engine(opts: Options) -> Engine:
    from nhlink.fwup.engine import Engine

    if opts.command == "apply":
        if not opts.destination:
            raise UsageError("Specify an output file or device with -d")
        if not opts.task:
            raise UsageError("Specify a task to run with -t")
    return Engine(
        mode=opts.command or "apply",
        destination=opts.destination,
        task=opts.task,
        public_keys=public_keys(opts),
        unsafe=opts.unsafe,
        verify_writes=opts.verify_writes,
        max_size=opts.max_size,
        reboot_param_path=opts.reboot_param_path,
        progress_low=opts.progress_low,
        progress_high=opts.progress_high,
        metadata_key=opts.metadata_key,
    )


def run_engine(opts: Options, out: ProgressPrinter) -> int:
    """Stream the archive through the engine and show its frames."""
    engine = _make_engine(opts)
    try:
        for chunk in _input_chunks(opts):
            out.bytes_in += len(chunk)
            for frame in engine.feed(chunk):
                out.frame(*frame)
            if engine.done:
                break
        if not engine.done:
            for frame in engine.finish():
                out.frame(*frame)
    except FramingError as exc:
        for frame in engine.abort(str(exc)):
            out.frame(*frame)
    return 0 if engine.succeeded else 1


def create(opts: Options, out: ProgressPrinter) -> int:
    """``-c``: build an archive from a fwup.conf."""
    from nhlink.fwup.create import create_archive

    if not opts.conf:
        raise UsageError("Specify a configuration file with -f")
    if not opts.output:
        raise UsageError("Specify an output archive with -o")
    create_archive(opts.conf, opts.output, signing_key=private_key(opts), level=opts.level)
    return 0


def gen_keys(opts: Options, out: ProgressPrinter) -> int:
    """``-g``: write ``<prefix>.pub`` and ``<prefix>.priv``."""
    from nhlink.fwup.keys import generate_keypair

    generate_keypair(opts.output or "fwup-key")
    return 0


def sign(opts: Options, out: ProgressPrinter) -> int:
    """``-S``: re-sign an archive."""
    from nhlink.fwup.create import resign_archive

    key = private_key(opts)
    if key is None:
        raise UsageError("Specify a private key with -s or --private-key")
    if not opts.input or opts.input == "-" or not opts.output:
        raise UsageError("Specify the input (-i) and output (-o) archives")
    if os.path.abspath(opts.input) == os.path.abspath(opts.output):
        raise UsageError("the input and output archives must differ")
    resign_archive(opts.input, opts.output, key)
    return 0
