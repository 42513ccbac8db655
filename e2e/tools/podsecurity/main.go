// Command podsecurity checks the pods of Kubernetes manifests against a Pod
// Security Standard, with the checks of the API server's own PodSecurity
// admission (k8s.io/pod-security-admission), so that a chart can be proved
// to run in a namespace that enforces `restricted` without a cluster.
//
//	helm template ... | podsecurity              # level restricted, latest version
//	podsecurity -level baseline < manifests.yaml
//
// It reads YAML or JSON documents (Lists unpacked) on stdin and checks the
// pod of every Pod and the pod template of every Deployment, StatefulSet,
// DaemonSet, ReplicaSet, ReplicationController, Job and CronJob. It prints
// one line per object and, for each one that falls short, what PodSecurity
// admission would say. Exit codes: 0 every pod meets the level, 1 some do
// not, 2 bad usage or input.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	psaapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

// templatePath is where each workload kind holds its pod template.
var templatePath = map[string][]string{
	"Deployment":            {"spec", "template"},
	"StatefulSet":           {"spec", "template"},
	"DaemonSet":             {"spec", "template"},
	"ReplicaSet":            {"spec", "template"},
	"ReplicationController": {"spec", "template"},
	"Job":                   {"spec", "template"},
	"CronJob":               {"spec", "jobTemplate", "spec", "template"},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("podsecurity", flag.ContinueOnError)
	flags.SetOutput(stderr)
	levelFlag := flags.String("level", "restricted", "Pod Security Standard: privileged, baseline or restricted")
	versionFlag := flags.String("version", "latest", "version of the standard: latest or v1.NN")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	level, err := psaapi.ParseLevel(*levelFlag)
	if err != nil {
		fmt.Fprintf(stderr, "podsecurity: -level: %v\n", err)
		return 2
	}
	version, err := psaapi.ParseVersion(*versionFlag)
	if err != nil {
		fmt.Fprintf(stderr, "podsecurity: -version: %v\n", err)
		return 2
	}
	lv := psaapi.LevelVersion{Level: level, Version: version}
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		fmt.Fprintf(stderr, "podsecurity: %v\n", err)
		return 2
	}
	objects, err := read(stdin)
	if err != nil {
		fmt.Fprintf(stderr, "podsecurity: %v\n", err)
		return 2
	}

	checked, failed := 0, 0
	for _, u := range objects {
		template, ok, err := podTemplate(u)
		if err != nil {
			fmt.Fprintf(stderr, "podsecurity: %s: %v\n", ref(u), err)
			return 2
		}
		if !ok {
			continue
		}
		checked++
		result := policy.AggregateCheckResults(evaluator.EvaluatePod(lv, &template.ObjectMeta, &template.Spec))
		if result.Allowed {
			fmt.Fprintf(stdout, "ok\t%s\tmeets %s\n", ref(u), lv.String())
			continue
		}
		failed++
		fmt.Fprintf(stdout, "FAIL\t%s\tviolates PodSecurity %q: %s\n", ref(u), lv.String(), result.ForbiddenDetail())
	}
	if checked == 0 {
		fmt.Fprintln(stderr, "podsecurity: no pod or workload on stdin")
		return 2
	}
	if failed > 0 {
		return 1
	}
	return 0
}

// podTemplate returns the pod (template) of a Pod or workload; ok is false
// for other kinds.
func podTemplate(u *unstructured.Unstructured) (corev1.PodTemplateSpec, bool, error) {
	var t corev1.PodTemplateSpec
	if u.GetKind() == "Pod" {
		var pod corev1.Pod
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &pod); err != nil {
			return t, false, err
		}
		return corev1.PodTemplateSpec{ObjectMeta: pod.ObjectMeta, Spec: pod.Spec}, true, nil
	}
	path, ok := templatePath[u.GetKind()]
	if !ok {
		return t, false, nil
	}
	m, found, err := unstructured.NestedMap(u.Object, path...)
	if err != nil {
		return t, false, err
	}
	if !found {
		return t, false, fmt.Errorf("no %s", strings.Join(path, "."))
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m, &t); err != nil {
		return t, false, err
	}
	return t, true, nil
}

// read decodes every object on r: JSON or YAML documents, Lists unpacked.
func read(r io.Reader) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	var out []*unstructured.Unstructured
	for doc := 1; ; doc++ {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("document %d is neither JSON nor YAML: %w", doc, err)
		}
		if len(raw) == 0 || string(raw) == "null" {
			continue
		}
		obj, err := runtime.Decode(unstructured.UnstructuredJSONScheme, raw)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", doc, err)
		}
		switch o := obj.(type) {
		case *unstructured.UnstructuredList:
			for i := range o.Items {
				out = append(out, &o.Items[i])
			}
		case *unstructured.Unstructured:
			out = append(out, o)
		}
	}
}

func ref(u *unstructured.Unstructured) string {
	if ns := u.GetNamespace(); ns != "" {
		return u.GetKind() + "/" + ns + "/" + u.GetName()
	}
	return u.GetKind() + "/" + u.GetName()
}
