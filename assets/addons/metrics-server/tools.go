//go:build tools

// Package tools pins sigs.k8s.io/metrics-server in this module's go.mod and go.sum.
//
// The module builds upstream's own main package, unchanged:
//
//	go build sigs.k8s.io/metrics-server/cmd/metrics-server
//
// The import is never compiled (the "tools" tag is never set); it only lets `go mod tidy`
// keep the requirement and every checksum the build needs.
package tools

import _ "sigs.k8s.io/metrics-server/cmd/metrics-server"
