"""meta.conf parsing: the libconfuse subset fwup emits, into typed dataclasses.

Syntax: ``key = value``, ``key = {a, b, ...}``, ``name ["title"] { ... }``,
``name(args...)`` calls inside tasks and event sections, bare words and
double-quoted strings (``\\"`` ``\\\\`` and the usual C escapes, ``${NAME}``
expanded against the applier's environment), single-quoted strings (no
expansion), a bare ``${NAME}`` (expanded), and
``#``, ``//`` and ``/* */`` comments. Unknown options and sections are
ignored, as fwup does for forward compatibility.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from nhlink.errors import MetaConfError
from nhlink.fwup.expand import resolve

Value = str | list[str]
T = TypeVar("T")

# Keys the applier computes itself; a meta.conf may not set them.
COMPUTED_KEYS = ("meta-uuid", "meta-nickname")

_PUNCTUATION = "={}(),"
_BARE_STOP = set(_PUNCTUATION) | {'"', "'", "#", "+"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "b": "\b", "a": "\a"}


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Call:
    """One function call of a funlist or reqlist: ``name(args...)``."""

    name: str
    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FileResource:
    """A ``file-resource``: its length map (one entry unless sparse) and BLAKE2b-256."""

    name: str
    length_map: tuple[int, ...]
    blake2b_256: str | None

    @property
    def data_size(self) -> int:
        """Bytes stored in the archive (the data runs)."""
        return sum(self.length_map[0::2])

    @property
    def total_size(self) -> int:
        """Size of the resource with its holes."""
        return sum(self.length_map)

    @property
    def sparse_map(self) -> list[int] | None:
        """The data/hole runs for a sparse resource, ``None`` for a plain one."""
        return list(self.length_map) if len(self.length_map) > 1 else None


@dataclass(frozen=True, slots=True)
class MbrPartition:
    index: int
    block_offset: int | None
    block_count: int | None
    type: int | None
    boot: bool
    expand: bool


@dataclass(frozen=True, slots=True)
class Mbr:
    name: str
    bootstrap_code: str | None
    signature: int
    include_osip: bool
    partitions: tuple[MbrPartition, ...]


@dataclass(frozen=True, slots=True)
class GptPartition:
    index: int
    block_offset: int | None
    block_count: int | None
    type: str | None
    guid: str | None
    name: str
    flags: int
    boot: bool
    expand: bool


@dataclass(frozen=True, slots=True)
class Gpt:
    name: str
    guid: str | None
    partitions: tuple[GptPartition, ...]


@dataclass(frozen=True, slots=True)
class UBootEnvironment:
    name: str
    block_offset: int | None
    block_count: int | None
    block_offset_redund: int | None


@dataclass(frozen=True, slots=True)
class DeltaSource:
    """The ``delta-source-*`` options of an ``on-resource`` (xdelta3 updates)."""

    raw_offset: int | None = None
    raw_count: int | None = None
    raw_options: str | None = None
    fat_offset: int | None = None
    fat_path: str | None = None


@dataclass(frozen=True, slots=True)
class ResourceHandler:
    resource: str
    calls: tuple[Call, ...]
    delta: DeltaSource | None


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    requirements: tuple[Call, ...]
    require_partition1_offset: int | None
    on_init: tuple[Call, ...]
    on_finish: tuple[Call, ...]
    on_error: tuple[Call, ...]
    on_resource: dict[str, ResourceHandler]


@dataclass(frozen=True, slots=True)
class MetaConf:
    """A parsed meta.conf. Dicts keep the file's order."""

    metadata: dict[str, str]
    require_fwup_version: str
    block_cache_size_mb: int
    resources: dict[str, FileResource]
    mbrs: dict[str, Mbr]
    gpts: dict[str, Gpt]
    uboot_environments: dict[str, UBootEnvironment]
    tasks: tuple[Task, ...]


# --------------------------------------------------------------------------- numbers


def parse_int(text: str) -> int:
    """An integer the way strtol(..., 0) reads it: decimal, ``0x`` hex or ``0`` octal."""
    body = text.strip()
    sign = -1 if body.startswith("-") else 1
    body = body.lstrip("+-")
    try:
        if body[:2].lower() == "0x":
            return sign * int(body[2:], 16)
        if len(body) > 1 and body.startswith("0"):
            return sign * int(body[1:], 8)
        return sign * int(body, 10)
    except ValueError:
        raise MetaConfError(f"'{text}' is not an integer") from None


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in ("true", "yes", "on"):
        return True
    if word in ("false", "no", "off"):
        return False
    raise MetaConfError(f"'{text}' is not a boolean")


