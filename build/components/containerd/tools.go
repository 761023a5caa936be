//go:build tools

// Package tools pins the upstream shim main package this module also builds.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
)
