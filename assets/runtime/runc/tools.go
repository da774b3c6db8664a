//go:build tools

// Package tools pins github.com/opencontainers/runc in this module's go.mod and go.sum.
//
// The module builds upstream's own main package (the module root), unchanged:
//
//	go build github.com/opencontainers/runc
//
// The import is never compiled (the "tools" tag is never set); it only lets `go mod tidy`
// keep the requirement and every checksum the build needs.
package tools

import _ "github.com/opencontainers/runc"