# --------------------------------------------------------------------------- syntax


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "word" or a punctuation string
    text: str
    line: int


@dataclass(slots=True)
class _Section:
    name: str
    title: str | None
    values: dict[str, Value] = field(default_factory=dict)
    sections: list[_Section] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    def all(self, name: str) -> list[_Section]:
        return [s for s in self.sections if s.name == name]

    def one(self, name: str) -> _Section | None:
        found = self.all(name)
        return found[-1] if found else None

    def text(self, key: str) -> str | None:
        value = self.values.get(key)
        if isinstance(value, list):
            raise MetaConfError(f"{key} must be a single value")
        return value

    def integer(self, key: str) -> int | None:
        value = self.text(key)
        return None if value is None else _checked(parse_int, value, key)

    def boolean(self, key: str) -> bool:
        value = self.text(key)
        return False if value is None else _checked(parse_bool, value, key)

    def items(self, key: str) -> list[str]:
        value = self.values.get(key, [])
        return value if isinstance(value, list) else [value]


def _checked(convert: Callable[[str], T], value: str, key: str) -> T:
    try:
        return convert(value)
    except MetaConfError as error:
        raise MetaConfError(f"{key}: {error}") from None


class _Lexer:
    def __init__(self, text: str, environ: Mapping[str, str]) -> None:
        self.text = text
        self.environ = environ
        self.pos = 0
        self.line = 1

    def tokens(self) -> list[_Token]:
        out: list[_Token] = []
        while (token := self._next()) is not None:
            out.append(token)
        return out

    def _error(self, message: str, line: int | None = None) -> MetaConfError:
        return MetaConfError(f"meta.conf line {line or self.line}: {message}")

    def _skip_space_and_comments(self) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char == "\n":
                self.line += 1
                self.pos += 1
            elif char.isspace():
                self.pos += 1
            elif char == "#" or text.startswith("//", self.pos):
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self._error("unterminated comment")
                self.line += text.count("\n", self.pos, end)
                self.pos = end + 2
            else:
                return

    def _next(self) -> _Token | None:
        self._skip_space_and_comments()
        if self.pos >= len(self.text):
            return None
        line = self.line
        char = self.text[self.pos]
        if self.text.startswith("+=", self.pos):
            self.pos += 2
            return _Token("+=", "+=", line)
        if char in _PUNCTUATION:
            self.pos += 1
            return _Token(char, char, line)
        if char == '"':
            return _Token("word", self._double_quoted(), line)
        if char == "'":
            return _Token("word", self._single_quoted(), line)
        if self.text.startswith("${", self.pos):
            end = self.text.find("}", self.pos + 2)
            if end >= 0 and "\n" not in self.text[self.pos : end]:
                reference = self.text[self.pos + 2 : end]
                self.pos = end + 1
                return _Token("word", resolve(reference, self.environ), line)
        start = self.pos
        while (
            self.pos < len(self.text)
            and not self.text[self.pos].isspace()
            and self.text[self.pos] not in _BARE_STOP
        ):
            self.pos += 1
        if self.pos == start:
            raise self._error(f"unexpected character {char!r}")
        return _Token("word", self.text[start : self.pos], line)

    def _double_quoted(self) -> str:
        text, start_line = self.text, self.line
        out: list[str] = []
        self.pos += 1
        while self.pos < len(text):
            char = text[self.pos]
            if char == '"':
                self.pos += 1
                return "".join(out)
            if char == "\\" and self.pos + 1 < len(text):
                escaped = text[self.pos + 1]
                out.append(_ESCAPES.get(escaped, escaped))
                self.line += escaped == "\n"
                self.pos += 2
                continue
            if text.startswith("${", self.pos):
                end = text.find("}", self.pos + 2)
                if end >= 0 and "\n" not in text[self.pos : end]:
                    out.append(resolve(text[self.pos + 2 : end], self.environ))
                    self.pos = end + 1
                    continue
            self.line += char == "\n"
            out.append(char)
            self.pos += 1
        raise self._error("unterminated string", start_line)

    def _single_quoted(self) -> str:
        text, start_line = self.text, self.line
        out: list[str] = []
        self.pos += 1
        while self.pos < len(text):
            char = text[self.pos]
            if char == "'":
                self.pos += 1
                return "".join(out)
            if char == "\\" and text[self.pos + 1 : self.pos + 2] in ("'", "\\"):
                out.append(text[self.pos + 1])
                self.pos += 2
                continue
            self.line += char == "\n"
            out.append(char)
            self.pos += 1
        raise self._error("unterminated string", start_line)


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.index = 0

    def _peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _take(self, kind: str | None = None) -> _Token:
        token = self._peek()
        if token is None:
            raise MetaConfError("meta.conf: unexpected end of file")
        if kind is not None and token.kind != kind:
            what = "a value" if kind == "word" else f"'{kind}'"
            raise MetaConfError(f"meta.conf line {token.line}: expected {what}, got '{token.text}'")
        self.index += 1
        return token

    def block(self, section: _Section, closing: bool) -> _Section:
        while True:
            token = self._peek()
            if token is None:
                if closing:
                    raise MetaConfError(f"meta.conf: section '{section.name}' is not closed")
                return section
            if token.kind == "}" and closing:
                self.index += 1
                return section
            self._item(section)

    def _item(self, section: _Section) -> None:
        key = self._take("word")
        token = self._take()
        if token.kind == "=":
            section.values[key.text] = self._value()
        elif token.kind == "+=":
            section.values[key.text] = section.items(key.text) + _as_list(self._value())
        elif token.kind == "(":
            section.calls.append(Call(key.text, tuple(self._sequence(")"))))
        elif token.kind == "{":
            section.sections.append(self.block(_Section(key.text, None), closing=True))
        elif token.kind == "word":
            self._take("{")
            section.sections.append(self.block(_Section(key.text, token.text), closing=True))
        else:
            raise MetaConfError(f"meta.conf line {token.line}: unexpected '{token.text}'")

    def _value(self) -> Value:
        token = self._peek()
        if token is not None and token.kind == "{":
            self.index += 1
            return self._sequence("}")
        return self._take("word").text

    def _sequence(self, closing: str) -> list[str]:
        items: list[str] = []
        token = self._peek()
        if token is not None and token.kind == closing:
            self.index += 1
            return items
        while True:
            items.append(self._take("word").text)
            separator = self._take()
            if separator.kind == closing:
                return items
            if separator.kind != ",":
                raise MetaConfError(
                    f"meta.conf line {separator.line}: expected ',' or '{closing}', got '{separator.text}'"
                )


