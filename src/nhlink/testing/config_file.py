"""Write a device configuration TOML for the local hub (the keys of ``nhlink run --config``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["device_config_text", "write_device_config"]

_HEADER = """\
# nhlink device configuration for a local hub (written by nhlink.testing).
# Add the base64 public key(s) your firmware is signed with, for example:
# fwup_public_keys = ["pUJ3...="]
"""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, os.PathLike)):
        return json.dumps(os.fspath(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _table(name: str | None, values: Mapping[str, Any]) -> list[str]:
    lines = [] if name is None else ["", f"[{name}]"]
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            tables.append((key if name is None else f"{name}.{key}", value))
        elif value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    for table_name, table in tables:
        lines.extend(_table(table_name, table))
    return lines


def device_config_text(
    *,
    host: str,
    certfile: str | os.PathLike[str] | None,
    keyfile: str | os.PathLike[str] | None,
    cacertfile: str | os.PathLike[str],
    extra: Mapping[str, Any] | None = None,
) -> str:
    """TOML text: ``host``, ``[ssl] certfile keyfile cacertfile`` and any `extra` keys/tables.

    A table in `extra` named ``ssl`` is merged into the ``[ssl]`` table.
    """
    top: dict[str, Any] = {"host": host}
    ssl_table: dict[str, Any] = {"certfile": certfile, "keyfile": keyfile, "cacertfile": cacertfile}
    for key, value in (extra or {}).items():
        if key == "ssl" and isinstance(value, Mapping):
            ssl_table.update(value)
        else:
            top[key] = value
    top["ssl"] = ssl_table
    return _HEADER + "\n".join(_table(None, top)) + "\n"


def write_device_config(
    path: str | os.PathLike[str],
    *,
    host: str,
    certfile: str | os.PathLike[str] | None,
    keyfile: str | os.PathLike[str] | None,
    cacertfile: str | os.PathLike[str],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        device_config_text(
            host=host, certfile=certfile, keyfile=keyfile, cacertfile=cacertfile, extra=extra
        )
    )
    return target
