// Command siphon-kube is a multi-call binary holding the Kubernetes control
// plane that Siphon's local end-to-end stack runs: etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler, built from the official Go
// modules so the stack needs neither release downloads nor a container engine.
//
// The first argument selects the component; every remaining argument goes to
// that component exactly as its upstream binary would receive it:
//
//	siphon-kube etcd --data-dir ... --listen-client-urls ...
//	siphon-kube kube-apiserver --etcd-servers ... --secure-port ...
//
// A symlink named after a component works as well (busybox style).
//
// Each entry point mirrors the upstream main package (cmd/<name>/<name>.go in
// k8s.io/kubernetes, server/main.go in etcd), including its blank imports.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	_ "time/tzdata" // CronJob time zones, as in upstream kube-apiserver and kube-controller-manager

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go prometheus plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric registration
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

// components maps a component name to its entry point. args[0] is the
// component name; the rest are the component's own arguments.
var components = map[string]func(args []string) int{
	"etcd": func(args []string) int {
		// etcdmain.Main expects a full argv (it skips args[0]) and exits
		// the process itself on failure.
		etcdmain.Main(args)
		return 0
	},
	"kube-apiserver": func(args []string) int {
		return runCobra(apiserver.NewAPIServerCommand(), args[1:])
	},
	"kube-controller-manager": func(args []string) int {
		return runCobra(controllermanager.NewControllerManagerCommand(), args[1:])
	},
	"kube-scheduler": func(args []string) int {
		return runCobra(scheduler.NewSchedulerCommand(), args[1:])
	},
}

// runCobra runs a Kubernetes component command with explicit arguments,
// since cobra would otherwise read os.Args[1:], which here starts with the
// component name.
func runCobra(cmd *cobra.Command, args []string) int {
	if args == nil {
		args = []string{}
	}
	cmd.SetArgs(args)
	return cli.Run(cmd)
}

func usage() {
	names := make([]string, 0, len(components))
	for name := range components {
		names = append(names, name)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "usage: siphon-kube <component> [args...]\ncomponents:\n")
	for _, name := range names {
		fmt.Fprintf(os.Stderr, "  %s\n", name)
	}
}

func main() {
	// Busybox style: invoked through a symlink named after a component.
	if run, ok := components[filepath.Base(os.Args[0])]; ok {
		os.Exit(run(append([]string{filepath.Base(os.Args[0])}, os.Args[1:]...)))
	}
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	run, ok := components[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "siphon-kube: unknown component %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	os.Exit(run(os.Args[1:]))
}
