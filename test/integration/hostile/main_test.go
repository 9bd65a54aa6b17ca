// Package hostile_test files hostile kubelet client CSRs against a real
// control plane (etcd, kube-apiserver with Node,RBAC and NodeRestriction,
// kube-controller-manager's csrsigning) with the real nodecsr-controller
// binary running with its admission webhooks on, registered with the API
// server, and checks that none is ever approved and that each is
// refused for the right reason: by the API server's own validation, by the
// validating webhook at creation, or by the approver. hostile_test.go holds
// the table of classes and their expected outcomes.
package hostile_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/test/env"
	"github.com/nodecsr/nodecsr/webhook"
)

// Fixtures created before nodecsr-controller starts, so that its Node cache
// holds them from its first decision on.
const (
	// victimNode is an existing Node: the target of takeovers.
	victimNode = "victim-1"
	// dupNode files the storm of duplicate renewals.
	dupNode = "dup-node"
	// csrCreators may create CSRs (system:node-bootstrapper) and nothing else:
	// the impersonated identities below are in it.
	csrCreators = "hostile-csr-creators"
	// selfUser is the admin identity nodecsr-controller runs as.
	selfUser = "nodecsr-test-admin"
	// webhookConfigName names both webhook configurations.
	webhookConfigName = "nodecsr-hostile"
	// maxExpiration is the policy's lifetime.maxExpirationSeconds.
	maxExpiration = 86400
	// boundNames is the node-name pattern the bound bootstrap token may claim.
	boundNames = "bound-[0-9]+"
)

// otherNodes renew while dupNode storms.
var otherNodes = []string{"other-1", "other-2", "other-3", "other-4", "other-5", "other-6"}

// recheckAfter is how long after a decision the CSR is looked at again:
// nothing may change it (no approval, no certificate, no second Event).
// Waits for something to happen last until the test's deadline nears
// (testutil.Poll); nothing is asserted about how long anything takes.
const recheckAfter = 2 * time.Second

// policyTemplate is the policy under test: the default policy plus the
// opt-in rules some classes need. %s is the bound token's ID.
const policyTemplate = `apiVersion: nodecsr.io/v1alpha1
kind: Policy
spec:
  nodeNames:
    denied: ["control-plane-.*"]
  bootstrap:
    tokenBindings:
      - tokenID: %q
        nodeNames: [%q]
  keys:
    keyEnciphermentRequiresRSA: true
  lifetime:
    maxExpirationSeconds: %d
  serving:
    enabled: true
    ipCIDRs: [%q]
`

// policy is the policy under test, with serving on or off (off: the
// serving section is kept, only enabled changes).
func policy(serving bool) []byte {
	p := fmt.Sprintf(policyTemplate, boundToken.ID, boundNames, maxExpiration, servingCIDR)
	if !serving {
		p = strings.Replace(p, "    enabled: true\n    ipCIDRs", "    enabled: false\n    ipCIDRs", 1)
	}
	return []byte(p)
}

var (
	tc    *cluster.Cluster
	admin kubernetes.Interface
	// attackerToken is a real kubeadm-style bootstrap token: it may create
	// CSRs and request nodeclient certificates.
	attackerToken cluster.BootstrapToken
	// boundToken is bound by the policy to boundNames.
	boundToken cluster.BootstrapToken

	// ctl is the nodecsr-controller process the tests share.
	ctl        *env.Controller
	webhookURL string
	webhookCA  []byte
)

func TestMain(m *testing.M) {
	os.Exit(env.Main(m, env.MainOptions{Build: []string{"./cmd/nodecsr-controller"}, Setup: setup}))
}

func setup(s *env.Suite) error {
	tc, admin = s.Cluster, s.Cluster.AdminClient()
	ctx := s.Context()
	if err := tc.ApplyKubeadmRBAC(ctx); err != nil {
		return err
	}
	if err := env.AllowCSRCreate(ctx, admin, csrCreators, env.Group(csrCreators)); err != nil {
		return err
	}
	for _, n := range append([]string{victimNode, dupNode}, otherNodes...) {
		if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("failed to create node %s: %w", n, err)
		}
	}
	if err := createServingNodes(ctx); err != nil {
		return err
	}
	var err error
	if attackerToken, err = tc.CreateBootstrapToken(ctx, time.Hour); err != nil {
		return err
	}
	if boundToken, err = tc.CreateBootstrapToken(ctx, time.Hour); err != nil {
		return err
	}
	serving, err := tc.ClusterCA().IssueServing("127.0.0.1")
	if err != nil {
		return err
	}
	webhookCA = tc.ClusterCA().CertPEM
	ctl, err = s.LaunchController(env.ControllerOptions{
		Policy:         policy(true),
		WebhookCertPEM: serving.CertPEM, WebhookKeyPEM: serving.KeyPEM,
		PodName: "nodecsr-hostile", PodNamespace: metav1.NamespaceSystem,
		Args: map[string]string{"self-username": selfUser},
	})
	if err != nil {
		return err
	}
	webhookURL = "https://" + cluster.HostPort(ctl.WebhookPort)
	return nil
}

// stopController stops the nodecsr-controller process.
func stopController(t *testing.T) { controllerStep(t, ctl.Stop) }

// startController starts the stopped nodecsr-controller process again (a
// restarted pod) and waits until it is ready.
func startController(t *testing.T) { controllerStep(t, ctl.Start) }

