"""Tools for the build host: booting the appliance in QEMU (vm)."""
