// Command kstatus prints the kstatus status of Kubernetes objects: the
// status Flux, kpt and cli-utils' appliers wait on (Current, InProgress,
// Failed, Terminating, Unknown), computed by
// sigs.k8s.io/cli-utils/pkg/kstatus/status from the object alone.
//
// It reads stdin: one object in JSON or YAML, several YAML documents, or a
// List (what `kubectl get -o json` prints for more than one object). For
// each object it prints one tab-separated line:
//
//	STATUS	KIND/NAMESPACE/NAME	MESSAGE
//
// or, with -o json, one JSON object per line. With -want STATUS it exits 3
// when any object's status differs, so a script can assert on it:
//
//	kubectl get pgcap shop -o json | kstatus -want Current
//
// Exit codes: 0 done, 1 status could not be computed, 2 bad usage or
// input, 3 an object is not in the wanted status.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// line is one object's outcome, as -o json prints it.
type line struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("kstatus", flag.ContinueOnError)
	flags.SetOutput(stderr)
	output := flags.String("o", "text", "output format: text (tab-separated) or json (one object per line)")
	want := flags.String("want", "", "exit 3 unless every object has this status (Current, InProgress, Failed, Terminating, Unknown)")
	flags.Usage = func() {
		fmt.Fprintln(stderr, "usage: kstatus [-o text|json] [-want STATUS] < object.(json|yaml)")
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if flags.NArg() > 0 {
		fmt.Fprintf(stderr, "kstatus: unexpected argument %q: the object is read from stdin\n", flags.Arg(0))
		return 2
	}
	if *output != "text" && *output != "json" {
		fmt.Fprintf(stderr, "kstatus: -o %q: want text or json\n", *output)
		return 2
	}
	if *want != "" && !known(*want) {
		fmt.Fprintf(stderr, "kstatus: -want %q: want one of %v\n", *want, status.Statuses)
		return 2
	}

	objects, docs, err := read(stdin)
	if err != nil {
		fmt.Fprintf(stderr, "kstatus: %v\n", err)
		return 2
	}
	// An empty List (`kubectl get KIND -o json` where there is none) is
	// nothing to report, not an error.
	if docs == 0 {
		fmt.Fprintln(stderr, "kstatus: no object on stdin (pipe `kubectl get KIND NAME -o json` in)")
		return 2
	}

	code := 0
	enc := json.NewEncoder(stdout)
	for _, u := range objects {
		res, err := status.Compute(u)
		if err != nil {
			fmt.Fprintf(stderr, "kstatus: %s: %v\n", ref(u), err)
			code = 1
			continue
		}
		l := line{
			Kind:      u.GetKind(),
			Namespace: u.GetNamespace(),
			Name:      u.GetName(),
			Status:    res.Status.String(),
			Message:   res.Message,
		}
		if *output == "json" {
			if err := enc.Encode(l); err != nil {
				fmt.Fprintf(stderr, "kstatus: %v\n", err)
				return 1
			}
		} else {
			fmt.Fprintf(stdout, "%s\t%s\t%s\n", l.Status, ref(u), oneLine(l.Message))
		}
		if *want != "" && l.Status != *want && code == 0 {
			code = 3
		}
	}
	return code
}

// read decodes every object on r: JSON or YAML documents, Lists unpacked.
// Numbers stay integers (kstatus compares generations as int64), as
// unstructured's own JSON decoding keeps them.
func read(r io.Reader) (out []*unstructured.Unstructured, docs int, err error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	for doc := 1; ; doc++ {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return out, docs, nil
			}
			return nil, docs, fmt.Errorf("document %d is neither JSON nor YAML: %w", doc, err)
		}
		if len(raw) == 0 || string(raw) == "null" { // an empty YAML document
			continue
		}
		var probe struct {
			Kind string `json:"kind"`
		}
		if err := json.Unmarshal(raw, &probe); err != nil {
			return nil, docs, fmt.Errorf("document %d is not an object: %w", doc, err)
		}
		if probe.Kind == "" {
			return nil, docs, fmt.Errorf("document %d has no kind: is it a Kubernetes object?", doc)
		}
		docs++
		obj, err := runtime.Decode(unstructured.UnstructuredJSONScheme, raw)
		if err != nil {
			return nil, docs, fmt.Errorf("document %d: %w", doc, err)
		}
		switch o := obj.(type) {
		case *unstructured.UnstructuredList:
			for i := range o.Items {
				out = append(out, &o.Items[i])
			}
		case *unstructured.Unstructured:
			out = append(out, o)
		default:
			return nil, docs, fmt.Errorf("document %d decoded as %T", doc, obj)
		}
	}
}

func known(s string) bool {
	for _, k := range status.Statuses {
		if k.String() == s {
			return true
		}
	}
	return false
}

func ref(u *unstructured.Unstructured) string {
	if ns := u.GetNamespace(); ns != "" {
		return u.GetKind() + "/" + ns + "/" + u.GetName()
	}
	return u.GetKind() + "/" + u.GetName()
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
