// Package e2e_test runs nodecsr end to end on a real control plane (etcd,
// kube-apiserver, kube-controller-manager's csrsigning): the chart installed
// with Helm's SDK, its webhook certificate issued by cert-manager's own
// controllers and its CA injected by cainjector (both in-process), the REAL
// nodecsr-controller binary run with the installed Deployment's arguments as
// the chart's ServiceAccount, and the REAL nodecsr-request binary on
// simulated nodes that bootstrap with bootstrap tokens, register their Node
// and renew; attackers fail with their reason visible to them.
package e2e_test

import (
	"bytes"
	"context"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/test/env"
)

const (
	// namespace is where the chart is installed.
	namespace = "nodecsr"
	// nodes is how many simulated nodes bootstrap and renew.
	nodes = 4
)

var (
	tc      *cluster.Cluster
	admin   kubernetes.Interface
	kclient client.Client
	// binDir holds nodecsr-controller and nodecsr-request, built once.
	binDir string
)

func TestMain(m *testing.M) {
	start := time.Now()
	code := env.Main(m, env.MainOptions{Build: []string{"./cmd/nodecsr-controller", "./cmd/nodecsr-request"}, Setup: setup})
	fmt.Fprintf(os.Stderr, "e2e suite wall time: %s\n", time.Since(start).Round(100*time.Millisecond))
	os.Exit(code)
}

func setup(s *env.Suite) error {
	c := s.Cluster
	tc, admin, binDir = c, c.AdminClient(), s.Binary("")
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme, cmapi.AddToScheme} {
		if err := add(scheme); err != nil {
			return err
		}
	}
	var err error
	if kclient, err = client.New(c.AdminConfig(), client.Options{Scheme: scheme}); err != nil {
		return err
	}
	// The CRDs first, long before the chart creates its Issuers and
	// Certificates (the API server delays the first create of a custom
	// resource right after its CRD becomes Established).
	if err := env.InstallCertManagerCRDs(s.Context(), kclient); err != nil {
		return err
	}
	return c.ApplyKubeadmRBAC(s.Context())
}

