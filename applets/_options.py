"""Click options every applet that reads the node's Config shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from k4s import config

F = TypeVar("F", bound=Callable[..., Any])


def config_options(f: F) -> F:
    f = click.option("--set", "set_", multiple=True, metavar="KEY=VALUE",
                     help="Override one config key (repeatable); wins over file and kernel command line.")(f)
    f = click.option("--cmdline", "cmdline", metavar="TEXT", envvar="K4S_CMDLINE",
                     help=f"Kernel command line to read k4s.* keys from [default: {config.PROC_CMDLINE}].")(f)
    f = click.option("--config", "config_file", metavar="PATH",
                     help=f"Config file [default: {config.DEFAULT_CONFIG_FILE} if present].")(f)
    return f
