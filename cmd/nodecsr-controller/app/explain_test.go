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
