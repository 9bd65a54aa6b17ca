package node_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nodecsrv1alpha1 "github.com/nodecsr/nodecsr/api/v1alpha1"
	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/internal/testpki"
	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/test/env"
	"github.com/nodecsr/nodecsr/webhook"
)

const (
	// servingLifetime is kube-controller-manager's --cluster-signing-duration
	// in the serving test. csrsigning backdates a certificate by five
	// minutes and, below eight hours, ends it servingLifetime after it signs;
	// the kubelet renews at 70–90 % of notBefore..notAfter: 36 s to 2 min
	// 12 s after it received the certificate.
	servingLifetime = 3 * time.Minute
	// neighbourName is a second Node, registered by the test, that reports
	// addresses.
	neighbourName = "nodecsr-e2e-neighbour"
	// manualCSRName is the serving CSR the test files with the node's own
	// client certificate (the webhook refuses it).
	manualCSRName = "nodecsr-e2e-neighbours-ip"
)

// TestKubeletServingCertificate: a real kubelet with serverTLSBootstrap,
// whose node has an address of its own inside a network namespace of the
// test, gets its serving certificate through the nodecsr Pod the chart
// installs with serving enabled (kube-controller-manager's csrsigning signs
// it with the cluster CA) and serves it; the API server, which verifies
// kubelets against the cluster CA, reaches the kubelet at that address only
// once it does. While another Node reports the node's address, nodecsr
// refuses the kubelet's request, naming that Node, and its webhook refuses
// a request for the neighbour's own address at creation. The kubelet renews
// the certificate (a three-minute lifetime) and nodecsr approves the
// renewal too.
func TestKubeletServingCertificate(t *testing.T) {
	requireNode(t)
	ctx, cancel := testContext(t)
	defer cancel()
	start := time.Now()

	// The kubelet starts with a serving certificate for its own name and
	// address, signed by a CA the API server does not trust and past its
	// rotation deadline: it serves it, and asks at once for a new one,
	// which nobody approves before nodecsr is installed.
	impostorCA, err := testpki.NewCA("nodecsr-e2e-impostor-ca")
	if err != nil {
		t.Fatal(err)
	}
	var impostor *x509.Certificate
	tn := startNode(ctx, t, nodeOptions{
		netns:           true,
		signingDuration: servingLifetime,
		kubelet: func(ns *cluster.NetNS, o *cluster.KubeletOptions) error {
			now := time.Now()
			kp, err := cluster.IssueKubeletServingCert(impostorCA, nodeName, []string{nodeName, ns.NodeIP().String()}, now.Add(-23*time.Hour), now.Add(time.Hour))
			if err != nil {
				return err
			}
			impostor = env.ParseCert(t, kp.CertPEM)
			o.ServerTLSBootstrap = true
			o.ServingCertPEM, o.ServingKeyPEM = kp.CertPEM, kp.KeyPEM
			return nil
		},
	})
	admin, k, ns := tn.admin, tn.kubelet, tn.netns
	clusterCA := tn.c.ClusterCA().Cert
	kubeletAddr := net.JoinHostPort(ns.NodeIP().String(), strconv.Itoa(k.Port()))
	assertNodeAddress(ctx, t, admin, ns.NodeIP())

	// The negative control: the API server reaches the kubelet, and
	// refuses its certificate.
	first := waitServingCSR(ctx, t, admin, nil, func(*certificatesv1.CertificateSigningRequest) bool { return true })
	if d := env.Decision(first); d != nil {
		t.Fatalf("the kubelet's serving CSR %s was decided before nodecsr was installed: %+v", first.Name, d)
	}
	assertKubeletServingRequest(t, first, ns.NodeIP())
	served := servedCert(ctx, t, kubeletAddr, nil)
	if served.SerialNumber.Cmp(impostor.SerialNumber) != 0 {
		t.Fatalf("the kubelet serves %x (issuer %s), want the seeded certificate %x", served.SerialNumber, served.Issuer, impostor.SerialNumber)
	}
	// The API server's 503 Status says why: its TLS client refused the
	// kubelet's certificate.
	body, err := kubeletHealthz(ctx, admin)
	const unknownAuthority = "tls: failed to verify certificate: x509: certificate signed by unknown authority"
	if err == nil || !strings.Contains(string(body), unknownAuthority) {
		t.Fatalf("GET nodes/%s/proxy/healthz with the kubelet serving a certificate of another CA: %q, %v; want an error with %q", nodeName, body, err, unknownAuthority)
	}
	t.Logf("before nodecsr: the kubelet at %s serves %x (issuer %q, for %v %v); the API server refuses it: %v: %s; its serving CSR %s is pending",
		kubeletAddr, served.SerialNumber, served.Issuer.CommonName, served.DNSNames, served.IPAddresses, err, body, first.Name)

	// A neighbour reports an address of its own and the node's too.
	// nodecsr, installed now with serving on, refuses the kubelet's
	// pending CSR (it never passed the webhook: the approver decides it
	// all the same), naming the neighbour.
	neighbourIP := ns.NodeIP().Next().Next().Next().Next() // the next /30's node address: nothing there, no traffic goes there
	if !cluster.NetNSPool.Contains(neighbourIP) {
		neighbourIP = ns.NodeIP().Prev().Prev().Prev().Prev()
	}
	createNeighbour(ctx, t, admin, neighbourIP, ns.NodeIP())
	pod := installAndRunPod(ctx, t, tn, servingValues())
	t.Logf("pod %s/%s runs on %s and is Ready", pod.Namespace, pod.Name, nodeName)
	refused := waitDecided(ctx, t, admin, first.Name)
	msg, note := assertServingDecision(ctx, t, admin, refused, pod, certificatesv1.CertificateDenied, approver.ReasonAddressOfOtherNode, false)
	for what, text := range map[string]string{"the Denied condition's message": msg, "the Event's note": note} {
		if !strings.Contains(text, neighbourName) || !strings.Contains(text, ns.NodeIP().String()) {
			t.Errorf("CSR %s: %s %q does not name node %s and the address %s", refused.Name, what, text, neighbourName, ns.NodeIP())
		}
	}
	// The node's own client certificate asks for the neighbour's own
	// address: the webhook refuses it at creation, naming the neighbour.
	err = fileServingCSR(ctx, t, k, manualCSRName, neighbourIP)
	for _, want := range []string{"admission webhook", approver.ReasonAddressOfOtherNode, neighbourName, neighbourIP.String()} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("serving CSR %s for %s's address %s by the node's client certificate: %v, want a refusal naming %q", manualCSRName, neighbourName, neighbourIP, err, want)
		}
	}
	if _, err := admin.CertificatesV1().CertificateSigningRequests().Get(ctx, manualCSRName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("CSR %s exists after its refusal: %v", manualCSRName, err)
	}
	t.Logf("the node's request for %s's address %s, refused at creation: %v", neighbourName, neighbourIP, err)
	if got := servedCert(ctx, t, kubeletAddr, nil); got.SerialNumber.Cmp(impostor.SerialNumber) != 0 {
		t.Fatalf("the kubelet serves %x, want still the seeded certificate", got.SerialNumber)
	}

	// The neighbour goes: the kubelet's next attempt is approved; it
	// serves what kube-controller-manager signed, and the API server now
	// verifies it.
	seen := servingCSRNames(ctx, t, admin)
	if err := admin.CoreV1().Nodes().Delete(ctx, neighbourName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	next := waitServingCSR(ctx, t, admin, seen, func(csr *certificatesv1.CertificateSigningRequest) bool { return env.Decision(csr) != nil })
	next = waitIssued(ctx, t, admin, next.Name)
	assertServingDecision(ctx, t, admin, next, pod, certificatesv1.CertificateApproved, approver.ReasonServingApproved, true)
	cert1 := waitServed(ctx, t, k, kubeletAddr, clusterCA, next)
	body, err = kubeletHealthz(ctx, admin)
	if err != nil || string(body) != "ok" {
		t.Fatalf("GET nodes/%s/proxy/healthz through the API server: %q, %v", nodeName, body, err)
	}
	t.Logf("the API server reaches the kubelet at %s and verifies its certificate %x against the cluster CA: healthz %q", kubeletAddr, cert1.SerialNumber, body)
	assertPodLogThroughAPIServer(ctx, t, admin, pod, next.Name)

	// The kubelet renews the certificate before it expires; nodecsr
	// approves the renewal and the kubelet serves it.
	seen = servingCSRNames(ctx, t, admin)
	renewal := waitServingCSR(ctx, t, admin, seen, func(csr *certificatesv1.CertificateSigningRequest) bool { return env.Decision(csr) != nil })
	renewal = waitIssued(ctx, t, admin, renewal.Name)
	assertServingDecision(ctx, t, admin, renewal, pod, certificatesv1.CertificateApproved, approver.ReasonServingApproved, true)
	renewed := waitServed(ctx, t, k, kubeletAddr, clusterCA, renewal)
	if renewed.SerialNumber.Cmp(cert1.SerialNumber) == 0 {
		t.Fatalf("the renewal %s issued the certificate the kubelet had", renewal.Name)
	}
	if body, err := kubeletHealthz(ctx, admin); err != nil || string(body) != "ok" {
		t.Fatalf("GET nodes/%s/proxy/healthz after the renewal: %q, %v", nodeName, body, err)
	}
	t.Logf("renewed: the kubelet serves %x (until %s) from CSR %s in place of %x (until %s)",
		renewed.SerialNumber, renewed.NotAfter.Format(time.TimeOnly), renewal.Name, cert1.SerialNumber, cert1.NotAfter.Format(time.TimeOnly))

	assertServingInInventory(ctx, t, tn, renewed, renewal.Name)

	stopPod(ctx, t, admin, pod)
	tn.finish(t)
	t.Logf("TestKubeletServingCertificate wall time: %s", time.Since(start).Round(100*time.Millisecond))
}

