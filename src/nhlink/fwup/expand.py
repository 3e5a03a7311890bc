"""``${NAME}`` / ``${NAME:-default}`` expansion, as libconfuse does it in quoted strings.

fwup expands these a second time when it parses meta.conf on the device, against
the applier's environment (``FWUP_META_UUID`` and friends included).
"""

from __future__ import annotations

from collections.abc import Mapping


def resolve(reference: str, environ: Mapping[str, str]) -> str:
    """The value of the text between ``${`` and ``}``: ``NAME`` or ``NAME:-default``.

    An unset variable is empty; the default applies when it is unset or empty.
    """
    name, sep, default = reference.partition(":-")
    value = environ.get(name, "")
    if sep and not value:
        return default
    return value


def expand(text: str, environ: Mapping[str, str]) -> str:
    """Replace every ``${...}`` in ``text``; an unterminated ``${`` stays as it is."""
    out: list[str] = []
    pos = 0
    while True:
        start = text.find("${", pos)
        end = text.find("}", start + 2) if start >= 0 else -1
        if start < 0 or end < 0:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos:start])
        out.append(resolve(text[start + 2 : end], environ))
        pos = end + 1
