// Command argocd-health prints what Argo CD's health check of
// charts/siphon/argocd-health.lua says of the object (JSON) on stdin:
// "<status> <message>". The end-to-end tests feed it live captures.
package main

import (
	"fmt"
	"io"
	"os"

	argocdhealth "siphon.local/e2e/argocd-health"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: argocd-health SCRIPT.lua < object.json")
		os.Exit(2)
	}
	source, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "argocd-health:", err)
		os.Exit(2)
	}
	object, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "argocd-health:", err)
		os.Exit(2)
	}
	hs, err := argocdhealth.Evaluate(string(source), object)
	if err != nil {
		fmt.Fprintln(os.Stderr, "argocd-health:", err)
		os.Exit(1)
	}
	fmt.Printf("%s %s\n", hs.Status, hs.Message)
}