// servingValues turn serving on (the chart's serving.enabled: the policy,
// the RBAC on the kubelet-serving signer and the webhooks), with IP SANs
// allowed only in the pool the test's namespaces take their addresses from.
func servingValues() map[string]any {
	return map[string]any{
		"serving": map[string]any{"enabled": true},
		"policy": map[string]any{
			"serving": map[string]any{"ipCIDRs": []any{cluster.NetNSPool.String()}},
		},
	}
}

// assertNodeAddress checks that the kubelet registered the namespace's
// address as its InternalIP, the address the API server reaches it at.
func assertNodeAddress(ctx context.Context, t *testing.T, admin kubernetes.Interface, ip netip.Addr) {
	t.Helper()
	n, err := admin.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP && a.Address == ip.String() {
			t.Logf("node %s reports %v; kubelet port %d", nodeName, n.Status.Addresses, n.Status.DaemonEndpoints.KubeletEndpoint.Port)
			return
		}
	}
	t.Fatalf("node %s reports %v, want InternalIP %s", nodeName, n.Status.Addresses, ip)
}

// servingCSRNames lists the names of every serving CSR.
func servingCSRNames(ctx context.Context, t *testing.T, admin kubernetes.Interface) map[string]bool {
	t.Helper()
	list, err := admin.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.signerName", cluster.KubeletServingSigner).String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, csr := range list.Items {
		out[csr.Name] = true
	}
	return out
}

