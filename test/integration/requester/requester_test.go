package requester_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/keyutil"

	"github.com/nodecsr/nodecsr/internal/requester"
	"github.com/nodecsr/nodecsr/test/env"
)

// TestBootstrapThenRenew: a bootstrap token gets the node its first
// certificate, the written kubeconfig authenticates as the node, a second run
// renews with that certificate, and status reports it.
func TestBootstrapThenRenew(t *testing.T) {
	node := uniqueName("it-bootstrap-renew")
	dir := t.TempDir()
	certDir := filepath.Join(dir, "pki")
	kubeletConf := filepath.Join(dir, "kubelet.conf")
	boot, tok := bootstrapKubeconfig(t, dir)
	startApprover(t, node, approve)

	code, stdout, stderr := runBinary(t, "--bootstrap-kubeconfig", boot, "--node-name", node,
		"--cert-dir", certDir, "--write-kubeconfig", kubeletConf, "-v", "1")
	if code != 0 {
		t.Fatalf("bootstrap run exited %d:\n%s", code, stderr)
	}
	if !strings.Contains(stdout, "for system:node:"+node) || !strings.Contains(stdout, "credentials: bootstrap-kubeconfig") {
		t.Errorf("stdout = %q", stdout)
	}
	first := currentTarget(t, certDir)
	assertMode(t, first, 0o600)
	assertMode(t, kubeletConf, 0o600)
	if _, err := os.Stat(filepath.Join(certDir, requester.PendingKeyFile)); !os.IsNotExist(err) {
		t.Errorf("the pending key was not removed after issuance: %v", err)
	}

	// The written kubeconfig is like kubelet.conf and authenticates as the node.
	kc, err := clientcmd.LoadFromFile(kubeletConf)
	if err != nil {
		t.Fatal(err)
	}
	auth := kc.AuthInfos[kc.Contexts[kc.CurrentContext].AuthInfo]
	if want := filepath.Join(certDir, requester.CurrentFile); auth.ClientCertificate != want || auth.ClientKey != want {
		t.Errorf("kubeconfig client-certificate %q, client-key %q; want both %s", auth.ClientCertificate, auth.ClientKey, want)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeletConf)
	if err != nil {
		t.Fatal(err)
	}
	review, err := kubernetes.NewForConfigOrDie(cfg).AuthenticationV1().SelfSubjectReviews().Create(t.Context(), &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview with the written kubeconfig: %v", err)
	}
	if u := review.Status.UserInfo; u.Username != "system:node:"+node || !slices.Contains(u.Groups, "system:nodes") {
		t.Errorf("authenticated as %q %v, want system:node:%s in system:nodes", u.Username, u.Groups, node)
	}

	csrs := waitForCSRs(t, node, 1)
	if len(csrs) != 1 || csrs[0].Spec.Username != tok.Username() {
		t.Fatalf("bootstrap CSRs = %v, want one filed by %s", names(csrs), tok.Username())
	}
	assertKubeletCSR(t, &csrs[0])

	// Renewal: the current certificate authenticates the second request.
	code, stdout, stderr = runBinary(t, "--kubeconfig", kubeletConf, "--bootstrap-kubeconfig", boot,
		"--node-name", node, "--cert-dir", certDir, "--write-kubeconfig", kubeletConf)
	if code != 0 {
		t.Fatalf("renewal run exited %d:\n%s", code, stderr)
	}
	if !strings.Contains(stdout, "credentials: current-certificate") {
		t.Errorf("renewal stdout = %q", stdout)
	}
	bootstrapCSR := csrs[0].Name
	csrs = csrsFor(t.Context(), t, node)
	if len(csrs) != 2 {
		t.Fatalf("after renewal the node has CSRs %v, want 2", names(csrs))
	}
	renewal := csrs[0]
	if renewal.Name == bootstrapCSR {
		renewal = csrs[1]
	}
	if renewal.Spec.Username != "system:node:"+node {
		t.Errorf("renewal CSR %s filed by %q, want system:node:%s", renewal.Name, renewal.Spec.Username, node)
	}
	second := currentTarget(t, certDir)
	if second == first {
		t.Errorf("current still points at %s after renewal", first)
	}
	if _, err := os.Stat(first); err != nil {
		t.Errorf("the previous certificate file was removed: %v", err)
	}

	// status on the written certificate.
	code, stdout, stderr = runBinary(t, "status", "--cert-dir", certDir, "-o", "json")
	if code != 0 {
		t.Fatalf("status exited %d:\n%s\n%s", code, stdout, stderr)
	}
	var st requester.CertificateStatus
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("status json: %v\n%s", err, stdout)
	}
	if st.State != requester.StateOK || st.File != second || !st.KeyMatches || st.Subject != "CN=system:node:"+node+",O=system:nodes" {
		t.Errorf("status = %+v", st)
	}
	code, stdout, _ = runBinary(t, "status", "--cert-dir", certDir)
	if code != 0 || !strings.Contains(stdout, "matches the certificate") || !strings.Contains(stdout, "rotation window:") {
		t.Errorf("status text (exit %d):\n%s", code, stdout)
	}
}

