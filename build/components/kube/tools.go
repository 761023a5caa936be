//go:build tools

// The module localpath/ is generated from: go.mod pins its version, and go.sum its hash.
package main

import _ "github.com/rancher/local-path-provisioner"
