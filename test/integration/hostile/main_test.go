// Package hostile_test files hostile kubelet client CSRs against a real
// control plane (etcd, kube-apiserver with Node,RBAC and NodeRestriction,
// kube-controller-manager's csrsigning) with nodecsr-controller running
// in-process (app.RunWithConfig) with its admission webhooks on, registered
// with the API server, and checks that none is ever approved and that each is
// refused for the right reason: by the API server's own validation, by the
// validating webhook at creation, or by the approver. hostile_test.go holds
// the table of classes and their expected outcomes.
package hostile_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/cmd/nodecsr-controller/app"
	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/test/cluster"
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

// Timing. Polls are generous (a busy 2-core machine); nothing is asserted
// about how long anything takes.
const (
	pollTimeout = 2 * time.Minute
	// recheckAfter is how long after a decision the CSR is looked at again:
	// nothing may change it (no approval, no certificate, no second Event).
	recheckAfter = 2 * time.Second
)

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
`

var (
	tc    *cluster.Cluster
	admin kubernetes.Interface
	// attackerToken is a real kubeadm-style bootstrap token: it may create
	// CSRs and request nodeclient certificates.
	attackerToken cluster.BootstrapToken
	// boundToken is bound by the policy to boundNames.
	boundToken cluster.BootstrapToken

	ctrlOpts   *app.Options
	webhookURL string
	webhookCA  []byte
	controller struct {
		sync.Mutex
		stop func()
	}
	controllerErr atomic.Pointer[error]
	nameSeq       atomic.Int64
	runID         = strconv.FormatUint(uint64(rand.Uint32()), 36)
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "nodecsr-hostile-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	logPath := filepath.Join(dir, "nodecsr-controller.log")
	code := cluster.RunTests(m, cluster.Options{}, func(c *cluster.Cluster) error { return setup(c, dir, logPath) })
	if code != 0 {
		fmt.Fprintf(os.Stderr, "--- last lines of the in-process nodecsr-controller's log ---\n%s\n", tail(logPath, 40))
	}
	return code
}

func setup(c *cluster.Cluster, dir, logPath string) error {
	tc, admin = c, c.AdminClient()
	ctx := context.Background()
	if err := c.ApplyKubeadmRBAC(ctx); err != nil {
		return err
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: csrCreators},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:node-bootstrapper"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: csrCreators}},
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		return err
	}
	for _, n := range append([]string{victimNode, dupNode}, otherNodes...) {
		if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("failed to create node %s: %w", n, err)
		}
	}
	var err error
	if attackerToken, err = newToken(ctx); err != nil {
		return err
	}
	if boundToken, err = newToken(ctx); err != nil {
		return err
	}
	policyFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyFile, fmt.Appendf(nil, policyTemplate, boundToken.ID, boundNames, maxExpiration), 0o600); err != nil {
		return err
	}

	certDir := filepath.Join(dir, "webhook-certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return err
	}
	serving, err := c.ClusterCA().IssueServing("127.0.0.1")
	if err != nil {
		return err
	}
	if _, _, err := serving.WriteFiles(certDir, "tls"); err != nil {
		return err
	}
	webhookCA = c.ClusterCA().CertPEM
	port, err := cluster.FreePort()
	if err != nil {
		return err
	}
	webhookURL = "https://127.0.0.1:" + strconv.Itoa(port)

	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	logger := zap.New(zap.WriteTo(logFile))
	ctrl.SetLogger(logger)
	klog.SetLogger(logger)

	o := app.NewOptions()
	o.PolicyFile = policyFile
	o.MetricsBindAddress, o.HealthProbeBindAddress = "0", "0"
	o.PodName, o.PodNamespace = "nodecsr-hostile", metav1.NamespaceSystem
	o.WebhookCertDir, o.WebhookHost, o.WebhookPort = certDir, "127.0.0.1", port
	o.SelfUsername = selfUser
	if err := o.Validate(); err != nil {
		return err
	}
	ctrlOpts = o
	startController()
	return nil
}

// startController runs nodecsr-controller in-process; stopController stops
// it and waits until it has returned.
func startController() {
	controller.Lock()
	defer controller.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := app.RunWithConfig(ctx, ctrlOpts, tc.AdminConfig()); err != nil && ctx.Err() == nil {
			err = fmt.Errorf("nodecsr-controller stopped: %w", err)
			controllerErr.Store(&err)
			fmt.Fprintln(os.Stderr, err)
		}
	}()
	controller.stop = func() {
		cancel()
		<-done
	}
}

func stopController() {
	controller.Lock()
	defer controller.Unlock()
	if controller.stop != nil {
		controller.stop()
		controller.stop = nil
	}
}

// checkController fails the test when the in-process controller has died.
func checkController(t *testing.T) {
	t.Helper()
	if err := controllerErr.Load(); err != nil {
		t.Fatal(*err)
	}
}

func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func uniqueName(prefix string) string {
	return fmt.Sprintf("%s-%s-%d", prefix, runID, nameSeq.Add(1))
}

// impersonating is the admin acting as user in groups; the API server sets
// spec.username and spec.groups of a CSR it creates to exactly those.
func impersonating(user string, groups ...string) kubernetes.Interface {
	cfg := tc.AdminConfig()
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	return kubernetes.NewForConfigOrDie(cfg)
}

func tokenClient(tok cluster.BootstrapToken) kubernetes.Interface {
	return kubernetes.NewForConfigOrDie(tc.BootstrapConfig(tok))
}

func freshTokenClient(t *testing.T) kubernetes.Interface {
	t.Helper()
	tok, err := newToken(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return tokenClient(tok)
}

// newToken creates a bootstrap token and waits until it authenticates: the
// API server's token authenticator reads Secrets from an informer, so a
// brand-new token is refused (401) for a moment.
func newToken(ctx context.Context) (cluster.BootstrapToken, error) {
	tok, err := tc.CreateBootstrapToken(ctx, time.Hour)
	if err != nil {
		return tok, err
	}
	client := tokenClient(tok)
	var last error
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, pollTimeout, true, func(ctx context.Context) (bool, error) {
		_, last = client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		return last == nil, nil
	})
	if err != nil {
		return tok, fmt.Errorf("bootstrap token %s does not authenticate: %w (last: %v)", tok.ID, err, last)
	}
	return tok, nil
}

func nodeClient(t *testing.T, node string) kubernetes.Interface {
	t.Helper()
	cfg, err := tc.NodeConfig(node)
	if err != nil {
		t.Fatal(err)
	}
	return kubernetes.NewForConfigOrDie(cfg)
}

// setWebhooks registers (on) or deletes (off) nodecsr's webhook
// configurations and waits until the API server acts accordingly.
func setWebhooks(t *testing.T, on bool) {
	t.Helper()
	ctx := t.Context()
	ar := admin.AdmissionregistrationV1()
	del := func() {
		for _, err := range []error{
			ar.ValidatingWebhookConfigurations().Delete(ctx, webhookConfigName, metav1.DeleteOptions{}),
			ar.MutatingWebhookConfigurations().Delete(ctx, webhookConfigName, metav1.DeleteOptions{}),
		} {
			if err != nil && !apierrors.IsNotFound(err) {
				t.Fatal(err)
			}
		}
	}
	del()
	if on {
		opts := webhook.ConfigOptions{Name: webhookConfigName, URL: webhookURL, CABundle: webhookCA, Self: selfUser}
		mwc, err := webhook.MutatingWebhookConfiguration(opts)
		if err != nil {
			t.Fatal(err)
		}
		vwc, err := webhook.ValidatingWebhookConfiguration(opts)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ar.MutatingWebhookConfigurations().Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := ar.ValidatingWebhookConfigurations().Create(ctx, vwc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Dry-run creates: the webhooks (side effects None) are called, nothing is stored.
	boot := tokenClient(attackerToken)
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	var state string
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, pollTimeout, true, func(ctx context.Context) (bool, error) {
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
	sel := fields.OneTermEqualSelector("involvedObject.kind", "CertificateSigningRequest").String()
	list, err := admin.CoreV1().Events(metav1.NamespaceDefault).List(t.Context(), metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]corev1.Event{}
	for _, e := range list.Items {
		out[e.InvolvedObject.Name] = append(out[e.InvolvedObject.Name], e)
	}
	return out
}

// decisions are the Approved and Denied conditions of a CSR.
func decisions(csr *certificatesv1.CertificateSigningRequest) []certificatesv1.CertificateSigningRequestCondition {
	var out []certificatesv1.CertificateSigningRequestCondition
	for _, c := range csr.Status.Conditions {
		if c.Type == certificatesv1.CertificateApproved || c.Type == certificatesv1.CertificateDenied {
			out = append(out, c)
		}
	}
	return out
}

func approvedCondition(csr *certificatesv1.CertificateSigningRequest) bool {
	for _, c := range csr.Status.Conditions {
		if c.Type == certificatesv1.CertificateApproved {
			return true
		}
	}
	return false
}

// waitFor polls every CSR until done returns true for the listed ones.
func waitFor(t *testing.T, what string, done func(map[string]*certificatesv1.CertificateSigningRequest) (bool, string)) {
	t.Helper()
	var last string
	err := wait.PollUntilContextTimeout(t.Context(), 200*time.Millisecond, pollTimeout, true, func(ctx context.Context) (bool, error) {
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
