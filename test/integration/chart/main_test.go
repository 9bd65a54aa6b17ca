// Package chart_test tests the Helm chart charts/nodecsr with Helm's own Go
// SDK: it renders the chart (defaults, non-default values, values that must
// be refused), installs it into a real control plane (etcd, kube-apiserver,
// kube-controller-manager's csrsigning), runs the real nodecsr-controller
// binary as the chart's ServiceAccount to prove its RBAC is enough and no
// more, and runs cert-manager's own controllers and cainjector in-process so
// that the chart's certificates are really issued and the API server really
// calls nodecsr's webhook over TLS.
package chart_test

import (
	"context"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"

	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/test/env"
)

var (
	tc      *cluster.Cluster
	admin   kubernetes.Interface
	kclient client.Client
	scheme  = runtime.NewScheme()
	// controllerBinary is the nodecsr-controller built for the package.
	controllerBinary string
)

func TestMain(m *testing.M) {
	os.Exit(env.Main(m, env.MainOptions{Build: []string{"./cmd/nodecsr-controller"}, Setup: func(s *env.Suite) error {
		tc, admin = s.Cluster, s.Cluster.AdminClient()
		controllerBinary = s.Binary("nodecsr-controller")
		// cert-manager's cainjector runs in-process on controller-runtime:
		// errors only.
		ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
		for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme, cmapi.AddToScheme} {
			if err := add(scheme); err != nil {
				return err
			}
		}
		var err error
		if kclient, err = client.New(tc.AdminConfig(), client.Options{Scheme: scheme}); err != nil {
			return err
		}
		ctx := s.Context()
		// The CRDs first, long before any test creates a custom resource:
		// the API server delays the first create of a custom resource that
		// comes within seconds of its CRD becoming Established.
		if err := env.InstallCertManagerCRDs(ctx, kclient); err != nil {
			return err
		}
		// The inventory's, which every release of the package shares
		// (install sets crds.enabled=false).
		if err := cluster.InstallInventoryCRD(ctx, tc.AdminConfig()); err != nil {
			return err
		}
		return tc.ApplyKubeadmRBAC(ctx)
	}}))
}

// uniqueName returns a name unique within the test binary and its runs.
func uniqueName(prefix string) string { return env.UniqueName(prefix) }

// repoRoot is the repository root.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// decodeManifests splits a multi-document manifest into objects.
func decodeManifests(t testing.TB, manifest string) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifest), 4096)
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); err != nil {
			if err == io.EOF {
				return objs
			}
			t.Fatalf("the rendered manifest does not decode: %v", err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		objs = append(objs, obj)
	}
}

// convert turns an unstructured object into a typed one.
func convert[T any](t testing.TB, u *unstructured.Unstructured) *T {
	t.Helper()
	out := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, out, true); err != nil {
		t.Fatalf("%s %s does not convert to %T: %v", u.GetKind(), u.GetName(), out, err)
	}
	return out
}

// find returns the one object of kind named name; it fails the test when
// there is not exactly one.
func find(t testing.TB, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	var found []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d objects of kind %s named %q in the manifest, want 1", len(found), kind, name)
	}
	return found[0]
}

func ofKind(objs []*unstructured.Unstructured, kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

// waitUntil polls cond every 100ms until it is done or ctx ends.
func waitUntil(ctx context.Context, cond func(context.Context) (bool, error)) error {
	return wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, cond)
}

// poll is waitUntil for at most timeout.
func poll(ctx context.Context, timeout time.Duration, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return waitUntil(ctx, cond)
}

func createNamespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	_, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("failed to create namespace %s: %v", name, err)
	}
	// What kube-controller-manager's serviceaccount controller (not running
	// here) does in a real cluster: pods without a serviceAccountName use it.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: name}}
	if _, err := admin.CoreV1().ServiceAccounts(name).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatalf("failed to create the default ServiceAccount in %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = admin.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
}
