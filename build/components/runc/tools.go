//go:build tools

// Package tools pins the upstream runc main package this module builds (cgo, libseccomp).
package tools

import _ "github.com/opencontainers/runc"
