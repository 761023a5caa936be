"""k4s benchmarks: numbers to bench/results.json and into README.md.

    python3 -m bench [--only SECTION ...] [--skip-boot] [--skip-components]

Each section (a module of this package) measures and renders its own rows; `--only`
measures the named sections again and keeps the others from the last results.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import sys
import time
from types import ModuleType

from bench.common import BENCH, ROOT

SECTIONS = ("startup", "components", "server", "boot", "appliance", "datadisk", "netboot", "fleet")
RESULTS = ROOT / "bench" / "results.json"  # kept in git: `--only` on a fresh clone keeps the other sections


def section(name: str) -> ModuleType:
    return importlib.import_module(f"bench.{name}")


def rendered(r: dict, name: str) -> str:
    """One section's rows, in its own marked region of the README."""
    when = r.get("dates", {}).get(name, r.get("date", "?"))
    lines = [f"<!-- bench:{name} -->", f"*{section(name).TITLE}, measured {when}:*", "", *section(name).render(r),
             f"<!-- /bench:{name} -->"]
    return "\n".join(lines)


def markdown(r: dict) -> str:
    head = [f"Measured on {r['machine']} (`make bench`; raw numbers in bench/results.json). Each section "
            "names the date it was measured; compare rows within a section.", ""]
    return "\n".join(head + [rendered(r, name) + "\n" for name in SECTIONS if name in r])


def update_readme(r: dict, names: list[str] | None) -> None:
    """All sections (names None): the whole bench block. Some: each one's region, replaced where
    it is, added at the end of the block where it is not; the rest of the block stays."""
    readme = ROOT / "README.md"
    s = readme.read_text()
    if names is None:
        s = re.sub(r"<!-- bench:begin -->.*<!-- bench:end -->",
                   lambda _: f"<!-- bench:begin -->\n{markdown(r)}\n<!-- bench:end -->", s, flags=re.S)
    for name in names or ():
        region = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
        text = rendered(r, name)
        s = region.sub(lambda _, t=text: t, s) if region.search(s) else s.replace("<!-- bench:end -->",
                                                                             f"{text}\n\n<!-- bench:end -->")
    readme.write_text(s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                    help=f"measure these sections again ({', '.join(SECTIONS)}), keeping the others")
    ap.add_argument("--skip-boot", action="store_true", help="no QEMU boots")
    ap.add_argument("--skip-components", action="store_true", help="not the components section")
    ap.add_argument("--render", action="store_true", help="only write README.md from bench/results.json")
    args = ap.parse_args()
    BENCH.mkdir(parents=True, exist_ok=True)
    r = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    r["machine"] = (f"{os.cpu_count()} cores, "
                    f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
                    f"{platform.platform()}")
    todo = [] if args.render else [
        n for n in (args.only or SECTIONS)
        if not (args.skip_boot and section(n).BOOTS) and not (args.skip_components and n == "components")]
    for name in list(todo):
        if why := getattr(section(name), "skip", lambda: "")():
            print(f"bench: {name} skipped: {why}", flush=True)
            todo.remove(name)
            continue
        print(f"bench: {section(name).TITLE}", flush=True)
        r[name] = section(name).measure()
        r.setdefault("dates", {})[name] = time.strftime("%Y-%m-%d")
        RESULTS.write_text(json.dumps(r, indent=2) + "\n")  # each section kept as soon as it is measured
    update_readme(r, None if todo == list(SECTIONS) or args.render else todo)
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
