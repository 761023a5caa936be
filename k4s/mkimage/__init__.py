"""mkimage: the appliance image and stage 1, built on the build host.

The appliance is a tree of parts packed as concatenated, separately compressed newc cpio
segments (the kernel unpacks them in order). Which file goes in which part (host tools,
device nodes, the skeleton, stage 1's files and applets) is the table in k4s.layout;
which binaries the node runs is the component modules' (components.binaries) and the
addons'. One module per job:

    appliance  the tree from the inputs, and build(): squashfs parts, /init, segments
    elf        the ldd closure of every ELF
    modules    kernel modules with their dependencies and depmod's output
    squashfs   a part as one squashfs file, cached by content
    stage0     /init of the appliance (stage0.sh, a busybox script)
    segments   one compressed segment per part, cached by content; the size report
    stage1     the first stage (LinuxBoot / PXE)
"""

from k4s.mkimage.appliance import Inputs, build
from k4s.mkimage.modules import kernel_release
from k4s.mkimage.segments import Segment, report, report_json
from k4s.mkimage.stage1 import build_stage1, check_ca_bundle

__all__ = ["Inputs", "Segment", "build", "build_stage1", "check_ca_bundle", "kernel_release", "report",
           "report_json"]