// TestNodeCSREndToEnd installs nodecsr as a cluster operator would, then
// nodes join and renew through it and attackers are turned away, each
// decision recorded once.
func TestNodeCSREndToEnd(t *testing.T) {
	ctx, cancel := testutil.Context(t)
	defer cancel()
	installed := install(ctx, t)

	t.Run("nodes bootstrap, register and renew", func(t *testing.T) {
		for i := 1; i <= nodes; i++ {
			name := fmt.Sprintf("e2e-node-%d", i)
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				joinAndRenew(ctx, t, name)
			})
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("attacks fail with their reason", func(t *testing.T) {
		attacks(ctx, t, "e2e-node-1", "e2e-node-2")
	})

	t.Run("one decision Event per CSR", func(t *testing.T) {
		decisionEvents(ctx, t, installed.eventsNamespace)
	})
}

// installation is what install set up.
type installation struct {
	fullname        string
	eventsNamespace string
}

// install installs the chart with the webhook on, 127.0.0.1 in its serving
// certificate and leader election on; runs cert-manager until its
// Certificates are Ready and the CA is injected; runs the real
// nodecsr-controller with the Deployment's own args as the chart's
// ServiceAccount; and points the webhook configurations at it.
func install(ctx context.Context, t *testing.T) installation {
	t.Helper()
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := env.LoadChart(root)
	if err != nil {
		t.Fatal(err)
	}
	vals := map[string]any{
		"webhook":        map[string]any{"enabled": true, "certificate": map[string]any{"extraIPAddresses": []any{"127.0.0.1"}}},
		"leaderElection": map[string]any{"enabled": true},
	}
	// The control plane goes away with the test binary; no uninstall.
	if _, _, err := env.HelmInstall(ctx, tc.AdminKubeconfig(), ch, "nodecsr", namespace, vals, nil); err != nil {
		t.Fatal(err)
	}
	deployments, err := admin.AppsV1().Deployments(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(deployments.Items) != 1 {
		t.Fatalf("the chart installed %d Deployments, want 1", len(deployments.Items))
	}
	d := &deployments.Items[0]
	fullname := d.Name

	stopCertManager, err := env.StartCertManager(ctx, tc.AdminKubeconfig(), tc.AdminConfig(), namespace, env.ErrorLogger("cert-manager", t.Logf))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stopCertManager(); err != nil {
			t.Error(err)
		}
	})
	certs := &cmapi.CertificateList{}
	if err := kclient.List(ctx, certs, client.InNamespace(namespace)); err != nil {
		t.Fatal(err)
	}
	if len(certs.Items) == 0 {
		t.Fatal("the chart installed no cert-manager Certificate")
	}
	var serving *cmapi.Certificate
	for _, c := range certs.Items {
		ready, err := env.WaitCertificateReady(ctx, kclient, namespace, c.Name, testutil.Remaining(t))
		if err != nil {
			t.Fatal(err)
		}
		if c.Name == fullname+"-serving" {
			serving = ready
		}
	}
	if serving == nil {
		t.Fatalf("no Certificate %s-serving among %d", fullname, len(certs.Items))
	}
	secret, err := admin.CoreV1().Secrets(namespace).Get(ctx, serving.Spec.SecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	caPEM, certPEM, keyPEM := secret.Data["ca.crt"], secret.Data["tls.crt"], secret.Data["tls.key"]
	if len(caPEM) == 0 || len(certPEM) == 0 || len(keyPEM) == 0 {
		t.Fatalf("Secret %s lacks ca.crt, tls.crt or tls.key", secret.Name)
	}
	if err := env.WaitCABundles(ctx, admin, fullname, caPEM, 3, testutil.Remaining(t)); err != nil {
		t.Fatal(err)
	}

	p := env.StartController(ctx, t, env.ControllerOptions{
		Binary: filepath.Join(binDir, "nodecsr-controller"), Deployment: d,
		Admin: admin, AdminKubeconfig: tc.AdminKubeconfig(),
		WebhookCertPEM: certPEM, WebhookKeyPEM: keyPEM,
		PodName: d.Name + "-e2e-0", Deadline: testutil.Remaining(t),
	})
	base := "https://127.0.0.1:" + strconv.Itoa(p.WebhookPort)
	if err := env.PointWebhooksAt(ctx, admin, fullname, base); err != nil {
		t.Fatal(err)
	}
	bundles, err := env.CABundles(ctx, admin, fullname)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bundles {
		if !bytes.Equal(b, caPEM) {
			t.Fatal("pointing the webhooks at loopback lost the injected caBundle")
		}
	}
	waitWebhookServing(ctx, t, base)
	eventsNamespace, ok := env.FlagValue(d.Spec.Template.Spec.Containers[0].Args, "events-namespace")
	if !ok {
		t.Fatal("the Deployment has no --events-namespace")
	}
	return installation{fullname: fullname, eventsNamespace: eventsNamespace}
}

// waitWebhookServing waits until the API server calls the validating webhook
// at base: the webhook configurations reach the API server's admission
// through a watch, and their webhooks fail open. The probe is a dry run, so
// it leaves nothing behind.
func waitWebhookServing(ctx context.Context, t *testing.T, base string) {
	t.Helper()
	bootstrap := bootstrapClient(ctx, t)
	var last error
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, testutil.Remaining(t), true, func(ctx context.Context) (bool, error) {
		probe := csrtest.Build(csrtest.WithName("e2e-webhook-probe"), csrtest.WithNodeName("e2e-probe"), csrtest.WithDNSSAN("probe.example.com"))
		_, last = bootstrap.CertificatesV1().CertificateSigningRequests().Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return last != nil && strings.Contains(last.Error(), approver.ReasonSANsNotAllowed), nil
	}); err != nil {
		t.Fatalf("the API server never called nodecsr's validating webhook at %s: %v (last answer: %v)", base, err, last)
	}
}