// waitServingCSR waits for a serving CSR the kubelet filed (by
// system:node:<nodeName>), none of seen, for which ready is true, and
// returns the oldest.
func waitServingCSR(ctx context.Context, t *testing.T, admin kubernetes.Interface, seen map[string]bool, ready func(*certificatesv1.CertificateSigningRequest) bool) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	var found *certificatesv1.CertificateSigningRequest
	err := wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		list, err := admin.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("spec.signerName", cluster.KubeletServingSigner).String(),
		})
		if err != nil {
			return false, err
		}
		var mine []certificatesv1.CertificateSigningRequest
		for _, csr := range list.Items {
			if csr.Spec.Username == "system:node:"+nodeName && !seen[csr.Name] && ready(&csr) {
				mine = append(mine, csr)
			}
		}
		if len(mine) == 0 {
			return false, nil
		}
		slices.SortFunc(mine, func(a, b certificatesv1.CertificateSigningRequest) int {
			return a.CreationTimestamp.Compare(b.CreationTimestamp.Time)
		})
		found = &mine[0]
		return true, nil
	})
	if err != nil {
		t.Fatalf("no new serving CSR by the kubelet of %s: %v", nodeName, err)
	}
	return found
}

// assertKubeletServingRequest checks what the kubelet asked for: its name
// and the namespace's address, nothing else.
func assertKubeletServingRequest(t *testing.T, csr *certificatesv1.CertificateSigningRequest, ip netip.Addr) {
	t.Helper()
	req := env.ParseRequest(t, csr.Spec.Request)
	var ips []string
	for _, a := range req.IPAddresses {
		ips = append(ips, a.String())
	}
	if !slices.Equal(req.DNSNames, []string{nodeName}) || !slices.Equal(ips, []string{ip.String()}) || req.Subject.CommonName != "system:node:"+nodeName {
		t.Fatalf("the kubelet's serving CSR %s asks for %s, DNS %v, IP %v; want system:node:%s, DNS [%s], IP [%s]",
			csr.Name, req.Subject, req.DNSNames, ips, nodeName, nodeName, ip)
	}
	t.Logf("the kubelet's serving CSR %s: %s, DNS %v, IP %v, usages %v", csr.Name, req.Subject, req.DNSNames, ips, csr.Spec.Usages)
}

