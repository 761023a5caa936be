#!/usr/bin/env python3
"""Build the pinned upstream components into a cache outside the repo.

    python3 build/components/build.py [--only NAME]... [--update-lock] [--out out/components]

Each component is a Go module (or C source) under build/components/<dir>,
pinned in lock.json. A build lands in $K4S_CACHE/components/<name>/<key>,
where key hashes everything that decides the output (lock entry, go.mod,
go.sum, sources, toolchain); an unchanged lock reuses it in seconds.
Outputs are checked against the lock's sha256 and against the version each
binary reports; a mismatch fails loudly. out/components/bin/ links into the cache.

Stdlib only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
LOCK = HERE / "lock.json"
BUILDER_VERSION = "1"  # bump when this script changes how outputs are made


class BuildError(Exception):
    pass


def log(msg: str) -> None:
    print(f"components: {msg}", flush=True)


def sh(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise BuildError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r.stdout


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def toolchain() -> dict[str, str]:
    go = sh(["go", "env", "GOVERSION"]).strip()
    cc = sh(["gcc", "-dumpfullversion"]).strip()
    musl = shutil.which("musl-gcc")
    return {"go": go, "cc": f"gcc {cc}", "libc": "musl" if musl else "glibc"}


def cache_key(comp: dict, tc: dict[str, str]) -> str:
    h = hashlib.sha256()
    entry = {k: v for k, v in comp.items() if k != "sha256"}
    h.update(json.dumps([BUILDER_VERSION, entry, tc], sort_keys=True).encode())
    d = HERE / comp["dir"]
    for f in sorted(d.iterdir()):
        if f.is_file() and f.suffix in (".go", ".mod", ".sum", ".c"):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:20]


def go_env(cgo: bool) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "GOFLAGS": "-mod=readonly -buildvcs=false -trimpath",  # drift in go.mod/go.sum fails the build
        "CGO_ENABLED": "1" if cgo else "0",
        "GOTOOLCHAIN": "local",
        "LANG": "C.UTF-8",
    }
    for k in ("GOPROXY", "GOCACHE", "GOMODCACHE", "GOPATH"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def check_pin(comp: dict) -> None:
    """go.mod must require exactly the versions the lock names: the component's module and
    the other upstream modules linked into the same binary ("pins")."""
    if "c" in comp["outputs"][0]:
        return
    d = HERE / comp["dir"]
    for pin in [{"module": comp["module"], "version": comp["version"]}, *comp.get("pins", [])]:
        have = sh(["go", "list", "-m", "-f", "{{.Version}}", pin["module"]], cwd=d, env=go_env(False)).strip()
        if have != pin["version"]:
            raise BuildError(f"{comp['name']}: go.mod has {pin['module']} {have}, lock.json pins {pin['version']}"
                             f" (hint: run `go get {pin['module']}@{pin['version']}` in build/components/{comp['dir']})")


def build_go(comp: dict, out: dict, dest: Path) -> None:
    d = HERE / comp["dir"]
    ldflags = ["-s", "-w", "-buildid="] + [f.replace("{version}", comp["version"]) for f in out.get("ldflags", [])]
    args = ["go", "build", "-v", "-o", str(dest), "-ldflags", " ".join(ldflags)]
    if out.get("tags"):
        args += ["-tags", ",".join(out["tags"])]
    args.append(out["package"])
    started = time.monotonic()
    proc = subprocess.Popen(args, cwd=d, env=go_env(out.get("cgo", False)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    count = [0]
    tail: list[str] = []

    def read() -> None:
        assert proc.stderr
        for line in proc.stderr:
            count[0] += 1
            tail.append(line)
            del tail[:-40]

    t = threading.Thread(target=read, daemon=True)
    t.start()
    while True:
        try:
            proc.wait(timeout=30)
            break
        except subprocess.TimeoutExpired:
            log(f"  {out['name']}: {count[0]} packages compiled, {time.monotonic() - started:.0f}s")
    t.join()
    if proc.returncode != 0:
        raise BuildError(f"{comp['name']}: go build {out['package']} failed:\n{''.join(tail)}")


def build_c(comp: dict, out: dict, dest: Path) -> None:
    cc = shutil.which("musl-gcc") or "gcc"
    src = HERE / comp["dir"] / out["c"]
    sh([cc, "-static", "-Os", f'-DVERSION="{comp["version"]}"', "-o", str(dest), str(src)])
    sh(["strip", "--strip-all", str(dest)])


def run_checks(comp: dict, bindir: Path) -> None:
    for check in comp.get("checks", []):
        argv = [str(bindir / check["run"][0]), *check["run"][1:]]
        r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
                           env={"PATH": "/usr/bin:/bin"})
        want = check["expect"].replace("{version}", comp["version"])
        if want not in r.stdout + r.stderr:
            raise BuildError(f"{comp['name']}: `{' '.join(check['run'])}` does not report {want!r}: "
                             f"{(r.stdout + r.stderr).strip()[:300]!r}")


def symlink(link: Path, target: str | Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def add_links(comp: dict, bindir: Path) -> None:
    """The multicall names: kubelet -> kube, beside the binary they name."""
    for name, target in comp.get("links", {}).items():
        symlink(bindir / name, target)


def place(comp: dict, built: Path, bindir: Path) -> None:
    for out in comp["outputs"]:
        symlink(bindir / out["name"], built / out["name"])
    add_links(comp, bindir)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=[], help="build only these components")
    ap.add_argument("--update-lock", action="store_true", help="record the sha256 of every output in lock.json")
    ap.add_argument("--out", default=str(ROOT / "out" / "components"))
    ap.add_argument("--cache", default=os.environ.get("K4S_CACHE", "/var/cache/k4s"))
    args = ap.parse_args()

    lock = json.loads(LOCK.read_text())
    tc = toolchain()
    if lock.get("toolchain") and lock["toolchain"] != tc and not args.update_lock:
        raise BuildError(f"toolchain {tc} differs from the one lock.json was recorded with {lock['toolchain']}; "
                         "the sha256s cannot match (hint: install that toolchain, or run `make components-lock` "
                         "to re-record them deliberately)")
    bindir = Path(args.out) / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    comps = [c for c in lock["components"] if not args.only or c["name"] in args.only]
    unknown = set(args.only) - {c["name"] for c in lock["components"]}
    if unknown:
        raise BuildError(f"unknown component(s) {sorted(unknown)}; known: {[c['name'] for c in lock['components']]}")
    report = []
    for i, comp in enumerate(comps, 1):
        key = cache_key(comp, tc)
        built = Path(args.cache) / "components" / comp["name"] / key
        started = time.monotonic()
        if (built / ".done").exists():
            log(f"[{i}/{len(comps)}] {comp['name']} {comp['version']}: cached")
        else:
            log(f"[{i}/{len(comps)}] {comp['name']} {comp['version']}: building")
            check_pin(comp)
            tmp = built.with_name(key + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for out in comp["outputs"]:
                (build_c if "c" in out else build_go)(comp, out, tmp / out["name"])
            add_links(comp, tmp)  # so the checks can run the multicall by name
            run_checks(comp, tmp)
            (tmp / ".done").write_text(json.dumps({"seconds": round(time.monotonic() - started, 1)}))
            shutil.rmtree(built, ignore_errors=True)
            tmp.rename(built)
            log(f"  {comp['name']}: built in {time.monotonic() - started:.0f}s")
        sums = {o["name"]: sha256(built / o["name"]) for o in comp["outputs"]}
        recorded = comp.get("sha256", {})
        if args.update_lock:
            comp["sha256"] = sums
        elif recorded and recorded != sums:
            bad = [n for n in sums if recorded.get(n) != sums[n]]
            raise BuildError(f"{comp['name']}: sha256 of {bad} differs from lock.json (cache {built}); "
                             "the build is not what was pinned (hint: remove the cache dir to rebuild, "
                             "or `make components-lock` after a deliberate change)")
        elif not recorded:
            raise BuildError(f"{comp['name']}: lock.json has no sha256 for it (hint: run `make components-lock`)")
        place(comp, built, bindir)
        report.append((comp["name"], comp["version"], {n: (built / n).stat().st_size for n in sums}))
    if args.update_lock:
        lock["toolchain"] = tc
        tmp = LOCK.with_suffix(".tmp")
        tmp.write_text(json.dumps(lock, indent=2) + "\n")
        tmp.replace(LOCK)
        log(f"recorded sha256s in {LOCK.relative_to(ROOT)}")
    for name, version, sizes in report:
        log(f"{name:<11} {version:<9} " + " ".join(f"{n}={s / 1e6:.1f}MB" for n, s in sizes.items()))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BuildError as e:
        print(f"components: error: {e}", file=sys.stderr)
        sys.exit(1)
