package explain_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/cmd/nodecsr-controller/app"
	"github.com/nodecsr/nodecsr/internal/csrtest"
)

// explain --kubeconfig decides serving CSRs with the Nodes' live addresses:
// the node's own addresses approve, another node's address is refused
// naming it, and a CSR for a Node that does not exist waits.
func TestExplainServingReadsNodeAddresses(t *testing.T) {
	ctx := t.Context()
	admin := tc.AdminClient()
	for name, ip := range map[string]string{"srv-x": "10.30.0.1", "srv-y": "10.30.0.2"} {
		n, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: name}}
		if _, err := admin.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	file := func(node, name string, sans ...string) {
		t.Helper()
		cfg, err := tc.NodeConfig(node)
		if err != nil {
			t.Fatal(err)
		}
		csr := csrtest.Build(csrtest.WithNodeName(node), csrtest.WithName(name), csrtest.Serving(sans...))
		csr.Spec.Username, csr.Spec.Groups = "", nil
		if _, err := kubernetes.NewForConfigOrDie(cfg).CertificatesV1().CertificateSigningRequests().Create(ctx, csr, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	file("srv-x", "srv-own", "srv-x", "10.30.0.1")
	file("srv-x", "srv-neighbour", "10.30.0.2")
	file("srv-z", "srv-unregistered", "srv-z")

	policy := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(policy, []byte("apiVersion: nodecsr.io/v1alpha1\nkind: Policy\nspec:\n  limits:\n    collapseDuplicates: false\n  serving:\n    enabled: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := app.NewCommand(&out, &out)
	cmd.SetArgs([]string{"explain", "--kubeconfig", tc.AdminKubeconfig(), "--policy", policy, "-o", "json", "srv-own", "srv-neighbour", "srv-unregistered"})
	if err := cmd.ExecuteContext(ctx); err != nil {
		t.Fatalf("explain: %v\n%s", err, out.String())
	}
	want := map[string]struct {
		decision approver.Verdict
		reason   string
		message  string
	}{
		"srv-own":          {approver.Approve, approver.ReasonServingApproved, "SubjectAccessReview allowed selfnodeclient"},
		"srv-neighbour":    {approver.Deny, approver.ReasonAddressOfOtherNode, `"10.30.0.2" is an address of node "srv-y"`},
		"srv-unregistered": {approver.Ignore, approver.ReasonWaitingForNode, `node "srv-z" is not registered yet`},
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != len(want) {
		t.Fatalf("%d objects:\n%s", len(lines), out.String())
	}
	for _, line := range lines {
		var e app.Explanation
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		w := want[e.Name]
		if e.Decision != w.decision || e.Reason != w.reason || !strings.Contains(e.Message, w.message) {
			t.Errorf("%s: %s %s (%s), want %s %s with %q", e.Name, e.Decision, e.Reason, e.Message, w.decision, w.reason, w.message)
		}
		if e.Path != approver.PathServing {
			t.Errorf("%s: path %q", e.Name, e.Path)
		}
	}
}
