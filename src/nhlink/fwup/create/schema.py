"""The fwup.conf schema: which options, sections and functions exist where.

Order matters: meta.conf is printed in schema order (options and section
types), not in source order, exactly like fwup's printer walks libconfuse's
option tables. Defaults matter too: options equal to their default are not
printed. ``emit=False`` marks creation-only options that never reach
meta.conf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

INT32_MAX = 2**31 - 1


class OptType(Enum):
    """Value type of an option."""

    STR = "string"
    INT = "integer"
    BOOL = "boolean"
    STR_LIST = "string list"
    INT_LIST = "integer list"

    @property
    def is_list(self) -> bool:
        return self in (OptType.STR_LIST, OptType.INT_LIST)


class FunKind(Enum):
    """What a function call does when the parser meets it."""

    DEFINE = "define"
    DEFINE_EVAL = "define-eval"
    INCLUDE = "include"
    EVENT = "event"  # appended to the section's funlist
    REQUIRE = "require"  # appended to the task's reqlist


@dataclass(frozen=True)
class OptionSpec:
    name: str
    type: OptType
    default: str | int | bool | None = None
    emit: bool = True


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    kind: FunKind
    overriding: bool = False  # define! / define-eval!


@dataclass(frozen=True)
class SectionSpec:
    name: str
    titled: bool
    multi: bool
    options: tuple[OptionSpec, ...] = ()
    sections: tuple[SectionSpec, ...] = ()
    functions: tuple[FunctionSpec, ...] = ()
    keep_when_empty: bool = False
    _index: dict[str, OptionSpec | SectionSpec | FunctionSpec] = field(
        default_factory=dict, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        items: list[OptionSpec | SectionSpec | FunctionSpec] = [
            *self.options,
            *self.sections,
            *self.functions,
        ]
        for item in items:
            self._index[item.name] = item

    def lookup(self, name: str) -> OptionSpec | SectionSpec | FunctionSpec | None:
        return self._index.get(name)


def _str(name: str, default: str | None = None, *, emit: bool = True) -> OptionSpec:
    return OptionSpec(name, OptType.STR, default, emit)


def _int(name: str, default: int = 0, *, emit: bool = True) -> OptionSpec:
    return OptionSpec(name, OptType.INT, default, emit)


def _bool(name: str, default: bool = False, *, emit: bool = True) -> OptionSpec:
    return OptionSpec(name, OptType.BOOL, default, emit)


INCLUDE = FunctionSpec("include", FunKind.INCLUDE)

# Event actions: name -> (minimum, maximum) number of arguments, and whether
# the action consumes the resource data (only valid inside on-resource).
EVENT_FUNCTIONS: dict[str, tuple[int, int, bool]] = {
    "raw_memset": (3, 3, False),
    "raw_write": (1, 3, True),
    "fat_mkfs": (2, 2, False),
    "fat_attrib": (3, 3, False),
    "fat_write": (1, 2, True),
    "fat_cp": (3, 4, False),
    "fat_mv": (3, 3, False),
    "fat_mv!": (3, 3, False),
    "fat_rm": (2, 2, False),
    "fat_rm!": (2, 2, False),
    "fat_mkdir": (2, 2, False),
    "fat_setlabel": (2, 2, False),
    "fat_touch": (2, 2, False),
    "mbr_write": (1, 1, False),
    "gpt_write": (1, 1, False),
    "trim": (2, 2, False),
    "uboot_clearenv": (1, 1, False),
    "uboot_recover": (1, 1, False),
    "uboot_setenv": (3, 3, False),
    "uboot_unsetenv": (2, 2, False),
    "error": (1, 1, False),
    "info": (1, 1, False),
    "path_write": (1, 1, True),
    "pipe_write": (1, 1, True),
    "execute": (1, 1, False),
    "reboot_param": (1, 1, False),
    "ubi_volume_write": (1, 1, True),
}

REQUIREMENTS: dict[str, tuple[int, int]] = {
    "require-partition-offset": (2, 2),
    "require-fat-file-exists": (2, 2),
    "require-fat-file-match": (3, 3),
    "require-uboot-variable": (3, 3),
    "require-path-on-device": (2, 2),
    "require-path-at-offset": (2, 2),
    "require-execute": (1, 1),
}

# Which top-level section an action's first argument must name.
SECTION_REFERENCES: dict[str, str] = {
    "mbr_write": "mbr",
    "gpt_write": "gpt",
    "uboot_clearenv": "uboot-environment",
    "uboot_recover": "uboot-environment",
    "uboot_setenv": "uboot-environment",
    "uboot_unsetenv": "uboot-environment",
    "require-uboot-variable": "uboot-environment",
}

_EVENT_FUNCS = (INCLUDE, *tuple(FunctionSpec(name, FunKind.EVENT) for name in EVENT_FUNCTIONS))
_FUNLIST = OptionSpec("funlist", OptType.STR_LIST)


def _event_section(name: str, *extra: OptionSpec, titled: bool = False) -> SectionSpec:
    return SectionSpec(
        name, titled=titled, multi=titled, options=(*extra, _FUNLIST), functions=_EVENT_FUNCS
    )


FILE_RESOURCE = SectionSpec(
    "file-resource",
    titled=True,
    multi=True,
    options=(
        _str("host-path", emit=False),
        _bool("skip-holes", True, emit=False),
        OptionSpec("length", OptType.INT_LIST),
        _str("contents", emit=False),
        _str("blake2b-256"),
        _str("sha256"),
        _int("assert-size-lte", -1, emit=False),
        _int("assert-size-gte", -1, emit=False),
    ),
    functions=(INCLUDE,),
)

MBR_PARTITION = SectionSpec(
    "partition",
    titled=True,
    multi=True,
    options=(
        _str("block-offset"),
        _int("block-count", INT32_MAX),
        _int("type", -1),
        _bool("boot"),
        _bool("expand"),
    ),
)

MBR_OSII = SectionSpec(
    "osii",
    titled=True,
    multi=True,
    options=(
        _int("os-major"),
        _int("os-minor"),
        _int("start-block-offset"),
        _int("ddr-load-address"),
        _int("entry-point"),
        _int("image-size-blocks"),
        _int("attribute", 0xF),
    ),
)

MBR = SectionSpec(
    "mbr",
    titled=True,
    multi=True,
    options=(
        _str("bootstrap-code-host-path", emit=False),
        _str("bootstrap-code"),
        _bool("include-osip"),
        _int("osip-major", 1),
        _int("osip-minor"),
        _int("osip-num-pointers", 1),
        _str("signature"),
    ),
    sections=(MBR_PARTITION, MBR_OSII),
    functions=(INCLUDE,),
)

GPT_PARTITION = SectionSpec(
    "partition",
    titled=True,
    multi=True,
    options=(
        _str("block-offset"),
        _int("block-count", INT32_MAX),
        _str("type"),
        _str("guid"),
        _str("name"),
        _str("flags", "0"),
        _bool("boot"),
        _bool("expand"),
    ),
)

GPT = SectionSpec(
    "gpt",
    titled=True,
    multi=True,
    options=(_str("guid"),),
    sections=(GPT_PARTITION,),
    functions=(INCLUDE,),
)

UBOOT_ENVIRONMENT = SectionSpec(
    "uboot-environment",
    titled=True,
    multi=True,
    options=(
        _int("block-offset", -1),
        _int("block-count", INT32_MAX),
        _int("block-offset-redund", -1),
    ),
    functions=(INCLUDE,),
)

ON_RESOURCE = _event_section(
    "on-resource",
    _bool("verify-on-the-fly"),
    _str("delta-source-raw-offset"),
    _int("delta-source-raw-count"),
    _str("delta-source-raw-options"),
    _str("delta-source-fat-offset"),
    _str("delta-source-fat-path"),
    titled=True,
)

TASK = SectionSpec(
    "task",
    titled=True,
    multi=True,
    keep_when_empty=True,
    options=(
        OptionSpec("reqlist", OptType.STR_LIST),
        _int("require-partition1-offset", -1),
        _bool("require-unmounted-destination"),
        _bool("verify-on-the-fly"),
    ),
    sections=(
        _event_section("on-init"),
        _event_section("on-finish"),
        _event_section("on-error"),
        ON_RESOURCE,
    ),
    functions=(INCLUDE, *tuple(FunctionSpec(name, FunKind.REQUIRE) for name in REQUIREMENTS)),
)

ROOT = SectionSpec(
    "",
    titled=False,
    multi=False,
    options=(
        _str("meta-product"),
        _str("meta-description"),
        _str("meta-version"),
        _str("meta-author"),
        _str("meta-platform"),
        _str("meta-architecture"),
        _str("meta-creation-date", emit=False),
        _str("meta-fwup-version"),
        _str("meta-vcs-identifier"),
        _str("meta-misc"),
        _str("meta-uuid", emit=False),
        _str("meta-nickname", emit=False),
        _str("require-fwup-version", "0"),
        _int("block-cache-size-mb", 8),
    ),
    sections=(FILE_RESOURCE, MBR, GPT, TASK, UBOOT_ENVIRONMENT),
    functions=(
        FunctionSpec("define", FunKind.DEFINE),
        FunctionSpec("define!", FunKind.DEFINE, overriding=True),
        FunctionSpec("define-eval", FunKind.DEFINE_EVAL),
        FunctionSpec("define-eval!", FunKind.DEFINE_EVAL, overriding=True),
        INCLUDE,
    ),
)
