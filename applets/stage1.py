"""stage1: PID 1 of the first stage: network, fetch, verify, kexec (LinuxBoot).

    /init   (in the stage-1 image, started by the kernel)

Reads k4s.payload=http://HOST/PATH/ (and the network keys) from the kernel
command line, fetches PATH/manifest.json and its signature, checks them with
the public key built into the image, fetches every artifact the manifest names
while checking its size and sha256, and kexecs the verified kernel with the
verified initrds and the signed command line. Any failure: one line naming the
artifact and the reason, no kexec, then k4s.on-failure.
"""

from __future__ import annotations

import click


@click.command(help=__doc__.split("\n\n")[0])
def cli() -> int:
    import os

    from k4s.errors import K4sError

    if os.getpid() != 1:
        raise K4sError("stage1 must run as PID 1 (the kernel starts /init)",
                       hint="to check a payload on a host, use `k4s verify`")
    from k4s.boot.stage1 import main

    main()
    return 0  # not reached