// waitDecided waits until the CSR is approved or denied.
func waitDecided(ctx context.Context, t *testing.T, admin kubernetes.Interface, name string) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	csr, err := env.WaitDecided(ctx, admin, name, 0)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// waitIssued waits until the CSR is decided and, when approved, signed.
func waitIssued(ctx context.Context, t *testing.T, admin kubernetes.Interface, name string) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	var csr *certificatesv1.CertificateSigningRequest
	err := wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		var err error
		if csr, err = admin.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{}); err != nil {
			return false, err
		}
		return env.Condition(csr, certificatesv1.CertificateDenied) != nil || len(csr.Status.Certificate) > 0, nil
	})
	if err != nil {
		var conds []certificatesv1.CertificateSigningRequestCondition
		if csr != nil {
			conds = csr.Status.Conditions
		}
		t.Fatalf("CSR %s was not issued: %v (conditions %+v)", name, err, conds)
	}
	return csr
}

// assertServingDecision checks that the nodecsr pod decided the CSR: the
// condition (want, reason), the decision Event reported by the pod with the
// same reason, and, for a CSR filed while the pod ran (labelled), the label
// its mutating webhook set. It returns the condition's message and the
// Event's note.
func assertServingDecision(ctx context.Context, t *testing.T, admin kubernetes.Interface, csr *certificatesv1.CertificateSigningRequest, pod *corev1.Pod, want certificatesv1.RequestConditionType, reason string, labelled bool) (message, note string) {
	t.Helper()
	if csr.Spec.SignerName != cluster.KubeletServingSigner {
		t.Fatalf("CSR %s has signer %s", csr.Name, csr.Spec.SignerName)
	}
	d := env.Decision(csr)
	if d == nil || d.Type != want || d.Reason != reason {
		t.Fatalf("CSR %s: conditions %+v, want %s %s", csr.Name, csr.Status.Conditions, want, reason)
	}
	if n := len(env.Decisions(csr)); n != 1 {
		t.Fatalf("CSR %s has %d decisions: %+v", csr.Name, n, csr.Status.Conditions)
	}
	if labelled {
		if got := csr.Labels[webhook.LabelNodeName]; got != nodeName {
			t.Errorf("CSR %s: label %s=%q, want %q (set by the pod's mutating webhook)", csr.Name, webhook.LabelNodeName, got, nodeName)
		}
	}
	ev, err := env.WaitEvent(ctx, admin, metav1.NamespaceDefault, csr.Name, func(ev *eventsv1.Event) bool {
		return ev.Regarding.UID == csr.UID && ev.ReportingController == approver.Component
	})
	if err != nil {
		t.Fatalf("no decision Event by %s about CSR %s: %v", approver.Component, csr.Name, err)
	}
	if ev.Reason != reason || ev.ReportingInstance != pod.Name {
		t.Fatalf("decision Event %s: %s by %s/%s, want %s by %s/%s", ev.Name, ev.Reason, ev.ReportingController, ev.ReportingInstance,
			reason, approver.Component, pod.Name)
	}
	t.Logf("CSR %s: %s %s %q; Event %s %s by %s/%s: %q", csr.Name, d.Type, d.Reason, d.Message, ev.Type, ev.Reason, ev.ReportingController, ev.ReportingInstance, ev.Note)
	return d.Message, ev.Note
}

