// Command coredns is CoreDNS with only the plugins a Kubernetes cluster's DNS uses.
//
// Upstream's main imports core/plugin, which links every in-tree plugin (route53, azure,
// clouddns and their cloud SDKs among them). We import the plugins we need one by one and
// cut dnsserver.Directives down to them. Directives is also the order in which a request
// passes through the plugins, so the list below keeps upstream's relative order
// (core/dnsserver/zdirectives.go, generated from plugin.cfg); a plugin missing from it
// would make a Corefile naming it fail with "unknown directive".
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// directives is the subset of upstream's Directives we link, in upstream's order. The
// metrics plugin registers itself under the directive name "prometheus". metadata, debug,
// dnstap and transfer are not imported here but come in with kubernetes and forward; they are
// listed so that every linked plugin can also be named in a Corefile. main_test.go checks
// both properties against upstream's list.
var directives = []string{
	"metadata",
	"reload",
	"debug",
	"ready",
	"health",
	"prometheus",
	"errors",
	"log",
	"dnstap",
	"loadbalance",
	"cache",
	"transfer",
	"hosts",
	"kubernetes",
	"loop",
	"forward",
}

func main() {
	// The server type reads Directives through a closure when the Corefile is parsed, so
	// replacing it here, before Run, is early enough.
	dnsserver.Directives = directives
	coremain.Run()
}
