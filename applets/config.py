"""config: show or validate the effective configuration.

    k4s config show [--origin] [--config PATH] [--cmdline TEXT] [--set KEY=VALUE]...
    k4s config validate [...same options]

Layers, later wins: embedded defaults < config file < kernel command line
k4s.* < --set. `validate` prints nothing and exits 0 when the result is
valid; otherwise one line naming the key and its source, and exit 2.
"""

from __future__ import annotations

from typing import TextIO

import click

from applets._options import config_options
from k4s import config as configmod
from k4s.config import SCHEMA, Config


def render(cfg: Config, origin: bool) -> str:
    import yaml

    if not origin:
        return yaml.safe_dump(cfg.as_dict(), sort_keys=False, default_flow_style=False)
    lines = []
    for key in SCHEMA:
        value = yaml.safe_dump({key.name: cfg.as_dict()[key.name]}, default_flow_style=True, width=1 << 20)
        lines.append(f"{value.strip()[1:-1]:<48} # {cfg.sources.get(key.name, 'default')}: {key.help}")
    return "\n".join(lines) + "\n"


def run(cfg: Config, action: str, origin: bool, out: TextIO) -> int:
    if action == "show":
        out.write(render(cfg, origin))
    return 0


@click.group(help=__doc__.split("\n\n")[0])
def cli() -> None:
    pass


@cli.command(help="Print the effective configuration as YAML.")
@click.option("--origin", is_flag=True, help="Annotate each key with the layer it came from.")
@config_options
def show(origin: bool, config_file: str | None, cmdline: str | None, set_: tuple[str, ...]) -> int:
    return run(configmod.load_for_applet(config_file, cmdline, set_), "show", origin, click.get_text_stream("stdout"))


@cli.command(help="Check the configuration; exit 2 with one line naming the bad key.")
@config_options
def validate(config_file: str | None, cmdline: str | None, set_: tuple[str, ...]) -> int:
    return run(configmod.load_for_applet(config_file, cmdline, set_), "validate", False, click.get_text_stream("stdout"))