// servedCert connects to the kubelet's server from the test (the root
// namespace, over the veth pair) and returns the certificate it serves:
// verified against roots for the kubelet's address, or, with roots nil,
// unverified.
func servedCert(ctx context.Context, t *testing.T, addr string, roots *x509.Certificate) *x509.Certificate {
	t.Helper()
	cert, err := dialServed(ctx, addr, roots)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func dialServed(ctx context.Context, addr string, root *x509.Certificate) (*x509.Certificate, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if root == nil {
		cfg.InsecureSkipVerify = true // only to read what it serves
	} else {
		cfg.RootCAs = x509.NewCertPool()
		cfg.RootCAs.AddCert(root)
	}
	d := tls.Dialer{Config: cfg}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("TLS to the kubelet at %s: %w", addr, err)
	}
	defer func() { _ = conn.Close() }()
	return conn.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
}

// waitServed waits until the kubelet serves the certificate csr issued,
// verified against the cluster CA for its address, and checks that it is
// the one in its certificate folder.
func waitServed(ctx context.Context, t *testing.T, k *cluster.Kubelet, addr string, ca *x509.Certificate, csr *certificatesv1.CertificateSigningRequest) *x509.Certificate {
	t.Helper()
	issued := env.ParseCert(t, csr.Status.Certificate)
	if err := issued.CheckSignatureFrom(ca); err != nil {
		t.Fatalf("CSR %s's certificate is not signed by the cluster CA: %v", csr.Name, err)
	}
	var last error
	err := wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		got, err := dialServed(ctx, addr, ca)
		if err != nil {
			last = err
			return false, nil
		}
		last = fmt.Errorf("serves %x", got.SerialNumber)
		return got.SerialNumber.Cmp(issued.SerialNumber) == 0, nil
	})
	if err != nil {
		t.Fatalf("the kubelet does not serve CSR %s's certificate %x: %v (last: %v)", csr.Name, issued.SerialNumber, err, last)
	}
	onDisk, err := k.CurrentServingCert()
	if err != nil {
		t.Fatal(err)
	}
	if onDisk.SerialNumber.Cmp(issued.SerialNumber) != 0 {
		t.Fatalf("%s in the kubelet's folder is %x, it serves %x", cluster.KubeletServerCurrent, onDisk.SerialNumber, issued.SerialNumber)
	}
	t.Logf("the kubelet serves %x from CSR %s (verified against the cluster CA for %s; valid %s to %s)",
		issued.SerialNumber, csr.Name, addr, issued.NotBefore.Format(time.TimeOnly), issued.NotAfter.Format(time.TimeOnly))
	return issued
}

// kubeletHealthz is GET /api/v1/nodes/<nodeName>/proxy/healthz: the API
// server calls the kubelet's server at the node's InternalIP.
func kubeletHealthz(ctx context.Context, admin kubernetes.Interface) ([]byte, error) {
	return admin.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", nodeName, "proxy", "healthz").DoRaw(ctx)
}

