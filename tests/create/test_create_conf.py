"""fwup.conf parsing/evaluation and the meta.conf printer on hand-written configs."""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

import pytest

from nhlink.errors import MetaConfError
from nhlink.fwup.create import create_archive

ENV = {"SOURCE_DATE_EPOCH": "1700000000"}


def meta_for(tmp_path: Path, conf: str, env: dict[str, str] | None = None) -> str:
    """Create an unsigned archive from *conf* and return its meta.conf text."""
    conf_path = tmp_path / "fwup.conf"
    conf_path.write_text(conf)
    result = create_archive(conf_path, tmp_path / "out.fw", environ={**ENV, **(env or {})})
    with zipfile.ZipFile(tmp_path / "out.fw") as archive:
        assert archive.read("meta.conf") == result.meta_conf
    return result.meta_conf.decode()


def conf_error(tmp_path: Path, conf: str, env: dict[str, str] | None = None) -> str:
    conf_path = tmp_path / "fwup.conf"
    conf_path.write_text(conf)
    with pytest.raises(MetaConfError) as caught:
        create_archive(conf_path, tmp_path / "out.fw", environ={**ENV, **(env or {})})
    assert not (tmp_path / "out.fw").exists()
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- syntax ---------------------------------------------------------------------


def test_comments_strings_numbers_and_booleans(tmp_path: Path) -> None:
    meta = meta_for(
        tmp_path,
        """
        # hash comment
        // slash comment
        /* block
           comment */ meta-product = 'single quoted \\' ok'
        meta-description = "tab\\there \\"quoted\\" back\\\\slash
second line"
        meta-version = 1.2.3   # bare
        meta-misc = "continued \\
line"
        mbr m {
            signature = 0x01020304
            partition 0 { block-offset = 63 block-count = 0x10 type = 0xc boot = yes }
            partition 1 { block-offset = 100 type = 010 boot = off expand = TRUE }
        }
        """,
    )
    assert meta == (
        'meta-product="single quoted \' ok"\n'
        'meta-description="tab\there \\"quoted\\" back\\\\slash\nsecond line"\n'
        "meta-version=1.2.3\n"
        'meta-misc="continued line"\n'
        'mbr "m" {\n'
        "signature=0x01020304\n"
        'partition "0" {\nblock-offset=63\nblock-count=16\ntype=12\nboot=true\n}\n'
        'partition "1" {\nblock-offset=100\ntype=8\nexpand=true\n}\n'
        "}\n"
    )


def test_defines_environment_and_substitution(tmp_path: Path) -> None:
    meta = meta_for(
        tmp_path,
        """
        define(A, 100)
        define(A, 999)              # first definition wins
        define(FROM_ENV, 1)         # the environment counts as a definition
        define!(FORCED, 1)
        define!(FORCED, 2)          # define! overrides
        define-eval(B, "(${A} + 28) * 2 - 7 % 4")
        define-eval(C, "-${B} / 5")
        meta-product = "${A}-${FROM_ENV}-${FORCED}-${B}-${C}"
        meta-description = ${UNSET:-fallback}
        meta-version = "${EMPTY:-empty-default}${UNSET}x"
        meta-author = "\\${KEPT} ${FWUP_META_UUID}"
        meta-misc = pre${A}post
        """,
        env={"FROM_ENV": "env", "EMPTY": ""},
    )
    assert meta == (
        'meta-product="100-env-2-253--50"\n'
        "meta-description=fallback\n"
        'meta-version="empty-defaultx"\n'
        'meta-author="${KEPT} ${FWUP_META_UUID}"\n'
        "meta-misc=pre100post\n"
    )


