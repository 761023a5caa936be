"""The multicall entry point: the applet is the name k4s was called by.

    k4s APPLET [ARGS...]        run an applet
    APPLET [ARGS...]            the same, through a symlink named APPLET
    k4s --list                  every applet with a one-line summary
    k4s --install DIR           one symlink per applet in DIR
    k4s --version

Only os and sys are imported here, so `--version` and dispatch stay as fast
as the interpreter start; the applet's module is imported when it runs.
"""

from __future__ import annotations

import os
import sys

MULTICALL_NAMES = ("k4s", "__main__.py")


def _applets() -> dict[str, tuple[str, str]]:
    from applets import APPLETS

    return APPLETS


def _list() -> str:
    table = _applets()
    width = max(len(n) for n in table)
    return "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in sorted(table.items()))


def _usage() -> str:
    return (
        "usage: k4s APPLET [ARGS...] | k4s --list | k4s --install DIR | k4s --version\n"
        "applets:\n" + _list()
    )


def executable() -> str:
    """The real k4s executable: the frozen launcher, or a script that re-runs us."""
    if getattr(sys, "frozen", False):
        return os.path.realpath(sys.executable)
    return os.path.realpath(sys.argv[0])


def install(directory: str) -> int:
    from k4s.errors import K4sError

    target = executable()
    try:
        os.makedirs(directory, exist_ok=True)
        for name in sorted(_applets()):
            link = os.path.join(directory, name)
            if os.path.islink(link) and os.readlink(link) == target:
                continue
            tmp = f"{link}.k4s-new"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(target, tmp)
            os.replace(tmp, link)
    except OSError as e:
        raise K4sError(f"cannot install applet links in {directory}: {e.strerror}",
                       hint="choose a writable directory") from e
    return 0


def run_applet(name: str, args: list[str]) -> int:
    """Import the applet's module and run its click command; return the exit code."""
    import importlib

    import click

    from k4s.errors import K4sError

    module_path, _ = _applets()[name]
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as e:  # a lean build (stage 1) carries only some applets
        if not getattr(sys, "frozen", False):
            raise
        from k4s.layout import STAGE1_APPLETS

        print(f"k4s {name}: error: this build of k4s does not include it ({e.name} is missing) "
              f"(hint: stage 1 carries only {', '.join(STAGE1_APPLETS)})", file=sys.stderr)
        return 127
    try:
        rc = module.cli.main(args=args, prog_name=name, standalone_mode=False)
    except K4sError as e:
        print(e.render(f"k4s {name}" if name != "k4s" else "k4s"), file=sys.stderr)
        if os.environ.get("K4S_DEBUG"):
            raise
        return e.code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        return 130
    return rc if isinstance(rc, int) else 0


def dispatch(argv: list[str], aliases: dict[str, str] | None = None) -> int:
    """aliases: names this build answers with another applet (stage 1's /init runs `stage1`)."""
    name = os.path.basename(argv[0]) if argv else "k4s"
    name = (aliases or {}).get(name, name)
    args = argv[1:]
    table = _applets()
    if name not in table and (name in MULTICALL_NAMES or name.startswith("k4s")):
        if not args or args[0] in ("-h", "--help"):
            print(_usage())
            return 0 if args else 2
        first = args[0]
        if first == "--version":
            from k4s import __version__
            from k4s.upstream import VERSIONS

            print(f"k4s {__version__}\n" + "\n".join(f"{name} {v}" for name, v in VERSIONS.items()))
            return 0
        if first == "--list":
            print(_list())
            return 0
        if first == "--install":
            if len(args) != 2:
                print("k4s: --install needs one directory", file=sys.stderr)
                return 2
            from k4s.errors import K4sError

            try:
                return install(args[1])
            except K4sError as e:
                print(e.render(), file=sys.stderr)
                return e.code
        name, args = first, args[1:]
    if name not in table:
        print(f"k4s: unknown applet '{name}'\napplets:\n{_list()}", file=sys.stderr)
        return 2
    return run_applet(name, args)


def main(aliases: dict[str, str] | None = None) -> None:
    sys.exit(dispatch(sys.argv, aliases))
