// Package kubelet_test runs REAL kubelets against nodecsr on a real control
// plane (etcd, kube-apiserver, kube-controller-manager's csrsigning): the
// chart installed with Helm's SDK (webhook off: the approver alone decides,
// and the CSRs are stored exactly as the kubelet sent them), the REAL
// nodecsr-controller binary run with the installed Deployment's args as the
// chart's ServiceAccount, the only approver. Each kubelet runs as root with
// its own root, certificate and configuration folders (cluster.StartKubelet)
// and without a container runtime: it obtains and renews its client
// certificate but never registers its Node or heartbeats, so where a case
// needs a registered, heartbeating node the test does that with the node's
// own credentials, as its kubelet would.
//
// The cases are subtests of TestKubelet, each with node names of its own:
//
//	Bootstrap/RotateCertificates  TLS bootstrap in the background (csr-xxxxx): BootstrapApproved
//	Bootstrap/NoRotation          synchronous TLS bootstrap (node-csr-…): BootstrapApproved
//	Rotation                      a certificate past its rotation deadline is renewed: RenewalApproved
//	RSAKeyReuse                   an RSA kubelet-client.key.tmp is reused, with key encipherment
//	Recovery                      an expired certificate, a stale Lease: back in with the token, RecoveryApproved
//	TakeoverRefused               a bootstrap token asks for a live node's name: NodeAlreadyExists
//	BoundTokenRefused             a token bound to other names: TokenNotBoundToName
//
// Environment:
//
//	NODECSR_KUBELET_BINARY  run this kubelet binary instead of the control
//	                        plane's (v1.37.2), for example an older release
//	NODECSR_KUBELET_REPORT  append one JSON line per kubelet CSR the suite saw
//	                        to this file: kubelet version, case, path
//	                        (Bootstrap|Renewal), usages, keyAlgorithm,
//	                        expirationSeconds, nameStyle, requester, reason
//
// A compatibility run for one kubelet version (make compat does it for each):
//
//	cd test && NODECSR_KUBELET_BINARY=/path/kubelet-v1.34.4 NODECSR_KUBELET_REPORT=/tmp/v1.34.4.jsonl \
//	  go test -count=1 -run 'TestKubelet/(Bootstrap|Rotation)' ./e2e/kubelet/
//
// At the end, TestKubelet asserts that no kubelet process, mount or cgroup
// is left (cluster.KubeletLeftovers).
package kubelet_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/test/env"
)

const (
	// namespace is where the chart is installed.
	namespace = "nodecsr"
	// reportEnv names the compatibility report file.
	reportEnv = "NODECSR_KUBELET_REPORT"
	// cleanupMargin is kept from the test binary's deadline for cleanups
	// and failure output.
	cleanupMargin = 30 * time.Second
)

var (
	tc    *cluster.Cluster
	admin kubernetes.Interface
	// binDir holds nodecsr-controller, built once.
	binDir string
)

func TestMain(m *testing.M) {
	start := time.Now()
	code := env.Main(m, env.MainOptions{Build: []string{"./cmd/nodecsr-controller"}, Setup: func(s *env.Suite) error {
		tc, admin, binDir = s.Cluster, s.Cluster.AdminClient(), s.Binary("")
		return s.Cluster.ApplyKubeadmRBAC(s.Context())
	}})
	fmt.Fprintf(os.Stderr, "kubelet suite wall time: %s\n", time.Since(start).Round(100*time.Millisecond))
	os.Exit(code)
}

// suite is what TestKubelet set up for its cases.
type suite struct {
	// ctx is TestKubelet's context: it outlives every case, for cleanups.
	ctx             context.Context
	controller      *env.Controller
	eventsNamespace string
	kubelet         string // kubelet --version, for the report

	casesLeft int // cases that have not started, for their share of the time
}

// kubeletCase is one case: it runs with its share of the test's time.
type kubeletCase func(ctx context.Context, t *testing.T)

