"""File resources: archive names, sparse maps and streaming their data.

A resource is the concatenation of its host files (``host-path`` may list
several, separated by ``;``) or the text of ``contents``. With
``skip-holes`` (fwup's default) the host filesystem's holes are found with
SEEK_DATA/SEEK_HOLE and recorded as a map of alternating data/hole run
lengths starting with data; the archive holds only the data runs. A map is
at most 255 entries long: everything from the 255th entry on is folded
into one data run (fwup's limit).
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from nhlink.errors import MetaConfError

READ_CHUNK = 1 << 20
MAX_ARCHIVE_PATH = 512
SPARSE_MAP_MAX_ENTRIES = 255


@dataclass(frozen=True)
class HostFile:
    path: str
    size: int


@dataclass(frozen=True)
class Resource:
    """Everything needed to hash and store one file-resource."""

    name: str
    archive_path: str
    sparse_map: tuple[int, ...]
    files: tuple[HostFile, ...] = ()
    contents: bytes | None = None

    @property
    def data_size(self) -> int:
        return sum(self.sparse_map[0::2])

    @property
    def total_size(self) -> int:
        return sum(self.sparse_map)

    def iter_data(self, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        """Yield the resource's data bytes (holes excluded), never all at once."""
        if self.contents is not None:
            for start in range(0, len(self.contents), chunk_size):
                yield self.contents[start : start + chunk_size]
            return
        with _ConcatenatedFiles(self.name, self.files) as source:
            position = 0
            for index, length in enumerate(self.sparse_map):
                if index % 2 == 0:
                    yield from source.read_range(position, length, chunk_size)
                position += length

    def digest(self) -> tuple[str, int]:
        """Return (BLAKE2b-256 hex digest, data length) in one pass over the data."""
        hasher = hashlib.blake2b(digest_size=32)
        length = 0
        for chunk in self.iter_data():
            hasher.update(chunk)
            length += len(chunk)
        return hasher.hexdigest(), length


def archive_path_for(resource_name: str) -> str:
    """Map a resource name to its archive entry name, rejecting what fwup rejects."""
    if len(resource_name.encode("utf-8", "surrogateescape")) + 6 > MAX_ARCHIVE_PATH:
        raise MetaConfError(f"resource name '{resource_name}' is too long")
    if resource_name == "":
        raise MetaConfError("resource name can't be empty")
    if resource_name.endswith("/"):
        raise MetaConfError(f"resource name '{resource_name}' can't end in a '/'")
    if not resource_name.startswith("/"):
        return "data/" + resource_name
    if resource_name == "/":
        raise MetaConfError("resource name can't be the root directory")
    if resource_name == "/meta.conf":
        raise MetaConfError("resources can't be named /meta.conf")
    if resource_name == "/data" or resource_name.startswith("/data/"):
        raise MetaConfError("use a normal resource name rather than specifying /data")
    return resource_name[1:]


def file_resource(name: str, paths: list[tuple[str, str]], *, skip_holes: bool) -> Resource:
    """Build the resource for host files given as (path as written, resolved path)."""
    files: list[HostFile] = []
    runs: list[tuple[bool, int]] = []
    for written_path, resolved in paths:
        try:
            fd = os.open(resolved, os.O_RDONLY)
        except OSError:
            raise MetaConfError(
                f"can't open path '{written_path}' in file-resource '{name}'"
            ) from None
        try:
            size = os.fstat(fd).st_size
            runs.extend(_file_runs(fd, size) if skip_holes else [(True, size)])
        finally:
            os.close(fd)
        files.append(HostFile(resolved, size))
    sparse_map = _runs_to_map(runs)
    if not skip_holes and not sparse_map:
        sparse_map = [0]
    return Resource(name, archive_path_for(name), tuple(sparse_map), files=tuple(files))


def contents_resource(name: str, contents: bytes) -> Resource:
    """Build the resource for a ``contents = "..."`` string."""
    return Resource(name, archive_path_for(name), (len(contents),), contents=contents)


def _file_runs(fd: int, size: int) -> list[tuple[bool, int]]:
    """(is_data, length) runs of one file as the filesystem reports them."""
    runs: list[tuple[bool, int]] = []
    offset = 0
    while offset < size:
        try:
            data = min(os.lseek(fd, offset, os.SEEK_DATA), size)
        except OSError as error:
            if error.errno == errno.ENXIO:
                data = size
            elif error.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [*runs, (True, size - offset)]  # no hole support here
            else:
                raise
        if data > offset:
            runs.append((False, data - offset))
            offset = data
        if offset >= size:
            break
        hole = min(os.lseek(fd, offset, os.SEEK_HOLE), size)
        if hole <= offset:
            hole = size
        runs.append((True, hole - offset))
        offset = hole
    return runs


def _runs_to_map(runs: list[tuple[bool, int]]) -> list[int]:
    merged: list[tuple[bool, int]] = []
    for is_data, length in runs:
        if length == 0:
            continue
        if merged and merged[-1][0] == is_data:
            merged[-1] = (is_data, merged[-1][1] + length)
        else:
            merged.append((is_data, length))
    sparse_map = [length for _, length in merged]
    if merged and not merged[0][0]:
        sparse_map.insert(0, 0)  # maps start with a (possibly empty) data run
    if len(sparse_map) > SPARSE_MAP_MAX_ENTRIES:
        keep = SPARSE_MAP_MAX_ENTRIES - 1
        sparse_map = [*sparse_map[:keep], sum(sparse_map[keep:])]
    return sparse_map


class _ConcatenatedFiles:
    """Read byte ranges of several files as if they were one."""

    def __init__(self, name: str, files: tuple[HostFile, ...]) -> None:
        self._name = name
        self._files = files
        self._fds: list[int] = []

    def __enter__(self) -> _ConcatenatedFiles:
        for host_file in self._files:
            try:
                self._fds.append(os.open(host_file.path, os.O_RDONLY))
            except OSError as error:
                self.close()
                raise MetaConfError(
                    f"can't open path '{host_file.path}' in file-resource '{self._name}': "
                    f"{error.strerror}"
                ) from None
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    def read_range(self, start: int, length: int, chunk_size: int) -> Iterator[bytes]:
        file_start = 0
        end = start + length
        for fd, host_file in zip(self._fds, self._files, strict=True):
            file_end = file_start + host_file.size
            position = max(start, file_start)
            while position < min(end, file_end):
                wanted = min(chunk_size, min(end, file_end) - position)
                chunk = os.pread(fd, wanted, position - file_start)
                if len(chunk) != wanted:
                    raise MetaConfError(
                        f"file-resource '{self._name}' changed while creating the archive "
                        f"('{host_file.path}' is shorter than before)"
                    )
                yield chunk
                position += wanted
            file_start = file_end
            if file_start >= end:
                return
