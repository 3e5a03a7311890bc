"""Tokenizer for fwup.conf (libconfuse syntax) with ``${VAR}`` substitution.

Substitution happens while tokenizing, against the variables as they are at
that moment, so a ``define`` affects every token after it - the same order
libconfuse and fwup use. The parser pulls tokens one at a time.

Syntax: ``#`` and ``//`` comments to the end of the line, ``/* ... */``
comments; ``{ } ( ) , = +=``; double-quoted strings (escapes, line
continuation with a trailing backslash, substitution; ``\\$`` keeps a
literal ``$``); single-quoted strings (only ``\\'`` and ``\\\\`` escapes, no
substitution); unquoted strings (anything else up to whitespace or a
delimiter, ``${...}`` substituted).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from enum import Enum

from nhlink.errors import MetaConfError


class Tok(Enum):
    STRING = "string"
    LBRACE = "'{'"
    RBRACE = "'}'"
    LPAREN = "'('"
    RPAREN = "')'"
    COMMA = "','"
    EQUAL = "'='"
    PLUS_EQUAL = "'+='"
    EOF = "end of file"


@dataclass(frozen=True)
class Token:
    kind: Tok
    text: str
    filename: str
    line: int
    quoted: bool = False

    def describe(self) -> str:
        if self.kind is Tok.STRING:
            return f"'{self.text}'"
        return str(self.kind.value)


_PUNCTUATION = {
    "{": Tok.LBRACE,
    "}": Tok.RBRACE,
    "(": Tok.LPAREN,
    ")": Tok.RPAREN,
    ",": Tok.COMMA,
    "=": Tok.EQUAL,
}
_UNQUOTED_STOP = frozenset(" \t\r\n\"'{}(),=#")
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "f": "\f", "b": "\b"}


class Lexer:
    """Tokens of one file; ``variables`` is read (not copied) at each token."""

    def __init__(self, text: str, filename: str, variables: MutableMapping[str, str]) -> None:
        self._text = text
        self._pos = 0
        self._line = 1
        self.filename = filename
        self._variables = variables

    def next_token(self) -> Token:
        self._skip_blanks_and_comments()
        if self._pos >= len(self._text):
            return Token(Tok.EOF, "", self.filename, self._line)
        char = self._text[self._pos]
        line = self._line
        if char == "+" and self._text.startswith("+=", self._pos):
            self._pos += 2
            return Token(Tok.PLUS_EQUAL, "+=", self.filename, line)
        kind = _PUNCTUATION.get(char)
        if kind is not None:
            self._pos += 1
            return Token(kind, char, self.filename, line)
        if char == '"':
            return Token(Tok.STRING, self._double_quoted(), self.filename, line, quoted=True)
        if char == "'":
            return Token(Tok.STRING, self._single_quoted(), self.filename, line, quoted=True)
        return Token(Tok.STRING, self._unquoted(), self.filename, line)

    def error(self, message: str, line: int | None = None) -> MetaConfError:
        return MetaConfError(f"{self.filename}:{self._line if line is None else line}: {message}")

    # -- whitespace and comments ------------------------------------------

    def _skip_blanks_and_comments(self) -> None:
        text = self._text
        while self._pos < len(text):
            char = text[self._pos]
            if char == "\n":
                self._line += 1
                self._pos += 1
            elif char in " \t\r":
                self._pos += 1
            elif char == "#" or text.startswith("//", self._pos):
                end = text.find("\n", self._pos)
                self._pos = len(text) if end < 0 else end
            elif text.startswith("/*", self._pos):
                end = text.find("*/", self._pos + 2)
                if end < 0:
                    raise self.error("unterminated comment")
                self._line += text.count("\n", self._pos, end)
                self._pos = end + 2
            else:
                return

    # -- strings -------------------------------------------------------------

    def _unquoted(self) -> str:
        text = self._text
        out: list[str] = []
        while self._pos < len(text):
            char = text[self._pos]
            if char in _UNQUOTED_STOP or (char == "+" and text.startswith("+=", self._pos)):
                break
            if char == "$" and text.startswith("${", self._pos):
                out.append(self._substitution())
                continue
            out.append(char)
            self._pos += 1
        return "".join(out)

    def _double_quoted(self) -> str:
        text = self._text
        start_line = self._line
        self._pos += 1
        out: list[str] = []
        while True:
            if self._pos >= len(text):
                raise self.error("unterminated string", start_line)
            char = text[self._pos]
            if char == '"':
                self._pos += 1
                return "".join(out)
            if char == "\\":
                out.append(self._escape())
                continue
            if char == "$" and text.startswith("${", self._pos):
                out.append(self._substitution())
                continue
            if char == "\n":
                self._line += 1
            out.append(char)
            self._pos += 1

    def _escape(self) -> str:
        text = self._text
        if self._pos + 1 >= len(text):
            raise self.error("unterminated string")
        char = text[self._pos + 1]
        self._pos += 2
        if char == "\n":  # line continuation
            self._line += 1
            return ""
        if char in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[char]
        if char == "x":
            digits = _take(text, self._pos, "0123456789abcdefABCDEF", 2)
            if digits:
                self._pos += len(digits)
                return chr(int(digits, 16))
            return "x"
        if char in "01234567":
            digits = char + _take(text, self._pos, "01234567", 2)
            self._pos += len(digits) - 1
            return chr(int(digits, 8) & 0xFF)
        return char  # \" \\ \$ \' and unknown escapes: the character itself

    def _single_quoted(self) -> str:
        text = self._text
        start_line = self._line
        self._pos += 1
        out: list[str] = []
        while True:
            if self._pos >= len(text):
                raise self.error("unterminated string", start_line)
            char = text[self._pos]
            if char == "'":
                self._pos += 1
                return "".join(out)
            if char == "\\" and self._pos + 1 < len(text) and text[self._pos + 1] in "'\\":
                out.append(text[self._pos + 1])
                self._pos += 2
                continue
            if char == "\n":
                self._line += 1
            out.append(char)
            self._pos += 1

    def _substitution(self) -> str:
        end = self._text.find("}", self._pos + 2)
        if end < 0 or "\n" in self._text[self._pos : end]:
            raise self.error("unterminated ${ in variable reference")
        body = self._text[self._pos + 2 : end]
        self._pos = end + 1
        name, separator, default = body.partition(":-")
        if not name:
            raise self.error("empty variable name in ${}")
        value = self._variables.get(name)
        if value is None or (separator and value == ""):
            return default if separator else ""
        return value


def _take(text: str, start: int, allowed: str, limit: int) -> str:
    end = start
    while end < len(text) and end - start < limit and text[end] in allowed:
        end += 1
    return text[start:end]