def _as_list(value: Value) -> list[str]:
    return value if isinstance(value, list) else [value]


# --------------------------------------------------------------------------- model building


def parse_funlist(items: list[str]) -> tuple[Call, ...]:
    """Split fwup's flat ``{argc, name, args..., argc, name, ...}`` list into calls."""
    calls: list[Call] = []
    index = 0
    while index < len(items):
        try:
            argc = parse_int(items[index])
        except MetaConfError:
            argc = 0
        if argc <= 0:
            raise MetaConfError("Unexpected argc value in funlist")
        if index + 1 + argc > len(items):
            raise MetaConfError("Unexpected error with funlist")
        calls.append(Call(items[index + 1], tuple(items[index + 2 : index + 1 + argc])))
        index += 1 + argc
    return tuple(calls)


def _event_calls(section: _Section | None, list_key: str = "funlist") -> tuple[Call, ...]:
    if section is None:
        return ()
    return parse_funlist(section.items(list_key)) + tuple(section.calls)


def _titled(sections: list[_Section], kind: str) -> list[tuple[str, _Section]]:
    seen: set[str] = set()
    out: list[tuple[str, _Section]] = []
    for section in sections:
        if section.title is None:
            raise MetaConfError(f"{kind} section without a name")
        if section.title in seen:
            raise MetaConfError(f"duplicate {kind} '{section.title}'")
        seen.add(section.title)
        out.append((section.title, section))
    return out


def _resource(name: str, section: _Section) -> FileResource:
    try:
        lengths = tuple(parse_int(item) for item in section.items("length"))
    except MetaConfError as error:
        raise MetaConfError(f"file-resource '{name}': length: {error}") from None
    if any(length < 0 for length in lengths):
        raise MetaConfError(f"file-resource '{name}': negative length")
    return FileResource(name, lengths, section.text("blake2b-256"))


