// Package webhook_test runs nodecsr's admission webhooks in a
// controller-runtime manager in the test process, registers their
// configurations (built by webhook.MutatingWebhookConfiguration and
// webhook.ValidatingWebhookConfiguration) with a real kube-apiserver, and
// exercises them through real API requests: CSR creation by bootstrap
// tokens and nodes, approvals through the approval subresource, a webhook
// that is down, and a serving-certificate rotation.
package webhook_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2/textlogger"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/cluster"
	testenv "github.com/nodecsr/nodecsr/test/env"
	"github.com/nodecsr/nodecsr/webhook"
)

var (
	testCluster *cluster.Cluster
	// bootstrapToken authenticates as system:bootstrap:<id>, a bootstrapper.
	bootstrapToken cluster.BootstrapToken
)

// selfUser plays nodecsr's ServiceAccount (a client-certificate user of the
// same name).
const selfUser = "system:serviceaccount:nodecsr-system:nodecsr"

func TestMain(m *testing.M) {
	ctrl.SetLogger(textlogger.NewLogger(textlogger.NewConfig(textlogger.Verbosity(0), textlogger.Output(os.Stderr))))
	os.Exit(cluster.RunTests(m, cluster.Options{NoControllerManager: true}, func(c *cluster.Cluster) error {
		testCluster = c
		ctx := context.Background()
		if err := c.ApplyKubeadmRBAC(ctx); err != nil {
			return err
		}
		var err error
		bootstrapToken, err = c.CreateBootstrapToken(ctx, time.Hour)
		return err
	}))
}

// env is one running webhook server, in its own manager, with its
// configurations registered with the API server.
type env struct {
	t      *testing.T
	name   string
	port   int
	ca     *cluster.CA
	vol    *secretVolume
	policy atomic.Pointer[config.Effective]
	reg    *prometheus.Registry
	admin  kubernetes.Interface
	// serving: the cache and configurations are set up for serving CSRs.
	serving bool

	stopOnce sync.Once
	stopMgr  func()
}