// TestKubelet installs nodecsr, then real kubelets bootstrap, renew, recover
// and are refused through it. Its subtests run one after the other: each
// starts one or two kubelets, and the machine is small.
func TestKubelet(t *testing.T) {
	ctx := deadlineContext(t)
	// Registered first, so it runs last: after every kubelet was stopped.
	t.Cleanup(func() {
		left, err := tc.KubeletLeftovers()
		if err != nil {
			t.Errorf("failed to look for kubelet leftovers: %v", err)
		}
		if len(left) > 0 {
			t.Errorf("the kubelets left behind:\n%s", strings.Join(left, "\n"))
		} else {
			t.Logf("no kubelet process, mount or cgroup left under %s/kubelets", tc.Dir())
		}
	})
	s := install(ctx, t)
	s.casesLeft = 7

	t.Run("Bootstrap", func(t *testing.T) {
		t.Run("RotateCertificates", s.run(func(ctx context.Context, t *testing.T) { s.bootstrap(ctx, t, "kubelet-bootstrap-rotating", true) }))
		t.Run("NoRotation", s.run(func(ctx context.Context, t *testing.T) { s.bootstrap(ctx, t, "kubelet-bootstrap-sync", false) }))
	})
	t.Run("Rotation", s.run(s.rotation))
	t.Run("RSAKeyReuse", s.run(s.rsaKeyReuse))
	t.Run("Recovery", s.run(s.recovery))
	t.Run("TakeoverRefused", s.run(s.takeoverRefused))
	t.Run("BoundTokenRefused", s.run(s.boundTokenRefused))
}

// run runs a case with an equal share of the time left to the cases that
// have not started (a case that hangs fails alone, and the others still
// run); a case that ends early leaves its time to the rest.
func (s *suite) run(c kubeletCase) func(*testing.T) {
	return func(t *testing.T) {
		left := max(s.casesLeft, 1)
		s.casesLeft = left - 1
		share := time.Until(deadlineOf(s.ctx)) / time.Duration(left)
		ctx, cancel := context.WithTimeout(s.ctx, share)
		defer cancel()
		c(ctx, t)
	}
}

// deadlineContext is the test's context, ending cleanupMargin before the
// test binary's deadline: every wait in the suite ends with it.
func deadlineContext(t *testing.T) context.Context {
	ctx := t.Context()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-cleanupMargin))
		t.Cleanup(cancel)
	}
	return ctx
}

// install installs the chart with its webhook off and runs the real
// nodecsr-controller with the Deployment's own args as the chart's
// ServiceAccount.
func install(ctx context.Context, t *testing.T) *suite {
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
	vals := map[string]any{"webhook": map[string]any{"enabled": false}}
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
	checkLeaseRBAC(ctx, t, d)
	ctl := env.StartController(ctx, t, env.ControllerOptions{
		Binary: filepath.Join(binDir, "nodecsr-controller"), Deployment: d,
		Admin: admin, AdminKubeconfig: tc.AdminKubeconfig(),
		Deadline: time.Until(deadlineOf(ctx)),
	})
	eventsNamespace, ok := env.FlagValue(ctl.Args, "events-namespace")
	if !ok {
		t.Fatal("the Deployment has no --events-namespace")
	}
	binary := os.Getenv(cluster.KubeletBinaryEnv)
	if binary == "" {
		assets, err := cluster.FindAssets("")
		if err != nil {
			t.Fatal(err)
		}
		binary = filepath.Join(assets, "kubelet")
	}
	version, err := cluster.KubeletVersion(binary)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubelet %s (%s); nodecsr-controller %s", version, binary, strings.Join(ctl.Args, " "))
	return &suite{ctx: ctx, controller: ctl, eventsNamespace: eventsNamespace, kubelet: "Kubernetes " + version}
}

// checkLeaseRBAC logs whether the chart's ServiceAccount may read a node's
// Lease (the heartbeat fact of the recovery and takeover rules): the chart
// has to grant it, and a case that needs it stays pending otherwise.
func checkLeaseRBAC(ctx context.Context, t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	cfg := tc.AdminConfig()
	cfg.Impersonate = env.ServiceAccount(namespace, d.Spec.Template.Spec.ServiceAccountName)
	cs := kubernetes.NewForConfigOrDie(cfg)
	_, err := cs.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, "nodecsr-rbac-probe", metav1.GetOptions{})
	if apierrors.IsForbidden(err) {
		t.Logf("NOTE: the chart's ServiceAccount cannot get Leases in %s: %v", corev1.NamespaceNodeLease, err)
	}
}