def test_include_is_relative_to_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.inc").write_text('meta-author = "inner"\n')
    (tmp_path / "sub" / "outer.inc").write_text('include("inner.inc")\ndefine(X, 5)\n')
    (tmp_path / "sub" / "res.inc").write_text('host-path = "payload.bin"\n')
    (tmp_path / "payload.bin").write_bytes(b"abc")
    meta = meta_for(
        tmp_path,
        """
        include("sub/outer.inc")
        meta-product = p${X}
        file-resource r { include("sub/res.inc") }
        """,
    )
    assert meta.startswith('meta-product=p5\nmeta-author=inner\nfile-resource "r" {\nlength=3\n')


# -- printing rules -------------------------------------------------------------


def _blake2b(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def test_sections_grouped_in_schema_order_and_empty_ones_dropped(tmp_path: Path) -> None:
    meta = meta_for(
        tmp_path,
        """
        uboot-environment env { block-offset = 0 block-count = 16 }
        task t1 {
            on-init { }
            on-error { uboot_clearenv(env) }
            require-uboot-variable(env, "x", "")
            on-resource res { }
        }
        gpt g {
            guid = b443fbeb-2c93-481b-88b3-0ecb0aeba911
            partition 1 { block-offset = 1 block-count = 2 type = t guid = g flags = 0x8 boot = true }
            partition 2 { block-offset = 3 block-count = 4 type = t guid = g boot = false }
        }
        file-resource res { contents = "hello" }
        task t2 { }
        meta-product = last
        require-fwup-version = "0"
        """.replace("on-resource res { }", "").replace(
            "task t1 {", 'file-resource early { contents = "" }\ntask t1 {'
        ),
    )
    assert meta == (
        "meta-product=last\n"
        f'file-resource "early" {{\nlength=0\nblake2b-256={_blake2b(b"")}\n}}\n'
        f'file-resource "res" {{\nlength=5\nblake2b-256={_blake2b(b"hello")}\n}}\n'
        'gpt "g" {\nguid="b443fbeb-2c93-481b-88b3-0ecb0aeba911"\n'
        'partition "1" {\nblock-offset=1\nblock-count=2\ntype=t\nguid=g\nflags=0xc\n}\n'
        'partition "2" {\nblock-offset=3\nblock-count=4\ntype=t\nguid=g\n}\n}\n'
        'task "t1" {\nreqlist={4,"require-uboot-variable",env,x,""}\n'
        "on-error {\nfunlist={2,uboot_clearenv,env}\n}\n}\n"
        'task "t2" {\n}\n'
        'uboot-environment "env" {\nblock-offset=0\nblock-count=16\n}\n'
    )


def test_function_arguments_keep_their_spelling(tmp_path: Path) -> None:
    (tmp_path / "p.bin").write_bytes(b"x" * 10)
    meta = meta_for(
        tmp_path,
        """
        define(OFF, 0x800)
        file-resource "/at root" { host-path = "p.bin" }
        task t {
            on-resource "/at root" {
                delta-source-raw-offset = 0x10
                delta-source-raw-count = 0x10
                raw_write(${OFF}, "cipher=aes-cbc-plain", 'secret=${OFF}')
            }
            on-finish { raw_memset(010, 1, 0xFF) fat_mv!(0, "a b", c.d) info("multi
line") }
        }
        """,
    )
    assert 'file-resource "/at root" {\nlength=10\n' in meta
    assert (
        'on-finish {\nfunlist={4,raw_memset,010,1,0xFF,4,"fat_mv!",0,"a b",c.d,'
        '2,info,"multi\nline"}\n}\n'
    ) in meta
    assert (
        'on-resource "/at root" {\ndelta-source-raw-offset=0x10\ndelta-source-raw-count=16\n'
        'funlist={4,raw_write,0x800,"cipher=aes-cbc-plain","secret=${OFF}"}\n}\n'
    ) in meta
    with zipfile.ZipFile(tmp_path / "out.fw") as archive:
        assert archive.namelist() == ["meta.conf", "at root"]


# -- errors ---------------------------------------------------------------------


def _location(message: str) -> tuple[str, int]:
    match = re.match(r"(.+):(\d+): ", message)
    assert match, message
    return match.group(1), int(match.group(2))


@pytest.mark.parametrize(
    ("conf", "line", "text"),
    [
        ("meta-product = x\n\nno-such-option = 1\n", 3, "no such option 'no-such-option'"),
        ("mbr m {\n  partition 0 {\n    type = twelve\n  }\n}\n", 3, "invalid integer value"),
        ("mbr m {\n  partition 0 { boot = maybe }\n}\n", 2, "invalid boolean value"),
        ('meta-product = "never closed\n\n', 1, "unterminated string"),
        ("task t {\n  on-init {\n    raw_write(0)\n  }\n}\n", 3, "only usable in on-resource"),
        ("task t {\n\n  on-resource nothing { raw_write(0) }\n}\n", 3, "unknown resource: nothing"),
        ("task t {\n  on-init { uboot_setenv(env, a, b) }\n}\n", 2, "can't find uboot-environment"),
        ("task t {\n  on-init { info() }\n}\n", 2, "'info' requires 1 parameters"),
        ('define-eval(X, "1 / 0")\n', 1, "error evaluating '1 / 0'"),
        ("meta-product = x\n}\n", 2, "unexpected '}'"),
        ("task t {\n  on-init {\n", 3, "unexpected end of file"),
        ("task t { on-init { } }\ntask t { }\n", 2, "duplicate title 't'"),
        ('require-fwup-version = "99.0.0"\n', 1, "fwup version '99.0.0' required"),
        ("file-resource r { }\n", 1, "host-path or contents must be set"),
        ('file-resource r {\n host-path = "a"\n contents = "b"\n}\n', 1, "only one of host-path"),
        ("meta-product = {a, b}\n", 1, "is not a list"),
        ("/* never closed\n", 1, "unterminated comment"),
    ],
)
def test_parse_errors_carry_file_and_line(tmp_path: Path, conf: str, line: int, text: str) -> None:
    message = conf_error(tmp_path, conf)
    filename, error_line = _location(message)
    assert filename == str(tmp_path / "fwup.conf")
    assert error_line == line
    assert text in message


def test_errors_in_included_files_name_that_file(tmp_path: Path) -> None:
    (tmp_path / "bad.inc").write_text("meta-product = ok\n\nbogus = 1\n")
    message = conf_error(tmp_path, '# first line\ninclude("bad.inc")\n')
    assert _location(message) == (str(tmp_path / "bad.inc"), 3)
    message = conf_error(tmp_path, '\n\ninclude("missing.inc")\n')
    assert _location(message) == (str(tmp_path / "fwup.conf"), 3)
    assert "Cannot include 'missing.inc': File not found" in message


def test_missing_conf_file(tmp_path: Path) -> None:
    with pytest.raises(MetaConfError, match="Error opening configuration file"):
        create_archive(tmp_path / "nope.conf", tmp_path / "out.fw", environ=ENV)


def test_nerves_style_idioms(tmp_path: Path) -> None:
    (tmp_path / "provisioning.conf").write_text('uboot_setenv(env, "serial", "\\${SERIAL}")\n')
    meta = meta_for(
        tmp_path,
        """
        define(DESCRIPTION, "")
        define(PROVISIONING, "${HERE}/provisioning.conf")
        meta-description = ${DESCRIPTION}
        uboot-environment env { block-offset = 16 block-count = 16 }
        task complete {
            require-unmounted-destination = true
            on-init {
                uboot_clearenv(env)
                include("${PROVISIONING}")
                uboot_setenv(env, "description", ${DESCRIPTION})
            }
            on-error {
            }
        }
        """,
        env={"HERE": str(tmp_path)},
    )
    assert meta == (
        'task "complete" {\nrequire-unmounted-destination=true\non-init {\n'
        'funlist={2,uboot_clearenv,env,4,uboot_setenv,env,serial,"${SERIAL}",'
        '4,uboot_setenv,env,description,""}\n}\n}\n'
        'uboot-environment "env" {\nblock-offset=16\nblock-count=16\n}\n'
    )
