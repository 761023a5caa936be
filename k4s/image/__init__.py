"""The image formats, low in the layering (boot and the node read them too): the cpio tree,
writer and defensive reader (cpio), the airgap OCI images (oci), and the signed payload
manifest (manifest). Assembling the image from parts is k4s.mkimage; the upstream
components are built by build/components/build.py."""
