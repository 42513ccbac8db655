// Package argocdhealth tests charts/siphon/argocd-health.lua the way Argo CD
// runs a resource health check: in gopher-lua, with only the base, table and
// package libraries open, the resource as a Lua table in the global `obj`,
// and the returned table read as {status, message}.
package argocdhealth

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
)

const script = "../../charts/siphon/argocd-health.lua"
const conditionsRs = "../../crds/src/conditions.rs"

// The statuses Argo CD accepts from a health script.
var validStatus = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true,
	"Suspended": true, "Missing": true, "Unknown": true,
}

type health struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// toLua turns decoded JSON into Lua values as Argo does for an
// unstructured object: objects and arrays become tables (arrays 1-based),
// numbers LNumber, JSON null nil.
func toLua(L *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case json.Number:
		f, err := v.Float64()
		if err != nil {
			panic(fmt.Sprintf("number %q: %v", v, err))
		}
		return lua.LNumber(f)
	case []any:
		t := L.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(L, item))
		}
		return t
	case map[string]any:
		t := L.CreateTable(0, len(v))
		for key, item := range v {
			t.RawSetString(key, toLua(L, item))
		}
		return t
	default:
		panic(fmt.Sprintf("unexpected JSON value %T", v))
	}
}

// fromLua turns the returned table back into Go values (for JSON).
func fromLua(v lua.LValue) any {
	switch v := v.(type) {
	case *lua.LTable:
		if v.MaxN() > 0 {
			var out []any
			v.ForEach(func(_, item lua.LValue) { out = append(out, fromLua(item)) })
			return out
		}
		out := map[string]any{}
		v.ForEach(func(key, item lua.LValue) { out[key.String()] = fromLua(item) })
		return out
	case lua.LString:
		return string(v)
	case lua.LNumber:
		return float64(v)
	case lua.LBool:
		return bool(v)
	default:
		return nil
	}
}

// run executes the health script against one object.
func run(t *testing.T, source string, object []byte) health {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(object))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		t.Fatalf("fixture is not JSON: %v", err)
	}

	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		L.Push(L.NewFunction(lib.open))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	L.SetContext(ctx)
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(source); err != nil {
		t.Fatalf("the script failed: %v", err)
	}
	ret, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatalf("the script returned %s, not a table", L.Get(-1).Type())
	}
	raw, err := json.Marshal(fromLua(ret))
	if err != nil {
		t.Fatal(err)
	}
	var hs health
	if err := json.Unmarshal(raw, &hs); err != nil {
		t.Fatalf("the returned table %s is not {status, message}: %v", raw, err)
	}
	if !validStatus[hs.Status] {
		t.Fatalf("status %q is not one Argo CD accepts", hs.Status)
	}
	return hs
}

func readScript(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(script)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestFixtures(t *testing.T) {
	source := readScript(t)
	cases := []struct {
		fixture string
		status  string
		message string // a part of the message
	}{
		{"healthy-streaming.json", "Healthy", "Streaming: the worker is streaming changes into Kafka"},
		{"healthy-backfilling.json", "Healthy", "Streaming"},
		{"progressing-no-status.json", "Progressing", "generation 1"},
		{"progressing-new-generation.json", "Progressing", "reconcile generation 4"},
		{"progressing-ready-of-old-generation.json", "Progressing", "Ready condition of generation 3"},
		{"progressing-provisioning.json", "Progressing", "Provisioning: provisioning has not finished"},
		{"progressing-worker-starting.json", "Progressing", "WorkerStarting"},
		{"progressing-database-unreachable.json", "Progressing", "DatabaseUnreachable: cannot reach PostgreSQL"},
		{"progressing-no-ready-condition.json", "Progressing", "Waiting for the Ready condition"},
		{"degraded-stalled.json", "Degraded", "TableNotFound: table public.orders does not exist"},
		{"degraded-stalled-slot-lost.json", "Degraded", "SlotLost"},
		{"degraded-definite-reason-without-stalled.json", "Degraded", "WalLevelNotLogical: wal_level is replica"},
		{"degraded-teardown-blocked.json", "Degraded", "TeardownFailed"},
		{"progressing-deleting.json", "Progressing", "Deleting"},
		{"suspended.json", "Suspended", "spec.suspend is true: the worker is stopped and the slot retains WAL"},
		{"suspended-not-yet-observed.json", "Suspended", "spec.suspend is true"},
	}
	seen := map[string]bool{}
	for _, c := range cases {
		seen[c.fixture] = true
		t.Run(strings.TrimSuffix(c.fixture, ".json"), func(t *testing.T) {
			object, err := os.ReadFile(filepath.Join("testdata", c.fixture))
			if err != nil {
				t.Fatal(err)
			}
			got := run(t, source, object)
			if got.Status != c.status || !strings.Contains(got.Message, c.message) {
				t.Errorf("got %s %q, want %s with a message containing %q", got.Status, got.Message, c.status, c.message)
			}
		})
	}
	// Every fixture is checked: one added without a case would test nothing.
	files, err := filepath.Glob("testdata/*.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !seen[filepath.Base(f)] {
			t.Errorf("%s has no case in TestFixtures", f)
		}
	}
	// Each outcome the script can give has a fixture.
	for _, want := range []string{"Healthy", "Progressing", "Degraded", "Suspended"} {
		found := false
		for _, c := range cases {
			found = found || c.status == want
		}
		if !found {
			t.Errorf("no fixture ends %s", want)
		}
	}
}

