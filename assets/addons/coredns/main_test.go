package main

import (
	"strings"
	"testing"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
)

// In a test, main has not run: dnsserver.Directives still holds upstream's full list.

func TestDirectivesKeepUpstreamOrder(t *testing.T) {
	pos := map[string]int{}
	for i, d := range dnsserver.Directives {
		pos[d] = i
	}
	last := -1
	for _, d := range directives {
		i, ok := pos[d]
		if !ok {
			t.Fatalf("%q is not an upstream directive", d)
		}
		if i <= last {
			t.Fatalf("%q is out of upstream's order (core/dnsserver/zdirectives.go)", d)
		}
		last = i
	}
}

func TestEveryLinkedPluginIsADirective(t *testing.T) {
	ours := map[string]bool{}
	for _, d := range directives {
		ours[d] = true
	}
	linked := 0
	for _, p := range caddy.ListPlugins()["others"] {
		name, ok := strings.CutPrefix(p, "dns.")
		if !ok {
			continue
		}
		linked++
		if !ours[name] {
			t.Errorf("plugin %q is linked but not in directives: a Corefile naming it would fail", name)
		}
	}
	if linked != len(directives) {
		t.Errorf("%d dns plugins linked, %d directives listed", linked, len(directives))
	}
}
