#!/usr/bin/env python3
"""Download the official release binaries instead of building them (for users with internet).

    python3 build/components/fetch.py --out DIR [--mirror URL] [--only NAME]...

Every file is checked against the sha256 its project publishes beside it
(a bare digest, or `digest  name` lines); a mismatch or a missing entry fails
loudly and leaves nothing in DIR. --mirror replaces scheme and host of every
URL (an internal mirror, or the local server the tests use). The pause binary
is always built (it is ours). Stdlib only.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


class FetchError(Exception):
    pass


def expand(template: str, version: str, url: str = "") -> str:
    return template.replace("{url}", url).replace("{version}", version).replace("{v}", version.lstrip("v"))


def remap(url: str, mirror: str | None) -> str:
    if not mirror:
        return url
    u, m = urllib.parse.urlsplit(url), urllib.parse.urlsplit(mirror)
    return urllib.parse.urlunsplit((m.scheme, m.netloc, m.path.rstrip("/") + u.path, u.query, ""))


def get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.read()
    except OSError as e:
        raise FetchError(f"cannot download {url}: {e}") from None


def published_digest(text: str, name: str) -> str:
    """The digest for `name` in a checksum file: a bare digest, or `digest  [*]name` lines."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if len(lines) == 1 and len(lines[0]) == 1:
        return lines[0][0].lower()
    for parts in lines:
        if len(parts) >= 2 and parts[-1].lstrip("*").rsplit("/", 1)[-1] == name:
            return parts[0].lower()
    raise FetchError(f"the published checksum file has no entry for {name}")


def fetch_file(spec: dict, version: str, mirror: str | None, stage: Path) -> list[str]:
    url = expand(spec["url"], version)
    sha_url = expand(spec["sha256_url"], version, url)
    data = get(remap(url, mirror))
    name = url.rsplit("/", 1)[-1]
    want = published_digest(get(remap(sha_url, mirror)).decode(errors="replace"), name)
    have = hashlib.sha256(data).hexdigest()
    if not re.fullmatch(r"[0-9a-f]{64}", want) or have != want:
        raise FetchError(f"{name}: sha256 {have} does not match the published {want}")
    outputs = []
    if "extract" in spec:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member, out in spec["extract"].items():
                member = expand(member, version)
                try:
                    f = tar.extractfile(member)
                except KeyError:
                    f = None
                if f is None:
                    raise FetchError(f"{name} has no {member}")
                (stage / out).write_bytes(f.read())
                outputs.append(out)
    else:
        (stage / spec["output"]).write_bytes(data)
        outputs.append(spec["output"])
    for out in outputs:
        os.chmod(stage / out, 0o755)
    return outputs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--mirror")
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--releases", default=str(HERE / "releases.json"))
    args = ap.parse_args()
    sources = json.loads(Path(args.releases).read_text())["sources"]
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="k4s-fetch-") as tmp:
        stage = Path(tmp)
        placed = []
        for src in sources:
            if args.only and src["component"] not in args.only:
                continue
            for spec in src["files"]:
                got = fetch_file(spec, src["version"], args.mirror, stage)
                placed += got
                print(f"fetch: {src['component']} {src['version']}: {', '.join(got)} (sha256 verified)", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        for name in placed:  # only after every file verified
            shutil.move(str(stage / name), out / name)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FetchError as e:
        print(f"fetch: error: {e} (hint: nothing was written; check the mirror, or build from source with "
              "`make components`)", file=sys.stderr)
        sys.exit(1)
