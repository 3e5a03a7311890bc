"""``fwup -S``: re-sign an existing archive.

The old signature is dropped; the new signature, meta.conf (same bytes, so the
archive UUID is unchanged) and every other entry (re-compressed, in their
original order, attributes normalised like a freshly created archive) are
written to a new file. meta.conf's modification time becomes the creation
time (SOURCE_DATE_EPOCH or now), as with fwup.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Mapping

from nhlink.errors import ArchiveError
from nhlink.fwup.create.archive import (
    DEFAULT_LEVEL,
    META_CONF,
    META_CONF_SIGNATURE,
    CreatedArchive,
    creation_time,
    sign_meta_conf,
    write_archive_file,
    write_meta_conf,
)
from nhlink.fwup.create.zipwriter import EntryInfo, ZipWriter

MIN_META_CONF_SIZE = 10
MAX_META_CONF_SIZE = 50000
COPY_CHUNK = 1 << 20


def resign_archive(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    signing_key: bytes,
    *,
    environ: Mapping[str, str] | None = None,
    level: int = DEFAULT_LEVEL,
) -> CreatedArchive:
    """Write *output_path*: *input_path* signed with *signing_key* (64-byte key or seed)."""
    source = os.fspath(input_path)
    environment = os.environ if environ is None else environ
    try:
        archive = zipfile.ZipFile(source)
    except (OSError, zipfile.BadZipFile) as error:
        raise ArchiveError(f"Cannot open archive '{source}': {error}") from None

    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        meta_conf, rest = _split_meta_conf(archive, infos)
        signature = sign_meta_conf(meta_conf, signing_key)
        mtime = creation_time(environment)

        def write_entries(writer: ZipWriter) -> list[EntryInfo]:
            entries = write_meta_conf(writer, meta_conf, signature, mtime=mtime, level=level)
            for info in rest:
                chunks = _read_entry(archive, info, source)
                entries.append(
                    writer.add_deflated(info.filename, chunks, info.file_size, level=level)
                )
            return entries

        entries = write_archive_file(output_path, write_entries)
    return CreatedArchive(os.fspath(output_path), meta_conf, signature, tuple(entries))


def _split_meta_conf(
    archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo]
) -> tuple[bytes, list[zipfile.ZipInfo]]:
    meta_conf: bytes | None = None
    rest: list[zipfile.ZipInfo] = []
    for info in infos:
        if info.filename == META_CONF_SIGNATURE:
            continue  # the old signature is replaced
        if info.filename == META_CONF:
            if meta_conf is not None:
                raise ArchiveError("Invalid firmware. More than one meta.conf found")
            if not MIN_META_CONF_SIZE <= info.file_size < MAX_META_CONF_SIZE:
                raise ArchiveError(f"Unexpected meta.conf size: {info.file_size}")
            meta_conf = _read_small_entry(archive, info)
        elif meta_conf is None:
            raise ArchiveError("Invalid firmware. meta.conf must be at the beginning of archive")
        else:
            rest.append(info)
    if meta_conf is None:
        raise ArchiveError("Invalid firmware. No meta.conf found")
    return meta_conf, rest


def _read_small_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return archive.read(info)
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        raise ArchiveError(f"Error reading '{info.filename}': {error}") from None


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> Iterator[bytes]:
    try:
        with archive.open(info) as entry:
            while chunk := entry.read(COPY_CHUNK):
                yield chunk
    except (zipfile.BadZipFile, ValueError, EOFError) as error:
        raise ArchiveError(f"Error reading '{info.filename}' in '{source}': {error}") from None