// bootstrapClient creates a bootstrap token and a client that authenticates
// with it.
func bootstrapClient(ctx context.Context, t *testing.T) kubernetes.Interface {
	t.Helper()
	tok, err := tc.CreateBootstrapToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(tc.BootstrapConfig(tok))
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// outcome is how a nodecsr-request run ended.
type outcome struct {
	code   int
	stderr string
}

// request runs the real nodecsr-request for node with its files under home.
func request(ctx context.Context, t *testing.T, home, node string, args ...string) outcome {
	t.Helper()
	args = append([]string{"--node-name", node, "--cert-dir", filepath.Join(home, "pki"), "--timeout", "2m"}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "nodecsr-request"), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cluster.Spawn(cmd); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return outcome{code: exit.ExitCode(), stderr: stderr.String()}
	case err != nil:
		t.Fatalf("nodecsr-request: %v", err)
	}
	return outcome{stderr: stderr.String()}
}

// joinAndRenew is one node's life: bootstrap with its own token, prove the
// certificate's identity, register the Node with it, renew with it.
func joinAndRenew(ctx context.Context, t *testing.T, node string) {
	home := t.TempDir()
	tok, err := tc.CreateBootstrapToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	boot := filepath.Join(home, "bootstrap-kubelet.conf")
	if err := cluster.WriteKubeconfig(boot, tc.BootstrapConfig(tok)); err != nil {
		t.Fatal(err)
	}
	kubeletConf := filepath.Join(home, "kubelet.conf")
	if o := request(ctx, t, home, node, "--bootstrap-kubeconfig", boot, "--write-kubeconfig", kubeletConf); o.code != 0 {
		t.Fatalf("bootstrap of %s: exit %d\n%s", node, o.code, o.stderr)
	}
	boots := csrsBy(ctx, t, tok.Username())
	if len(boots) != 1 {
		t.Fatalf("%d CSRs by %s, want 1", len(boots), tok.Username())
	}
	if c := env.Condition(&boots[0], certificatesv1.CertificateApproved); c == nil || c.Reason != approver.ReasonBootstrapApproved {
		t.Errorf("bootstrap CSR %s: conditions %+v, want Approved %s", boots[0].Name, boots[0].Status.Conditions, approver.ReasonBootstrapApproved)
	}
	cs := assertIdentity(ctx, t, kubeletConf, node)

	// Like a kubelet: register the Node with the new credentials.
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("node %s could not register itself: %v", node, err)
	}

	// Renew with its own certificate.
	if o := request(ctx, t, home, node, "--kubeconfig", kubeletConf); o.code != 0 {
		t.Fatalf("renewal of %s: exit %d\n%s", node, o.code, o.stderr)
	}
	renewals := csrsBy(ctx, t, "system:node:"+node)
	if len(renewals) != 1 {
		t.Fatalf("%d CSRs by system:node:%s, want 1", len(renewals), node)
	}
	if c := env.Condition(&renewals[0], certificatesv1.CertificateApproved); c == nil || c.Reason != approver.ReasonRenewalApproved {
		t.Errorf("renewal CSR %s: conditions %+v, want Approved %s", renewals[0].Name, renewals[0].Status.Conditions, approver.ReasonRenewalApproved)
	}
	// kubelet.conf points at the current pair: now the renewed one.
	assertIdentity(ctx, t, kubeletConf, node)
	t.Logf("%s: bootstrap CSR %s by %s and renewal CSR %s approved; both certificates authenticate as system:node:%s", node, boots[0].Name, tok.Username(), renewals[0].Name, node)
}