// deadlineOf is ctx's deadline, or an hour from now.
func deadlineOf(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(time.Hour)
}

// bootstrap: a kubelet with a bootstrap token gets its client certificate,
// which authenticates as the node; the CSR was approved BootstrapApproved,
// with one decision Event.
func (s *suite) bootstrap(ctx context.Context, t *testing.T, node string, rotate bool) {
	tok := createToken(ctx, t)
	k := startKubelet(ctx, t, cluster.KubeletOptions{NodeName: node, BootstrapToken: &tok, RotateCertificates: rotate})
	csr := waitCSR(ctx, t, tok.Username(), node, nil)
	s.assertDecision(ctx, t, csr, certificatesv1.CertificateApproved, approver.ReasonBootstrapApproved)
	s.report(t, csr)
	cert := waitCert(ctx, t, k, nil)
	assertIdentity(ctx, t, k, node)
	t.Logf("%s: CSR %s by %s approved %s; %s serial %x authenticates as system:node:%s",
		node, csr.Name, tok.Username(), approver.ReasonBootstrapApproved, cluster.KubeletClientCurrent, cert.SerialNumber, node)
}

// rotation: a kubelet whose certificate is past its rotation deadline
// renews it at once with its current certificate; the renewal is approved
// RenewalApproved and the kubelet swaps to the new certificate.
func (s *suite) rotation(ctx context.Context, t *testing.T) {
	const node = "kubelet-rotation"
	now := time.Now()
	// Lifetime 24h, 23h gone: the rotation deadline (70–90 %) has passed.
	old, err := tc.IssueKubeletClientCert(node, now.Add(-23*time.Hour), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	oldCert := env.ParseCert(t, old.CertPEM)
	// The node registered itself with this certificate earlier.
	nodeClient := kubernetes.NewForConfigOrDie(tc.ConfigFromKeyPair(old.CertPEM, old.KeyPEM))
	registerNode(ctx, t, nodeClient, node)

	k := startKubelet(ctx, t, cluster.KubeletOptions{NodeName: node, ClientCertPEM: old.CertPEM, ClientKeyPEM: old.KeyPEM, RotateCertificates: true})
	csr := waitCSR(ctx, t, "system:node:"+node, node, nil)
	s.assertDecision(ctx, t, csr, certificatesv1.CertificateApproved, approver.ReasonRenewalApproved)
	s.report(t, csr)
	cert := waitCert(ctx, t, k, oldCert.SerialNumber.Bytes())
	assertIdentity(ctx, t, k, node)
	t.Logf("%s: renewal CSR %s approved %s; %s went from serial %x (until %s) to %x (until %s)", node, csr.Name, approver.ReasonRenewalApproved,
		cluster.KubeletClientCurrent, oldCert.SerialNumber, oldCert.NotAfter.Format(time.RFC3339), cert.SerialNumber, cert.NotAfter.Format(time.RFC3339))
}

// rsaKeyReuse: an RSA key an interrupted bootstrap left as
// kubelet-client.key.tmp is reused by the (synchronous) bootstrap, which
// then asks for key encipherment too; approved.
func (s *suite) rsaKeyReuse(ctx context.Context, t *testing.T) {
	const node = "kubelet-rsa-key"
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	tok := createToken(ctx, t)
	k := startKubelet(ctx, t, cluster.KubeletOptions{NodeName: node, BootstrapToken: &tok, PendingKeyPEM: keyPEM})
	csr := waitCSR(ctx, t, tok.Username(), node, nil)
	req := parseRequest(t, csr)
	if pub, ok := req.PublicKey.(*rsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		t.Errorf("CSR %s carries a %T public key, want the RSA key left in %s", csr.Name, req.PublicKey, cluster.KubeletClientPendingKey)
	}
	if !slices.Contains(csr.Spec.Usages, certificatesv1.UsageKeyEncipherment) {
		t.Errorf("CSR %s usages %v, want key encipherment with an RSA key", csr.Name, csr.Spec.Usages)
	}
	s.assertDecision(ctx, t, csr, certificatesv1.CertificateApproved, approver.ReasonBootstrapApproved)
	s.report(t, csr)
	cert := waitCert(ctx, t, k, nil)
	if pub, ok := cert.PublicKey.(*rsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		t.Errorf("the issued certificate holds a %T key, want the reused RSA key", cert.PublicKey)
	}
	assertIdentity(ctx, t, k, node)
	t.Logf("%s: CSR %s with the reused RSA-2048 key, usages %v, approved %s", node, csr.Name, csr.Spec.Usages, approver.ReasonBootstrapApproved)
}

// recovery: a node that joined, then was off longer than its certificate's
// lifetime (its Lease last renewed an hour ago, its certificate expired),
// falls back to its bootstrap token and is let back in under the default
// policy: RecoveryApproved.
func (s *suite) recovery(ctx context.Context, t *testing.T) {
	const node = "kubelet-recovery"
	tok := createToken(ctx, t)
	k := startKubelet(ctx, t, cluster.KubeletOptions{NodeName: node, BootstrapToken: &tok, RotateCertificates: true})
	first := waitCSR(ctx, t, tok.Username(), node, nil)
	s.assertDecision(ctx, t, first, certificatesv1.CertificateApproved, approver.ReasonBootstrapApproved)
	joined := waitCert(ctx, t, k, nil)
	nodeClient := kubeletClient(t, k)
	registerNode(ctx, t, nodeClient, node)
	renewLease(ctx, t, nodeClient, node)

	// Off: the kubelet stops, its Lease ages, its certificate expires.
	if err := k.StopProcess(); err != nil {
		t.Fatal(err)
	}
	setLeaseRenewTime(ctx, t, node, time.Now().Add(-time.Hour))
	now := time.Now()
	expired, err := tc.IssueKubeletClientCert(node, now.Add(-25*time.Hour), now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if err := k.SeedClientCert(expired.CertPEM, expired.KeyPEM); err != nil {
		t.Fatal(err)
	}
	expiredCert := env.ParseCert(t, expired.CertPEM)
	// Hours pass in a real recovery. Here at least the second of the first
	// CSR's creationTimestamp must have passed: within one second, CSRs of
	// one requester are ordered by name, and nodecsr would take the first,
	// issued CSR for the newer one (Superseded).
	select {
	case <-time.After(time.Until(first.CreationTimestamp.Add(time.Second))):
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	if err := k.Restart(ctx); err != nil {
		t.Fatal(err)
	}

	csr := waitCSR(ctx, t, tok.Username(), node, []string{first.Name})
	s.assertDecision(ctx, t, csr, certificatesv1.CertificateApproved, approver.ReasonRecoveryApproved)
	s.report(t, csr)
	cert := waitCert(ctx, t, k, expiredCert.SerialNumber.Bytes())
	if cert.SerialNumber.Cmp(joined.SerialNumber) == 0 {
		t.Fatalf("the kubelet went back to its first certificate %x", joined.SerialNumber)
	}
	assertIdentity(ctx, t, k, node)
	t.Logf("%s: with an expired certificate and a Lease an hour old, CSR %s by %s approved %s", node, csr.Name, tok.Username(), approver.ReasonRecoveryApproved)
}

// takeoverRefused: while node A is up and heartbeating, a second kubelet
// with a bootstrap token of its own and --hostname-override A asks for A's
// name: denied NodeAlreadyExists, and its log says so.
func (s *suite) takeoverRefused(ctx context.Context, t *testing.T) {
	const node = "kubelet-victim"
	tokA := createToken(ctx, t)
	a := startKubelet(ctx, t, cluster.KubeletOptions{NodeName: node, BootstrapToken: &tokA, RotateCertificates: true})
	joined := waitCSR(ctx, t, tokA.Username(), node, nil)
	s.assertDecision(ctx, t, joined, certificatesv1.CertificateApproved, approver.ReasonBootstrapApproved)
	waitCert(ctx, t, a, nil)
	nodeClient := kubeletClient(t, a)
	registerNode(ctx, t, nodeClient, node)
	heartbeat(ctx, t, nodeClient, node)

	tokB := createToken(ctx, t)
	b := startKubelet(ctx, t, cluster.KubeletOptions{NodeName: node, BootstrapToken: &tokB, RotateCertificates: true})
	csr := waitCSR(ctx, t, tokB.Username(), node, nil)
	s.assertDecision(ctx, t, csr, certificatesv1.CertificateDenied, approver.ReasonNodeAlreadyExists)
	s.report(t, csr)
	line := waitLog(ctx, t, b, approver.ReasonNodeAlreadyExists, "denied")
	if !a.Running() {
		t.Errorf("node %s's own kubelet is no longer running", node)
	}
	t.Logf("%s: a second kubelet's CSR %s by %s was denied %s; its log: %s", node, csr.Name, tokB.Username(), approver.ReasonNodeAlreadyExists, line)
}

// boundTokenRefused: with the policy binding a bootstrap token to names
// matching other-.*, a kubelet using that token for another name is denied
// TokenNotBoundToName, and its log says so. The policy file the controller
// watches is rewritten and its reload awaited (nodecsr_policy_reloads_total);
// the original policy is restored afterwards.
func (s *suite) boundTokenRefused(ctx context.Context, t *testing.T) {
	const node = "kubelet-bound-token"
	tok := createToken(ctx, t)
	original, err := os.ReadFile(s.controller.PolicyPath)
	if err != nil {
		t.Fatal(err)
	}
	policy := map[string]any{}
	if err := yaml.Unmarshal(original, &policy); err != nil {
		t.Fatalf("failed to parse the chart's policy: %v", err)
	}
	spec, _ := policy["spec"].(map[string]any)
	if spec == nil {
		spec = map[string]any{}
		policy["spec"] = spec
	}
	bootstrap, _ := spec["bootstrap"].(map[string]any)
	if bootstrap == nil {
		bootstrap = map[string]any{}
		spec["bootstrap"] = bootstrap
	}
	bootstrap["tokenBindings"] = []any{map[string]any{"tokenID": tok.ID, "nodeNames": []any{"other-.*"}}}
	bound, err := yaml.Marshal(policy)
	if err != nil {
		t.Fatal(err)
	}
	s.reloadPolicy(ctx, t, bound)
	// The case's context may be over by then; TestKubelet's is not.
	t.Cleanup(func() { s.reloadPolicy(s.ctx, t, original) })

	k := startKubelet(ctx, t, cluster.KubeletOptions{NodeName: node, BootstrapToken: &tok, RotateCertificates: true})
	csr := waitCSR(ctx, t, tok.Username(), node, nil)
	s.assertDecision(ctx, t, csr, certificatesv1.CertificateDenied, approver.ReasonTokenNotBoundToName)
	s.report(t, csr)
	line := waitLog(ctx, t, k, approver.ReasonTokenNotBoundToName, "denied")
	t.Logf("%s: token %s bound to other-.*: CSR %s denied %s; the kubelet's log: %s", node, tok.ID, csr.Name, approver.ReasonTokenNotBoundToName, line)
}

// reloadPolicy writes the controller's policy file and waits until the
// controller reports one more successful reload.
func (s *suite) reloadPolicy(ctx context.Context, t *testing.T, data []byte) {
	t.Helper()
	const metric, labels = "nodecsr_policy_reloads_total", `result="success"`
	before, err := s.controller.Metric(ctx, metric, labels)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.controller.WritePolicy(data); err != nil {
		t.Fatal(err)
	}
	var last float64
	if err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		last, err = s.controller.Metric(ctx, metric, labels)
		return err == nil && last > before, nil
	}); err != nil {
		errors, _ := s.controller.Metric(context.Background(), metric, `result="error"`)
		t.Fatalf("the controller did not reload its policy: %v (%s{%s} %v → %v, errors %v)\n%s", err, metric, labels, before, last, errors, env.Tail(s.controller.LogPath, 10))
	}
}

// createToken creates a bootstrap token valid for an hour.
func createToken(ctx context.Context, t *testing.T) cluster.BootstrapToken {
	t.Helper()
	tok, err := tc.CreateBootstrapToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// startKubelet starts a kubelet, stopped and removed when the test ends.
func startKubelet(ctx context.Context, t *testing.T, opts cluster.KubeletOptions) *cluster.Kubelet {
	t.Helper()
	k, err := tc.StartKubelet(ctx, t, opts)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// waitCSR waits for a kubelet client CSR by requester for node's name, not
// one of skip, and returns the first one (by creation, then name).
func waitCSR(ctx context.Context, t *testing.T, requester, node string, skip []string) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	var found *certificatesv1.CertificateSigningRequest
	if err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		list, err := admin.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		var mine []certificatesv1.CertificateSigningRequest
		for _, csr := range list.Items {
			if csr.Spec.Username != requester || csr.Spec.SignerName != cluster.KubeletClientSigner || slices.Contains(skip, csr.Name) {
				continue
			}
			if req, err := parseCSR(csr.Spec.Request); err == nil && req.Subject.CommonName == "system:node:"+node {
				mine = append(mine, csr)
			}
		}
		if len(mine) == 0 {
			return false, nil
		}
		slices.SortFunc(mine, func(a, b certificatesv1.CertificateSigningRequest) int {
			if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
				return c
			}
			return strings.Compare(a.Name, b.Name)
		})
		found = &mine[0]
		return true, nil
	}); err != nil {
		t.Fatalf("no kubelet client CSR by %s for %s: %v", requester, node, err)
	}
	return found
}

