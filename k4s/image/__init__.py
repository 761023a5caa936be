"""Building the appliance image: the cpio tree and writer (cpio), the airgap OCI
images (oci), and the assembly of parts into the initramfs (assemble).
The upstream components are built by build/components/build.py."""
