// Package requester_test runs the real nodecsr-request binary against a real
// control plane (etcd, kube-apiserver, kube-controller-manager's csrsigning),
// as a node agent would. CSRs are approved or denied by a small in-test
// approver using the admin client, since the requester's behaviour does not
// depend on who approves.
package requester_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/test/env"
)

var (
	testCluster *cluster.Cluster
	// binary is the nodecsr-request built once for the package.
	binary string
)

func TestMain(m *testing.M) {
	os.Exit(env.Main(m, env.MainOptions{Build: []string{"./cmd/nodecsr-request"}, Setup: func(s *env.Suite) error {
		testCluster, binary = s.Cluster, s.Binary("nodecsr-request")
		return s.Cluster.ApplyKubeadmRBAC(s.Context())
	}}))
}

// uniqueName returns base with a suffix of its own, so that every test (and
// every repetition under -count) has node names of its own.
func uniqueName(base string) string { return env.UniqueName(base) }

// proc is one run of the binary.
type proc struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	done   chan struct{}

	mu     sync.Mutex
	stderr []string
	code   int
}

// start runs the binary with args; t.Cleanup kills it if it is still running.
func start(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary, args...), done: make(chan struct{})}
	p.cmd.Stdout = &p.stdout
	// Dies with the test binary even if the test binary is killed.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("started nodecsr-request %s (pid %d)", strings.Join(args, " "), p.cmd.Process.Pid)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr = append(p.stderr, sc.Text())
			p.mu.Unlock()
		}
		err := p.cmd.Wait()
		p.mu.Lock()
		var exit *exec.ExitError
		switch {
		case err == nil:
			p.code = 0
		case errors.As(err, &exit):
			p.code = exit.ExitCode()
		default:
			p.code = -1
		}
		p.mu.Unlock()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		t.Logf("nodecsr-request (pid %d) stderr:\n%s", p.cmd.Process.Pid, p.stderrText())
	})
	return p
}

func (p *proc) stderrText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.stderr, "\n")
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T) int {
	t.Helper()
	ctx, cancel := testutil.Context(t)
	defer cancel()
	select {
	case <-p.done:
	case <-ctx.Done():
		t.Fatalf("nodecsr-request did not exit: %v; stderr:\n%s", ctx.Err(), p.stderrText())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.code
}

// waitForLog waits until the process logged a line containing s (count times).
func (p *proc) waitForLog(t *testing.T, s string, count int) {
	t.Helper()
	err := testutil.Poll(t, 50*time.Millisecond, func(context.Context) (bool, error) {
		select {
		case <-p.done:
			return false, fmt.Errorf("exited before logging %q", s)
		default:
		}
		return strings.Count(p.stderrText(), s) >= count, nil
	})
	if err != nil {
		t.Fatalf("waiting for %q: %v; stderr:\n%s", s, err, p.stderrText())
	}
}

// runBinary runs the binary to completion.
func runBinary(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	p := start(t, args...)
	code = p.wait(t)
	return code, p.stdout.String(), p.stderrText()
}

// bootstrapKubeconfig writes a kubeconfig with a new bootstrap token.
func bootstrapKubeconfig(t *testing.T, dir string) (path string, tok cluster.BootstrapToken) {
	t.Helper()
	tok, err := testCluster.CreateBootstrapToken(t.Context(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "bootstrap-kubelet.conf")
	if err := cluster.WriteKubeconfig(path, testCluster.BootstrapConfig(tok)); err != nil {
		t.Fatal(err)
	}
	return path, tok
}

// decision is what the in-test approver does with a node's undecided CSR.
type decision func(ctx context.Context, client kubernetes.Interface, csr *certificatesv1.CertificateSigningRequest) error

func approve(ctx context.Context, client kubernetes.Interface, csr *certificatesv1.CertificateSigningRequest) error {
	return setApproval(ctx, client, csr, certificatesv1.CertificateApproved, "TestApproved", "approved by the integration test")
}

func deny(reason, message string) decision {
	return func(ctx context.Context, client kubernetes.Interface, csr *certificatesv1.CertificateSigningRequest) error {
		return setApproval(ctx, client, csr, certificatesv1.CertificateDenied, reason, message)
	}
}

// fail marks the CSR Failed through the status subresource, as a signer does.
func fail(reason, message string) decision {
	return func(ctx context.Context, client kubernetes.Interface, csr *certificatesv1.CertificateSigningRequest) error {
		csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
			Type: certificatesv1.CertificateFailed, Status: corev1.ConditionTrue, Reason: reason, Message: message,
		})
		_, err := client.CertificatesV1().CertificateSigningRequests().UpdateStatus(ctx, csr, metav1.UpdateOptions{})
		return err
	}
}

func setApproval(ctx context.Context, client kubernetes.Interface, csr *certificatesv1.CertificateSigningRequest, typ certificatesv1.RequestConditionType, reason, message string) error {
	csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
		Type: typ, Status: corev1.ConditionTrue, Reason: reason, Message: message,
	})
	_, err := client.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, csr.Name, csr, metav1.UpdateOptions{})
	return err
}

// startApprover decides every undecided CSR for the node until the test ends.
func startApprover(t *testing.T, node string, decide decision) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	client := testCluster.AdminClient()
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, csr := range csrsFor(ctx, t, node) {
				if undecided(&csr) {
					if err := decide(ctx, client, &csr); err != nil && ctx.Err() == nil {
						t.Logf("approver: %s: %v (will retry)", csr.Name, err)
					}
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func undecided(csr *certificatesv1.CertificateSigningRequest) bool {
	for _, c := range csr.Status.Conditions {
		switch c.Type {
		case certificatesv1.CertificateApproved, certificatesv1.CertificateDenied, certificatesv1.CertificateFailed:
			return false
		}
	}
	return true
}

// csrsFor lists the CSRs whose request is for system:node:<node>.
func csrsFor(ctx context.Context, t *testing.T, node string) []certificatesv1.CertificateSigningRequest {
	list, err := testCluster.AdminClient().CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		if ctx.Err() == nil {
			t.Logf("list CSRs: %v", err)
		}
		return nil
	}
	var out []certificatesv1.CertificateSigningRequest
	for _, csr := range list.Items {
		block, _ := pem.Decode(csr.Spec.Request)
		if block == nil {
			continue
		}
		req, err := x509.ParseCertificateRequest(block.Bytes)
		if err == nil && req.Subject.CommonName == "system:node:"+node {
			out = append(out, csr)
		}
	}
	return out
}

// waitForCSRs waits until the node has n CSRs and returns them.
func waitForCSRs(t *testing.T, node string, n int) []certificatesv1.CertificateSigningRequest {
	t.Helper()
	var got []certificatesv1.CertificateSigningRequest
	err := testutil.Poll(t, 100*time.Millisecond, func(ctx context.Context) (bool, error) {
		got = csrsFor(ctx, t, node)
		return len(got) >= n, nil
	})
	if err != nil {
		t.Fatalf("node %s has %d CSRs, want %d: %v", node, len(got), n, err)
	}
	return got
}