// assertDecision waits until csr is decided, checks the decision's type
// and reason, and that nodecsr recorded exactly one decision Event with that
// reason on it. csr is updated to the decided object.
func (s *suite) assertDecision(ctx context.Context, t *testing.T, csr *certificatesv1.CertificateSigningRequest, typ certificatesv1.RequestConditionType, reason string) {
	t.Helper()
	decided := csr
	if err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		got, err := admin.CertificatesV1().CertificateSigningRequests().Get(ctx, csr.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		decided = got
		return env.Decision(got) != nil, nil
	}); err != nil {
		t.Fatalf("CSR %s by %s was not decided within this case's share of the test's time: %v (conditions %+v); nodecsr-controller's last word on it: %s",
			csr.Name, csr.Spec.Username, err, decided.Status.Conditions, s.controllerSaid(csr.Name))
	}
	*csr = *decided
	cond := env.Decision(csr)
	if cond.Type != typ || cond.Reason != reason {
		t.Fatalf("CSR %s by %s: %s %s (%q), want %s %s", csr.Name, csr.Spec.Username, cond.Type, cond.Reason, cond.Message, typ, reason)
	}
	sel := fields.AndSelectors(
		fields.OneTermEqualSelector("involvedObject.kind", "CertificateSigningRequest"),
		fields.OneTermEqualSelector("involvedObject.uid", string(csr.UID)),
	).String()
	var events []corev1.Event
	// A decision's Event is written right after its condition.
	if err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		list, err := admin.CoreV1().Events(s.eventsNamespace).List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			return false, nil
		}
		events = events[:0]
		for _, ev := range list.Items {
			if ev.ReportingController == approver.Component {
				events = append(events, ev)
			}
		}
		return len(events) > 0, nil
	}); err != nil {
		t.Fatalf("CSR %s has no decision Event by %s: %v", csr.Name, approver.Component, err)
	}
	if len(events) != 1 || events[0].Reason != reason {
		var got []string
		for _, ev := range events {
			got = append(got, ev.Reason)
		}
		t.Fatalf("CSR %s has decision Events %v, want exactly one %s", csr.Name, got, reason)
	}
	if ev := events[0]; ev.Count > 1 || ev.Series != nil && ev.Series.Count > 1 {
		t.Fatalf("CSR %s: the decision Event was recorded more than once: %+v", csr.Name, ev)
	}
}

