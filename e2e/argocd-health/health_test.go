// Tests of charts/siphon/argocd-health.lua against a fixture per outcome.
package argocdhealth

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

)

const script = "../../charts/siphon/argocd-health.lua"
const conditionsRs = "../../crds/src/conditions.rs"

// run executes the health script against one fixture.
func run(t *testing.T, source string, object []byte) health {
	t.Helper()
	hs, err := Evaluate(source, object)
	if err != nil {
		t.Fatal(err)
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
