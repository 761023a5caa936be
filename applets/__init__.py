"""The applet table: name -> (module path, one-line summary).

Dispatch imports only the module of the applet it runs. The PyInstaller spec
derives its hidden imports from this table, and the frozen smoke test runs
every applet here with --help through a symlink.
"""

from __future__ import annotations

APPLETS: dict[str, tuple[str, str]] = {
    "config": ("applets.config", "show or validate the effective configuration"),
    "oci": ("applets.oci", "build and list the airgap OCI image tarballs"),
    "pki": ("applets.pki", "create, renew and check the cluster certificates and kubeconfigs"),
}
