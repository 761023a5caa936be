"""The data disk: which device k4s.data names, when it may be formatted, and what a
formatted one looks like (the image's mke2fs, the node's own probe)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from k4s import config
from k4s.boot import datadisk
from k4s.boot.datadisk import Disk, NotYet, choose, classify
from k4s.errors import ConfigError, K4sError
from tests.conftest import require


def ext4_head(label: str) -> bytes:
    head = bytearray(8192)
    struct.pack_into("<H", head, 1024 + 56, 0xEF53)
    head[1024 + 120:1024 + 120 + len(label)] = label.encode()
    return bytes(head)


def test_classify_reads_an_ext4_label_and_tells_blank_from_anything_else():
    assert classify(ext4_head("K4SDATA")) == ("ext4", "K4SDATA")
    assert classify(bytes(1 << 20)) == ("blank", "")
    mbr = bytearray(1 << 20)
    mbr[510:512] = b"\x55\xaa"  # a partition table: not blank, never formatted
    assert classify(bytes(mbr)) == ("other", "")


@given(st.binary(max_size=4096))
def test_classify_takes_any_bytes(head: bytes):
    kind, label = classify(head)
    assert kind in ("ext4", "luks", "blank", "other") and len(label) <= 48


DISKS = [Disk(Path("/dev/vda"), "ext4", "OTHER"), Disk(Path("/dev/vdb"), "blank"),
         Disk(Path("/dev/vdc1"), "blank", whole=False), Disk(Path("/dev/vdd"), "other")]


def test_a_label_finds_its_filesystem_and_formats_only_the_one_blank_whole_disk():
    labelled = [*DISKS, Disk(Path("/dev/vde"), "ext4", "K4SDATA")]
    assert choose("LABEL=K4SDATA", True, labelled) == (labelled[-1], "")
    assert choose("LABEL=K4SDATA", True, DISKS) == (DISKS[1], "K4SDATA")  # not the partition, not vdd
    with pytest.raises(NotYet, match="no filesystem is labelled K4SDATA"):
        choose("LABEL=K4SDATA", False, DISKS)
    with pytest.raises(K4sError, match="2 disks are blank"):
        choose("LABEL=K4SDATA", True, [*DISKS, Disk(Path("/dev/vdf"), "blank")])
    with pytest.raises(K4sError, match="2 filesystems are labelled OTHER"):
        choose("LABEL=OTHER", False, [*DISKS, Disk(Path("/dev/vdg"), "ext4", "OTHER")])


def test_a_device_path_is_mounted_as_it_is_formatted_only_when_blank_and_never_when_it_holds_data():
    assert choose("/dev/vda", False, DISKS) == (DISKS[0], "")
    assert choose("/dev/vdb", True, DISKS) == (DISKS[1], datadisk.DEFAULT_LABEL)
    with pytest.raises(K4sError, match="is blank") as e:
        choose("/dev/vdb", False, DISKS)
    assert "data-format=1" in e.value.hint
    with pytest.raises(K4sError, match="something other than an ext4") as e:
        choose("/dev/vdd", True, DISKS)
    assert "only blank disks" in e.value.hint
    with pytest.raises(NotYet, match="does not exist"):
        choose("/dev/sdz", True, DISKS)


def test_find_waits_for_a_late_disk_then_gives_up_with_one_line(monkeypatch):
    monkeypatch.setattr(datadisk, "block_devices", lambda: DISKS)
    with pytest.raises(NotYet, match="no filesystem is labelled K4SDATA"):
        datadisk.find("LABEL=K4SDATA", False, settle=0.6)


def test_block_devices_skips_loops_and_empty_devices_and_marks_partitions(tmp_path):
    sys_block, dev = tmp_path / "sys", tmp_path / "dev"
    for name, size, part, content in [("vda", "8", False, ext4_head("K4SDATA")), ("vdb1", "8", True, bytes(4096)),
                                      ("loop0", "8", False, bytes(10)), ("sr0", "0", False, b"")]:
        (sys_block / name).mkdir(parents=True)
        (sys_block / name / "size").write_text(size + "\n")
        if part:
            (sys_block / name / "partition").write_text("1\n")
        dev.mkdir(exist_ok=True)
        (dev / name).write_bytes(content)
    found = datadisk.block_devices(sys_block, dev)
    assert found == [Disk(dev / "vda", "ext4", "K4SDATA"), Disk(dev / "vdb1", "blank", whole=False)]


def test_the_image_s_mke2fs_makes_a_filesystem_the_probe_finds_by_label(tmp_path):
    require(bool(shutil.which(datadisk.MKFS)), "mke2fs", "run `make setup` (e2fsprogs)")
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    blank = datadisk.probe(img)
    assert blank.kind == "blank"
    datadisk.make_filesystem(blank.dev, "K4SDATA")
    assert datadisk.probe(img) == Disk(img, "ext4", "K4SDATA")


@pytest.mark.parametrize("line, message", [
    ("k4s.data=/etc/passwd", "is not a data disk"),
    ("k4s.data=/dev/../etc/shadow", "is not a data disk"),
    ("k4s.data=LABEL=this-label-is-far-too-long", "is not a data disk"),
    ("k4s.data-format=1", "data-format is set but no data disk is named"),
    ("k4s.data=LABEL=K4SDATA k4s.data-format=maybe", "is not a boolean"),
    ("k4s.data=LABEL=K4SDATA k4s.data-encrypt=tpm", "data-encrypt applies when a blank disk is formatted"),
    ("k4s.data=LABEL=K4SDATA k4s.data-format=1 k4s.data-encrypt=aes", "data-encrypt"),
])
def test_bad_data_settings_on_the_command_line_are_one_line_errors(line: str, message: str):
    with pytest.raises(ConfigError, match=message) as e:
        config.load(config_file="/dev/null", cmdline=line)
    assert "\n" not in str(e.value) and e.value.hint


def test_the_command_line_names_the_data_disk():
    cfg = config.load(config_file="/dev/null", cmdline="k4s.data=LABEL=K4SDATA k4s.data-format=1")
    assert (cfg.data, cfg.data_format, cfg.data_encrypt) == ("LABEL=K4SDATA", True, "none")
    sealed = "k4s.data=LABEL=K4SDATA k4s.data-format=1 k4s.data-encrypt=tpm"
    assert config.load(config_file="/dev/null", cmdline=sealed).data_encrypt == "tpm"
    assert config.load(config_file="/dev/null", cmdline="k4s.data=/dev/nvme0n1p2").data == "/dev/nvme0n1p2"


def test_removable_media_are_never_a_data_disk(tmp_path):
    """A USB stick labelled K4SDATA is not the node's disk."""
    sys_block, dev = tmp_path / "sys", tmp_path / "dev"
    dev.mkdir()
    for name, removable in (("sda", "1"), ("vdb", "0")):
        (sys_block / name).mkdir(parents=True)
        (sys_block / name / "size").write_text("8\n")
        (sys_block / name / "removable").write_text(removable + "\n")
        (dev / name).write_bytes(ext4_head("K4SDATA"))
    assert [d.dev.name for d in datadisk.block_devices(sys_block, dev)] == ["vdb"]


def test_inputs_are_copied_onto_the_disk_never_through_its_links(tmp_path):
    src, disk, outside = tmp_path / "ram", tmp_path / "disk", tmp_path / "outside"
    (src / "pki").mkdir(parents=True)
    (src / "pki" / "operator-ca.crt").write_text("new")
    (src / "manifests").mkdir()
    (src / "manifests" / "app.yaml").write_text("kind: x")
    outside.mkdir()
    (outside / "victim").write_text("mine")
    disk.mkdir()
    (disk / "pki").mkdir()
    (disk / "pki" / "operator-ca.crt").symlink_to(outside / "victim")  # a file link: replaced, not followed
    datadisk.copy_inputs(src, disk)
    assert (outside / "victim").read_text() == "mine"
    assert not (disk / "pki" / "operator-ca.crt").is_symlink() and (disk / "pki" / "operator-ca.crt").read_text() == "new"
    shutil.rmtree(disk / "manifests")
    (disk / "manifests").symlink_to(outside)  # a directory link: refused
    with pytest.raises(K4sError, match="manifests on the disk is not a directory"):
        datadisk.copy_inputs(src, disk)
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
