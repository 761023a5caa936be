#!/usr/bin/env bash
# Installs everything k4s needs to build, test and boot, idempotently.
# Host tools come from Debian; the kernel and busybox are extracted (not
# installed) into the cache so the build host's own boot is never touched.
set -euo pipefail

CACHE=${K4S_CACHE:-/var/cache/k4s}
PY=${PYTHON:-python3}
APT_PACKAGES=(
  qemu-system-x86 qemu-utils        # boot the appliance under TCG
  ipxe-qemu                         # the NIC ROMs that PXE-boot the appliance (iPXE)
  zstd xz-utils cpio                # initramfs compression and inspection
  squashfs-tools erofs-utils        # compressed read-only images (measured)
  libseccomp-dev pkg-config gcc     # runc links libseccomp through cgo
  musl-tools                        # the static pause binary (tens of KB, not 700)
  openssl                           # tests verify certificates with openssl
  nftables iptables conntrack       # packed into the appliance for kube-proxy/CNI
  iproute2 kmod busybox-static      # host tests (netns) and depmod
  util-linux mount e2fsprogs
  ovmf systemd-boot-efi binutils   # UEFI firmware for QEMU, the EFI stub of stage 1's UKI, objcopy
  sbsigntool dosfstools mtools      # Authenticode signing (Secure Boot), an ESP image without mounting
  swtpm                             # a TPM 2.0 for the VMs (measured boot)
  cryptsetup-bin                    # packed into the appliance: the sealed (LUKS2) data disk
)

say() { printf 'setup: %s\n' "$*"; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The kernel: Debian's linux-image-amd64, unpacked into the cache.
kdir="$CACHE/kernel"
if ! ls "$kdir"/boot/vmlinuz-* >/dev/null 2>&1; then
  say "fetching Debian's linux-image-amd64 into $kdir"
  apt-get update -qq
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  tmp=$(mktemp -d)
  chmod 0777 "$tmp"  # apt downloads as _apt
  (cd "$tmp" && apt-get download -qq "$pkg")
  rm -rf "$kdir.tmp" && mkdir -p "$kdir.tmp"
  dpkg-deb -x "$tmp"/*.deb "$kdir.tmp"
  rm -rf "$tmp" "$kdir" && mv "$kdir.tmp" "$kdir"
fi

# Go toolchain: the components pin a minimum version.
need_go=1.25
have_go=$(go env GOVERSION 2>/dev/null | sed 's/^go//') || { echo "setup: go not found; install Go >= $need_go" >&2; exit 1; }
if [ "$(printf '%s\n%s\n' "$need_go" "$have_go" | sort -V | head -1)" != "$need_go" ]; then
  echo "setup: Go $have_go is older than $need_go; install a newer Go" >&2; exit 1
fi

# Python: the package itself with its dev extra (pytest, pyinstaller, linters).
if ! $PY -c 'import k4s, click, cryptography, nacl, yaml, psutil, pytest, hypothesis, PyInstaller, pefile, virt.firmware' 2>/dev/null \
   || [ pyproject.toml -nt "$CACHE/.pip-stamp" ]; then
  say "pip install -e .[dev]"
  $PY -m pip install -q -e ".[dev]"
  mkdir -p "$CACHE" && touch "$CACHE/.pip-stamp"
fi
say "ok"