// controllerSaid is the last line of the controller's log that names the
// CSR, or "nothing".
func (s *suite) controllerSaid(name string) string {
	data, _ := os.ReadFile(s.controller.LogPath)
	last := "nothing"
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, `"`+name+`"`) {
			last = line
		}
	}
	if i := strings.Index(last, `,"stacktrace"`); i > 0 {
		last = last[:i] + "}"
	}
	return last
}

// waitCert waits until the kubelet's kubelet-client-current.pem holds a
// certificate for its node whose serial is not notSerial, and returns it.
func waitCert(ctx context.Context, t *testing.T, k *cluster.Kubelet, notSerial []byte) *x509.Certificate {
	t.Helper()
	var cert *x509.Certificate
	var last error
	if err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		cert, last = k.CurrentClientCert()
		return last == nil && string(cert.SerialNumber.Bytes()) != string(notSerial), nil
	}); err != nil {
		t.Fatalf("the kubelet of %s has no new client certificate in %s: %v (last: %v)", k.NodeName(), k.CertDir(), err, last)
	}
	if want := "system:node:" + k.NodeName(); cert.Subject.CommonName != want || !slices.Equal(cert.Subject.Organization, []string{"system:nodes"}) {
		t.Fatalf("the kubelet's certificate is for %s, want CN=%s,O=system:nodes", cert.Subject, want)
	}
	return cert
}

