package app

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	certificatesv1 "k8s.io/api/certificates/v1"
	"sigs.k8s.io/yaml"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/internal/csrtest"
)

func manifest(t *testing.T, csr *certificatesv1.CertificateSigningRequest) string {
	t.Helper()
	csr.APIVersion, csr.Kind = "certificates.k8s.io/v1", "CertificateSigningRequest"
	data, err := yaml.Marshal(csr)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func runExplain(t *testing.T, stdin string, args ...string) (string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := NewCommand(&out, &errOut)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(append([]string{"explain"}, args...))
	err := cmd.Execute()
	code := 0
	if err != nil {
		code = exitError
		if _, ok := err.(usageError); ok {
			code = exitUsage
		}
		errOut.WriteString(err.Error())
	}
	return out.String() + errOut.String(), code
}

func TestExplainReadsSeveralDocumentsAndLists(t *testing.T) {
	good := manifest(t, csrtest.Build(csrtest.WithName("good")))
	san := manifest(t, csrtest.Build(csrtest.WithName("san"), csrtest.WithDNSSAN("x.example")))
	list := "apiVersion: v1\nkind: List\nitems:\n- " + strings.ReplaceAll(strings.TrimSpace(manifest(t, csrtest.Build(csrtest.WithName("in-list"), csrtest.WithOrg("system:masters")))), "\n", "\n  ") + "\n"
	out, code := runExplain(t, good+"---\n"+san+"---\n"+list, "-f", "-", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d objects, want 3:\n%s", len(lines), out)
	}
	want := []struct{ name, decision, reason string }{
		{"good", "Ignore", approver.ReasonFactsIncomplete},
		{"san", "Deny", approver.ReasonSANsNotAllowed},
		{"in-list", "Deny", approver.ReasonInvalidOrganization},
	}
	for i, line := range lines {
		var e Explanation
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		if e.Name != want[i].name || string(e.Decision) != want[i].decision || e.Reason != want[i].reason {
			t.Errorf("object %d: %s %s %s, want %+v", i, e.Name, e.Decision, e.Reason, want[i])
		}
		if len(e.Checks) == 0 || e.Message == "" || e.Policy == "" {
			t.Errorf("object %d lacks checks, message or policy: %s", i, line)
		}
	}
	var first Explanation
	_ = json.Unmarshal([]byte(lines[0]), &first)
	for _, fact := range []string{approver.CheckAuthorized, approver.CheckNodeExists} {
		if !strings.Contains(strings.Join(first.Skipped, ","), fact) {
			t.Errorf("offline explain does not list %s as skipped: %v", fact, first.Skipped)
		}
	}
}

func TestExplainTextAndPolicy(t *testing.T) {
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte("apiVersion: nodecsr.io/v1alpha1\nkind: Policy\nspec:\n  nodeNames:\n    denied: [\"worker-.*\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "csr.yaml")
	if err := os.WriteFile(file, []byte(manifest(t, csrtest.Build(csrtest.WithName("w")))), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := runExplain(t, "", "-f", file, "--policy", policy)
	if code != 0 || !strings.Contains(out, "w: Deny (NodeNameDenied)") || !strings.Contains(out, "FAIL NodeNameDenied") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}

func TestExplainErrors(t *testing.T) {
	cases := map[string]struct {
		stdin string
		args  []string
		code  int
		want  string
	}{
		"no input":         {args: []string{}, code: exitUsage, want: "give -f FILE"},
		"names without kc": {args: []string{"x"}, code: exitUsage, want: "need --kubeconfig"},
		"bad output":       {args: []string{"-f", "-", "-o", "yaml"}, code: exitUsage, want: "-o must be text or json"},
		"not yaml":         {stdin: "{{{", args: []string{"-f", "-"}, code: exitError, want: "document 1"},
		"not a csr":        {stdin: "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", args: []string{"-f", "-"}, code: exitError, want: "not a certificates.k8s.io/v1 CertificateSigningRequest"},
		"empty":            {stdin: "\n---\n", args: []string{"-f", "-"}, code: exitError, want: "no CertificateSigningRequest found"},
		"missing file":     {args: []string{"-f", "/nonexistent/csr.yaml"}, code: exitError, want: "failed to open"},
		"bad policy":       {stdin: "x: 1\n", args: []string{"-f", "-", "--policy", "/nonexistent/policy.yaml"}, code: exitError, want: "policy.yaml"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			out, code := runExplain(t, c.stdin, c.args...)
			if code != c.code || !strings.Contains(out, c.want) {
				t.Fatalf("exit %d, want %d; output lacks %q:\n%s", code, c.code, c.want, out)
			}
		})
	}
}

func TestOptionsValidateNamesTheFlag(t *testing.T) {
	o := NewOptions()
	o.MaxConcurrentReconciles = 0
	o.KubeAPIQPS = -1
	o.LeaderElect = true
	o.RenewDeadline = o.LeaseDuration
	o.LogFormat = "xml"
	err := o.Validate()
	for _, want := range []string{"--max-concurrent-reconciles must be >= 1, got 0", "--kube-api-qps", "--leader-election-renew-deadline", "--log-format"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to name %q", err, want)
		}
	}
	if err := NewOptions().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}

// explainJSON runs explain -o json on one CSR and decodes its explanation.
func explainJSON(t *testing.T, csr *certificatesv1.CertificateSigningRequest, args ...string) Explanation {
	t.Helper()
	out, code := runExplain(t, manifest(t, csr), append([]string{"-f", "-", "-o", "json"}, args...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	var e Explanation
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &e); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	return e
}

func checkOf(e Explanation, name string) (CheckResult, bool) {
	for _, c := range e.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return CheckResult{}, false
}

func TestExplainAssume(t *testing.T) {
	dir := t.TempDir()
	writePolicy := func(name, spec string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte("apiVersion: nodecsr.io/v1alpha1\nkind: Policy\nspec:\n"+spec), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	noRecovery := writePolicy("no-recovery.yaml", "  bootstrap:\n    recovery:\n      enabled: false\n")
	keepDuplicates := writePolicy("keep-duplicates.yaml", "  limits:\n    collapseDuplicates: false\n    maxPendingPerNode: 2\n")

	boot := csrtest.Build(csrtest.WithName("boot"), csrtest.Bootstrap(csrtest.DefaultTokenID))
	renewal := csrtest.Build(csrtest.WithName("renew"))
	const newNode = "authorized=true,node-exists=false,newer-pending=false,pending=0"
	tests := map[string]struct {
		csr      *certificatesv1.CertificateSigningRequest
		args     []string
		decision approver.Verdict
		reason   string
		// message must appear in the decision's message.
		message string
		// skipped lists the checks that must be skipped; nil = none may be.
		skipped []string
		// check must have the given result.
		check  string
		result approver.CheckResult
	}{
		"offline, nothing assumed": {
			csr: boot, decision: approver.Ignore, reason: approver.ReasonFactsIncomplete,
			skipped: []string{approver.CheckAuthorized, approver.CheckNodeExists, approver.CheckNewerPendingForNode},
		},
		"a new node": {
			csr: boot, args: []string{"--assume", newNode},
			decision: approver.Approve, reason: approver.ReasonBootstrapApproved, message: "no Node of that name exists yet",
			check: approver.CheckNodeExists, result: approver.Pass,
		},
		"a new node, facts given one flag at a time": {
			csr:      boot,
			args:     []string{"--assume", "authorized=true", "--assume", "node-exists=false", "--assume", "newer-pending=false"},
			decision: approver.Approve, reason: approver.ReasonBootstrapApproved,
		},
		"some facts assumed, the others skipped": {
			csr: boot, args: []string{"--assume", "authorized=true"},
			decision: approver.Ignore, reason: approver.ReasonFactsIncomplete,
			skipped: []string{approver.CheckNodeExists, approver.CheckNewerPendingForNode},
			check:   approver.CheckAuthorized, result: approver.Pass,
		},
		"an existing node without a heartbeat": {
			csr: boot, args: []string{"--assume", "authorized=true,node-exists=true,newer-pending=false,pending=0"},
			decision: approver.Ignore, reason: approver.ReasonFactsIncomplete,
			skipped: []string{approver.CheckNodeExists},
		},
		"an existing node whose kubelet is gone: recovery": {
			csr: boot, args: []string{"--assume", "authorized=true,node-exists=true,heartbeat-age=2h,newer-pending=false,pending=0"},
			decision: approver.Approve, reason: approver.ReasonRecoveryApproved, message: "the node is recovering",
			check: approver.CheckNodeExists, result: approver.Pass,
		},
		"an existing node that is alive: takeover": {
			csr: boot, args: []string{"--assume", "authorized=true,node-exists=true,heartbeat-age=5s,newer-pending=false,pending=0"},
			decision: approver.Deny, reason: approver.ReasonNodeAlreadyExists, message: "alive 5s ago",
			check: approver.CheckNodeExists, result: approver.Fail,
		},
		"an existing node whose kubelet is gone, recovery off: takeover": {
			csr: boot, args: []string{"--policy", noRecovery, "--assume", "authorized=true,node-exists=true,heartbeat-age=2h,newer-pending=false,pending=0"},
			decision: approver.Deny, reason: approver.ReasonNodeAlreadyExists, message: "bootstrap.recovery.enabled is false",
		},
		"not authorized": {
			csr: boot, args: []string{"--assume", "authorized=false,node-exists=false,newer-pending=false"},
			decision: approver.Deny, reason: approver.ReasonNotAuthorized,
			check: approver.CheckAuthorized, result: approver.Fail,
		},
		"superseded": {
			csr: boot, args: []string{"--assume", "authorized=true,node-exists=false,newer-pending=true"},
			decision: approver.Deny, reason: approver.ReasonSuperseded,
		},
		"too many pending": {
			csr: boot, args: []string{"--policy", keepDuplicates, "--assume", "authorized=true,node-exists=false,pending=2"},
			decision: approver.Deny, reason: approver.ReasonTooManyPending,
			check: approver.CheckPendingForNode, result: approver.Fail,
		},
		"pending within the limit": {
			csr: boot, args: []string{"--policy", keepDuplicates, "--assume", "authorized=true,node-exists=false,pending=1"},
			decision: approver.Approve, reason: approver.ReasonBootstrapApproved,
			check: approver.CheckPendingForNode, result: approver.Pass,
		},
		"a renewal": {
			csr: renewal, args: []string{"--assume", "authorized=true,node-exists=true,newer-pending=false"},
			decision: approver.Approve, reason: approver.ReasonRenewalApproved, message: "the Node exists",
		},
		"a renewal before its Node exists waits": {
			csr: renewal, args: []string{"--assume", "authorized=true,node-exists=false,newer-pending=false"},
			decision: approver.Ignore, reason: approver.ReasonWaitingForNode,
			check: approver.CheckNodeExists, result: approver.Wait,
		},
		"a static violation denies whatever is assumed": {
			csr:  csrtest.Build(csrtest.WithName("san"), csrtest.WithDNSSAN("x.example")),
			args: []string{"--assume", "authorized=true,node-exists=true,newer-pending=false"}, decision: approver.Deny, reason: approver.ReasonSANsNotAllowed,
			// The signature is verified only when every other static rule passed.
			skipped: []string{approver.CheckSignature},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e := explainJSON(t, tc.csr, tc.args...)
			if e.Decision != tc.decision || e.Reason != tc.reason {
				t.Fatalf("%s (%s), want %s (%s): %s", e.Decision, e.Reason, tc.decision, tc.reason, e.Message)
			}
			if tc.message != "" && !strings.Contains(e.Message, tc.message) {
				t.Errorf("message %q lacks %q", e.Message, tc.message)
			}
			if tc.skipped == nil && len(e.Skipped) > 0 {
				t.Errorf("skipped %v, want none", e.Skipped)
			}
			for _, s := range tc.skipped {
				if !strings.Contains(","+strings.Join(e.Skipped, ",")+",", ","+s+",") {
					t.Errorf("skipped %v lacks %s", e.Skipped, s)
				}
			}
			if tc.check != "" {
				if c, ok := checkOf(e, tc.check); !ok || c.Result != tc.result {
					t.Errorf("check %s = %+v (present %v), want %s", tc.check, c, ok, tc.result)
				}
			}
			if tc.decision == approver.Deny && (len(e.Violations) == 0 || e.Violations[0] != tc.reason) {
				t.Errorf("violations %v, want %s first", e.Violations, tc.reason)
			}
			if tc.decision != approver.Deny && len(e.Violations) != 0 {
				t.Errorf("violations %v on a %s", e.Violations, tc.decision)
			}
		})
	}
}

// The text output marks a waiting check.
func TestExplainTextWait(t *testing.T) {
	out, code := runExplain(t, manifest(t, csrtest.Build(csrtest.WithName("w"))), "-f", "-", "--assume", "authorized=true,node-exists=false,newer-pending=false")
	if code != 0 || !strings.Contains(out, "w: Ignore (WaitingForNode)") || !strings.Contains(out, "wait NodeExists") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}

func TestExplainAssumeErrors(t *testing.T) {
	csr := manifest(t, csrtest.Build())
	cases := map[string]struct {
		assume string
		want   []string
	}{
		"unknown key":                 {"foo=1", []string{"--assume foo", "unknown fact", "authorized, node-exists, heartbeat-age, newer-pending, pending"}},
		"unknown key among good ones": {"authorized=true,nodeexists=true", []string{"--assume nodeexists", "unknown fact"}},
		"bad boolean":                 {"authorized=maybe", []string{"--assume authorized=", "maybe", "want true or false"}},
		"bad node-exists":             {"node-exists=1x", []string{"--assume node-exists=", "1x", "want true or false"}},
		"bad newer-pending":           {"newer-pending=", []string{"--assume newer-pending=", "want true or false"}},
		"bad duration":                {"heartbeat-age=soon", []string{"--assume heartbeat-age=", "soon", "want a duration"}},
		"negative duration":           {"heartbeat-age=-1h", []string{"--assume heartbeat-age=", "-1h", "want a duration"}},
		"bad count":                   {"pending=many", []string{"--assume pending=", "many", "want a whole number"}},
		"negative count":              {"pending=-1", []string{"--assume pending=", "-1", "want a whole number"}},
		"not KEY=VALUE":               {"authorized", []string{"assume", "authorized"}},
		"two errors, both named":      {"foo=1,pending=x", []string{"--assume foo", "--assume pending="}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			out, code := runExplain(t, csr, "-f", "-", "-o", "json", "--assume", c.assume)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d (usage):\n%s", code, exitUsage, out)
			}
			if missing := missingFrom(out, c.want...); len(missing) > 0 {
				t.Errorf("output lacks %q:\n%s", missing, out)
			}
			if strings.Contains(out, `"decision"`) {
				t.Errorf("a usage error still explained the CSR:\n%s", out)
			}
		})
	}
}

func missingFrom(s string, subs ...string) []string {
	var missing []string
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			missing = append(missing, sub)
		}
	}
	return missing
}
