// Package explain_test runs `nodecsr-controller explain --kubeconfig` against
// a real control plane, with no controller deciding anything, and checks that
// it gathers the cluster facts the reconciler would.
package explain_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/cmd/nodecsr-controller/app"
	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/test/env"
)

var tc *cluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(cluster.RunTests(m, cluster.Options{NoControllerManager: true}, func(c *cluster.Cluster) error {
		tc = c
		return c.ApplyKubeadmRBAC(context.Background())
	}))
}

func TestExplainGathersClusterFacts(t *testing.T) {
	ctx := t.Context()
	admin := tc.AdminClient()
	if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "existing"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tok, err := tc.CreateBootstrapToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	boot := kubernetes.NewForConfigOrDie(tc.BootstrapConfig(tok))
	for name, node := range map[string]string{"takeover": "existing", "fresh": "fresh-node"} {
		csr := csrtest.Build(csrtest.WithNodeName(node), csrtest.WithName(name))
		csr.Spec.Username, csr.Spec.Groups = "", nil
		if _, err := boot.CertificatesV1().CertificateSigningRequests().Create(ctx, csr, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// An identity without the right to request node client certificates: it
	// may create CSRs (system:node-bootstrapper), without the nodeclient
	// permission that the kubeadm bindings give bootstrap tokens.
	cfg, err := tc.UserConfig("mallory", "system:bootstrappers")
	if err != nil {
		t.Fatal(err)
	}
	if err := env.AllowCSRCreate(ctx, admin, "explain-test-mallory", env.User("mallory")); err != nil {
		t.Fatal(err)
	}
	csr := csrtest.Build(csrtest.WithNodeName("mallory-node"), csrtest.WithName("unauthorized"))
	csr.Spec.Username, csr.Spec.Groups = "", nil
	if _, err := kubernetes.NewForConfigOrDie(cfg).CertificatesV1().CertificateSigningRequests().Create(ctx, csr, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	cmd := app.NewCommand(&out, &out)
	cmd.SetArgs([]string{"explain", "--kubeconfig", tc.AdminKubeconfig(), "-o", "json", "takeover", "fresh", "unauthorized"})
	if err := cmd.ExecuteContext(ctx); err != nil {
		t.Fatalf("explain: %v\n%s", err, out.String())
	}
	want := map[string]struct {
		decision approver.Verdict
		reason   string
	}{
		"takeover":     {approver.Deny, approver.ReasonNodeAlreadyExists},
		"fresh":        {approver.Approve, approver.ReasonBootstrapApproved},
		"unauthorized": {approver.Deny, approver.ReasonNotAuthorized},
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
		if e.Decision != w.decision || e.Reason != w.reason {
			t.Errorf("%s: %s %s (%s), want %s %s", e.Name, e.Decision, e.Reason, e.Message, w.decision, w.reason)
		}
		if len(e.Skipped) != 0 {
			t.Errorf("%s: facts skipped with cluster access: %v", e.Name, e.Skipped)
		}
	}
	// explain decides nothing.
	for name := range want {
		got, err := admin.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Status.Conditions) != 0 {
			t.Errorf("explain wrote conditions on %s: %+v", name, got.Status.Conditions)
		}
	}
}
