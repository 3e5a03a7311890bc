"""Print a parsed configuration as meta.conf, byte for byte like ``fwup -c``.

Rules (fwup's printer over libconfuse's tables):

* options and section types in schema order, sections of one type in source
  order; one ``key=value`` per line, no indentation;
* unset options, empty strings, empty lists, values equal to the default and
  creation-only options are left out; sections that print nothing are left
  out, except tasks;
* strings made only of ``[A-Za-z0-9_.]`` are bare, others are double-quoted
  with ``"`` and ``\\`` escaped (everything else, newlines included, raw);
* integers in decimal; booleans ``true``/``false``;
* a list with one element prints like a single value, longer lists as
  ``{a,b,c}``.
"""

from __future__ import annotations

import re

from nhlink.fwup.create.schema import OptionSpec, OptType
from nhlink.fwup.create.tree import Section, Value

_BARE = re.compile(r"[A-Za-z0-9_.]+")


def emit_meta_conf(root: Section) -> bytes:
    """Return the meta.conf bytes for the (fully evaluated) configuration *root*."""
    lines: list[str] = []
    _emit_body(root, lines)
    return "".join(lines).encode("utf-8", "surrogateescape")


def quote_string(value: str) -> str:
    """Format a string value: bare when it is safe to, otherwise quoted."""
    if _BARE.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _emit_body(section: Section, lines: list[str]) -> None:
    for option in section.spec.options:
        if option.emit and option.name in section.values:
            line = _format_option(option, section.values[option.name])
            if line is not None:
                lines.append(line)
    for child_spec in section.spec.sections:
        for child in section.sections(child_spec.name):
            start = len(lines)
            if child_spec.titled:
                title = (child.title or "").replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'{child_spec.name} "{title}" {{\n')
            else:
                lines.append(f"{child_spec.name} {{\n")
            _emit_body(child, lines)
            if len(lines) == start + 1 and not child_spec.keep_when_empty:
                del lines[start:]
            else:
                lines.append("}\n")


def _format_option(option: OptionSpec, value: Value) -> str | None:
    if option.type.is_list:
        if not isinstance(value, list) or not value:
            return None
        items = [_format_scalar(option.type, item) for item in value]
        if len(items) == 1:
            return f"{option.name}={items[0]}\n"
        return f"{option.name}={{{','.join(items)}}}\n"
    if value == "" or value == option.default:
        return None
    return f"{option.name}={_format_scalar(option.type, value)}\n"


def _format_scalar(kind: OptType, value: object) -> str:
    if kind is OptType.BOOL:
        return "true" if value else "false"
    if kind in (OptType.INT, OptType.INT_LIST):
        return str(int(value))  # type: ignore[call-overload]
    return quote_string(str(value))