// startEnv starts a manager serving the webhooks with policy p, registers
// the webhook configurations and waits until the API server calls them.
// As nodecsr-controller does, it sets up the cache (and the configurations)
// for serving CSRs when p enables serving. Everything is stopped and
// deleted when the test ends.
func startEnv(t *testing.T, p *config.Effective) *env {
	t.Helper()
	e := &env{t: t, name: "nodecsr-it-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), admin: testCluster.AdminClient(), reg: prometheus.NewRegistry(), serving: p.Serving.Enabled}
	e.policy.Store(p)
	var err error
	if e.ca, err = cluster.NewCA("nodecsr-webhook-it-ca"); err != nil {
		t.Fatal(err)
	}
	e.vol = &secretVolume{dir: t.TempDir()}
	leaf, err := e.ca.IssueServing("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.vol.write(leaf); err != nil {
		t.Fatal(err)
	}
	e.port = testenv.FreePort(t)

	srv, err := webhook.NewServer(webhook.ServerOptions{Host: "127.0.0.1", Port: e.port, CertDir: e.vol.dir})
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := ctrl.NewManager(testCluster.AdminConfig(), ctrl.Options{
		Cache:                  approver.CacheOptions(e.serving),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		WebhookServer:          srv,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := mgr.GetCache().GetInformer(ctx, approver.NodeObject(e.serving)); err != nil {
		cancel()
		t.Fatal(err)
	}
	err = webhook.Register(mgr, webhook.Options{
		Policy:   e.policy.Load,
		Facts:    webhookFacts(ctx, t, mgr, e.serving),
		Self:     selfUser,
		Events:   &approver.EventRecorder{Client: mgr.GetClient(), Instance: "it", Namespace: metav1.NamespaceDefault},
		Registry: e.reg,
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	e.stopMgr = func() {
		cancel()
		stopCtx, stopCancel := testutil.Context(t)
		defer stopCancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("manager: %v", err)
			}
		case <-stopCtx.Done():
			t.Error("the manager did not stop")
		}
	}
	t.Cleanup(e.stopServer)
	syncCtx, syncCancel := testutil.Context(t)
	defer syncCancel()
	if !mgr.GetCache().WaitForCacheSync(syncCtx) {
		t.Fatal("the manager's cache did not sync")
	}
	e.register()
	return e
}

// webhookFacts is the webhook's cache-only Gatherer, as nodecsr-controller
// builds it: with serving, the Node addresses and the neighbours too.
func webhookFacts(ctx context.Context, t *testing.T, mgr ctrl.Manager, serving bool) *approver.Gatherer {
	t.Helper()
	g := &approver.Gatherer{
		Nodes:      approver.CachedNodes{Reader: mgr.GetCache(), Serving: serving},
		Heartbeats: approver.LeaseHeartbeats{Leases: mgr.GetAPIReader(), Nodes: mgr.GetCache(), Serving: serving},
		Clock:      clock.RealClock{},
	}
	if serving {
		if err := mgr.GetFieldIndexer().IndexField(ctx, &corev1.Node{}, approver.IndexNodeAddress, approver.IndexNodeByAddress); err != nil {
			t.Fatal(err)
		}
		g.Addresses = approver.CachedNodeAddresses{Reader: mgr.GetCache()}
	}
	return g
}

// stopServer stops the manager and so the webhook server.
func (e *env) stopServer() { e.stopOnce.Do(e.stopMgr) }

func (e *env) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(e.port)) }

// register creates the webhook configurations, waits until they take
// effect, and deletes them (waiting until they no longer apply) when the
// test ends.
func (e *env) register() {
	t := e.t
	opts := webhook.ConfigOptions{Name: e.name, CABundle: e.ca.CertPEM, URL: "https://" + e.addr(), Self: selfUser, Serving: e.serving}
	t.Cleanup(func() { e.unregister() })
	if err := testenv.CreateWebhookConfigurations(t.Context(), e.admin, opts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Effective when a CSR by the admin (no kubelet requester) is rejected
	// and a bootstrapper's good CSR comes back labelled (dry runs: nothing
	// is stored).
	boot := bootstrapClient(t)
	var last string
	err := testutil.Poll(t, 100*time.Millisecond, func(ctx context.Context) (bool, error) {
		_, err := e.admin.CertificatesV1().CertificateSigningRequests().Create(ctx, goodCSR("probe", "it-probe-node"), dryRun)
		if err == nil || !strings.Contains(err.Error(), webhook.WebhookNameValidate) {
			last = fmt.Sprintf("admin's CSR: %v", err)
			return false, nil
		}
		got, err := boot.CertificatesV1().CertificateSigningRequests().Create(ctx, goodCSR("probe", "it-probe-node"), dryRun)
		if err != nil || got.Labels[webhook.LabelNodeName] != "it-probe-node" {
			last = fmt.Sprintf("bootstrapper's CSR: %v, labels %v", err, got.GetLabels())
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("the webhooks did not take effect: %s", last)
	}
}

// setURLHost points both configurations at https://<host>:<port>. The API
// server caches one client per webhook address, so this makes it open new
// connections.
func (e *env) setURLHost(host string) {
	t, ctx := e.t, context.Background()
	ar := e.admin.AdmissionregistrationV1()
	base := "https://" + net.JoinHostPort(host, strconv.Itoa(e.port))
	mwc, err := ar.MutatingWebhookConfigurations().Get(ctx, e.name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range mwc.Webhooks {
		u := base + webhook.PathMutate
		mwc.Webhooks[i].ClientConfig.URL = &u
	}
	if _, err := ar.MutatingWebhookConfigurations().Update(ctx, mwc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	vwc, err := ar.ValidatingWebhookConfigurations().Get(ctx, e.name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range vwc.Webhooks {
		u, _ := strings.CutPrefix(*vwc.Webhooks[i].ClientConfig.URL, "https://"+e.addr())
		u = base + u
		vwc.Webhooks[i].ClientConfig.URL = &u
	}
	if _, err := ar.ValidatingWebhookConfigurations().Update(ctx, vwc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) unregister() {
	ctx, cancel := testutil.Context(e.t)
	defer cancel()
	if err := testenv.DeleteWebhookConfigurations(ctx, e.admin, e.name); err != nil {
		e.t.Error(err)
	}
	// Wait until the API server no longer calls them, so the next test
	// starts clean: the admin's CSR is admitted again.
	_ = testutil.Poll(e.t, 100*time.Millisecond, func(ctx context.Context) (bool, error) {
		_, err := e.admin.CertificatesV1().CertificateSigningRequests().Create(ctx, goodCSR("probe", "it-probe-node"), dryRun)
		return err == nil, nil
	})
}

var dryRun = metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}

// goodCSR is a CSR for nodeName that a bootstrapper (or the node itself)
// may file: nothing in it breaks the default policy. The API server fills
// in the requester.
func goodCSR(prefix, nodeName string, opts ...csrtest.Option) *certificatesv1.CertificateSigningRequest {
	csr := csrtest.Build(append([]csrtest.Option{csrtest.WithNodeName(nodeName)}, opts...)...)
	return forCreate(csr, prefix)
}

// forCreate strips what the API server fills in and names the CSR.
func forCreate(csr *certificatesv1.CertificateSigningRequest, prefix string) *certificatesv1.CertificateSigningRequest {
	csr.ObjectMeta = metav1.ObjectMeta{GenerateName: prefix + "-"}
	csr.Spec.Username, csr.Spec.Groups, csr.Spec.UID = "", nil, ""
	csr.Status = certificatesv1.CertificateSigningRequestStatus{}
	return csr
}

func bootstrapClient(t *testing.T) kubernetes.Interface {
	t.Helper()
	return kubernetes.NewForConfigOrDie(testCluster.BootstrapConfig(bootstrapToken))
}

// userClient is a client authenticating as user; warnings collects the
// warnings the API server returns to it.
func userClient(t *testing.T, user string, groups ...string) (kubernetes.Interface, *testutil.Warnings) {
	t.Helper()
	cfg, err := testCluster.UserConfig(user, groups...)
	if err != nil {
		t.Fatal(err)
	}
	w := &testutil.Warnings{}
	cfg.WarningHandler = w
	return kubernetes.NewForConfigOrDie(cfg), w
}

// createNode creates a Node object and deletes it when the test ends.
func createNode(t *testing.T, name string) { testenv.CreateNode(t, testCluster.AdminClient(), name) }

// deleteCSRs deletes the CSRs labelled for nodeName when the test ends.
func deleteCSRs(t *testing.T, nodeNames ...string) {
	t.Cleanup(func() {
		admin := testCluster.AdminClient()
		for _, n := range nodeNames {
			_ = admin.CertificatesV1().CertificateSigningRequests().DeleteCollection(context.Background(), metav1.DeleteOptions{},
				metav1.ListOptions{LabelSelector: webhook.LabelNodeName + "=" + n})
		}
	})
}

// grantApproval lets users get CSRs and approve kubelet client CSRs, as a
// ClusterRole a careless admin might hand out.
func grantApproval(t *testing.T, name string, users ...string) {
	t.Helper()
	admin := testCluster.AdminClient()
	ctx := context.Background()
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{certificatesv1.GroupName}, Resources: []string{"certificatesigningrequests"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{certificatesv1.GroupName}, Resources: []string{"certificatesigningrequests/approval"}, Verbs: []string{"update"}},
			{APIGroups: []string{certificatesv1.GroupName}, Resources: []string{"signers"}, Verbs: []string{"approve"},
				ResourceNames: []string{certificatesv1.KubeAPIServerClientKubeletSignerName}},
		},
	}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
	}
	for _, u := range users {
		binding.Subjects = append(binding.Subjects, rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: u})
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = admin.RbacV1().ClusterRoleBindings().Delete(context.Background(), name, metav1.DeleteOptions{})
		_ = admin.RbacV1().ClusterRoles().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
}

// approve appends an Approved condition through the approval subresource.
func approve(ctx context.Context, c kubernetes.Interface, csr *certificatesv1.CertificateSigningRequest, opts metav1.UpdateOptions) error {
	csr = csr.DeepCopy()
	csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
		Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: "ManualApproval", Message: "approved by hand",
	})
	_, err := c.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, csr.Name, csr, opts)
	return err
}

// secretVolume writes a certificate and key into dir the way the kubelet
// writes a Secret volume: the files live in a timestamped directory, ..data
// is a symlink to it, and tls.crt and tls.key are symlinks through ..data.
// A second write swaps ..data atomically (rename of a new symlink over it)
// and removes the old directory, as the kubelet's atomic writer does when
// cert-manager updates the Secret.
type secretVolume struct {
	dir string
	gen int
}

func (v *secretVolume) write(kp *cluster.KeyPair) error {
	v.gen++
	ts := fmt.Sprintf("..2026_01_01_00_00_%02d.%d", v.gen, os.Getpid())
	if err := os.Mkdir(filepath.Join(v.dir, ts), 0o755); err != nil {
		return err
	}
	for name, data := range map[string][]byte{"tls.crt": kp.CertPEM, "tls.key": kp.KeyPEM} {
		if err := os.WriteFile(filepath.Join(v.dir, ts, name), data, 0o600); err != nil {
			return err
		}
	}
	old, _ := os.Readlink(filepath.Join(v.dir, "..data"))
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		return err
	}
	for _, name := range []string{"tls.crt", "tls.key"} {
		link := filepath.Join(v.dir, name)
		if _, err := os.Lstat(link); errors.Is(err, os.ErrNotExist) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				return err
			}
		}
	}
	if old != "" {
		return os.RemoveAll(filepath.Join(v.dir, old))
	}
	return nil
}

// servedSerial dials addr and returns the serial of the served certificate.
func servedSerial(ctx context.Context, addr string, roots *x509.CertPool) (string, error) {
	d := &tls.Dialer{Config: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer func() { _ = conn.Close() }()
	return conn.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}

func serialOf(t *testing.T, kp *cluster.KeyPair) string {
	t.Helper()
	c, err := tls.X509KeyPair(kp.CertPEM, kp.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.String()
}

// counter reads nodecsr_admission_total{operation,result,reason} from reg.
func counter(t *testing.T, reg prometheus.Gatherer, op, result, reason string) float64 {
	t.Helper()
	v, err := testutil.MetricSum(reg, "nodecsr_admission_total", map[string]string{"operation": op, "result": result, "reason": reason})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// failOpenCount sums the API server's apiserver_admission_webhook_fail_open_count
// for nodecsr's webhooks: calls that failed and were ignored.
func failOpenCount(t *testing.T) float64 {
	t.Helper()
	raw, err := testCluster.AdminClient().Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, "apiserver_admission_webhook_fail_open_count{") || !strings.Contains(line, ".csr.nodecsr.io\"") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}
