"""kexec: load a kernel with its initrds and boot into it now (kexec_file_load).

    kexec KERNEL [--initrd FILE]... [--append ARGS] [--load-only]

The initrds are concatenated in order. The kernel checks the image format (and,
where the policy demands it, its signature). As root; it does not stop
anything first, so on a running node use it from stage 1 or after a poweroff
of the components.
"""

from __future__ import annotations

from pathlib import Path

import click

P = click.Path(path_type=Path)


@click.command(help=__doc__.split("\n\n")[0])
@click.argument("kernel", type=P)
@click.option("--initrd", type=P, multiple=True)
@click.option("--append", default="", help="The new kernel's command line.")
@click.option("--load-only", is_flag=True, help="Load, but do not reboot into it.")
def cli(kernel: Path, initrd: tuple[Path, ...], append: str, load_only: bool) -> int:
    import tempfile

    from k4s.boot import stage1
    from k4s.errors import K4sError

    for p in (kernel, *initrd):
        if not p.is_file():
            raise K4sError(f"{p} not found", hint="give the kernel and initrd files")
    with tempfile.TemporaryDirectory() as tmp:
        joined = Path(tmp) / "initrd.img" if initrd else None
        if joined:
            stage1.join_initrds(list(initrd), joined)
        stage1.load(kernel, joined, append)
    if not load_only:
        stage1.execute()
    return 0
