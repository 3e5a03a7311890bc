"""Integer arithmetic for ``define-eval``: ``+ - * / %``, unary signs, parentheses.

Numbers are decimal or ``0x`` hexadecimal. Results are 64-bit signed
integers; ``/`` and ``%`` truncate toward zero like C.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\s*(?:(0[xX][0-9a-fA-F]+|\d+)|(.))")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class EvalMathError(ValueError):
    """The expression is malformed or divides by zero."""


def eval_math(expression: str) -> int:
    """Evaluate *expression* and return the integer result."""
    return _Evaluator(expression).run()


class _Evaluator:
    def __init__(self, expression: str) -> None:
        self._tokens: list[str] = []
        for match in _TOKEN.finditer(expression):
            number, other = match.groups()
            if number is not None:
                self._tokens.append(number)
            elif other is not None and not other.isspace():
                self._tokens.append(other)
        self._index = 0

    def run(self) -> int:
        if not self._tokens:
            raise EvalMathError("empty expression")
        value = self._sum()
        if self._index != len(self._tokens):
            raise EvalMathError(f"unexpected '{self._tokens[self._index]}'")
        return value

    def _peek(self) -> str | None:
        return self._tokens[self._index] if self._index < len(self._tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise EvalMathError("unexpected end of expression")
        self._index += 1
        return token

    def _sum(self) -> int:
        value = self._product()
        while self._peek() in ("+", "-"):
            operator = self._take()
            right = self._product()
            value = _checked(value + right if operator == "+" else value - right)
        return value

    def _product(self) -> int:
        value = self._unary()
        while self._peek() in ("*", "/", "%"):
            operator = self._take()
            right = self._unary()
            if operator == "*":
                value = _checked(value * right)
                continue
            if right == 0:
                raise EvalMathError("division by zero")
            quotient = abs(value) // abs(right)
            if (value < 0) != (right < 0):
                quotient = -quotient
            value = _checked(quotient) if operator == "/" else value - right * quotient
        return value

    def _unary(self) -> int:
        token = self._peek()
        if token in ("+", "-"):
            self._take()
            value = self._unary()
            return _checked(-value if token == "-" else value)
        return self._atom()

    def _atom(self) -> int:
        token = self._take()
        if token == "(":
            value = self._sum()
            if self._take() != ")":
                raise EvalMathError("missing ')'")
            return value
        if token[0].isdigit():
            return _checked(int(token, 0) if token[:2].lower() == "0x" else int(token, 10))
        raise EvalMathError(f"unexpected '{token}'")


def _checked(value: int) -> int:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise EvalMathError("integer overflow")
    return value
