// Command kubebin is k8sd's multi-call build of the upstream Kubernetes components.
//
// It runs exactly one component per process, chosen by basename(argv[0]) or, failing that, by
// the first argument: `kubebin kube-apiserver --flags…` or a symlink named kube-apiserver.
// Only the chosen component's cobra command is constructed, because the constructors touch
// process-global state (signal handlers, feature gates, klog, Prometheus registries) and a
// second SetupSignalContext() call panics.
//
// The version is pinned in VERSION next to this file and stamped in by scripts/build-kube.sh.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/spf13/cobra"

	_ "time/tzdata" // CronJob time zone support, as in upstream's kube-apiserver and kcm mains.

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format registration.
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics plugins.
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric registration.

	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"

	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxyapp "k8s.io/kubernetes/cmd/kube-proxy/app"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"
)

// components maps a personality to its constructor. Nothing here runs until one is selected.
var components = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserverapp.NewAPIServerCommand,
	"kube-controller-manager": kcmapp.NewControllerManagerCommand,
	// NewSchedulerCommand is variadic (out-of-tree plugin registries), hence the wrapper.
	"kube-scheduler": func() *cobra.Command { return schedulerapp.NewSchedulerCommand() },
	"kube-proxy":     proxyapp.NewProxyCommand,
	"kubelet":        func() *cobra.Command { return kubeletapp.NewKubeletCommand(context.Background()) },
}

func names() []string {
	out := []string{"kubectl"}
	for n := range components {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if !known(name) {
		if len(args) == 0 {
			usage("")
		}
		name, args = args[0], args[1:]
		if !known(name) {
			usage(name)
		}
	}
	// Cobra reads os.Args[1:] when SetArgs was not called with a non-nil slice, so pass an
	// explicit empty slice rather than nil, and make argv[0] the component's name for help text.
	if args == nil {
		args = []string{}
	}
	os.Args = append([]string{name}, args...)

	if name == "kubectl" {
		os.Exit(runKubectl(args))
	}
	cmd := components[name]()
	cmd.SetArgs(args)
	os.Exit(cli.Run(cmd))
}

func known(name string) bool {
	if name == "kubectl" {
		return true
	}
	_, ok := components[name]
	return ok
}

// runKubectl mirrors upstream's cmd/kubectl/kubectl.go.
func runKubectl(args []string) int {
	// Upstream parses -v early so that klog is configured before cobra runs.
	logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) //nolint:errcheck
	cmd := kubectlcmd.NewDefaultKubectlCommand()
	cmd.SetArgs(args)
	if err := cli.RunNoErrOutput(cmd); err != nil {
		kubectlutil.CheckErr(err) // prints the error and exits non-zero
	}
	return 0
}

// usage reports an unknown or missing component and exits 2, the usual code for bad usage.
func usage(name string) {
	if name == "" {
		fmt.Fprintf(os.Stderr, "kubebin: no component given; usage: kubebin COMPONENT [FLAGS...], COMPONENT one of %v\n", names())
	} else {
		fmt.Fprintf(os.Stderr, "kubebin: unknown component %q; run as one of %v (by argv[0] or first argument)\n", name, names())
	}
	os.Exit(2)
}