// TestRestartReusesKeyAndCSR: a run killed after filing its CSR and started
// again reuses the pending key and finds the same CSR; no second CSR is filed.
func TestRestartReusesKeyAndCSR(t *testing.T) {
	node := uniqueName("it-restart")
	dir := t.TempDir()
	certDir := filepath.Join(dir, "pki")
	boot, _ := bootstrapKubeconfig(t, dir)
	args := []string{"--bootstrap-kubeconfig", boot, "--node-name", node, "--cert-dir", certDir, "--key-algorithm", "rsa-2048"}

	first := start(t, args...)
	first.waitForLog(t, "Waiting for the certificate to be approved and issued", 1)
	csrs := waitForCSRs(t, node, 1)
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := first.wait(t); code != -1 {
		t.Logf("killed run exited with %d", code)
	}
	keyPEM, err := os.ReadFile(filepath.Join(certDir, requester.PendingKeyFile))
	if err != nil {
		t.Fatalf("no pending key after the kill: %v", err)
	}
	pendingKey, err := keyutil.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		t.Fatal(err)
	}

	second := start(t, args...)
	second.waitForLog(t, "Waiting for the certificate to be approved and issued", 1)
	if !strings.Contains(second.stderrText(), "Found the CSR of an earlier run with the same key") {
		t.Errorf("the restarted run did not report finding its CSR:\n%s", second.stderrText())
	}
	startApprover(t, node, approve) // only now: the CSR is approved after the restart
	if code := second.wait(t); code != 0 {
		t.Fatalf("restarted run exited %d:\n%s", code, second.stderrText())
	}

	after := csrsFor(t.Context(), t, node)
	if len(after) != 1 || after[0].Name != csrs[0].Name {
		t.Fatalf("CSRs for the node = %v, want only %s", names(after), csrs[0].Name)
	}
	pair, err := requester.LoadPair(filepath.Join(certDir, requester.CurrentFile))
	if err != nil {
		t.Fatal(err)
	}
	pub := pendingKey.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool })
	if !pub.Equal(pair.Leaf().PublicKey) {
		t.Error("the certificate is not for the key written before the kill")
	}
	assertKubeletCSR(t, &after[0])
}

// TestDeniedExitsThree: a denial ends the run with exit code 3 and the
// approver's reason and message on stderr.
func TestDeniedExitsThree(t *testing.T) {
	node := uniqueName("it-denied")
	message := "a node named " + node + " is already registered"
	dir := t.TempDir()
	certDir := filepath.Join(dir, "pki")
	boot, _ := bootstrapKubeconfig(t, dir)
	startApprover(t, node, deny("NodeAlreadyExists", message))

	code, _, stderr := runBinary(t, "--bootstrap-kubeconfig", boot, "--node-name", node, "--cert-dir", certDir)
	if code != 3 {
		t.Fatalf("exit code %d, want 3:\n%s", code, stderr)
	}
	if want := "error: denied: NodeAlreadyExists: " + message; !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}
	if _, err := os.Stat(filepath.Join(certDir, requester.PendingKeyFile)); !os.IsNotExist(err) {
		t.Errorf("the denied request's key was kept: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(certDir, requester.CurrentFile)); !os.IsNotExist(err) {
		t.Errorf("a current certificate exists after a denial: %v", err)
	}
}

// TestFailedExitsFour: a CSR the signer marks Failed ends the run with exit code 4.
func TestFailedExitsFour(t *testing.T) {
	node := uniqueName("it-failed")
	dir := t.TempDir()
	boot, _ := bootstrapKubeconfig(t, dir)
	startApprover(t, node, fail("SignerValidationFailure", "the test signer refuses"))

	code, _, stderr := runBinary(t, "--bootstrap-kubeconfig", boot, "--node-name", node, "--cert-dir", filepath.Join(dir, "pki"))
	if code != 4 {
		t.Fatalf("exit code %d, want 4:\n%s", code, stderr)
	}
	if want := "error: failed: SignerValidationFailure: the test signer refuses"; !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}
}

// TestTimeoutExitsFive: nobody approves, so the run gives up after --timeout
// with exit code 5, naming the CSR, which stays pending for a later run.
func TestTimeoutExitsFive(t *testing.T) {
	node := uniqueName("it-timeout")
	dir := t.TempDir()
	certDir := filepath.Join(dir, "pki")
	boot, _ := bootstrapKubeconfig(t, dir)

	code, _, stderr := runBinary(t, "--bootstrap-kubeconfig", boot, "--node-name", node, "--cert-dir", certDir, "--timeout", "3s")
	if code != 5 {
		t.Fatalf("exit code %d, want 5:\n%s", code, stderr)
	}
	csrs := waitForCSRs(t, node, 1)
	want := "error: timed out after 3s waiting for CSR " + csrs[0].Name + " to be issued (still pending"
	if !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}
	if _, err := os.Stat(filepath.Join(certDir, requester.PendingKeyFile)); err != nil {
		t.Errorf("the pending key was not kept for the pending CSR: %v", err)
	}
}

