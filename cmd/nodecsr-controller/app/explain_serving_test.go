package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/internal/csrtest"
)

// explain decides serving CSRs offline with the Node's addresses, the
// neighbours and DNS answers given on the command line.
func TestExplainServing(t *testing.T) {
	dir := t.TempDir()
	policy := func(name, spec string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte("apiVersion: nodecsr.io/v1alpha1\nkind: Policy\nspec:\n  serving:\n    enabled: true\n"+spec), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	on := policy("on.yaml", "")
	resolve := policy("resolve.yaml", "    resolveDNS: {enabled: true}\n")
	csr := csrtest.Build(csrtest.WithName("srv"), csrtest.Serving("worker-1", "10.0.0.1"))
	const facts = "authorized=true,newer-pending=false"
	node := []string{"--assume-address", "10.0.0.1", "--assume-address", "worker-1"}

	cases := map[string]struct {
		args     []string
		decision approver.Verdict
		reason   string
		message  string
	}{
		"serving off: not ours": {
			decision: approver.Ignore, reason: approver.ReasonNotKubeletClientSigner, message: "serving.enabled",
		},
		"no facts": {
			args: []string{"--policy", on}, decision: approver.Ignore, reason: approver.ReasonFactsIncomplete,
		},
		"the node's own addresses": {
			args: append([]string{"--policy", on, "--assume", facts}, node...), decision: approver.Approve, reason: approver.ReasonServingApproved,
		},
		"a neighbour reports the IP": {
			args:     append([]string{"--policy", on, "--assume", facts, "--assume-neighbour", "worker-2=10.0.0.1"}, node...),
			decision: approver.Deny, reason: approver.ReasonAddressOfOtherNode, message: `node "worker-2"`,
		},
		"the Node does not exist": {
			args:     []string{"--policy", on, "--assume", facts + ",node-exists=false", "--assume-neighbour", "worker-9=10.9.9.9"},
			decision: approver.Ignore, reason: approver.ReasonWaitingForNode,
		},
		"not the node's IP": {
			args:     []string{"--policy", on, "--assume", facts, "--assume-address", "10.0.0.7", "--assume-address", "worker-1"},
			decision: approver.Deny, reason: approver.ReasonIPNotNodeAddress,
		},
		"DNS resolves to the node": {
			args:     append([]string{"--policy", resolve, "--assume", facts, "--assume-dns", "worker-1=10.0.0.1;10.0.0.8"}, node...),
			decision: approver.Approve, reason: approver.ReasonServingApproved, message: "resolve",
		},
		"DNS not given: does not resolve": {
			args:     append([]string{"--policy", resolve, "--assume", facts, "--assume-dns", "other=10.0.0.1"}, node...),
			decision: approver.Deny, reason: approver.ReasonDNSNameDoesNotResolveToNode, message: "does not resolve",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			e := explainJSON(t, csr, tc.args...)
			if e.Decision != tc.decision || e.Reason != tc.reason || !strings.Contains(e.Message, tc.message) {
				t.Errorf("got %s/%s (%s), want %s/%s with %q", e.Decision, e.Reason, e.Message, tc.decision, tc.reason, tc.message)
			}
			if e.Signer != "serving" {
				t.Errorf("signer %q", e.Signer)
			}
		})
	}
}

func TestExplainServingAssumeErrors(t *testing.T) {
	csr := manifest(t, csrtest.Build(csrtest.Serving("worker-1")))
	for name, c := range map[string]struct {
		args []string
		want string
	}{
		"neighbour without =":  {[]string{"--assume-neighbour", "worker-2"}, "--assume-neighbour \"worker-2\": want NODE=ADDRESS"},
		"empty address":        {[]string{"--assume-address", ""}, "--assume-address: want an IP address or a DNS name"},
		"DNS answer not an IP": {[]string{"--assume-dns", "worker-1=10.0.0.300"}, "is not an IP address"},
		"DNS without a name":   {[]string{"--assume-dns", "=10.0.0.1"}, "want NAME=IP"},
	} {
		t.Run(name, func(t *testing.T) {
			out, code := runExplain(t, csr, append([]string{"-f", "-"}, c.args...)...)
			if code != exitUsage || !strings.Contains(out, c.want) {
				t.Errorf("exit %d, want %d with %q:\n%s", code, exitUsage, c.want, out)
			}
		})
	}
}
