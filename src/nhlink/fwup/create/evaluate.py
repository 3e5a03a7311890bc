"""Creation-time evaluation of a parsed fwup.conf (after parsing, before printing).

* file-resources: build each resource (host files and sparse map, or
  ``contents``), check ``assert-size-lte/gte``, hash the data and record
  ``length`` and ``blake2b-256``;
* mbr: turn ``bootstrap-code-host-path`` into ``bootstrap-code`` (440 bytes
  as hex);
* gpt partitions: ``boot = true`` becomes attribute bit 2 in ``flags``
  (printed as hex) and ``boot`` itself is dropped.
"""

from __future__ import annotations

import logging

from nhlink.errors import MetaConfError
from nhlink.fwup.create.confparse import resolve_relative
from nhlink.fwup.create.resources import Resource, contents_resource, file_resource
from nhlink.fwup.create.tree import Section
from nhlink.fwup.create.values import parse_c_integer

BLOCK_SIZE = 512
BOOTSTRAP_CODE_SIZE = 440
GPT_LEGACY_BOOTABLE = 1 << 2

log = logging.getLogger("nhlink.fwup.create")


def evaluate(root: Section) -> list[Resource]:
    """Complete *root* in place for printing; return its resources in archive order."""
    resources = [_evaluate_resource(section) for section in root.sections("file-resource")]
    for mbr in root.sections("mbr"):
        _evaluate_mbr(mbr)
    for gpt in root.sections("gpt"):
        for partition in gpt.sections("partition"):
            _evaluate_gpt_partition(partition)
    return resources


def _evaluate_resource(section: Section) -> Resource:
    name = section.title or ""
    host_path = section.get_str("host-path")
    if host_path is None:
        contents = section.get_str("contents") or ""
        resource = contents_resource(name, contents.encode("utf-8", "surrogateescape"))
    else:
        written_paths = [path for path in host_path.split(";") if path]
        if not written_paths:
            raise MetaConfError(f"must specify a host-path for resource '{name}'")
        resolved = [(path, resolve_relative(section.filename, path)) for path in written_paths]
        resource = file_resource(name, resolved, skip_holes=section.get_bool("skip-holes", True))
        _check_size_assertions(section, host_path, resource.total_size)

    digest, length = resource.digest()
    if length != resource.data_size:
        raise MetaConfError(f"file-resource '{name}' changed while creating the archive")
    section.values["length"] = list(resource.sparse_map)
    section.values["blake2b-256"] = digest
    log.debug("resource %s: map %s, blake2b-256 %s", name, resource.sparse_map, digest)
    return resource


def _check_size_assertions(section: Section, host_path: str, size: int) -> None:
    at_least = _blocks_to_bytes(section.get_int("assert-size-gte"))
    at_most = _blocks_to_bytes(section.get_int("assert-size-lte"))
    if at_least >= 0 and size < at_least:
        raise MetaConfError(
            f"file size assertion failed on '{host_path}'. Size is {size} bytes. "
            f"It must be >= {at_least} bytes ({at_least // BLOCK_SIZE} blocks)"
        )
    if at_most >= 0 and size > at_most:
        raise MetaConfError(
            f"file size assertion failed on '{host_path}'. Size is {size} bytes. "
            f"It must be <= {at_most} bytes ({at_most // BLOCK_SIZE} blocks)"
        )


def _blocks_to_bytes(blocks: int | None) -> int:
    return -1 if blocks is None or blocks < 0 else blocks * BLOCK_SIZE


def _evaluate_mbr(mbr: Section) -> None:
    path = mbr.get_str("bootstrap-code-host-path")
    if not path or mbr.get_str("bootstrap-code"):
        return
    try:
        with open(resolve_relative(mbr.filename, path), "rb") as code_file:
            code = code_file.read(BOOTSTRAP_CODE_SIZE)
    except OSError:
        raise MetaConfError(
            f"{mbr.where}: mbr bootstrap code path '{path}' required, but can't be read"
        ) from None
    if len(code) != BOOTSTRAP_CODE_SIZE:
        raise MetaConfError(
            f"{mbr.where}: mbr bootstrap code in '{path}' should be {BOOTSTRAP_CODE_SIZE} bytes"
        )
    mbr.values["bootstrap-code"] = code.hex()


def _evaluate_gpt_partition(partition: Section) -> None:
    if not partition.values.pop("boot", False):
        return
    flags_text = partition.get_str("flags") or "0"
    flags = parse_c_integer(flags_text)
    if flags is None or flags < 0:
        raise MetaConfError(
            f"{partition.where}: gpt partition {partition.title}'s flags must be an integer"
        )
    partition.values["flags"] = f"0x{flags | GPT_LEGACY_BOOTABLE:x}"