// TestRotateRenewsAnOverdueCertificate: with --rotate, a certificate past its
// rotation window is renewed at once, authenticating with itself, and the
// process then waits for the next deadline and stops cleanly on SIGTERM.
func TestRotateRenewsAnOverdueCertificate(t *testing.T) {
	node := uniqueName("it-rotate")
	dir := t.TempDir()
	certDir := filepath.Join(dir, "pki")
	// 2 hours of a 2h05m lifetime have elapsed (96%): past every possible
	// deadline (90% at most), and still valid to authenticate the renewal.
	now := time.Now()
	certPEM, key := issueNodeCert(t, node, now.Add(-2*time.Hour), now.Add(5*time.Minute))
	old, err := requester.NewStore(certDir, time.Now).Update(certPEM, key)
	if err != nil {
		t.Fatal(err)
	}
	kubeletConf := writeNodeKubeconfig(t, dir, filepath.Join(certDir, requester.CurrentFile))
	startApprover(t, node, approve)

	p := start(t, "--kubeconfig", kubeletConf, "--node-name", node, "--cert-dir", certDir, "--rotate")
	p.waitForLog(t, "The certificate is due for rotation; renewing now", 1)
	p.waitForLog(t, "Certificate issued", 1)
	p.waitForLog(t, "Next certificate rotation", 1)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t); code != 0 {
		t.Errorf("--rotate exited %d on SIGTERM, want 0:\n%s", code, p.stderrText())
	}
	csrs := csrsFor(t.Context(), t, node)
	if len(csrs) != 1 || csrs[0].Spec.Username != "system:node:"+node {
		t.Fatalf("CSRs = %v, want one renewal filed by system:node:%s", names(csrs), node)
	}
	pair, err := requester.LoadPair(filepath.Join(certDir, requester.CurrentFile))
	if err != nil {
		t.Fatal(err)
	}
	if pair.Leaf().SerialNumber.Cmp(old.Leaf().SerialNumber) == 0 || !pair.ValidAt(time.Now()) {
		t.Error("the overdue certificate was not replaced by a valid one")
	}
}

// issueNodeCert issues a node client certificate from the cluster CA with
// the given validity.
func issueNodeCert(t *testing.T, node string, notBefore, notAfter time.Time) ([]byte, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := testCluster.ClusterCA()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key
}

// writeNodeKubeconfig writes a kubelet.conf-style kubeconfig that reads the
// client certificate and key from pemPath.
func writeNodeKubeconfig(t *testing.T, dir, pemPath string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["default-cluster"] = &clientcmdapi.Cluster{Server: testCluster.Host(), CertificateAuthorityData: testCluster.ServingCAPEM()}
	cfg.AuthInfos["default-auth"] = &clientcmdapi.AuthInfo{ClientCertificate: pemPath, ClientKey: pemPath}
	cfg.Contexts["default-context"] = &clientcmdapi.Context{Cluster: "default-cluster", AuthInfo: "default-auth"}
	cfg.CurrentContext = "default-context"
	path := filepath.Join(dir, "kubelet.conf")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// assertKubeletCSR checks the CSR is what a kubelet files.
func assertKubeletCSR(t *testing.T, csr *certificatesv1.CertificateSigningRequest) {
	t.Helper()
	if csr.Spec.SignerName != certificatesv1.KubeAPIServerClientKubeletSignerName {
		t.Errorf("signer %q", csr.Spec.SignerName)
	}
	if !strings.HasPrefix(csr.Name, "node-csr-") {
		t.Errorf("name %q", csr.Name)
	}
	req := env.ParseRequest(t, csr.Spec.Request)
	if len(req.Subject.Organization) != 1 || req.Subject.Organization[0] != "system:nodes" || len(req.DNSNames)+len(req.IPAddresses) != 0 {
		t.Errorf("request subject %s, SANs %v %v", req.Subject, req.DNSNames, req.IPAddresses)
	}
	want := []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}
	if req.PublicKeyAlgorithm == x509.RSA {
		want = append(want, certificatesv1.UsageKeyEncipherment)
	}
	if !slices.Equal(csr.Spec.Usages, want) {
		t.Errorf("usages %v, want %v", csr.Spec.Usages, want)
	}
}

func currentTarget(t *testing.T, certDir string) string {
	t.Helper()
	target, err := os.Readlink(filepath.Join(certDir, requester.CurrentFile))
	if err != nil {
		t.Fatalf("%s is not a symlink: %v", requester.CurrentFile, err)
	}
	return target
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != want {
		t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), want)
	}
}

func names(csrs []certificatesv1.CertificateSigningRequest) []string {
	out := make([]string, len(csrs))
	for i := range csrs {
		out[i] = csrs[i].Name + " by " + csrs[i].Spec.Username
	}
	return out
}
