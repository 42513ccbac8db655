// Command kubeschemas writes kubeconform's JSON schemas from what a real API
// server serves and from CRD manifests, so that manifests are validated
// offline against exactly the cluster (and the CRDs) they are meant for.
//
//	kubectl get --raw /openapi/v2 > openapi.json
//	kubeschemas -out DIR -openapi openapi.json -crd crds/postgrescapture.yaml
//	kubeconform -strict -schema-location "DIR/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" ...
//
// One file per group, version and kind: DIR/<group>/<kind>_<version>.json,
// kind in lower case, the group of the core API being its version ("v1"),
// as kubeconform's {{ .Group }} names it. Each file is standalone: the
// definitions it refers to travel with it under "definitions".
//
// The schemas are strict, as `kubeconform -strict` expects: an object with
// properties refuses others (a misspelled field), unless Kubernetes itself
// keeps unknown fields there (x-kubernetes-preserve-unknown-fields).
// Kubernetes' own encodings are spelled out in JSON Schema: int-or-string
// values take an integer or a string, quantities a string or a number,
// nullable values null.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

type gvk struct{ group, version, kind string }

// path is where kubeconform looks for this kind's schema under DIR.
func (g gvk) path(dir string) string {
	groupDir := g.group
	if groupDir == "" {
		groupDir = g.version
	}
	return filepath.Join(dir, groupDir, strings.ToLower(g.kind)+"_"+g.version+".json")
}

type schema = map[string]any

func main() {
	out := flag.String("out", "", "directory to write the schemas into (created; files in it are replaced)")
	openapi := flag.String("openapi", "", "the API server's /openapi/v2 document (JSON)")
	var crds multi
	flag.Var(&crds, "crd", "a CustomResourceDefinition manifest (YAML or JSON); may be repeated")
	flag.Parse()
	if *out == "" || (*openapi == "" && len(crds) == 0) {
		fmt.Fprintln(os.Stderr, "usage: kubeschemas -out DIR [-openapi openapi-v2.json] [-crd crd.yaml ...]")
		os.Exit(2)
	}
	written := 0
	if *openapi != "" {
		n, err := fromOpenAPI(*openapi, *out)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kubeschemas: %s: %v\n", *openapi, err)
			os.Exit(1)
		}
		written += n
	}
	for _, file := range crds {
		n, err := fromCRD(file, *out)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kubeschemas: %s: %v\n", file, err)
			os.Exit(1)
		}
		written += n
	}
	fmt.Fprintf(os.Stderr, "kubeschemas: wrote %d schemas into %s\n", written, *out)
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

