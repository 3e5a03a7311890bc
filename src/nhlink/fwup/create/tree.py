"""The parsed configuration: sections holding typed option values."""

from __future__ import annotations

from dataclasses import dataclass, field

from nhlink.fwup.create.schema import SectionSpec

Value = str | int | bool | list[str] | list[int]


@dataclass
class Section:
    """One section instance (the root has an empty name and no title)."""

    spec: SectionSpec
    title: str | None
    filename: str
    line: int
    values: dict[str, Value] = field(default_factory=dict)
    children: dict[str, list[Section]] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.filename}:{self.line}"

    def get_str(self, name: str) -> str | None:
        value = self.values.get(name)
        return value if isinstance(value, str) else None

    def get_int(self, name: str) -> int | None:
        value = self.values.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def get_bool(self, name: str, default: bool = False) -> bool:
        value = self.values.get(name)
        return value if isinstance(value, bool) else default

    def sections(self, name: str) -> list[Section]:
        return self.children.get(name, [])

    def find(self, name: str, title: str) -> Section | None:
        for child in self.sections(name):
            if child.title == title:
                return child
        return None

    def append_strings(self, name: str, items: list[str]) -> None:
        current = self.values.get(name)
        strings = list(current) if isinstance(current, list) else []
        self.values[name] = [str(item) for item in strings] + items
