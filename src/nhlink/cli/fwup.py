"""``nhlink fwup``: a drop-in for the fwup command line (apply, verify, list, metadata,
create, key generation and re-signing).

Output follows fwup: with ``--framing`` every message is a framed packet on
stdout; otherwise progress goes to stdout as a bar (default), numbers (``-n``)
or nothing (``-q``), and messages are printed as ``fwup: <message>``. The exit
status is 0 or 1.
"""

from __future__ import annotations

import getopt
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from nhlink.cli.fwup_output import OutputMode, ProgressPrinter
from nhlink.errors import NHLinkError

FWUP_COMPAT_VERSION = "1.16.0"
READ_SIZE = 1 << 20

SHORT_OPTIONS = "acd:Ff:ghi:lmno:p:qs:St:UvVy123456789"
LONG_OPTIONS = [
    "apply",
    "create",
    "device=",
    "framing",
    "conf=",
    "gen-keys",
    "help",
    "input=",
    "list",
    "metadata",
    "metadata-key=",
    "numeric-progress",
    "output=",
    "public-key-file=",
    "public-key=",
    "private-key-file=",
    "private-key=",
    "quiet",
    "sign",
    "task=",
    "unmount",
    "no-unmount",
    "unsafe",
    "verbose",
    "verify",
    "version",
    "exit-handshake",
    "progress-low=",
    "progress-high=",
    "max-size=",
    "verify-writes",
    "no-verify-writes",
    "enable-trim",
    "reboot-param-path=",
    "no-eject",
    "eject",
]

USAGE = """\
Usage: nhlink fwup [OPTION]...

Commands (one of):
  -a, --apply          Apply the firmware update (-i FILE|-, -d DEST, -t TASK)
  -V, --verify         Verify an archive (signature and every resource)
  -l, --list           List the tasks in an archive
  -m, --metadata       Print the archive's metadata (--metadata-key K for one value)
  -c, --create         Create an archive (-f fwup.conf -o out.fw [-s key])
  -g, --gen-keys       Generate signing keys (fwup-key.pub/.priv, or -o PREFIX)
  -S, --sign           Re-sign an archive (-s key -i in.fw -o out.fw)
      --version        Print the fwup version this applier is compatible with

Options:
  -i FILE              Input archive, - for stdin (default for --apply)
  -o FILE              Output file (create, sign) or key prefix (gen-keys)
  -f FILE              fwup.conf for --create
  -d DEST              Destination image file or block device
  -t TASK              Task to apply (prefix match, as fwup)
  -p, --public-key-file FILE / --public-key B64
                       Ed25519 public key (up to 10; any may verify)
  -s, --private-key-file FILE / --private-key B64
                       Ed25519 private key for --create and --sign
  -F, --framing        Length-prefixed packets on stdin/stdout (Erlang ports)
      --exit-handshake Write Ctrl-Z and the exit status, then wait for stdin to close
  -q, --quiet          No progress output
  -n                   Numeric progress
      --unsafe         Allow path_write, pipe_write and execute
      --progress-low N, --progress-high N
      --max-size BLOCKS, --verify-writes, --no-verify-writes
  -1 .. -9             Compression level for --create (default 9)
"""

COMMAND_FLAGS = {
    "-a": "apply",
    "--apply": "apply",
    "-V": "verify",
    "--verify": "verify",
    "-l": "list",
    "--list": "list",
    "-m": "metadata",
    "--metadata": "metadata",
    "-c": "create",
    "--create": "create",
    "-g": "gen-keys",
    "--gen-keys": "gen-keys",
    "-S": "sign",
    "--sign": "sign",
    "--version": "version",
    "-h": "help",
    "--help": "help",
}


class UsageError(NHLinkError):
    """The command line cannot be understood."""


@dataclass
class Options:
    """The parsed command line."""

    command: str | None = None
    input: str | None = None
    output: str | None = None
    conf: str | None = None
    destination: str | None = None
    task: str | None = None
    public_keys: list[str] = field(default_factory=list)
    public_key_files: list[str] = field(default_factory=list)
    private_key: str | None = None
    private_key_file: str | None = None
    framing: bool = False
    exit_handshake: bool = False
    mode: OutputMode = OutputMode.NORMAL
    unsafe: bool = False
    metadata_key: str | None = None
    progress_low: int = 0
    progress_high: int = 100
    max_size: int | None = None
    verify_writes: bool | None = None
    reboot_param_path: str | None = None
    level: int = 9


def parse_args(argv: Sequence[str]) -> Options:
    """Parse fwup-style arguments (short flags may be combined, as with getopt)."""
    try:
        pairs, rest = getopt.gnu_getopt(list(argv), SHORT_OPTIONS, LONG_OPTIONS)
    except getopt.GetoptError as exc:
        raise UsageError(str(exc)) from None
    opts = Options()
    for flag, value in pairs:
        _apply_flag(opts, flag, value)
    if rest:
        if opts.input is None and len(rest) == 1:
            opts.input = rest[0]
        else:
            raise UsageError(f"unexpected arguments: {' '.join(rest)}")
    return opts


