//go:build tools

// Package tools pins github.com/rancher/local-path-provisioner in this module's go.mod and
// go.sum.
//
// The module builds upstream's own main package, unchanged:
//
//	go build github.com/rancher/local-path-provisioner
//
// The import is never compiled (the "tools" tag is never set); it only lets `go mod tidy`
// keep the requirement and every checksum the build needs.
package tools

import _ "github.com/rancher/local-path-provisioner"
