package env

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/cluster"
)

// Suite is what Main prepares for an integration package.
type Suite struct {
	// Cluster is the package's control plane.
	Cluster *cluster.Cluster
	// Dir is a folder for the package's files, removed after the tests.
	Dir string

	bin       string
	failed    bool
	cleanups  []func() error
	mainCtx   context.Context
	mainClose context.CancelFunc
}

// MainOptions configures Main.
type MainOptions struct {
	// Cluster configures the control plane.
	Cluster cluster.Options
	// Build names the commands to build (./cmd/...) before the control
	// plane starts; Suite.Binary finds them.
	Build []string
	// Setup prepares the control plane before the tests.
	Setup func(s *Suite) error
}

// Main is the body of an integration package's TestMain: it builds the real
// binaries, starts the control plane (cluster.RunSuite), runs Setup, runs
// the tests, then the functions Setup registered with Suite.Cleanup, and
// removes Suite.Dir.
//
//	func TestMain(m *testing.M) { os.Exit(env.Main(m, env.MainOptions{Setup: setup})) }
func Main(m *testing.M, o MainOptions) int {
	dir, err := os.MkdirTemp("", "nodecsr-"+filepath.Base(mustGetwd())+"-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	s := &Suite{Dir: dir, bin: filepath.Join(dir, "bin")}
	s.mainCtx, s.mainClose = testutil.MainContext()
	defer s.mainClose()
	if len(o.Build) > 0 {
		if err := cluster.BuildBinaries(s.mainCtx, s.bin, o.Build...); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
			return 1
		}
	}
	return cluster.RunSuite(m, o.Cluster, func(c *cluster.Cluster) (func(int) int, error) {
		s.Cluster = c
		teardown := func(code int) int {
			s.failed = code != 0
			for i := len(s.cleanups) - 1; i >= 0; i-- {
				if err := s.cleanups[i](); err != nil {
					fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
					code = 1
				}
			}
			return code
		}
		if o.Setup == nil {
			return teardown, nil
		}
		if err := o.Setup(s); err != nil {
			teardown(1)
			return nil, err
		}
		return teardown, nil
	})
}

func mustGetwd() string {
	wd, err := os.Getwd()
	if err != nil {
		return "test"
	}
	return wd
}

// Binary is the path of a command Main built (by its name, e.g.
// "nodecsr-controller").
func (s *Suite) Binary(name string) string { return filepath.Join(s.bin, name) }

// Context is the context for what Setup and the cleanups wait for
// (testutil.MainContext).
func (s *Suite) Context() context.Context { return s.mainCtx }

// Cleanup registers f to run after the tests, last registered first; an
// error fails the package.
func (s *Suite) Cleanup(f func() error) { s.cleanups = append(s.cleanups, f) }

// Failed reports, in a cleanup, whether the tests failed.
func (s *Suite) Failed() bool { return s.failed }

// LaunchController runs nodecsr-controller (built by Main; opts.Binary and
// opts.Dir default to it and to a folder of Suite.Dir) for the whole
// package, as the admin unless opts names a Deployment, and stops it after
// the tests; if they failed, the tail of its log is printed.
func (s *Suite) LaunchController(opts ControllerOptions) (*Controller, error) {
	if opts.Binary == "" {
		opts.Binary = s.Binary("nodecsr-controller")
	}
	if opts.AdminKubeconfig == "" {
		opts.AdminKubeconfig = s.Cluster.AdminKubeconfig()
	}
	if opts.Dir == "" {
		dir, err := os.MkdirTemp(s.Dir, "nodecsr-controller-")
		if err != nil {
			return nil, err
		}
		opts.Dir = dir
	}
	ctl, err := LaunchController(s.mainCtx, opts)
	if err != nil {
		return nil, err
	}
	s.Cleanup(func() error {
		err := errors.Join(ctl.Err(), ctl.Stop(s.mainCtx))
		if err != nil || s.failed {
			fmt.Fprintf(os.Stderr, "--- last lines of nodecsr-controller's log (%s) ---\n%s\n", ctl.LogPath, Tail(ctl.LogPath, 40))
		}
		return err
	})
	return ctl, nil
}

var (
	runID   = strconv.FormatUint(uint64(rand.Uint32()), 36)
	nameSeq atomic.Int64
)

// UniqueName is prefix-<run>-<n>: a name no other test of this process (nor
// of an earlier run against the same cluster, nor a repetition under -count)
// has, and a valid DNS label for a short prefix.
func UniqueName(prefix string) string {
	return fmt.Sprintf("%s-%s-%d", prefix, runID, nameSeq.Add(1))
}