// kubeletClient is a client with the kubelet's current credentials.
func kubeletClient(t *testing.T, k *cluster.Kubelet) kubernetes.Interface {
	t.Helper()
	cfg, err := k.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	return kubernetes.NewForConfigOrDie(cfg)
}

// assertIdentity checks with a SelfSubjectReview that the kubelet's current
// certificate authenticates as its node.
func assertIdentity(ctx context.Context, t *testing.T, k *cluster.Kubelet, node string) {
	t.Helper()
	review, err := kubeletClient(t, k).AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview with the kubelet's certificate: %v", err)
	}
	u := review.Status.UserInfo
	if u.Username != "system:node:"+node || !slices.Contains(u.Groups, "system:nodes") {
		t.Fatalf("the kubelet's certificate authenticates as %q in %v, want system:node:%s in system:nodes", u.Username, u.Groups, node)
	}
}

// registerNode creates the node's Node object with the node's own
// credentials, as its kubelet registers it (a kubelet with a runtime may
// have done it already).
func registerNode(ctx context.Context, t *testing.T, nodeClient kubernetes.Interface, node string) {
	t.Helper()
	_, err := nodeClient.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("node %s could not register itself: %v", node, err)
	}
}

// renewLease creates or renews the node's Lease in kube-node-lease with the
// node's own credentials, as its kubelet's heartbeat does.
func renewLease(ctx context.Context, t *testing.T, nodeClient kubernetes.Interface, node string) {
	t.Helper()
	if err := renewLeaseOnce(ctx, nodeClient, node); err != nil {
		t.Fatalf("node %s could not renew its Lease: %v", node, err)
	}
}

