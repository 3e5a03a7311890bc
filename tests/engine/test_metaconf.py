"""meta.conf parsing: the libconfuse subset fwup writes, typed."""

from __future__ import annotations

import zipfile

import pytest

from nhlink.errors import MetaConfError
from nhlink.fwup.metaconf import Call, parse_funlist, parse_int, parse_meta_conf
from tests.helpers import vectors as v


def _meta_conf(vector_id: str) -> str:
    path = v.vectors_dir() / v.vector(vector_id)["fw"]
    return zipfile.ZipFile(path).read("meta.conf").decode()


def test_vector_02_tasks_resources_and_environment() -> None:
    conf = parse_meta_conf(_meta_conf("02_ab_uboot"), {"FWUP_META_UUID": "the-uuid"})
    assert conf.metadata["meta-description"] == "02 A/B upgrade with uboot env"
    assert conf.metadata["meta-version"] == "1.0.0"
    assert list(conf.resources) == ["bootloader.bin", "rootfs.img", "app-seed.bin"]
    rootfs = conf.resources["rootfs.img"]
    assert rootfs.length_map == (307300,) and rootfs.data_size == 307300
    assert rootfs.sparse_map is None
    assert rootfs.blake2b_256 == "a16ba9d78ebfdda14d7166a3da57ce45b9ca2db6f3f2ef72c62b4f01d26a5113"
    assert [t.name for t in conf.tasks] == [
        "complete",
        "upgrade.a",
        "upgrade.b",
        "upgrade.unvalidated",
        "upgrade.wrongplatform",
        "validate",
    ]
    complete = conf.tasks[0]
    assert complete.on_init[0] == Call("raw_memset", ("1024", "32", "0xaa"))
    # "${FWUP_META_UUID}" is expanded at parse time against the environment given.
    assert Call("uboot_setenv", ("uboot-env", "a.nerves_fw_uuid", "the-uuid")) in complete.on_init
    assert complete.on_resource["rootfs.img"].calls == (Call("raw_write", ("4096",)),)
    upgrade_b = conf.tasks[2]
    assert upgrade_b.requirements[0] == Call(
        "require-uboot-variable", ("uboot-env", "nerves_fw_active", "a")
    )
    assert upgrade_b.on_error == (Call("info", ("upgrade.b failed",)),)
    env = conf.uboot_environments["uboot-env"]
    assert (env.block_offset, env.block_count, env.block_offset_redund) == (256, 16, None)
    assert conf.block_cache_size_mb == 8 and conf.require_fwup_version == "0"


def test_sparse_length_list() -> None:
    conf = parse_meta_conf(_meta_conf("09_sparse"), {})
    sparse = conf.resources["sparse.img"]
    assert sparse.length_map == (65536, 917504, 65536, 65536)
    assert sparse.data_size == 131072 and sparse.total_size == 1114112
    assert sparse.sparse_map == [65536, 917504, 65536, 65536]


def test_strings_escapes_comments_and_unknown_options() -> None:
    text = r"""
    # comment
    meta-product = "a \"quoted\" \\ value" // another comment
    meta-misc = 'single \'quoted\''
    /* block
       comment */
    future-option = {1, 2, 3}
    future-section "x" { nested { deeper = yes } }
    block-cache-size-mb = 0x10
    task t {
        verify-on-the-fly = true
        require-partition1-offset = 63
        on-init { info("hello, world") raw_memset(1, 2, 0xff) }
        on-resource r { funlist = {2, raw_write, 010} delta-source-raw-offset = 5 }
    }
    file-resource r { length = 1 blake2b-256 = "00" }
    """
    conf = parse_meta_conf(text, {})
    assert conf.metadata == {"meta-product": 'a "quoted" \\ value', "meta-misc": "single 'quoted'"}
    assert conf.block_cache_size_mb == 16
    task = conf.tasks[0]
    assert task.require_partition1_offset == 63
    assert task.on_init == (Call("info", ("hello, world",)), Call("raw_memset", ("1", "2", "0xff")))
    handler = task.on_resource["r"]
    assert handler.calls == (Call("raw_write", ("010",)),)
    assert handler.delta is not None and handler.delta.raw_offset == 5


def test_variables_expand_in_double_quotes_and_bare_references() -> None:
    text = "meta-product = \"${A}-${B:-dflt}-${C:-x}-\\${A}\"\nmeta-misc = '${A}'\nmeta-author = ${A}\n"
    conf = parse_meta_conf(text, {"A": "aa", "C": "cc"})
    assert conf.metadata["meta-product"] == "aa-dflt-cc-${A}"
    assert conf.metadata["meta-misc"] == "${A}"
    assert conf.metadata["meta-author"] == "aa"


def test_parse_int_reads_like_strtol_base_0() -> None:
    assert parse_int("0x1F") == 31
    assert parse_int("010") == 8
    assert parse_int("-12") == -12
    assert parse_int("0") == 0
    with pytest.raises(MetaConfError):
        parse_int("12abc")


def test_funlist_groups() -> None:
    assert parse_funlist(["2", "info", "x", "1", "trim"]) == (
        Call("info", ("x",)),
        Call("trim", ()),
    )
    with pytest.raises(MetaConfError, match="Unexpected argc value in funlist"):
        parse_funlist(["0", "info"])
    with pytest.raises(MetaConfError, match="Unexpected error with funlist"):
        parse_funlist(["3", "info", "x"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('meta-product = "unterminated', "line 1: unterminated string"),
        ("task t {\n on-init {\n", "not closed"),
        ("meta-uuid = x", "may not set meta-uuid"),
        ("meta-nickname = x", "may not set meta-nickname"),
        ("task t {}\ntask t {}", "duplicate task 't'"),
        ("file-resource r { length = abc }", "length"),
        ("a = = b", "line 1: expected a value"),
        ("a = {1 2}", "expected ','"),
        ("block-cache-size-mb = 0", "block-cache-size-mb must be positive"),
    ],
)
def test_errors_are_one_line(text: str, message: str) -> None:
    with pytest.raises(MetaConfError, match=message) as info:
        parse_meta_conf(text, {})
    assert "\n" not in str(info.value)


def test_every_vector_meta_conf_parses() -> None:
    for entry in v.manifest()["vectors"]:
        conf = parse_meta_conf(_meta_conf(entry["id"]), {})
        assert conf.tasks, entry["id"]
        for task in conf.tasks:
            for name in task.on_resource:
                assert name in conf.resources
