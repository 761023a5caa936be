//go:build tools

// Package tools pins the upstream shim main package this module builds: one runs per pod, so it
// stays a small binary of its own (containerd itself is in the kube multicall).
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
)