func renewLeaseOnce(ctx context.Context, nodeClient kubernetes.Interface, node string) error {
	leases := nodeClient.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	lease, err := leases.Get(ctx, node, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		n, err := nodeClient.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{
				Name: node, Namespace: corev1.NamespaceNodeLease,
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node, UID: n.UID}},
			},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(node), LeaseDurationSeconds: ptr.To[int32](40), RenewTime: &now},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	lease.Spec.RenewTime = &now
	_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	return err
}

// heartbeat renews the node's Lease now and every two seconds until the
// test ends, with the node's own credentials: the heartbeat of a kubelet
// that runs (this suite's kubelets have no runtime and never get to it).
func heartbeat(ctx context.Context, t *testing.T, nodeClient kubernetes.Interface, node string) {
	t.Helper()
	renewLease(ctx, t, nodeClient, node)
	hbCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = wait.PollUntilContextCancel(hbCtx, 2*time.Second, false, func(ctx context.Context) (bool, error) {
			if err := renewLeaseOnce(ctx, nodeClient, node); err != nil && ctx.Err() == nil {
				t.Logf("heartbeat of %s: %v", node, err)
			}
			return false, nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

// setLeaseRenewTime sets the node's Lease's renewTime as the admin: the
// node last heartbeated then.
func setLeaseRenewTime(ctx context.Context, t *testing.T, node string, at time.Time) {
	t.Helper()
	patch := fmt.Sprintf(`{"spec":{"renewTime":%q}}`, at.UTC().Format(metav1.RFC3339Micro))
	if _, err := admin.CoordinationV1().Leases(corev1.NamespaceNodeLease).Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("failed to age the Lease of %s: %v", node, err)
	}
}

// waitLog waits until the kubelet's log has a line holding one of words,
// and returns the first such line.
func waitLog(ctx context.Context, t *testing.T, k *cluster.Kubelet, words ...string) string {
	t.Helper()
	var found string
	if err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		for _, line := range strings.Split(k.Log(), "\n") {
			for _, w := range words {
				if strings.Contains(line, w) {
					found = strings.TrimSpace(line)
					return true, nil
				}
			}
		}
		return false, nil
	}); err != nil {
		t.Fatalf("the kubelet's log (%s) never mentions %s: %v", k.LogPath(), strings.Join(words, " or "), err)
	}
	return found
}