// notDefinite are the reasons of crds/src/conditions.rs that are not a
// definite failure of Ready: reasons of True conditions, of warnings, and
// of waits that end by themselves (Ready=False with these is Progressing
// unless the operator also writes Stalled=True).
var notDefinite = map[string]string{
	"Reconciled":             "True",
	"Streaming":              "True",
	"Suspended":              "spec.suspend, Suspended",
	"DatabaseUnreachable":    "transient: the operator retries",
	"NoFreeReplicationSlots": "transient: another capture's teardown frees one",
	"NoFreeWalSenders":       "transient: a worker's exit frees one",
	"Provisioning":           "under way",
	"ProvisioningFailed":     "transient or definite: Stalled tells",
	"WorkerStarting":         "under way",
	"BackfillRunning":        "BackfillComplete, does not hold Ready back",
	"BackfillDone":           "True",
	"BackfillDisabled":       "True",
	"TeardownFailed":         "TeardownBlocked, only while deleting",
	"KafkaUnreachable":       "transient: records wait in the worker",
	"KafkaReachable":         "True",
	"CaptureInterrupted":     "transient: the worker restarts by itself",
	"CursorNotIndexed":       "a warning, does not hold Ready back",
	"Indexed":                "True",
}

// TestEveryReasonIsClassified keeps the script in step with the operator: a
// reason added to crds/src/conditions.rs fails here until it is put in the
// script's DEFINITE table or in notDefinite above.
func TestEveryReasonIsClassified(t *testing.T) {
	rs, err := os.ReadFile(conditionsRs)
	if err != nil {
		t.Fatal(err)
	}
	body := string(rs)
	start := strings.Index(body, "pub mod reason {")
	if start < 0 {
		t.Fatalf("%s has no `pub mod reason`", conditionsRs)
	}
	reasons := regexp.MustCompile(`(?m)^\s*pub const [A-Z0-9_]+: &str = "([A-Za-z0-9]+)";`).FindAllStringSubmatch(body[start:], -1)
	if len(reasons) == 0 {
		t.Fatalf("no reason found in %s", conditionsRs)
	}

	source := readScript(t)
	block := regexp.MustCompile(`(?s)local DEFINITE = \{(.*?)\n\}`).FindStringSubmatch(source)
	if block == nil {
		t.Fatal("the script has no `local DEFINITE = { ... }` table")
	}
	definite := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s*([A-Za-z0-9]+) = true,`).FindAllStringSubmatch(block[1], -1) {
		definite[m[1]] = true
	}

	known := map[string]bool{}
	var unclassified []string
	for _, m := range reasons {
		r := m[1]
		known[r] = true
		_, easy := notDefinite[r]
		switch {
		case definite[r] && easy:
			t.Errorf("reason %s is both in the script's DEFINITE and in notDefinite", r)
		case !definite[r] && !easy:
			unclassified = append(unclassified, r)
		}
	}
	sort.Strings(unclassified)
	if len(unclassified) > 0 {
		t.Errorf("reasons neither in %s's DEFINITE table nor in notDefinite: %v", script, unclassified)
	}
	for r := range definite {
		if !known[r] {
			t.Errorf("DEFINITE names %s, which %s does not define", r, conditionsRs)
		}
	}
	for r := range notDefinite {
		if !known[r] {
			t.Errorf("notDefinite names %s, which %s does not define", r, conditionsRs)
		}
	}
}

// TestDefiniteReasonsDegrade runs the script on Ready=False with each
// definite reason, with no Stalled condition (an operator before it).
func TestDefiniteReasonsDegrade(t *testing.T) {
	source := readScript(t)
	block := regexp.MustCompile(`(?s)local DEFINITE = \{(.*?)\n\}`).FindStringSubmatch(source)
	if block == nil {
		t.Fatal("the script has no DEFINITE table")
	}
	for _, m := range regexp.MustCompile(`(?m)^\s*([A-Za-z0-9]+) = true,`).FindAllStringSubmatch(block[1], -1) {
		reason := m[1]
		object := fmt.Sprintf(`{"apiVersion":"siphon.dev/v1alpha1","kind":"PostgresCapture",
			"metadata":{"name":"shop","namespace":"default","generation":1},
			"spec":{"suspend":false},
			"status":{"observedGeneration":1,"conditions":[
				{"type":"Ready","status":"False","reason":%q,"message":"fix it","observedGeneration":1}]}}`, reason)
		got := run(t, source, []byte(object))
		if got.Status != "Degraded" || got.Message != reason+": fix it" {
			t.Errorf("Ready=False %s: got %s %q, want Degraded %q", reason, got.Status, got.Message, reason+": fix it")
		}
	}
}