// assertPodLogThroughAPIServer reads the nodecsr pod's log through the API
// server (pods/log: the API server asks the kubelet) and checks that it
// holds the decision about csrName.
func assertPodLogThroughAPIServer(ctx context.Context, t *testing.T, admin kubernetes.Interface, pod *corev1.Pod, csrName string) {
	t.Helper()
	var line string
	err := wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		rc, err := admin.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{}).Stream(ctx)
		if err != nil {
			return false, err
		}
		data, err := io.ReadAll(rc)
		_ = rc.Close()
		if err != nil {
			return false, err
		}
		for _, l := range strings.Split(string(data), "\n") {
			if strings.Contains(l, csrName) && strings.Contains(l, approver.ReasonServingApproved) {
				line = l
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("pods/log of %s through the API server: %v", pod.Name, err)
	}
	t.Logf("pods/log through the API server: %s", line)
}

// createNeighbour registers a second Node, as the test's admin, that
// reports ips as its InternalIP addresses.
func createNeighbour(ctx context.Context, t *testing.T, admin kubernetes.Interface, ips ...netip.Addr) {
	t.Helper()
	if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: neighbourName}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	setNeighbourAddresses(ctx, t, admin, ips...)
	t.Logf("node %s reports %v", neighbourName, ips)
}

// setNeighbourAddresses sets the neighbour's status.addresses to InternalIP
// ips and its Hostname.
func setNeighbourAddresses(ctx context.Context, t *testing.T, admin kubernetes.Interface, ips ...netip.Addr) {
	t.Helper()
	n, err := admin.CoreV1().Nodes().Get(ctx, neighbourName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: neighbourName}}
	for _, ip := range ips {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip.String()})
	}
	if _, err := admin.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// fileServingCSR files, with the kubelet's own client certificate, a
// serving CSR as the kubelet would for its name and the given IP, and
// returns the API server's answer.
func fileServingCSR(ctx context.Context, t *testing.T, k *cluster.Kubelet, name string, ip netip.Addr) error {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}},
		DNSNames:    []string{nodeName},
		IPAddresses: []net.IP{ip.AsSlice()},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := k.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	_, err = kubernetes.NewForConfigOrDie(cfg).CertificatesV1().CertificateSigningRequests().Create(ctx, &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
			SignerName: cluster.KubeletServingSigner,
			Usages:     []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth},
		},
	}, metav1.CreateOptions{})
	return err
}

