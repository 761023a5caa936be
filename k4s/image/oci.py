"""Deterministic OCI image-layout tarballs that `ctr images import` takes without a registry.

    oci-layout, index.json, blobs/sha256/{manifest, config, layer}

One uncompressed layer per image: the initramfs is compressed as a whole, so
compressing layers again would only cost CPU at import. Every tar written here
is reproducible: sorted entries, mtime SOURCE_DATE_EPOCH (0 by default),
uid/gid 0, no user names; JSON is canonical (sorted keys, no spaces). The same
inputs give the same digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from k4s.errors import K4sError
from k4s.fsutil import write_atomic
from k4s.upstream import VERSIONS

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
REGISTRY = "k4s.local"  # our images' registry name: nothing is ever pulled from it


def epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


@dataclass(frozen=True)
class Entry:
    """One path in a layer: a file (from data or a host path), a directory or a symlink."""

    path: str
    mode: int = 0o644
    data: bytes | None = None
    source: Path | None = None
    link: str | None = None
    is_dir: bool = False


@dataclass
class Image:
    name: str                    # full reference, e.g. k4s.local/pause:3.10
    entries: list[Entry]
    entrypoint: list[str]
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    user: str = "0"
    labels: dict[str, str] = field(default_factory=dict)


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _tarinfo(name: str, mtime: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mtime = mtime
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def _with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """Add every missing parent directory, then sort by path, so the tar is complete and stable."""
    by_path = {e.path.strip("/"): e for e in entries}
    for p in list(by_path):
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            by_path.setdefault(d, Entry(d, 0o755, is_dir=True))
    return [by_path[p] for p in sorted(by_path)]


def write_tar(out: io.BufferedIOBase | io.BytesIO, entries: Iterable[Entry], mtime: int | None = None) -> None:
    mt = epoch() if mtime is None else mtime
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in _with_parents(entries):
            name = e.path.strip("/")
            ti = _tarinfo(name + ("/" if e.is_dir else ""), mt)
            ti.mode = e.mode
            if e.is_dir:
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            elif e.link is not None:
                ti.type = tarfile.SYMTYPE
                ti.linkname = e.link
                tar.addfile(ti)
            else:
                data = e.data if e.data is not None else _read(e.source)
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))


def _read(path: Path | None) -> bytes:
    if path is None:
        raise K4sError("image entry has neither data nor source")
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise K4sError(f"cannot read {path}: {e.strerror}", hint="build the components first (make components)") from e


def _blob(blobs: dict[str, bytes], data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest, len(data)


def build(image: Image) -> tuple[bytes, str]:
    """The image-layout tarball and its manifest digest."""
    blobs: dict[str, bytes] = {}
    layer = io.BytesIO()
    write_tar(layer, image.entries)
    layer_digest, layer_size = _blob(blobs, layer.getvalue())
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": image.entrypoint, "Cmd": image.cmd, "Env": image.env, "User": image.user,
                   "WorkingDir": "/", "Labels": image.labels},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},  # uncompressed: diff_id == digest
        "history": [{"created_by": "k4s oci", "comment": image.name}],
    }
    config_digest, config_size = _blob(blobs, canonical_json(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer_size}],
    }
    manifest_digest, manifest_size = _blob(blobs, canonical_json(manifest))
    tag = image.name.rsplit(":", 1)[1] if ":" in image.name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST, "digest": manifest_digest, "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": image.name, "org.opencontainers.image.ref.name": tag},
        }],
    }
    files = [Entry("oci-layout", data=canonical_json({"imageLayoutVersion": "1.0.0"})),
             Entry("index.json", data=canonical_json(index))]
    files += [Entry(f"blobs/sha256/{d.split(':', 1)[1]}", data=b) for d, b in blobs.items()]
    out = io.BytesIO()
    write_tar(out, files)
    return out.getvalue(), manifest_digest


def write(image: Image, path: Path) -> str:
    data, digest = build(image)
    write_atomic(path, data, 0o644)
    return digest


DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
MAX_JSON = 4 << 20  # an index, manifest or config blob is a few KB; refuse to load more


class OCIError(K4sError):
    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}", hint="not a valid OCI image layout; rebuild it with `k4s oci build`")


def _member(tar: tarfile.TarFile, path: Path, name: str) -> tarfile.TarInfo:
    try:
        info = tar.getmember(name)
    except KeyError:
        raise OCIError(path, f"{name} is missing") from None
    if not info.isfile():
        raise OCIError(path, f"{name} is not a regular file")
    return info


def _json(tar: tarfile.TarFile, path: Path, name: str) -> dict:
    info = _member(tar, path, name)
    if info.size > MAX_JSON:
        raise OCIError(path, f"{name} is {info.size} bytes, too big for a JSON document here")
    f = tar.extractfile(info)
    assert f is not None
    try:
        doc = json.loads(f.read())
    except (ValueError, UnicodeDecodeError) as e:
        raise OCIError(path, f"{name} is not JSON ({str(e).splitlines()[0][:80]})") from None
    if not isinstance(doc, dict):
        raise OCIError(path, f"{name} is not a JSON object")
    return doc


def _descriptors(doc: dict, key: str, path: Path, name: str) -> list[dict]:
    items = doc.get(key)
    if not isinstance(items, list) or not all(isinstance(d, dict) for d in items):
        raise OCIError(path, f"{name}: '{key}' is not a list of descriptors")
    for d in items:
        if not isinstance(d.get("digest"), str) or not DIGEST.fullmatch(d["digest"]):
            raise OCIError(path, f"{name}: a descriptor's digest {str(d.get('digest'))[:80]!r} is not sha256:<64 hex>")
        if not isinstance(d.get("size"), int) or isinstance(d.get("size"), bool) or d["size"] < 0:
            raise OCIError(path, f"{name}: {d['digest']} has no valid size")
        if not isinstance(d.get("annotations", {}), dict):
            raise OCIError(path, f"{name}: {d['digest']} has annotations that are not a mapping")
    return items


def _open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path)
    except (OSError, tarfile.TarError) as e:
        raise OCIError(path, f"cannot read it as a tar archive ({e})") from None


def read_index(path: Path) -> list[dict]:
    """The manifest descriptors the layout's index.json names; a malformed index is one line."""
    with _open(path) as tar:
        return _descriptors(_json(tar, path, "index.json"), "manifests", path, "index.json")


