package main

import (
	"sync"
	_ "unsafe" // for go:linkname

	_ "k8s.io/kubernetes/pkg/securitycontext"
)

// Paths k4s masks in every container, beside the kubelet's own list.
//
// A kernel command line is readable by every pod (/proc/cmdline is not namespaced)
// and so is the boot config; DMI names the machine. k4s keeps no secret on the
// command line, and masks it anyway, as upstream masks the host's other files a pod
// has no business reading.
//
// Why here and not in containerd's base runtime spec: the kubelet hands containerd
// the paths to mask with every container (CRI's masked_paths, from
// securitycontext.ConvertToRuntimeMaskedPaths), and containerd replaces the spec's
// list with it (oci.WithMaskedPaths), so a base spec's additions never reach runc.
// The kubelet's default list is the one list every container gets; a pod that asks
// for an Unmasked procMount (which needs privileges Pod Security baseline refuses)
// still gets none, as upstream.
var extraMaskedPaths = []string{"/proc/cmdline", "/proc/bootconfig", "/sys/devices/virtual/dmi"}

//go:linkname defaultMaskedPaths k8s.io/kubernetes/pkg/securitycontext.defaultMaskedPaths
var defaultMaskedPaths func() []string

func init() {
	upstream := defaultMaskedPaths
	defaultMaskedPaths = sync.OnceValue(func() []string {
		return append(append([]string{}, upstream()...), extraMaskedPaths...)
	})
}