// csrsBy lists the CSRs whose spec.username is user.
func csrsBy(ctx context.Context, t *testing.T, user string) []certificatesv1.CertificateSigningRequest {
	t.Helper()
	list, err := admin.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []certificatesv1.CertificateSigningRequest
	for _, csr := range list.Items {
		if csr.Spec.Username == user {
			out = append(out, csr)
		}
	}
	return out
}

// assertIdentity checks with a SelfSubjectReview that kubeconfig
// authenticates as node's kubelet, and returns a client for it.
func assertIdentity(ctx context.Context, t *testing.T, kubeconfig, node string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	review, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview with %s: %v", kubeconfig, err)
	}
	u := review.Status.UserInfo
	if u.Username != "system:node:"+node || !slices.Contains(u.Groups, "system:nodes") {
		t.Fatalf("%s authenticates as %q in %v, want system:node:%s in system:nodes", kubeconfig, u.Username, u.Groups, node)
	}
	return cs
}

// attacks: each fails, and the requester sees why.
func attacks(ctx context.Context, t *testing.T, victim, other string) {
	t.Run("bootstrap token claims an existing node", func(t *testing.T) {
		home := t.TempDir()
		tok, err := tc.CreateBootstrapToken(ctx, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		boot := filepath.Join(home, "bootstrap-kubelet.conf")
		if err := cluster.WriteKubeconfig(boot, tc.BootstrapConfig(tok)); err != nil {
			t.Fatal(err)
		}
		o := request(ctx, t, home, victim, "--bootstrap-kubeconfig", boot)
		if o.code == 0 || !strings.Contains(o.stderr, approver.ReasonNodeAlreadyExists) {
			t.Fatalf("claiming existing node %s: exit %d, want non-zero with %s in stderr:\n%s", victim, o.code, approver.ReasonNodeAlreadyExists, o.stderr)
		}
		t.Logf("exit %d: %s", o.code, lastLine(o.stderr))
	})

	t.Run("a node asks for another node's name", func(t *testing.T) {
		// NodeRestriction stops members of system:nodes; this identity is
		// the node's user without that group, allowed to create CSRs.
		user := "system:node:" + victim
		crb := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "e2e-node-without-group-creates-csrs"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:node-bootstrapper"},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
		}
		if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = admin.RbacV1().ClusterRoleBindings().Delete(context.Background(), crb.Name, metav1.DeleteOptions{})
		})
		cfg := tc.AdminConfig()
		cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:authenticated"}}
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		csr := csrtest.Build(csrtest.WithName("e2e-requester-mismatch"), csrtest.WithNodeName(other))
		var last error
		// RBAC reaches the authorizer's cache shortly after the binding.
		if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, testutil.Remaining(t), true, func(ctx context.Context) (bool, error) {
			_, last = cs.CertificatesV1().CertificateSigningRequests().Create(ctx, csr, metav1.CreateOptions{})
			return last == nil || !strings.Contains(last.Error(), "cannot create resource"), nil
		}); err != nil {
			t.Fatalf("%s could not try: %v (last: %v)", user, err, last)
		}
		assertWebhookRejected(t, last, approver.ReasonRequesterMismatch)
	})

	bootstrap := bootstrapClient(ctx, t)
	bigExtension := pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 55555, 1}, Value: bytes.Repeat([]byte{'A'}, 20<<10)}
	for name, tcase := range map[string]struct {
		opts []csrtest.Option
		want string
	}{
		"DNS SAN":                      {opts: []csrtest.Option{csrtest.WithDNSSAN("evil.example.com")}, want: approver.ReasonSANsNotAllowed},
		"extra organization":           {opts: []csrtest.Option{csrtest.WithOrg("system:nodes", "system:masters")}, want: approver.ReasonInvalidOrganization},
		"request over maxRequestBytes": {opts: []csrtest.Option{csrtest.WithExtension(bigExtension)}, want: approver.ReasonRequestTooLarge},
	} {
		t.Run(name, func(t *testing.T) {
			csr := csrtest.Build(append([]csrtest.Option{csrtest.WithName("e2e-" + strings.ReplaceAll(strings.ToLower(name), " ", "-")), csrtest.WithNodeName("e2e-attacker")}, tcase.opts...)...)
			if tcase.want == approver.ReasonRequestTooLarge && len(csr.Spec.Request) <= 16384 {
				t.Fatalf("the oversized request is only %d bytes", len(csr.Spec.Request))
			}
			_, err := bootstrap.CertificatesV1().CertificateSigningRequests().Create(ctx, csr, metav1.CreateOptions{})
			assertWebhookRejected(t, err, tcase.want)
		})
	}
}

