"""fwup.conf parser: libconfuse syntax, evaluated the way ``fwup -c`` does.

The parser runs definitions, includes and function calls in source order
(``define`` affects every later token) and checks what fwup checks while
parsing. Errors are one-line :class:`MetaConfError` s starting with
``file:line:``.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

from nhlink.errors import MetaConfError
from nhlink.fwup.create.evalmath import EvalMathError, eval_math
from nhlink.fwup.create.lexer import Lexer, Tok, Token
from nhlink.fwup.create.schema import (
    EVENT_FUNCTIONS,
    REQUIREMENTS,
    ROOT,
    SECTION_REFERENCES,
    FunctionSpec,
    FunKind,
    OptionSpec,
    OptType,
    SectionSpec,
)
from nhlink.fwup.create.tree import Section, Value
from nhlink.fwup.create.values import (
    check_required_fwup_version,
    parse_bool,
    parse_c_integer,
)

MAX_INCLUDE_DEPTH = 32


def read_conf_text(path: str | os.PathLike[str]) -> str:
    """Read a configuration file; bytes that are not UTF-8 survive round trips."""
    with open(path, "rb") as conf_file:
        return conf_file.read().decode("utf-8", "surrogateescape")


def parse_conf(path: str | os.PathLike[str], variables: MutableMapping[str, str]) -> Section:
    """Parse the fwup.conf at *path*; ``define`` s are stored in *variables*."""
    filename = os.fspath(path)
    try:
        text = read_conf_text(filename)
    except OSError as error:
        raise MetaConfError(
            f"Error opening configuration file '{filename}': {error.strerror}"
        ) from None
    return ConfParser(text, filename, variables).parse()


class ConfParser:
    """Recursive-descent parser over a stack of lexers (one per included file)."""

    def __init__(self, text: str, filename: str, variables: MutableMapping[str, str]) -> None:
        self._variables = variables
        self._lexers = [Lexer(text, filename, variables)]
        self._root = Section(ROOT, None, filename, 1)

    def parse(self) -> Section:
        self._body(self._root, closing=False)
        return self._root

    # -- tokens --------------------------------------------------------------

    def _next(self) -> Token:
        while True:
            token = self._lexers[-1].next_token()
            if token.kind is not Tok.EOF or len(self._lexers) == 1:
                return token
            self._lexers.pop()

    def _expect(self, kind: Tok, after: str) -> Token:
        token = self._next()
        if token.kind is not kind:
            raise _error(token, f"expected {kind.value} after {after}, got {token.describe()}")
        return token

    # -- grammar ---------------------------------------------------------------

    def _body(self, section: Section, *, closing: bool) -> None:
        while True:
            token = self._next()
            if token.kind is Tok.EOF:
                if closing:
                    raise _error(token, f"unexpected end of file in section '{section.spec.name}'")
                return
            if token.kind is Tok.RBRACE:
                if not closing:
                    raise _error(token, "unexpected '}'")
                return
            if token.kind is not Tok.STRING:
                raise _error(token, f"unexpected {token.describe()}")
            self._statement(section, token)

    def _statement(self, section: Section, name_token: Token) -> None:
        name = name_token.text
        item = section.spec.lookup(name)
        if item is None:
            raise _error(name_token, f"no such option '{name}'")
        if isinstance(item, OptionSpec):
            self._option(section, item, name_token)
        elif isinstance(item, SectionSpec):
            self._subsection(section, item, name_token)
        else:
            self._function(section, item, name_token)

    def _option(self, section: Section, spec: OptionSpec, name_token: Token) -> None:
        operator = self._next()
        if operator.kind not in (Tok.EQUAL, Tok.PLUS_EQUAL):
            raise _error(operator, f"expected '=' after '{spec.name}', got {operator.describe()}")
        token = self._next()
        if token.kind is Tok.LBRACE:
            if not spec.type.is_list:
                raise _error(token, f"option '{spec.name}' is not a list")
            items = self._list_items()
        elif token.kind is Tok.STRING:
            items = [token]
        else:
            raise _error(token, f"unexpected {token.describe()} in value of '{spec.name}'")
        if operator.kind is Tok.PLUS_EQUAL and not spec.type.is_list:
            raise _error(operator, f"can't append to non-list option '{spec.name}'")

        if spec.type is OptType.STR_LIST:
            new: Value = [item.text for item in items]
        elif spec.type is OptType.INT_LIST:
            new = [_to_int(spec, item) for item in items]
        elif spec.type is OptType.INT:
            new = _to_int(spec, items[0])
        elif spec.type is OptType.BOOL:
            new = _to_bool(spec, items[0])
        else:
            new = items[0].text

        old = section.values.get(spec.name)
        if operator.kind is Tok.PLUS_EQUAL and isinstance(old, list) and isinstance(new, list):
            new = [*old, *new]
        section.values[spec.name] = new
        if section.spec is ROOT and spec.name == "require-fwup-version" and isinstance(new, str):
            message = check_required_fwup_version(new)
            if message:
                raise _error(name_token, message)

    def _list_items(self) -> list[Token]:
        items: list[Token] = []
        while True:
            token = self._next()
            if token.kind is Tok.RBRACE and not items:
                return items
            if token.kind is not Tok.STRING:
                raise _error(token, f"unexpected {token.describe()} in list")
            items.append(token)
            separator = self._next()
            if separator.kind is Tok.RBRACE:
                return items
            if separator.kind is not Tok.COMMA:
                raise _error(separator, f"expected ',' or '}}' in list, got {separator.describe()}")

    def _subsection(self, parent: Section, spec: SectionSpec, name_token: Token) -> None:
        title: str | None = None
        if spec.titled:
            title_token = self._next()
            if title_token.kind is not Tok.STRING:
                raise _error(title_token, f"missing title for section '{spec.name}'")
            title = title_token.text
        self._expect(Tok.LBRACE, f"'{spec.name}'")

        siblings = parent.children.setdefault(spec.name, [])
        if spec.multi:
            if title is not None and any(sibling.title == title for sibling in siblings):
                raise _error(name_token, f"found duplicate title '{title}'")
            child = Section(spec, title, name_token.filename, name_token.line)
            siblings.append(child)
        elif siblings:
            child = siblings[0]  # a repeated single section continues the first one
        else:
            child = Section(spec, title, name_token.filename, name_token.line)
            siblings.append(child)

        self._body(child, closing=True)
        self._validate_section(parent, child)

    def _function(self, section: Section, spec: FunctionSpec, name_token: Token) -> None:
        self._expect(Tok.LPAREN, f"'{spec.name}'")
        args: list[str] = []
        token = self._next()
        while token.kind is not Tok.RPAREN:
            if token.kind is not Tok.STRING:
                raise _error(token, f"unexpected {token.describe()} in call to '{spec.name}'")
            args.append(token.text)
            token = self._next()
            if token.kind is Tok.COMMA:
                token = self._next()
            elif token.kind is not Tok.RPAREN:
                raise _error(token, f"expected ',' or ')' in call to '{spec.name}'")

        if spec.kind is FunKind.DEFINE:
            self._define(spec, args, name_token)
        elif spec.kind is FunKind.DEFINE_EVAL:
            self._define_eval(spec, args, name_token)
        elif spec.kind is FunKind.INCLUDE:
            self._include(args, name_token)
        elif spec.kind is FunKind.EVENT:
            self._event_call(section, spec.name, args, name_token)
        else:
            self._requirement(section, spec.name, args, name_token)

    # -- functions -------------------------------------------------------------

    def _define(self, spec: FunctionSpec, args: list[str], where: Token) -> None:
        _check_count(spec.name, args, 2, 2, where)
        self._set_variable(args[0], args[1], spec.overriding)

    def _define_eval(self, spec: FunctionSpec, args: list[str], where: Token) -> None:
        _check_count(spec.name, args, 2, 2, where)
        try:
            result = eval_math(args[1])
        except EvalMathError:
            raise _error(where, f"error evaluating '{args[1]}'") from None
        self._set_variable(args[0], str(result), spec.overriding)

    def _set_variable(self, name: str, value: str, overriding: bool) -> None:
        # fwup's rule: the first definition wins (an environment variable
        # counts as a definition) unless define!/define-eval! is used.
        if overriding or name not in self._variables:
            self._variables[name] = value

    def _include(self, args: list[str], where: Token) -> None:
        _check_count("include", args, 1, 1, where)
        if args[0] == "":
            raise _error(where, "Cannot include the contents of an undefined variable")
        path = resolve_relative(where.filename, args[0])
        if not os.path.exists(path):
            raise _error(where, f"Cannot include '{args[0]}': File not found")
        if not os.path.isfile(path):
            raise _error(where, f"Cannot include '{args[0]}': Not a regular file")
        if len(self._lexers) > MAX_INCLUDE_DEPTH:
            raise _error(where, f"Cannot include '{args[0]}': includes nested too deeply")
        try:
            text = read_conf_text(path)
        except OSError as error:
            raise _error(where, f"Cannot include '{args[0]}': {error.strerror}") from None
        self._lexers.append(Lexer(text, path, self._variables))

    def _event_call(self, section: Section, name: str, args: list[str], where: Token) -> None:
        low, high, consumes_resource = EVENT_FUNCTIONS[name]
        _check_count(name, args, low, high, where)
        if consumes_resource and section.spec.name != "on-resource":
            raise _error(where, f"{name} only usable in on-resource")
        self._check_reference(name, args, where)
        section.append_strings("funlist", [str(len(args) + 1), name, *args])

    def _requirement(self, task: Section, name: str, args: list[str], where: Token) -> None:
        low, high = REQUIREMENTS[name]
        _check_count(name, args, low, high, where)
        self._check_reference(name, args, where)
        task.append_strings("reqlist", [str(len(args) + 1), name, *args])

    def _check_reference(self, name: str, args: list[str], where: Token) -> None:
        kind = SECTION_REFERENCES.get(name)
        if kind is not None and self._root.find(kind, args[0]) is None:
            raise _error(where, f"{name} can't find {kind} '{args[0]}'")

    # -- checks fwup runs when a section is complete -----------------------------

    def _validate_section(self, parent: Section, section: Section) -> None:
        name = section.spec.name
        if parent.spec is ROOT and name == "file-resource":
            self._validate_file_resource(section)
        elif (
            name == "on-resource" and self._root.find("file-resource", section.title or "") is None
        ):
            raise MetaConfError(f"{section.where}: unknown resource: {section.title}")

    def _validate_file_resource(self, resource: Section) -> None:
        host_path = resource.get_str("host-path")
        contents = resource.get_str("contents")
        if host_path is None and contents is None:
            raise MetaConfError(
                f"{resource.where}: host-path or contents must be set for file-resource "
                f"'{resource.title}'"
            )
        if host_path is not None and contents is not None:
            raise MetaConfError(
                f"{resource.where}: only one of host-path or contents should be set for "
                f"file-resource '{resource.title}'"
            )
        if host_path:
            # FWUP_SIZE_<name>: the resource's file size, for later expressions.
            key = "FWUP_SIZE_" + (resource.title or "").translate(str.maketrans("-/.", "___"))
            try:
                size = os.stat(resolve_relative(resource.filename, host_path)).st_size
            except OSError:
                return
            self._variables[key] = str(size)


def resolve_relative(conf_filename: str, path: str) -> str:
    """Resolve *path* relative to the directory of the file that mentions it."""
    if os.path.isabs(path):
        return path
    return os.path.join(os.path.dirname(conf_filename), path) if conf_filename else path


def _to_int(spec: OptionSpec, token: Token) -> int:
    value = parse_c_integer(token.text)
    if value is None:
        raise _error(token, f"invalid integer value for option '{spec.name}'")
    return value


def _to_bool(spec: OptionSpec, token: Token) -> bool:
    value = parse_bool(token.text)
    if value is None:
        raise _error(token, f"invalid boolean value for option '{spec.name}'")
    return value


def _check_count(name: str, args: list[str], low: int, high: int, where: Token) -> None:
    if low <= len(args) <= high:
        return
    wanted = str(low) if low == high else f"{low} to {high}"
    raise _error(where, f"'{name}' requires {wanted} parameters (got {len(args)})")


def _error(token: Token, message: str) -> MetaConfError:
    return MetaConfError(f"{token.filename}:{token.line}: {message}")


__all__ = ["ConfParser", "parse_conf", "read_conf_text", "resolve_relative"]