// fromOpenAPI writes a schema per kind of a Swagger 2.0 document.
func fromOpenAPI(file, dir string) (int, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	var doc struct {
		Swagger     string            `json:"swagger"`
		Definitions map[string]schema `json:"definitions"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return 0, fmt.Errorf("not an OpenAPI v2 document: %w", err)
	}
	if len(doc.Definitions) == 0 {
		return 0, errors.New("no definitions: is this `kubectl get --raw /openapi/v2`?")
	}
	for name, def := range doc.Definitions {
		doc.Definitions[name] = fixV2(name, def)
	}
	names := make([]string, 0, len(doc.Definitions))
	for name := range doc.Definitions {
		names = append(names, name)
	}
	sort.Strings(names)
	written := 0
	for _, name := range names {
		def := doc.Definitions[name]
		kinds, _ := def["x-kubernetes-group-version-kind"].([]any)
		for _, k := range kinds {
			m, _ := k.(map[string]any)
			g := gvk{str(m["group"]), str(m["version"]), str(m["kind"])}
			if g.kind == "" || g.version == "" {
				continue
			}
			root := copyMap(def)
			root["$schema"] = "http://json-schema.org/draft-04/schema#"
			if refs := closure(def, doc.Definitions); len(refs) > 0 {
				root["definitions"] = refs
			}
			if err := write(g.path(dir), root); err != nil {
				return written, err
			}
			written++
		}
	}
	return written, nil
}

// closure collects every definition `def` refers to, transitively.
func closure(def schema, all map[string]schema) map[string]any {
	out := map[string]any{}
	var visit func(v any)
	visit = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if ref, ok := v["$ref"].(string); ok {
				name := strings.TrimPrefix(ref, "#/definitions/")
				if _, seen := out[name]; !seen {
					if target, ok := all[name]; ok {
						out[name] = target
						visit(target)
					}
				}
			}
			for _, child := range v {
				visit(child)
			}
		case []any:
			for _, child := range v {
				visit(child)
			}
		}
	}
	visit(def)
	return out
}

// fixV2 spells out Kubernetes' encodings in one Swagger definition.
func fixV2(name string, def schema) schema {
	if name == "io.k8s.apimachinery.pkg.api.resource.Quantity" {
		return schema{"description": def["description"], "oneOf": []any{
			schema{"type": "string"}, schema{"type": "number"},
		}}
	}
	return walk(def).(schema)
}

// walk makes every object schema below v strict and int-or-string values
// lenient, for Swagger 2.0 and for CRDs' OpenAPI v3 alike.
func walk(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for key, child := range v {
			switch key {
			case "properties", "patternProperties", "definitions":
				if props, ok := child.(map[string]any); ok {
					for name, p := range props {
						props[name] = walk(p)
					}
				}
			case "items", "additionalProperties", "not":
				if _, ok := child.(map[string]any); ok {
					v[key] = walk(child)
				}
			case "allOf", "anyOf", "oneOf":
				if list, ok := child.([]any); ok {
					for i, item := range list {
						list[i] = walk(item)
					}
				}
			}
		}
		if v["format"] == "int-or-string" || v["x-kubernetes-int-or-string"] == true {
			delete(v, "type")
			delete(v, "format")
			v["oneOf"] = []any{schema{"type": "string"}, schema{"type": "integer"}}
		}
		if v["nullable"] == true {
			if t, ok := v["type"].(string); ok {
				v["type"] = []any{t, "null"}
			}
		}
		_, hasProps := v["properties"]
		_, hasExtra := v["additionalProperties"]
		if hasProps && !hasExtra && v["x-kubernetes-preserve-unknown-fields"] != true {
			v["additionalProperties"] = false
		}
		return v
	default:
		return v
	}
}

// fromCRD writes a schema per served version of a CRD manifest.
func fromCRD(file, dir string) (int, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	var crd struct {
		Kind string `json:"kind"`
		Spec struct {
			Group string `json:"group"`
			Names struct {
				Kind string `json:"kind"`
			} `json:"names"`
			Versions []struct {
				Name   string `json:"name"`
				Served bool   `json:"served"`
				Schema struct {
					OpenAPIV3Schema schema `json:"openAPIV3Schema"`
				} `json:"schema"`
			} `json:"versions"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(raw, &crd); err != nil {
		return 0, fmt.Errorf("not a CRD manifest: %w", err)
	}
	if crd.Kind != "CustomResourceDefinition" {
		return 0, fmt.Errorf("kind is %q, not CustomResourceDefinition", crd.Kind)
	}
	written := 0
	for _, v := range crd.Spec.Versions {
		if !v.Served || v.Schema.OpenAPIV3Schema == nil {
			continue
		}
		root := walk(v.Schema.OpenAPIV3Schema).(schema)
		// The API server checks these for every kind; a CRD's schema may
		// leave them out.
		props, _ := root["properties"].(map[string]any)
		if props == nil {
			props = map[string]any{}
			root["properties"] = props
		}
		props["apiVersion"] = schema{"type": "string", "enum": []any{crd.Spec.Group + "/" + v.Name}}
		props["kind"] = schema{"type": "string", "enum": []any{crd.Spec.Names.Kind}}
		if _, ok := props["metadata"]; !ok {
			props["metadata"] = schema{"type": "object"}
		}
		root["required"] = union(root["required"], "apiVersion", "kind")
		root["$schema"] = "http://json-schema.org/draft-04/schema#"
		g := gvk{crd.Spec.Group, v.Name, crd.Spec.Names.Kind}
		if err := write(g.path(dir), root); err != nil {
			return written, err
		}
		written++
	}
	if written == 0 {
		return 0, errors.New("no served version with an openAPIV3Schema")
	}
	return written, nil
}

func union(list any, more ...string) []any {
	out, _ := list.([]any)
	for _, m := range more {
		found := false
		for _, o := range out {
			found = found || o == m
		}
		if !found {
			out = append(out, m)
		}
	}
	return out
}

func write(path string, s schema) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

func copyMap(m schema) schema {
	out := make(schema, len(m)+2)
	for k, v := range m {
		out[k] = v
	}
	return out
}

func str(v any) string {
	s, _ := v.(string)
	return s
}