// assertWebhookRejected checks that the API server refused a create because
// nodecsr's webhook denied it, naming reason.
func assertWebhookRejected(t *testing.T, err error, reason string) {
	t.Helper()
	if err == nil {
		t.Fatalf("the CSR was created; want nodecsr's webhook to reject it with %s", reason)
	}
	msg := err.Error()
	if !apierrors.IsForbidden(err) || !strings.Contains(msg, "admission webhook") || !strings.Contains(msg, "denied the request") || !strings.Contains(msg, reason) {
		t.Fatalf("got %v; want a 403 from nodecsr's admission webhook naming %s", err, reason)
	}
	t.Logf("rejected: %s", msg)
}

// decisionEvents: every CSR nodecsr decided has exactly one decision Event,
// by nodecsr, whose reason is the condition's reason.
func decisionEvents(ctx context.Context, t *testing.T, eventsNamespace string) {
	list, err := admin.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	decided := map[string]*certificatesv1.CertificateSigningRequestCondition{} // by UID
	names := map[string]string{}
	for i := range list.Items {
		csr := &list.Items[i]
		if c := env.Decision(csr); c != nil {
			decided[string(csr.UID)] = c
			names[string(csr.UID)] = csr.Name
		}
	}
	// Bootstrap and renewal of every node (the attacks were rejected at
	// admission, except the takeover when the webhook's Node cache lags:
	// then the approver denies it).
	if want := 2 * nodes; len(decided) < want {
		t.Errorf("%d decided CSRs, want at least %d", len(decided), want)
	}
	sel := fields.OneTermEqualSelector("involvedObject.kind", "CertificateSigningRequest").String()
	var events []corev1.Event
	// A decision's Event is written right after its condition.
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, testutil.Remaining(t), true, func(ctx context.Context) (bool, error) {
		evs, err := admin.CoreV1().Events(eventsNamespace).List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			return false, err
		}
		events = evs.Items
		seen := map[string]bool{}
		for _, ev := range events {
			seen[string(ev.InvolvedObject.UID)] = true
		}
		for uid := range decided {
			if !seen[uid] {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		t.Errorf("not every decided CSR has an Event: %v", err)
	}
	byCSR := map[string][]corev1.Event{}
	for _, ev := range events {
		if ev.ReportingController == approver.Component {
			byCSR[string(ev.InvolvedObject.UID)] = append(byCSR[string(ev.InvolvedObject.UID)], ev)
		}
	}
	for uid, cond := range decided {
		evs := byCSR[uid]
		if len(evs) != 1 {
			t.Errorf("CSR %s (%s %s) has %d Events by %s, want 1: %v", names[uid], cond.Type, cond.Reason, len(evs), approver.Component, reasons(evs))
			continue
		}
		if evs[0].Reason != cond.Reason {
			t.Errorf("CSR %s: Event reason %q, condition reason %q", names[uid], evs[0].Reason, cond.Reason)
		}
		if evs[0].Count > 1 || evs[0].Series != nil && evs[0].Series.Count > 1 {
			t.Errorf("CSR %s: the decision Event was recorded more than once: %+v", names[uid], evs[0])
		}
	}
	t.Logf("%d decided CSRs, each with exactly one decision Event matching its condition", len(decided))
}

func reasons(evs []corev1.Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.Reason)
	}
	return out
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