// FreePort is a port free on 127.0.0.1 now.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := cluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// CreateNode creates a Node object called name, as a kubelet registers
// itself (it may exist already), and deletes it when the test ends.
func CreateNode(t testing.TB, cs kubernetes.Interface, name string) {
	t.Helper()
	ctx, cancel := testutil.Context(t)
	defer cancel()
	_, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("failed to create node %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := testutil.CleanupContext(t)
		defer cancel()
		_ = cs.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
	})
}

// BootstrapClient creates a bootstrap token (deleted when the test ends),
// which authenticates from the start, and a client that authenticates with
// it, as a joining kubelet does.
func BootstrapClient(t testing.TB, c *cluster.Cluster) (kubernetes.Interface, cluster.BootstrapToken) {
	t.Helper()
	ctx, cancel := testutil.Context(t)
	defer cancel()
	tok, err := c.CreateBootstrapToken(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := testutil.CleanupContext(t)
		defer cancel()
		_ = c.AdminClient().CoreV1().Secrets(metav1.NamespaceSystem).Delete(ctx, "bootstrap-token-"+tok.ID, metav1.DeleteOptions{})
	})
	cs, err := kubernetes.NewForConfig(c.BootstrapConfig(tok))
	if err != nil {
		t.Fatal(err)
	}
	return cs, tok
}

// NodeClient is a client that authenticates as the kubelet of node
// (system:node:<node> in system:nodes).
func NodeClient(t testing.TB, c *cluster.Cluster, node string) kubernetes.Interface {
	t.Helper()
	cfg, err := c.NodeConfig(node)
	if err != nil {
		t.Fatal(err)
	}
	return kubernetes.NewForConfigOrDie(cfg)
}

// Impersonating is the admin acting as user in groups; the API server sets
// spec.username and spec.groups of a CSR it creates to exactly those.
func Impersonating(c *cluster.Cluster, user string, groups ...string) kubernetes.Interface {
	cfg := c.AdminConfig()
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	return kubernetes.NewForConfigOrDie(cfg)
}

// AllowCSRCreate binds system:node-bootstrapper (create and read CSRs,
// nothing else) to subject in a ClusterRoleBinding called name (kept if it
// exists), and waits until the API server's authorizer, which reads RBAC
// through an informer, lets subject create CSRs.
func AllowCSRCreate(ctx context.Context, cs kubernetes.Interface, name string, subject rbacv1.Subject) error {
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:node-bootstrapper"},
		Subjects:   []rbacv1.Subject{subject},
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("failed to let %s %s create CSRs: %w", subject.Kind, subject.Name, err)
	}
	spec := authorizationv1.SubjectAccessReviewSpec{
		ResourceAttributes: &authorizationv1.ResourceAttributes{Group: certificatesv1.GroupName, Resource: "certificatesigningrequests", Verb: "create"},
	}
	switch subject.Kind {
	case rbacv1.GroupKind:
		spec.User, spec.Groups = "nodecsr-test-rbac-probe", []string{subject.Name}
	case rbacv1.UserKind:
		spec.User = subject.Name
	default:
		return fmt.Errorf("AllowCSRCreate: subject kind %s", subject.Kind)
	}
	err := wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		r, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: spec}, metav1.CreateOptions{})
		if err != nil {
			return false, err
		}
		return r.Status.Allowed, nil
	})
	if err != nil {
		return fmt.Errorf("%s %s may not create CSRs yet: %w", subject.Kind, subject.Name, err)
	}
	return nil
}

// Group is an RBAC subject for a group.
func Group(name string) rbacv1.Subject {
	return rbacv1.Subject{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: name}
}

// User is an RBAC subject for a user.
func User(name string) rbacv1.Subject {
	return rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: name}
}

// CreateCSR files csr with the requester's client. The fields the API
// server sets (username, groups, UID) are cleared, and a CSR without a name,
// or with a fixture's "csr-" name, gets a unique one with the prefix.
func CreateCSR(t testing.TB, requester kubernetes.Interface, prefix string, csr *certificatesv1.CertificateSigningRequest) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	csr.Spec.Username, csr.Spec.Groups, csr.Spec.UID = "", nil, ""
	if csr.Name == "" || strings.HasPrefix(csr.Name, "csr-") {
		csr.Name = UniqueName(prefix)
	}
	created, err := requester.CertificatesV1().CertificateSigningRequests().Create(t.Context(), csr, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create CSR %s: %v", csr.Name, err)
	}
	return created
}