func parseCSR(request []byte) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode(request)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("no PEM certificate request")
	}
	return x509.ParseCertificateRequest(block.Bytes)
}

func parseRequest(t *testing.T, csr *certificatesv1.CertificateSigningRequest) *x509.CertificateRequest {
	t.Helper()
	req, err := parseCSR(csr.Spec.Request)
	if err != nil {
		t.Fatalf("CSR %s: %v", csr.Name, err)
	}
	return req
}

// reportLine is one line of the compatibility report: what one kubelet CSR
// looked like and how nodecsr decided it.
type reportLine struct {
	Kubelet           string   `json:"kubelet"`
	Case              string   `json:"case"`
	Path              string   `json:"path"`
	Usages            []string `json:"usages"`
	KeyAlgorithm      string   `json:"keyAlgorithm"`
	ExpirationSeconds *int32   `json:"expirationSeconds"`
	NameStyle         string   `json:"nameStyle"`
	Requester         string   `json:"requester"`
	Reason            string   `json:"reason"`
}

var (
	generatedName = regexp.MustCompile(`^csr-[a-z0-9]{5}$`)
	reportMu      sync.Mutex
)

// report logs what the decided kubelet CSR looked like and, with
// $NODECSR_KUBELET_REPORT set, appends it to that file as one JSON line.
func (s *suite) report(t *testing.T, csr *certificatesv1.CertificateSigningRequest) {
	t.Helper()
	line := reportLine{
		Kubelet:           s.kubelet,
		Case:              strings.TrimPrefix(t.Name(), "TestKubelet/"),
		Path:              "Renewal",
		Usages:            []string{},
		KeyAlgorithm:      keyAlgorithm(parseRequest(t, csr)),
		ExpirationSeconds: csr.Spec.ExpirationSeconds,
		NameStyle:         "other",
		Requester:         csr.Spec.Username,
	}
	if slices.Contains(csr.Spec.Groups, "system:bootstrappers") || strings.HasPrefix(csr.Spec.Username, "system:bootstrap:") {
		line.Path = "Bootstrap"
	}
	for _, u := range csr.Spec.Usages {
		line.Usages = append(line.Usages, string(u))
	}
	switch {
	case generatedName.MatchString(csr.Name):
		line.NameStyle = "csr-xxxxx"
	case strings.HasPrefix(csr.Name, "node-csr-"):
		line.NameStyle = "node-csr-..."
	}
	if c := env.Decision(csr); c != nil {
		line.Reason = c.Reason
	}
	exp := "null"
	if line.ExpirationSeconds != nil {
		exp = fmt.Sprint(*line.ExpirationSeconds)
	}
	t.Logf("observed: %s sent %s (%s) by %s %v: usages %v, key %s, expirationSeconds %s → %s",
		s.kubelet, csr.Name, line.Path, csr.Spec.Username, csr.Spec.Groups, line.Usages, line.KeyAlgorithm, exp, line.Reason)
	path := os.Getenv(reportEnv)
	if path == "" {
		return
	}
	js, err := json.Marshal(line)
	if err != nil {
		t.Fatal(err)
	}
	reportMu.Lock()
	defer reportMu.Unlock()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("failed to open the report %s: %v", path, err)
	}
	defer func() { _ = f.Close() }()
	if _, err := f.Write(append(js, '\n')); err != nil {
		t.Fatalf("failed to write the report %s: %v", path, err)
	}
}

// keyAlgorithm names the request's public key: ECDSA-P256, RSA-2048, Ed25519.
func keyAlgorithm(req *x509.CertificateRequest) string {
	switch pub := req.PublicKey.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA-" + strings.ReplaceAll(pub.Curve.Params().Name, "-", "")
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", pub.N.BitLen())
	default:
		return req.PublicKeyAlgorithm.String()
	}
}