// TestNodeNetworkNamespace checks the node's network on its own: from the
// root namespace the test reaches a server on the node's address in the
// namespace, a client in the namespace reaches a loopback server of the
// root namespace only through a Forwarder, a Forwarder refuses any target
// but loopback, and Delete leaves nothing.
func TestNodeNetworkNamespace(t *testing.T) {
	requireNode(t)
	ctx, cancel := testContext(t)
	defer cancel()
	n := newNode(t, nil)
	ns, err := cluster.CreateNetNS(ctx, n.dir)
	if err != nil {
		t.Fatal(err)
	}
	n.cleanup("delete the network namespace", ns.Delete)

	hello := func(where string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = fmt.Fprintf(w, "%s, from %s", where, r.RemoteAddr)
		})
	}
	get := func(url string) (string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return "", err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return "", err
		}
		defer func() { _ = resp.Body.Close() }()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}

	// A server on the node's address, in the namespace.
	var inside net.Listener
	if err := ns.Do(func() (err error) {
		inside, err = net.Listen("tcp", net.JoinHostPort(ns.NodeIP().String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	insideSrv := &http.Server{Handler: hello("node"), ReadHeaderTimeout: time.Minute}
	go func() { _ = insideSrv.Serve(inside) }()
	defer func() { _ = insideSrv.Close() }()
	got, err := get("http://" + inside.Addr().String())
	if err != nil || !strings.HasPrefix(got, "node, from "+ns.HostIP().String()+":") {
		t.Fatalf("GET the node's address from the root namespace: %q, %v", got, err)
	}
	t.Logf("root namespace → %s: %q", inside.Addr(), got)

	// A loopback server of the root namespace, and a forwarder to it.
	outside, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	outsideSrv := &http.Server{Handler: hello("root"), ReadHeaderTimeout: time.Minute}
	go func() { _ = outsideSrv.Serve(outside) }()
	defer func() { _ = outsideSrv.Close() }()
	fwd, err := ns.Forward(0, outside.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	// In the namespace, 127.0.0.1 is the namespace's: the root
	// namespace's server is not there, the forwarder is.
	inNS := func(addr string) (string, error) {
		var conn net.Conn
		if err := ns.Do(func() (err error) {
			var d net.Dialer
			conn, err = d.DialContext(ctx, "tcp", addr)
			return err
		}); err != nil {
			return "", err
		}
		defer func() { _ = conn.Close() }()
		if _, err := fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: x\r\n\r\n"); err != nil {
			return "", err
		}
		b, err := io.ReadAll(conn)
		return string(b), err
	}
	if out, err := inNS(outside.Addr().String()); err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("the namespace reached the root namespace's loopback server at %s directly: %q, %v", outside.Addr(), out, err)
	}
	out, err := inNS(net.JoinHostPort("127.0.0.1", strconv.Itoa(fwd.Port())))
	if err != nil || !strings.Contains(out, "root, from 127.0.0.1:") {
		t.Fatalf("through the forwarder at 127.0.0.1:%d in the namespace: %q, %v", fwd.Port(), out, err)
	}
	t.Logf("namespace → 127.0.0.1:%d (forwarder) → %s: %q", fwd.Port(), outside.Addr(), lastLine(out))
	if _, err := ns.Forward(0, net.JoinHostPort(ns.HostIP().String(), "80")); err == nil {
		t.Fatal("a forwarder to a non-loopback address was accepted")
	}

	_ = insideSrv.Close()
	if err := ns.Delete(); err != nil {
		t.Fatal(err)
	}
	left, err := ns.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Fatalf("the namespace left behind:\n  %s", strings.Join(left, "\n  "))
	}
	if _, err := get("http://" + inside.Addr().String()); err == nil {
		t.Fatalf("the node's address %s still answers after Delete", inside.Addr())
	}
	t.Logf("after Delete: no process in the namespace (inode %d), no %s, no address of %s, no mount", ns.Inode(), ns.HostLink(), ns.Subnet())
}

// assertServingInInventory waits until the node's NodeCertificate (the
// inventory the nodecsr Pod keeps) records the serving certificate the
// kubelet serves, issued from CSR csrName.
func assertServingInInventory(ctx context.Context, t *testing.T, tn *testNode, served *x509.Certificate, csrName string) {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := nodecsrv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	kc, err := client.New(tn.c.AdminConfig(), client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	serial := strings.ToUpper(served.SerialNumber.Text(16))
	var entry nodecsrv1alpha1.NodeCertificate
	var last string
	err = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		if err := kc.Get(ctx, client.ObjectKey{Name: nodeName}, &entry); err != nil {
			last = err.Error()
			return false, client.IgnoreNotFound(err)
		}
		s := entry.Status.Serving
		if s == nil {
			last = "no serving record"
			return false, nil
		}
		last = fmt.Sprintf("serving record %s from CSR %s", s.SerialNumber, s.CSRName)
		return s.SerialNumber == serial && s.CSRName == csrName, nil
	})
	if err != nil {
		t.Fatalf("NodeCertificate %s never recorded the served certificate %s from CSR %s (last: %s): %v", nodeName, serial, csrName, last, err)
	}
	s := entry.Status.Serving
	if s.SignerName != certificatesv1.KubeletServingSignerName || !s.NotAfter.Time.Equal(served.NotAfter) || s.Requester != "system:node:"+nodeName {
		t.Errorf("NodeCertificate %s serving record %+v does not describe the served certificate (until %s)", nodeName, *s, served.NotAfter)
	}
	t.Logf("the inventory records the served certificate: NodeCertificate %s serving %s, CSR %s, until %s, renew after %s", nodeName, s.SerialNumber, s.CSRName, s.NotAfter.UTC().Format(time.RFC3339), s.RenewAfter.UTC().Format(time.RFC3339))
}
