"""OCI image layouts: malformed ones are one line naming the file; `oci ls` checks every blob."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from k4s.errors import K4sError
from k4s.image import oci
from tests.conftest import k4s_cmd


def good(tmp_path: Path) -> Path:
    image = oci.Image("k4s.local/t:1", [oci.Entry("hello", data=b"hi\n")], ["/hello"])
    path = tmp_path / "good.tar"
    oci.write(image, path)
    return path


def rewrite(src: Path, dst: Path, change) -> Path:  # type: ignore[no-untyped-def]
    """A copy of a layout tarball with change(name, data) -> data | None (None drops the member)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for info in tin.getmembers():
            data = tin.extractfile(info).read() if info.isfile() else None  # type: ignore[union-attr]
            if data is not None:
                data = change(info.name, data)
                if data is None:
                    continue
                info.size = len(data)
            tout.addfile(info, io.BytesIO(data) if data is not None else None)
    return dst


def index_with(manifests: object):  # type: ignore[no-untyped-def]
    return lambda n, d: json.dumps({"schemaVersion": 2, "manifests": manifests}).encode() if n == "index.json" else d


@pytest.mark.parametrize("change,message", [
    (lambda n, d: b"{not json" if n == "index.json" else d, "index.json is not JSON"),
    (lambda n, d: b"[1, 2]" if n == "index.json" else d, "index.json is not a JSON object"),
    (lambda n, d: None if n == "index.json" else d, "index.json is missing"),
    (index_with("nope"), "'manifests' is not a list of descriptors"),
    (index_with([1]), "'manifests' is not a list of descriptors"),
    (index_with([{"digest": "md5:abc", "size": 1}]), "is not sha256:<64 hex>"),
    (index_with([{"digest": "sha256:" + "a" * 64, "size": "big"}]), "has no valid size"),
    (index_with([{"digest": "sha256:" + "a" * 64, "size": 1, "annotations": []}]), "not a mapping"),
])
def test_malformed_index_is_one_line_naming_the_file(tmp_path, change, message) -> None:
    bad = rewrite(good(tmp_path), tmp_path / "bad.tar", change)
    with pytest.raises(K4sError) as e:
        oci.read_index(bad)
    assert message in e.value.message and str(bad) in e.value.message and "\n" not in e.value.render()


def test_not_a_tar_is_one_line(tmp_path) -> None:
    (tmp_path / "x.tar").write_bytes(b"\0garbage" * 100)
    with pytest.raises(K4sError, match="cannot read it as a tar archive"):
        oci.read_index(tmp_path / "x.tar")


def test_ls_verifies_every_blob(tmp_path) -> None:
    path = good(tmp_path)
    r = k4s_cmd("oci", "ls", str(path), check=True)
    assert r.stdout.startswith("k4s.local/t:1 sha256:")
    layer = [m.name for m in tarfile.open(path).getmembers() if m.isfile() and m.name.startswith("blobs/")]

    def flip(n: str, d: bytes) -> bytes:
        return d[:-1] + bytes([d[-1] ^ 1]) if n == layer[0] else d
    for change, message in [(flip, "does not match its digest"),
                            (lambda n, d: None if n == layer[1] else d, "is missing")]:
        bad = rewrite(path, tmp_path / "bad.tar", change)
        r = k4s_cmd("oci", "ls", str(bad))
        assert r.returncode == 1 and r.stdout == "" and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
