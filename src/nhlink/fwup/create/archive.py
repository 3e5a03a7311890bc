"""``fwup -c``: build a .fw archive from a fwup.conf.

Entry order: ``meta.conf.ed25519`` (stored, only when signing), ``meta.conf``
(deflated, modification time from SOURCE_DATE_EPOCH or now), then one
deflated entry per file-resource in fwup.conf order. Resource data is read
twice (hash for meta.conf, then compress) and streamed both times; the second
pass re-hashes and fails if a file changed in between. The archive is written
to a temporary file next to the output and renamed into place on success.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from nhlink.errors import DestinationError, MetaConfError
from nhlink.fwup import keys
from nhlink.fwup.create.confparse import parse_conf
from nhlink.fwup.create.emit import emit_meta_conf
from nhlink.fwup.create.evaluate import evaluate
from nhlink.fwup.create.resources import Resource
from nhlink.fwup.create.zipwriter import EntryInfo, ZipWriter

META_CONF = "meta.conf"
META_CONF_SIGNATURE = "meta.conf.ed25519"
MAX_META_CONF_SIZE = 50000  # appliers reject meta.conf of this size or more
DEFAULT_LEVEL = 9

log = logging.getLogger("nhlink.fwup.create")


@dataclass(frozen=True)
class CreatedArchive:
    """What ``create_archive`` / ``resign_archive`` wrote."""

    path: str
    meta_conf: bytes
    signature: bytes | None
    entries: tuple[EntryInfo, ...]


def sign_meta_conf(meta_conf: bytes, key: bytes) -> bytes:
    """Return the 64-byte Ed25519 signature of *meta_conf* (the meta.conf.ed25519 entry).

    *key* is the 64-byte secret key (seed || public key) or the 32-byte seed.
    """
    return keys.sign(meta_conf, key)


def create_archive(
    conf_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    signing_key: bytes | None = None,
    environ: Mapping[str, str] | None = None,
    level: int = DEFAULT_LEVEL,
) -> CreatedArchive:
    """Create *output_path* from the fwup.conf at *conf_path* like ``fwup -c``.

    *environ* (default ``os.environ``) supplies ``${VAR}`` values and
    SOURCE_DATE_EPOCH. Raises :class:`MetaConfError` for configuration and
    resource problems and :class:`DestinationError` when the output cannot be
    written.
    """
    _check_level(level)
    environment = dict(os.environ if environ is None else environ)
    variables = dict(environment)
    # These are only known when applying; keep references to them literal.
    variables["FWUP_META_UUID"] = "${FWUP_META_UUID}"
    variables["FWUP_META_NICKNAME"] = "${FWUP_META_NICKNAME}"

    root = parse_conf(conf_path, variables)
    resources = evaluate(root)
    meta_conf = emit_meta_conf(root)
    check_meta_conf_size(meta_conf)
    signature = sign_meta_conf(meta_conf, signing_key) if signing_key is not None else None
    mtime = creation_time(environment)

    digests = {
        section.title or "": section.get_str("blake2b-256") or ""
        for section in root.sections("file-resource")
    }

    def write_entries(writer: ZipWriter) -> list[EntryInfo]:
        entries = write_meta_conf(writer, meta_conf, signature, mtime=mtime, level=level)
        for resource in resources:
            entries.append(_write_resource(writer, resource, digests[resource.name], level))
        return entries

    entries = write_archive_file(output_path, write_entries)
    log.info("created %s (%d entries)", os.fspath(output_path), len(entries))
    return CreatedArchive(os.fspath(output_path), meta_conf, signature, tuple(entries))


def write_meta_conf(
    writer: ZipWriter, meta_conf: bytes, signature: bytes | None, *, mtime: int, level: int
) -> list[EntryInfo]:
    """Write the optional signature entry and meta.conf, fwup's first entries."""
    entries = []
    if signature is not None:
        entries.append(writer.add_stored(META_CONF_SIGNATURE, signature))
    entries.append(
        writer.add_deflated(META_CONF, [meta_conf], len(meta_conf), level=level, mtime=mtime)
    )
    return entries


def write_archive_file(
    output_path: str | os.PathLike[str], write_entries: Callable[[ZipWriter], list[EntryInfo]]
) -> list[EntryInfo]:
    """Run *write_entries* on a temporary file and move it to *output_path* on success."""
    final = os.fspath(output_path)
    directory, base = os.path.split(final)
    temporary = os.path.join(directory, f".{base}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise DestinationError(f"error creating archive '{final}': {error.strerror}") from None
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as output:
            writer = ZipWriter(output)
            entries = write_entries(writer)
            writer.close()
        os.replace(temporary, final)
    except OSError as error:
        _remove_quietly(temporary)
        raise DestinationError(f"error writing archive '{final}': {error.strerror}") from None
    except BaseException:
        _remove_quietly(temporary)
        raise
    return entries


def creation_time(environment: Mapping[str, str]) -> int:
    """SOURCE_DATE_EPOCH when set (reproducible builds), else the current time."""
    value = environment.get("SOURCE_DATE_EPOCH")
    if value is None or value == "":
        return int(time.time())
    if not value.isdigit():
        raise MetaConfError(f"SOURCE_DATE_EPOCH must be a number of seconds, got '{value}'")
    return int(value)


def check_meta_conf_size(meta_conf: bytes) -> None:
    """Refuse a meta.conf that no applier would accept."""
    if len(meta_conf) >= MAX_META_CONF_SIZE:
        raise MetaConfError(
            f"meta.conf would be {len(meta_conf)} bytes; appliers accept less than "
            f"{MAX_META_CONF_SIZE}"
        )


def _write_resource(writer: ZipWriter, resource: Resource, expected: str, level: int) -> EntryInfo:
    hasher = hashlib.blake2b(digest_size=32)

    def hashed(chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            hasher.update(chunk)
            yield chunk

    try:
        info = writer.add_deflated(
            resource.archive_path, hashed(resource.iter_data()), resource.data_size, level=level
        )
    except ValueError:
        raise MetaConfError(
            f"file-resource '{resource.name}' changed while creating the archive"
        ) from None
    if hasher.hexdigest() != expected:
        raise MetaConfError(f"file-resource '{resource.name}' changed while creating the archive")
    return info


def _check_level(level: int) -> None:
    if not 1 <= level <= 9:
        raise ValueError(f"compression level must be 1..9, got {level}")


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


__all__ = [
    "CreatedArchive",
    "create_archive",
    "creation_time",
    "sign_meta_conf",
    "write_archive_file",
    "write_meta_conf",
]
