"""Where everything lives: the one table of paths, derived from data-dir and run-dir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Fixed locations inside the appliance image.
LIBEXEC = Path("/usr/libexec/k4s")          # upstream binaries
IMAGES = Path("/usr/share/k4s/images")      # airgap OCI tarballs packed into the image
MANIFESTS = Path("/usr/share/k4s/manifests")  # auto-deploy manifests packed into the image


@dataclass(frozen=True)
class Paths:
    data: Path
    run: Path

    @classmethod
    def of(cls, data_dir: str, run_dir: str) -> Paths:
        return cls(Path(data_dir), Path(run_dir))

    # PKI, laid out like kubeadm's /etc/kubernetes/pki.
    @property
    def pki(self) -> Path:
        return self.data / "pki"

    @property
    def kubeconfigs(self) -> Path:
        return self.data / "kubeconfig"

    def kubeconfig(self, user: str) -> Path:
        return self.kubeconfigs / f"{user}.conf"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.kubeconfig("admin")

    @property
    def manifests(self) -> Path:
        """The auto-deploy directory, like k3s's server/manifests."""
        return self.data / "manifests"

    @property
    def logs(self) -> Path:
        return self.run / "log"

    @property
    def status(self) -> Path:
        return self.run / "status.json"
