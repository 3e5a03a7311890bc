"""A stand-in for an installed ``fwup`` (the tests copy it to ``<tmp>/fwup``, first on PATH).

It records its argv and the archive bytes it received (framed stdin packets,
as ``fwup --framing`` reads them), replays a framed-output file of the golden
vectors on stdout, then does the ``--exit-handshake`` (``0x1A`` + status) and
waits for stdin to close. Settings come from the environment:

``FAKE_FWUP_LOG``        where to write ``{"argv": [...], "received": n, "sha256": hex}``
``FAKE_FWUP_REPLAY``     the ``*.framed.bin`` to replay
``FAKE_FWUP_STATUS``     exit status (default 0)
``FAKE_FWUP_FAIL_AFTER`` stop reading after this many archive bytes (fwup failing early)
``FAKE_FWUP_NO_DRAIN``   set: exit right after the handshake without reading stdin to its end
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys


def read_exact(stream: object, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = stream.read(n - len(out))  # type: ignore[attr-defined]
        if not chunk:
            break
        out += chunk
    return out


def main() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    fail_after = int(os.environ.get("FAKE_FWUP_FAIL_AFTER", "-1"))
    digest = hashlib.sha256()
    received = 0
    while fail_after < 0 or received < fail_after:
        head = read_exact(stdin, 4)
        if len(head) < 4:
            break
        (length,) = struct.unpack(">I", head)
        if length == 0:
            break
        data = read_exact(stdin, length)
        digest.update(data)
        received += len(data)
    with open(os.environ["FAKE_FWUP_LOG"], "w") as log:
        json.dump({"argv": sys.argv[1:], "received": received, "sha256": digest.hexdigest()}, log)
    with open(os.environ["FAKE_FWUP_REPLAY"], "rb") as replay:
        stdout.write(replay.read())
    status = int(os.environ.get("FAKE_FWUP_STATUS", "0"))
    stdout.write(bytes([0x1A, status]))
    stdout.flush()
    if os.environ.get("FAKE_FWUP_NO_DRAIN"):
        return status
    while stdin.read(65536):  # the exit handshake: wait for stdin to close
        pass
    return status


if __name__ == "__main__":
    sys.exit(main())
