"""Helpers shared by the backend tests: golden-vector access and a ZipStream driver."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Resource:
    """A file-resource of a meta.conf: its sparse map (or plain length) and digest."""

    name: str
    runs: list[int]
    blake2b: bytes

    @property
    def data_size(self) -> int:
        return sum(self.runs[0::2])

    @property
    def sparse_map(self) -> list[int] | None:
        return self.runs if len(self.runs) > 1 else None


_RESOURCE = re.compile(
    r'file-resource "(?P<name>[^"]+)" \{\s*length=(?P<length>\{[^}]*\}|\d+)\s*'
    r"blake2b-256=(?P<hash>[0-9a-f]{64})\s*\}"
)


def parse_resources(meta_conf: str) -> dict[str, Resource]:
    """The file-resources of a meta.conf (just enough parsing for these tests)."""
    resources = {}
    for match in _RESOURCE.finditer(meta_conf):
        runs = [int(part) for part in match["length"].strip("{}").split(",")]
        resources[match["name"]] = Resource(match["name"], runs, bytes.fromhex(match["hash"]))
    return resources


def resource_name(entry_name: str) -> str:
    """fwup's mapping from archive entry name to resource name."""
    return entry_name[len("data/") :] if entry_name.startswith("data/") else "/" + entry_name


def vectors_root() -> Path:
    """``$NHLINK_VECTORS``, else ``<repo>/../shared/vectors``."""
    env = os.environ.get("NHLINK_VECTORS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "vectors"


def _manifest() -> dict[str, Any] | None:
    path = vectors_root() / "MANIFEST.json"
    return json.loads(path.read_text()) if path.is_file() else None


def vector_ids() -> list[str]:
    """Vector ids for parametrization (empty when the vectors are missing)."""
    manifest = _manifest()
    return [vector["id"] for vector in manifest["vectors"]] if manifest else []


def framed_outputs() -> list[str]:
    """Paths (relative to the vectors) of every ``expected/*/*.framed.bin``."""
    root = vectors_root()
    return sorted(str(p.relative_to(root)) for p in root.glob("expected/*/*.framed.bin"))


class Vectors:
    """Access to the golden vectors."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifest: dict[str, Any] = json.loads((root / "MANIFEST.json").read_text())

    def vector(self, vector_id: str) -> dict[str, Any]:
        for vector in self.manifest["vectors"]:
            if vector["id"] == vector_id:
                return dict(vector)
        raise KeyError(vector_id)

    def fw_path(self, vector_id: str) -> Path:
        return self.root / self.vector(vector_id)["fw"]

    def fw(self, vector_id: str) -> bytes:
        return self.fw_path(vector_id).read_bytes()

    def step(self, vector_id: str, step_name: str) -> dict[str, Any]:
        for step in self.vector(vector_id)["steps"]:
            if step["name"] == step_name:
                return dict(step)
        raise KeyError(step_name)

    def public_key(self, key: str) -> bytes:
        return base64.b64decode(self.manifest["keys"][key]["public_key_base64"])

    def resources(self, vector_id: str) -> dict[str, Resource]:
        with zipfile.ZipFile(self.fw_path(vector_id)) as archive:
            return parse_resources(archive.read("meta.conf").decode())

    def make_base_image(self, base: dict[str, Any], path: Path) -> None:
        """Build a step's base image ('zero' or 'fill'; 'step' bases are not needed here)."""
        if base["kind"] == "zero":
            with path.open("wb") as image:
                image.truncate(base["size"])
        elif base["kind"] == "fill":
            path.write_bytes(bytes([base["byte"]]) * base["size"])
        else:
            raise ValueError(f"unsupported base image {base['kind']}")


def walk(
    backend: Any,
    data: bytes,
    chunk: int | None,
    on_start: Callable[[Any, Any], None] | None = None,
    finish: bool = True,
) -> list[Any]:
    """Feed ``data`` to a new ZipStream in ``chunk``-byte pieces (None: all at once).

    See ``walk_pieces`` for what it returns and checks.
    """
    step = chunk or max(1, len(data))
    view = memoryview(data)
    pieces = [view[start : start + step] for start in range(0, len(data), step)]
    return walk_pieces(backend, pieces, on_start, finish)


def split_at(data: bytes, cuts: list[int]) -> list[memoryview]:
    """``data`` cut at the given offsets (any order, duplicates allowed)."""
    view = memoryview(data)
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    return [view[a:b] for a, b in itertools.pairwise(bounds)]


def walk_pieces(
    backend: Any,
    pieces: list[memoryview],
    on_start: Callable[[Any, Any], None] | None = None,
    finish: bool = True,
) -> list[Any]:
    """Feed the pieces to a new ZipStream in order.

    ``on_start(stream, EntryStart)`` chooses the sink. Returns every event, ending
    with the ``end_of_input()`` result when ``finish``. Checks the feed contract
    on the way: ``(0, None)`` never answers non-empty data, consumed never
    exceeds what was offered, and ``None`` means everything was consumed.
    """
    stream = backend.ZipStream()
    events: list[Any] = []

    def handle(event: Any) -> None:
        events.append(event)
        if type(event).__name__ == "EntryStart" and on_start is not None:
            on_start(stream, event)

    for piece in pieces:
        while True:
            consumed, event = stream.feed(piece)
            assert 0 <= consumed <= len(piece)
            assert not (consumed == 0 and event is None and piece), "feed returned (0, None)"
            piece = piece[consumed:]
            if event is None:
                assert not piece
                break
            handle(event)
    if finish:
        while True:  # drain events whose input was already consumed
            consumed, event = stream.feed(b"")
            assert consumed == 0
            if event is None:
                break
            handle(event)
        events.append(stream.end_of_input())
    return events
