"""Module resolution: dependencies first, softdeps, aliases, builtins."""

from __future__ import annotations

import pytest

from k4s.errors import K4sError
from k4s.sys import kmod


@pytest.fixture
def index(tmp_path):
    base = tmp_path / "lib/modules/6.1.0-test"
    base.mkdir(parents=True)
    (base / "modules.dep").write_text(
        "kernel/net/netfilter/nft_numgen.ko: kernel/net/netfilter/nf_tables.ko kernel/net/netfilter/nfnetlink.ko\n"
        "kernel/net/netfilter/nf_tables.ko: kernel/net/netfilter/nfnetlink.ko kernel/lib/libcrc32c.ko\n"
        "kernel/net/netfilter/nfnetlink.ko:\n"
        "kernel/lib/libcrc32c.ko:\n"
        "kernel/arch/x86/crypto/crc32c-intel.ko:\n")
    (base / "modules.alias").write_text("alias nft-expr-numgen nft_numgen\nalias crypto-crc32c crc32c_intel\n"
                                        "alias crc32c crc32c_intel\n")
    (base / "modules.softdep").write_text("softdep libcrc32c pre: crc32c\n")
    (base / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    return kmod.Index.load(str(tmp_path), "6.1.0-test")


def test_dependencies_load_first(index) -> None:
    plan = index.plan("nft_numgen")
    assert plan.index("nfnetlink") < plan.index("nf_tables") < plan.index("nft_numgen")
    assert plan[-1] == "nft_numgen"


def test_alias_softdep_and_dash_names(index) -> None:
    assert index.plan("nft-expr-numgen")[-1] == "nft_numgen"
    plan = index.plan("libcrc32c")
    assert plan == ["crc32c_intel", "libcrc32c"]  # softdep pre: crc32c, found through its alias
    assert index.plan("crc32c-intel") == ["crc32c_intel"]


def test_builtin_needs_nothing(index) -> None:
    assert index.plan("ext4") == []


def test_unknown_module_is_a_clear_error(index) -> None:
    with pytest.raises(K4sError, match="module nope not found"):
        index.plan("nope")


def test_the_files_of_loaded_modules_are_dropped_and_the_rest_kept(tmp_path):
    idx = kmod.Index(tmp_path)
    for name in ("loop", "ext4"):
        f = tmp_path / "kernel" / f"{name}.ko"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"\0" * 1000)
        idx.deps[name] = (f"kernel/{name}.ko", [])
    freed = kmod.drop_loaded_files(idx, {"loop": (1, 0, ""), "builtin_or_unknown": (1, 0, "")})
    assert freed == 1000
    assert not (tmp_path / "kernel/loop.ko").exists() and (tmp_path / "kernel/ext4.ko").exists()