def _mbr(name: str, section: _Section) -> Mbr:
    partitions = tuple(
        MbrPartition(
            index=_checked(parse_int, title, "mbr partition"),
            block_offset=part.integer("block-offset"),
            block_count=part.integer("block-count"),
            type=part.integer("type"),
            boot=part.boolean("boot"),
            expand=part.boolean("expand"),
        )
        for title, part in _titled(section.all("partition"), f"mbr '{name}' partition")
    )
    return Mbr(
        name=name,
        bootstrap_code=section.text("bootstrap-code"),
        signature=section.integer("signature") or 0,
        include_osip=section.boolean("include-osip"),
        partitions=partitions,
    )


def _gpt(name: str, section: _Section) -> Gpt:
    partitions = tuple(
        GptPartition(
            index=_checked(parse_int, title, "gpt partition"),
            block_offset=part.integer("block-offset"),
            block_count=part.integer("block-count"),
            type=part.text("type"),
            guid=part.text("guid"),
            name=part.text("name") or "",
            flags=part.integer("flags") or 0,
            boot=part.boolean("boot"),
            expand=part.boolean("expand"),
        )
        for title, part in _titled(section.all("partition"), f"gpt '{name}' partition")
    )
    return Gpt(name=name, guid=section.text("guid"), partitions=partitions)


def _uboot(name: str, section: _Section) -> UBootEnvironment:
    return UBootEnvironment(
        name=name,
        block_offset=section.integer("block-offset"),
        block_count=section.integer("block-count"),
        block_offset_redund=section.integer("block-offset-redund"),
    )


def _delta(section: _Section) -> DeltaSource | None:
    delta = DeltaSource(
        raw_offset=section.integer("delta-source-raw-offset"),
        raw_count=section.integer("delta-source-raw-count"),
        raw_options=section.text("delta-source-raw-options"),
        fat_offset=section.integer("delta-source-fat-offset"),
        fat_path=section.text("delta-source-fat-path"),
    )
    return None if delta == DeltaSource() else delta


def _task(name: str, section: _Section) -> Task:
    handlers = {
        resource: ResourceHandler(resource, _event_calls(handler), _delta(handler))
        for resource, handler in _titled(section.all("on-resource"), f"task '{name}' on-resource")
    }
    requirements = parse_funlist(section.items("reqlist")) + tuple(
        call for call in section.calls if call.name.startswith("require-")
    )
    return Task(
        name=name,
        requirements=requirements,
        require_partition1_offset=section.integer("require-partition1-offset"),
        on_init=_event_calls(section.one("on-init")),
        on_finish=_event_calls(section.one("on-finish")),
        on_error=_event_calls(section.one("on-error")),
        on_resource=handlers,
    )


def parse_meta_conf(text: str, environ: Mapping[str, str]) -> MetaConf:
    """Parse meta.conf text; ``${...}`` in quoted strings expands against ``environ``."""
    root = _Parser(_Lexer(text, environ).tokens()).block(_Section("", None), closing=False)
    for key in COMPUTED_KEYS:
        if key in root.values:
            raise MetaConfError(f"meta.conf may not set {key}")
    metadata = {
        key: value
        for key, value in root.values.items()
        if key.startswith("meta-") and isinstance(value, str)
    }
    cache_mb = root.integer("block-cache-size-mb")
    if cache_mb is not None and cache_mb <= 0:
        raise MetaConfError("block-cache-size-mb must be positive")
    return MetaConf(
        metadata=metadata,
        require_fwup_version=root.text("require-fwup-version") or "0",
        block_cache_size_mb=8 if cache_mb is None else cache_mb,
        resources={
            n: _resource(n, s) for n, s in _titled(root.all("file-resource"), "file-resource")
        },
        mbrs={n: _mbr(n, s) for n, s in _titled(root.all("mbr"), "mbr")},
        gpts={n: _gpt(n, s) for n, s in _titled(root.all("gpt"), "gpt")},
        uboot_environments={
            n: _uboot(n, s) for n, s in _titled(root.all("uboot-environment"), "uboot-environment")
        },
        tasks=tuple(_task(n, s) for n, s in _titled(root.all("task"), "task")),
    )