def _apply_flag(opts: Options, flag: str, value: str) -> None:
    command = COMMAND_FLAGS.get(flag)
    if command is not None:
        if opts.command is not None and opts.command != command:
            raise UsageError("specify only one command (-a, -V, -l, -m, -c, -g, -S)")
        opts.command = command
        return
    if flag in ("-i", "--input"):
        opts.input = value
    elif flag in ("-o", "--output"):
        opts.output = value
    elif flag in ("-f", "--conf"):
        opts.conf = value
    elif flag in ("-d", "--device"):
        opts.destination = value
    elif flag in ("-t", "--task"):
        opts.task = value
    elif flag in ("-p", "--public-key-file"):
        opts.public_key_files.append(value)
    elif flag == "--public-key":
        opts.public_keys.append(value)
    elif flag in ("-s", "--private-key-file"):
        opts.private_key_file = value
    elif flag == "--private-key":
        opts.private_key = value
    elif flag in ("-F", "--framing"):
        opts.framing = True
    elif flag == "--exit-handshake":
        opts.exit_handshake = True
    elif flag in ("-q", "--quiet"):
        opts.mode = OutputMode.QUIET
    elif flag in ("-n", "--numeric-progress"):
        opts.mode = OutputMode.NUMERIC
    elif flag == "--unsafe":
        opts.unsafe = True
    elif flag == "--metadata-key":
        opts.metadata_key = value
        opts.command = opts.command or "metadata"
    elif flag == "--progress-low":
        opts.progress_low = _int_option(flag, value, 0, 100)
    elif flag == "--progress-high":
        opts.progress_high = _int_option(flag, value, 0, 100)
    elif flag == "--max-size":
        opts.max_size = _int_option(flag, value, 1, 1 << 53) * 512
    elif flag == "--verify-writes":
        opts.verify_writes = True
    elif flag == "--no-verify-writes":
        opts.verify_writes = False
    elif flag == "--reboot-param-path":
        opts.reboot_param_path = value
    elif len(flag) == 2 and flag[1].isdigit():
        opts.level = int(flag[1])
    # -U/--no-unmount, --unmount, -v, -y, --enable-trim, --eject/--no-eject: accepted, no effect.


def _int_option(flag: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value, 0)
    except ValueError:
        raise UsageError(f"{flag} needs a number, not {value!r}") from None
    if not low <= number <= high:
        raise UsageError(f"{flag} must be between {low} and {high}")
    return number


def main(argv: Sequence[str]) -> int:
    """Run ``nhlink fwup``; returns 0 or 1 like fwup."""
    try:
        opts = parse_args(argv)
    except UsageError as exc:
        print(f"fwup: {exc}", file=sys.stderr)
        return 1
    out = ProgressPrinter(sys.stdout.buffer, mode=opts.mode, framing=opts.framing)
    status = _run(opts, out)
    if status != 0 and opts.mode is not OutputMode.QUIET:
        sys.stderr.write("\n")
        sys.stderr.flush()
    if opts.exit_handshake:
        _exit_handshake(status)
    return status


def _run(opts: Options, out: ProgressPrinter) -> int:
    from nhlink.cli import fwup_commands as commands

    if opts.command == "help":
        sys.stdout.write(USAGE)
        return 0
    if opts.command == "version":
        print(FWUP_COMPAT_VERSION)
        return 0
    try:
        if opts.command in ("apply", "verify", "list", "metadata"):
            return commands.run_engine(opts, out)
        if opts.command == "create":
            return commands.create(opts, out)
        if opts.command == "gen-keys":
            return commands.gen_keys(opts, out)
        if opts.command == "sign":
            return commands.sign(opts, out)
        raise UsageError("no command given: use -a, -V, -l, -m, -c, -g or -S (see --help)")
    except NHLinkError as exc:
        out.error(str(exc))
        return 1
    except OSError as exc:
        out.error(_describe_os_error(exc))
        return 1


def _describe_os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def read_chunks(stream: BinaryIO | int, size: int = READ_SIZE) -> Iterator[bytes]:
    """Yield chunks of at most ``size`` bytes from a file object or descriptor until EOF."""
    # One reused buffer and an exact-size copy per read: os.read(fd, size) on a pipe
    # allocates `size` bytes and shrinks them to the ~64 KiB a pipe returns, which
    # fragments the heap and grows RSS over a long apply.
    fd = stream if isinstance(stream, int) else stream.fileno()
    buffer = bytearray(size)
    view = memoryview(buffer)
    while True:
        count = os.readv(fd, [buffer])
        if not count:
            return
        yield bytes(view[:count])


def _exit_handshake(status: int) -> None:
    """fwup's Erlang-port handshake: Ctrl-Z and the status, then wait for stdin to close."""
    try:
        sys.stdout.flush()
        os.write(sys.stdout.fileno(), bytes([0x1A, status & 0xFF]))
        while os.read(sys.stdin.fileno(), 65536):
            pass
    except OSError:
        pass
