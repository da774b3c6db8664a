//go:build tools

// Package tools pins github.com/containerd/containerd/v2 in this module's go.mod and go.sum.
//
// The module builds upstream's own main packages, unchanged:
//
//	go build github.com/containerd/containerd/v2/cmd/containerd
//	go build github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
//	go build github.com/containerd/containerd/v2/cmd/ctr
//
// The imports are never compiled (the "tools" tag is never set); they only let `go mod tidy`
// keep the requirement and every checksum the build needs.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