def verify(path: Path) -> list[dict]:
    """read_index, and every blob behind it (manifest, config, layers) present, of its size,
    with its digest: what `oci ls` checks before it lists an image."""
    with _open(path) as tar:
        manifests = _descriptors(_json(tar, path, "index.json"), "manifests", path, "index.json")

        def check(d: dict) -> str:
            name = f"blobs/sha256/{d['digest'].split(':', 1)[1]}"
            info = _member(tar, path, name)
            if info.size != d["size"]:
                raise OCIError(path, f"{name} is {info.size} bytes; its descriptor says {d['size']}")
            f = tar.extractfile(info)
            assert f is not None
            h = hashlib.sha256()
            while chunk := f.read(1 << 20):
                h.update(chunk)
            if f"sha256:{h.hexdigest()}" != d["digest"]:
                raise OCIError(path, f"{name} does not match its digest (corrupt or altered)")
            return name

        for m in manifests:
            manifest = _json(tar, path, check(m))
            config = manifest.get("config")
            if not isinstance(config, dict):
                raise OCIError(path, f"manifest {m['digest']} has no config descriptor")
            for d in [*_descriptors({"c": [config]}, "c", path, m["digest"]),
                      *_descriptors(manifest, "layers", path, m["digest"])]:
                check(d)
    return manifests


# --- the airgap images the node needs ---------------------------------------------------

PAUSE_VERSION = VERSIONS["pause"]  # the pause program the image holds (build/components/pause)
BUSYBOX_TAG = "1.36"
BUSYBOX = f"{REGISTRY}/busybox:{BUSYBOX_TAG}"  # the test workloads' and local-path's helper pods' image


def pause_image(pause_bin: Path) -> Image:
    return Image(f"{REGISTRY}/pause:{PAUSE_VERSION}", [Entry("pause", 0o755, source=pause_bin)], ["/pause"],
                 user="65535:65535")


SCRATCH = f"{REGISTRY}/scratch:1"


def scratch_image() -> Image:
    """An empty root for pods that run a program of the node's own from a read-only hostPath
    (CoreDNS): the program stays compressed in the node's payload instead of being unpacked
    into containerd's snapshots, which on a RAM-only node are RAM."""
    entries = [Entry("etc/passwd", data=b"root:x:0:0:root:/:/bin/false\nnobody:x:65534:65534:nobody:/:/bin/false\n"),
               Entry("etc/group", data=b"root:x:0:\nnogroup:x:65534:\n"),
               Entry("tmp", 0o1777, is_dir=True)]
    return Image(SCRATCH, entries, [])


def busybox_image(busybox_bin: Path, applets: Iterable[str]) -> Image:
    """Debian's busybox-static with a link per applet: the test workload image."""
    entries = [Entry("bin/busybox", 0o755, source=busybox_bin)]
    entries += [Entry(f"bin/{a}", 0o777, link="busybox") for a in sorted(set(applets)) if a != "busybox"]
    entries += [Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"),
                Entry("etc/group", data=b"root:x:0:\nnogroup:x:65534:\n"),
                Entry("tmp", 0o1777, is_dir=True), Entry("root", 0o700, is_dir=True)]
    return Image(BUSYBOX, entries, [], cmd=["sh"])