func controllerStep(t *testing.T, step func(context.Context) error) {
	t.Helper()
	ctx, cancel := testutil.Context(t)
	defer cancel()
	if err := step(ctx); err != nil {
		t.Fatal(err)
	}
}

// checkController fails the test when the controller has died.
func checkController(t *testing.T) {
	t.Helper()
	if err := ctl.Err(); err != nil {
		t.Fatal(err)
	}
}

func uniqueName(prefix string) string { return env.UniqueName(prefix) }

func impersonating(user string, groups ...string) kubernetes.Interface {
	return env.Impersonating(tc, user, groups...)
}

func tokenClient(tok cluster.BootstrapToken) kubernetes.Interface {
	return kubernetes.NewForConfigOrDie(tc.BootstrapConfig(tok))
}

func freshTokenClient(t *testing.T) kubernetes.Interface {
	t.Helper()
	cs, _ := env.BootstrapClient(t, tc)
	return cs
}

func nodeClient(t *testing.T, node string) kubernetes.Interface {
	t.Helper()
	return env.NodeClient(t, tc, node)
}

// setWebhooks registers (on) or deletes (off) nodecsr's webhook
// configurations and waits until the API server acts accordingly.
func setWebhooks(t *testing.T, on bool) {
	t.Helper()
	ctx := t.Context()
	if err := env.DeleteWebhookConfigurations(ctx, admin, webhookConfigName); err != nil {
		t.Fatal(err)
	}
	if on {
		opts := webhook.ConfigOptions{Name: webhookConfigName, URL: webhookURL, CABundle: webhookCA, Self: selfUser, Serving: true}
		if err := env.CreateWebhookConfigurations(ctx, admin, opts, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Dry-run creates: the webhooks (side effects None) are called, nothing is stored.
	boot := tokenClient(attackerToken)
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	var state string
	err := testutil.Poll(t, 100*time.Millisecond, func(ctx context.Context) (bool, error) {
		checkController(t)
		_, verr := boot.CertificatesV1().CertificateSigningRequests().Create(ctx, csrtest.Build(csrtest.WithNodeName("probe"), csrtest.WithDNSSAN("probe.example")), dryRun)
		good, merr := boot.CertificatesV1().CertificateSigningRequests().Create(ctx, csrtest.Build(csrtest.WithNodeName("probe")), dryRun)
		validating := verr != nil && strings.Contains(verr.Error(), webhook.WebhookNameValidate)
		mutating := merr == nil && good.Labels[webhook.LabelNodeName] == "probe"
		state = fmt.Sprintf("validating webhook called: %v (%v); mutating webhook called: %v (%v)", validating, verr, mutating, merr)
		if on && validating && mutating {
			// The webhook's Node cache has synced: it knows the victim exists.
			_, terr := boot.CertificatesV1().CertificateSigningRequests().Create(ctx, csrtest.Build(csrtest.WithNodeName(victimNode)), dryRun)
			synced := terr != nil && strings.Contains(terr.Error(), approver.ReasonNodeAlreadyExists)
			state += fmt.Sprintf("; takeover of %s rejected: %v (%v)", victimNode, synced, terr)
			return synced, nil
		}
		return validating == on && mutating == on, nil
	})
	if err != nil {
		t.Fatalf("webhooks did not turn %v: %s", map[bool]string{true: "on", false: "off"}[on], state)
	}
}

// listCSRs returns every CSR by name.
func listCSRs(ctx context.Context) (map[string]*certificatesv1.CertificateSigningRequest, error) {
	list, err := admin.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := make(map[string]*certificatesv1.CertificateSigningRequest, len(list.Items))
	for i := range list.Items {
		out[list.Items[i].Name] = &list.Items[i]
	}
	return out, nil
}

// decisionEvents lists the Events about CSRs (as
// `kubectl get events -n default --field-selector involvedObject.kind=CertificateSigningRequest`),
// by CSR name.
func decisionEvents(t *testing.T) map[string][]corev1.Event {
	t.Helper()
	evs, err := env.CSREvents(t.Context(), admin)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// decisions are the Approved and Denied conditions of a CSR.
func decisions(csr *certificatesv1.CertificateSigningRequest) []certificatesv1.CertificateSigningRequestCondition {
	return env.Decisions(csr)
}

func approvedCondition(csr *certificatesv1.CertificateSigningRequest) bool {
	return env.HasApproved(csr)
}

// waitFor polls every CSR until done returns true for the listed ones.
func waitFor(t *testing.T, what string, done func(map[string]*certificatesv1.CertificateSigningRequest) (bool, string)) {
	t.Helper()
	var last string
	err := testutil.Poll(t, 200*time.Millisecond, func(ctx context.Context) (bool, error) {
		checkController(t)
		all, err := listCSRs(ctx)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		var ok bool
		ok, last = done(all)
		return ok, nil
	})
	if err != nil {
		t.Errorf("%s: %v; still waiting for: %s", what, err, last)
	}
}

// nodecsrEvents keeps the Events nodecsr wrote.
func nodecsrEvents(evs []corev1.Event) []corev1.Event {
	var out []corev1.Event
	for _, e := range evs {
		if e.ReportingController == approver.Component {
			out = append(out, e)
		}
	}
	return out
}
