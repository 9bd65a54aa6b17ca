// Package inventory_test runs the real nodecsr-controller binary with the
// NodeCertificate inventory against a real control plane (etcd,
// kube-apiserver with Node,RBAC and NodeRestriction, kube-controller-manager
// with csrsigning, which signs what nodecsr approves, and the
// garbagecollector, which deletes an entry with its Node).
package inventory_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nodecsrv1alpha1 "github.com/nodecsr/nodecsr/api/v1alpha1"
	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/test/env"
)

// The suite's controller writes a node's entry at most every interval and
// collects a never-registered name's entry after grace.
const (
	interval = 2 * time.Second
	grace    = 5 * time.Second
)

var (
	tc      *cluster.Cluster
	admin   kubernetes.Interface
	kclient client.Client
	ctl     *env.Controller
	// binary is the nodecsr-controller Main built.
	binary string
)

func TestMain(m *testing.M) {
	os.Exit(env.Main(m, env.MainOptions{
		Cluster: cluster.Options{GarbageCollector: true},
		Build:   []string{"./cmd/nodecsr-controller"},
		Setup: func(s *env.Suite) error {
			tc, admin, binary = s.Cluster, s.Cluster.AdminClient(), s.Binary("nodecsr-controller")
			scheme := runtime.NewScheme()
			if err := clientgoscheme.AddToScheme(scheme); err != nil {
				return err
			}
			if err := nodecsrv1alpha1.AddToScheme(scheme); err != nil {
				return err
			}
			var err error
			if kclient, err = client.New(tc.AdminConfig(), client.Options{Scheme: scheme}); err != nil {
				return err
			}
			if err := tc.ApplyKubeadmRBAC(s.Context()); err != nil {
				return err
			}
			// The CRD comes from the chart, installed as a release with
			// the defaults that matter here (crds.enabled, crds.keep); its
			// Deployment never runs (no kubelet): the suite runs the
			// binary itself.
			if err := installRelease(s.Context()); err != nil {
				return err
			}
			ctl, err = s.LaunchController(env.ControllerOptions{
				PodName: "nodecsr-inventory-test", PodNamespace: "kube-system",
				Args: map[string]string{
					"inventory-interval":           interval.String(),
					"inventory-unregistered-grace": grace.String(),
				},
			})
			return err
		},
	}))
}

// The release that installs the CRD.
const releaseName, releaseNamespace = "nodecsr", "nodecsr-system"

// releaseValues: the chart's defaults but for what needs a running cluster
// beyond this one (cert-manager, a scheduler).
var releaseValues = map[string]any{
	"replicaCount":   1,
	"leaderElection": map[string]any{"enabled": false},
	"webhook":        map[string]any{"enabled": false},
	"tests":          map[string]any{"enabled": false},
}

// installRelease installs the chart as releaseName.
func installRelease(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: releaseNamespace}}
	if _, err := admin.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		return err
	}
	ch, err := env.LoadChart(root)
	if err != nil {
		return err
	}
	_, _, err = env.HelmInstall(ctx, tc.AdminKubeconfig(), ch, releaseName, releaseNamespace, releaseValues, nil)
	return err
}

// poll polls cond until it is done or the test's deadline nears; a
// nodecsr-controller that died ends it at once.
func poll(t *testing.T, cond func(context.Context) (bool, error)) error {
	t.Helper()
	return ctl.Poll(t, cond)
}

// create files csr with the requester's client under a unique name.
func create(t *testing.T, requester kubernetes.Interface, csr *certificatesv1.CertificateSigningRequest) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	return env.CreateCSR(t, requester, "inv", csr)
}

// issued waits until the CSR is signed and returns it.
func issued(t *testing.T, name string) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	return waitCSR(t, name, "issued (approved by nodecsr and signed)", func(csr *certificatesv1.CertificateSigningRequest) bool {
		return len(csr.Status.Certificate) > 0
	})
}

// approved waits until the CSR has an Approved condition.
func approved(t *testing.T, name string) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	return waitCSR(t, name, "approved", env.HasApproved)
}

// waitCSR waits until the CSR satisfies done and returns it.
func waitCSR(t *testing.T, name, what string, done func(*certificatesv1.CertificateSigningRequest) bool) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	var got *certificatesv1.CertificateSigningRequest
	err := poll(t, func(ctx context.Context) (bool, error) {
		var err error
		got, err = admin.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return done(got), nil
	})
	if err != nil {
		t.Fatalf("CSR %s was not %s: %v", name, what, err)
	}
	return got
}

// entry waits until the node's NodeCertificate satisfies ok, and returns it.
func entry(t *testing.T, node string, what string, ok func(*nodecsrv1alpha1.NodeCertificate) bool) *nodecsrv1alpha1.NodeCertificate {
	t.Helper()
	nc := &nodecsrv1alpha1.NodeCertificate{}
	err := poll(t, func(ctx context.Context) (bool, error) {
		err := kclient.Get(ctx, client.ObjectKey{Name: node}, nc)
		if err != nil {
			return false, client.IgnoreNotFound(err)
		}
		return ok(nc), nil
	})
	if err != nil {
		t.Fatalf("NodeCertificate %s: %s: %v; last seen: %+v", node, what, err, nc)
	}
	return nc
}

// hasClient: the entry's client certificate is the one of the CSR.
func hasClient(t *testing.T, csr *certificatesv1.CertificateSigningRequest) func(*nodecsrv1alpha1.NodeCertificate) bool {
	serial := strings.ToUpper(env.ParseCert(t, csr.Status.Certificate).SerialNumber.Text(16))
	return func(nc *nodecsrv1alpha1.NodeCertificate) bool {
		return nc.Status.Client != nil && nc.Status.Client.SerialNumber == serial
	}
}

// gone waits until the node's NodeCertificate is deleted.
func gone(t *testing.T, node, why string) {
	t.Helper()
	err := poll(t, func(ctx context.Context) (bool, error) {
		err := kclient.Get(ctx, client.ObjectKey{Name: node}, &nodecsrv1alpha1.NodeCertificate{})
		if err == nil {
			return false, nil
		}
		return true, client.IgnoreNotFound(err)
	})
	if err != nil {
		t.Fatalf("NodeCertificate %s was not deleted (%s): %v", node, why, err)
	}
}

// metric scrapes the controller.
func metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	ctx, cancel := testutil.Context(t)
	defer cancel()
	v, err := ctl.MetricSum(ctx, name, labels)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitMetric waits until the metric has the value.
func waitMetric(t *testing.T, name string, labels map[string]string, want float64) {
	t.Helper()
	var got float64
	err := poll(t, func(ctx context.Context) (bool, error) {
		var err error
		got, err = ctl.MetricSum(ctx, name, labels)
		return got == want, err
	})
	if err != nil {
		t.Fatalf("%s%v = %v, want %v: %v", name, labels, got, want, err)
	}
}
