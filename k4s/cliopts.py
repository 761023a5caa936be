"""Click options every applet that needs the Config shares, and how they load it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from k4s import config as configmod

F = TypeVar("F", bound=Callable[..., Any])

PROC_CMDLINE = "/proc/cmdline"


def config_options(f: F) -> F:
    f = click.option("--set", "set_", multiple=True, metavar="KEY=VALUE",
                     help="Override one config key (repeatable); wins over file and kernel command line.")(f)
    f = click.option("--cmdline", "cmdline", metavar="TEXT", envvar="K4S_CMDLINE",
                     help=f"Kernel command line to read k4s.* keys from [default: {PROC_CMDLINE}].")(f)
    f = click.option("--config", "config_file", metavar="PATH",
                     help=f"Config file [default: {configmod.DEFAULT_CONFIG_FILE} if present].")(f)
    return f


def read_proc_cmdline() -> str:
    try:
        with open(PROC_CMDLINE, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def load_config(config_file: str | None, cmdline: str | None, set_: tuple[str, ...],
                extra: dict[str, Any] | None = None) -> configmod.Config:
    overrides: dict[str, Any] = configmod.parse_set(set_)
    if extra:
        overrides.update({k: v for k, v in extra.items() if v is not None})
    return configmod.load(
        config_file=config_file,
        cmdline=read_proc_cmdline() if cmdline is None else cmdline,
        overrides=overrides,
    )
