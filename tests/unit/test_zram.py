"""The zram swap: a header the kernel and util-linux accept, sized from RAM, and errors a user can act on."""

import os
import subprocess

import pytest

from k4s.errors import K4sError
from k4s.sys import libc, zram

PAGE = os.sysconf("SC_PAGE_SIZE")


def test_header_is_a_swap_area_for_util_linux(tmp_path) -> None:
    size = 64 << 20
    area = tmp_path / "swap"
    with open(area, "wb") as f:
        f.write(zram.swap_header(size, PAGE))
        f.truncate(size)
    probe = subprocess.run(["blkid", "-p", "-o", "export", str(area)], capture_output=True, text=True, check=True)
    fields = dict(line.split("=", 1) for line in probe.stdout.split())
    assert fields["TYPE"] == "swap" and fields["VERSION"] == "1"
    ours = area.read_bytes()[:PAGE]
    subprocess.run(["mkswap", "-U", "00000000-0000-0000-0000-000000000000", str(area)],
                   capture_output=True, check=True)
    assert area.read_bytes()[:PAGE] == ours  # what mkswap writes, byte for byte


def fake_machine(tmp_path):
    block = tmp_path / "sys" / "block" / zram.DEVICE
    block.mkdir(parents=True)
    (block / "disksize").write_text("0")
    (block / "comp_algorithm").write_text("lzo [lzo-rle] lz4 zstd\n")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / zram.DEVICE).write_bytes(b"")
    (tmp_path / "proc" / "sys" / "vm").mkdir(parents=True)
    return block


def test_setup_sizes_the_device_and_swaps_on_it(tmp_path, monkeypatch) -> None:
    block = fake_machine(tmp_path)
    calls = []
    monkeypatch.setattr(libc, "swapon", lambda path, prio: calls.append((path, prio)))
    size, algorithm = zram.setup(50, 465_000, "zstd", sys=tmp_path / "sys", dev=tmp_path / "dev", proc=tmp_path / "proc")
    assert size == 465_000 * 1024 // 2 // PAGE * PAGE
    assert algorithm == "zstd" == (block / "comp_algorithm").read_text()
    assert int((block / "disksize").read_text()) == size
    header = (tmp_path / "dev" / zram.DEVICE).read_bytes()
    assert header.endswith(b"SWAPSPACE2") and len(header) == PAGE
    assert calls == [(str(tmp_path / "dev" / zram.DEVICE), zram.PRIORITY)]
    assert (tmp_path / "proc" / "sys" / "vm" / "swappiness").read_text() == "180"


def test_zero_is_off_and_a_missing_module_says_so(tmp_path) -> None:
    assert zram.setup(0, 465_000, sys=tmp_path) == (0, "")
    with pytest.raises(K4sError) as e:
        zram.setup(50, 465_000, sys=tmp_path)
    assert "zram" in e.value.hint


def test_ram_used_reads_mm_stat(tmp_path) -> None:
    block = fake_machine(tmp_path)
    assert zram.ram_used(tmp_path / "sys") == 0
    (block / "mm_stat").write_text("188743680 52428800 54525952 0 54525952 120 0 3 0\n")
    assert zram.ram_used(tmp_path / "sys") == 54525952



def test_the_algorithm_in_use_is_the_bracketed_one() -> None:
    """What the kernel shows after refusing an algorithm it has not got (EINVAL): its default."""
    assert zram.in_use("lzo [lzo-rle] lz4 zstd\n") == "lzo-rle"
    assert zram.in_use("zstd\n") == "zstd"
