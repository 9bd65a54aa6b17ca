package cluster_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nodecsr/nodecsr/test/cluster"
)

var testCluster *cluster.Cluster

// crashHelperEnv makes the test binary act as a process that starts a control
// plane and dies without stopping it (see TestNoProcessOutlivesACrashedTest).
const crashHelperEnv = "NODECSR_TEST_CRASH_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(crashHelperEnv); mode != "" {
		crashHelper(mode)
		return
	}
	os.Exit(cluster.RunTests(m, cluster.Options{}, func(c *cluster.Cluster) error {
		testCluster = c
		return c.ApplyKubeadmRBAC(context.Background())
	}))
}

func TestServerReportsItsRealVersion(t *testing.T) {
	v, err := testCluster.AdminClient().Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != cluster.KubeVersion {
		t.Fatalf("server version = %q, want %q (are the version ldflags set?)", v.GitVersion, cluster.KubeVersion)
	}
}

// TestNodeRenewalIsSignedAndAuthenticates walks the renewal path by hand: a
// node identity files a kubelet client CSR, the test approves it through the
// approval subresource, kube-controller-manager signs it, and the issued
// certificate authenticates as that node.
func TestNodeRenewalIsSignedAndAuthenticates(t *testing.T) {
	ctx := t.Context()
	nodeCfg, err := testCluster.NodeConfig("harness-node-1")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM := requestAndApprove(ctx, t, kubernetes.NewForConfigOrDie(nodeCfg), "harness-node-1", "harness-renewal")
	assertIdentity(ctx, t, testCluster.ConfigFromKeyPair(certPEM, keyPEM), "system:node:harness-node-1", "system:nodes")
}

// TestBootstrapTokenPath proves the bootstrap path: a real bootstrap token
// authenticates as system:bootstrap:<id>, may file a CSR for a node name, and
// the certificate issued for it authenticates as the node.
func TestBootstrapTokenPath(t *testing.T) {
	ctx := t.Context()
	tok, err := testCluster.CreateBootstrapToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bootCfg := testCluster.BootstrapConfig(tok)
	assertIdentity(ctx, t, bootCfg, tok.Username(), "system:bootstrappers", cluster.DefaultBootstrapGroup)

	certPEM, keyPEM := requestAndApprove(ctx, t, kubernetes.NewForConfigOrDie(bootCfg), "harness-node-2", "harness-bootstrap")
	assertIdentity(ctx, t, testCluster.ConfigFromKeyPair(certPEM, keyPEM), "system:node:harness-node-2", "system:nodes")
}

// TestNodeRestrictionRefusesOtherNodesName documents what the API server
// already refuses on its own, so nodecsr's own check is defence in depth.
func TestNodeRestrictionRefusesOtherNodesName(t *testing.T) {
	ctx := t.Context()
	nodeCfg, err := testCluster.NodeConfig("harness-node-3")
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := kubeletCSR(t, "harness-node-4", "harness-other-name")
	_, err = kubernetes.NewForConfigOrDie(nodeCfg).CertificatesV1().CertificateSigningRequests().Create(ctx, csr, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "can only create a node CSR with CN=system:node:harness-node-3") {
		t.Fatalf("NodeRestriction did not refuse another node's name: %v", err)
	}
}

func TestRestartAPIServer(t *testing.T) {
	// Use a separate control plane: a restart must not disturb the other tests.
	ctx := t.Context()
	c, err := cluster.Start(ctx, cluster.Options{NoControllerManager: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Stop() }()
	client := c.AdminClient()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "survives-restart"}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.RestartAPIServer(ctx, 500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{}); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	for name, up := range c.Running() {
		if up {
			t.Errorf("%s still running after Stop", name)
		}
	}
}

// TestNoProcessOutlivesACrashedTest runs this test binary as a child that
// starts a control plane and then dies without cleaning up (os.Exit, a panic,
// SIGKILL), and checks that etcd, kube-apiserver and kube-controller-manager
// die with it.
func TestNoProcessOutlivesACrashedTest(t *testing.T) {
	for _, mode := range []string{"exit", "panic", "sigkill"} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), crashHelperEnv+"="+mode)
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var pids []int
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				// The child dies without cleaning up; its folder is ours to remove.
				if dir, ok := strings.CutPrefix(sc.Text(), "DIR "); ok {
					t.Cleanup(func() { _ = os.RemoveAll(dir) })
				}
				if rest, ok := strings.CutPrefix(sc.Text(), "PIDS "); ok {
					for _, f := range strings.Fields(rest) {
						pid, _ := strconv.Atoi(f)
						pids = append(pids, pid)
					}
				}
			}
			_ = cmd.Wait()
			if len(pids) != 3 {
				t.Fatalf("helper reported pids %v, want 3", pids)
			}
			err = wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
				return !slices.ContainsFunc(pids, alive), nil
			})
			if err != nil {
				for _, pid := range pids {
					if alive(pid) {
						_ = syscall.Kill(pid, syscall.SIGKILL)
						t.Errorf("process %d outlived its crashed parent", pid)
					}
				}
			}
		})
	}
}

func alive(pid int) bool {
	// A zombie still answers signal 0; read its state instead.
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	fields := strings.Fields(string(data))
	return len(fields) > 2 && fields[2] != "Z"
}

func crashHelper(mode string) {
	c, err := cluster.Start(context.Background(), cluster.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Printf("DIR %s\n", c.Dir())
	fmt.Printf("PIDS %s\n", strings.Join(c.PIDs(), " "))
	switch mode {
	case "panic":
		panic("crash helper panics without stopping its control plane")
	case "sigkill":
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(time.Minute)
	}
	os.Exit(3)
}

func kubeletCSR(t *testing.T, nodeName, csrName string) (*certificatesv1.CertificateSigningRequest, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: csrName},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
			SignerName: cluster.KubeletClientSigner,
			Usages:     []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth},
		},
	}, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

// requestAndApprove files a CSR with the requester's client, approves it as the
// admin and waits for kube-controller-manager to sign it.
func requestAndApprove(ctx context.Context, t *testing.T, requester kubernetes.Interface, nodeName, csrName string) (certPEM, keyPEM []byte) {
	t.Helper()
	csr, keyPEM := kubeletCSR(t, nodeName, csrName)
	created, err := requester.CertificatesV1().CertificateSigningRequests().Create(ctx, csr, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create CSR: %v", err)
	}
	created.Status.Conditions = append(created.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
		Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue,
		Reason: "HarnessTest", Message: "approved by the harness test",
	})
	admin := testCluster.AdminClient()
	if _, err := admin.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, created.Name, created, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("approve CSR: %v", err)
	}
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		got, err := admin.CertificatesV1().CertificateSigningRequests().Get(ctx, created.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		certPEM = got.Status.Certificate
		return len(certPEM) > 0, nil
	})
	if err != nil {
		t.Fatalf("CSR %s was not signed: %v", created.Name, err)
	}
	return certPEM, keyPEM
}

func assertIdentity(ctx context.Context, t *testing.T, cfg *rest.Config, wantUser string, wantGroups ...string) {
	t.Helper()
	review, err := kubernetes.NewForConfigOrDie(cfg).AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview: %v", err)
	}
	info := review.Status.UserInfo
	if info.Username != wantUser {
		t.Errorf("authenticated as %q, want %q", info.Username, wantUser)
	}
	for _, g := range wantGroups {
		if !slices.Contains(info.Groups, g) {
			t.Errorf("groups %v lack %q", info.Groups, g)
		}
	}
}
