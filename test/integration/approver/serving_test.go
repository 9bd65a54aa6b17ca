package approver_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"net"
	"slices"
	"strings"
	"testing"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/env"
)

const servingPolicy = basePolicy + "  serving:\n    enabled: true\n"

// restartController stops and starts the shared nodecsr-controller process
// (a restarted pod), which then loads the policy file as it is.
func restartController(t *testing.T) {
	t.Helper()
	ctx, cancel := testutil.Context(t)
	defer cancel()
	if err := ctl.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ctl.Start(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestServingTurnedOnByReloadNeedsRestart: the controller started with
// serving off. A reload that turns it on is reported (Warning Event
// ServingNeedsRestart on the Pod) and decides no serving CSR; after a
// restart, a serving CSR for a Node without addresses waits
// (WaitingForNodeAddresses) and is approved, and signed for exactly its
// SANs, once the Node reports them.
func TestServingTurnedOnByReloadNeedsRestart(t *testing.T) {
	t.Cleanup(func() {
		setPolicy(t, basePolicy)
		restartController(t)
	})
	node := uniqueName("srv")
	createNode(t, node)
	ip := "10.40.0.1"

	setPolicy(t, servingPolicy)
	ctx, cancel := testutil.Context(t)
	defer cancel()
	ev, err := testWaitEvent(ctx, "ServingNeedsRestart")
	if err != nil || ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Note, "restart") {
		t.Fatalf("no ServingNeedsRestart Warning Event: %+v %v", ev, err)
	}

	kubelet := nodeClient(t, node)
	serving := create(t, kubelet, csrtest.Build(csrtest.WithNodeName(node), csrtest.Serving(node, ip)))
	// The controller works (the node's client renewal is decided), yet the
	// serving CSR is not: its cache does not hold serving CSRs.
	renewal := create(t, kubelet, csrtest.Build(csrtest.WithNodeName(node)))
	expectDecision(t, renewal.Name, certificatesv1.CertificateApproved, approver.ReasonRenewalApproved)
	got, err := admin.CertificatesV1().CertificateSigningRequests().Get(t.Context(), serving.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Status.Conditions) != 0 {
		t.Fatalf("a serving CSR was decided before the restart: %+v", got.Status.Conditions)
	}

	restartController(t)
	// The Node reports no address yet: the CSR waits, and says why.
	waiting := decisionEvents(t, serving.Name, 1)[0]
	if waiting.Reason != approver.ReasonWaitingForNodeAddresses || waiting.Type != corev1.EventTypeWarning {
		t.Fatalf("event %s/%s %q, want a WaitingForNodeAddresses warning", waiting.Type, waiting.Reason, waiting.Message)
	}
	// It counts as a pending serving CSR.
	if v := metricValue(t, "nodecsr_pending_csrs", map[string]string{"signer": "serving"}); v < 1 {
		t.Errorf("nodecsr_pending_csrs{signer=serving} = %v while a serving CSR waits", v)
	}
	n, err := admin.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: node}}
	if _, err := admin.CoreV1().Nodes().UpdateStatus(t.Context(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	cond, _ := decision(t, serving.Name)
	if cond.Type != certificatesv1.CertificateApproved || cond.Reason != approver.ReasonServingApproved {
		t.Fatalf("decision %s/%s (%s), want Approved/%s", cond.Type, cond.Reason, cond.Message, approver.ReasonServingApproved)
	}
	var certPEM []byte
	err = poll(t, func(ctx context.Context) (bool, error) {
		got, err := admin.CertificatesV1().CertificateSigningRequests().Get(ctx, serving.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		certPEM = got.Status.Certificate
		return len(certPEM) > 0, nil
	})
	if err != nil {
		t.Fatalf("the serving CSR was not signed: %v", err)
	}
	blk, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cert.DNSNames, []string{node}) || len(cert.IPAddresses) != 1 || !cert.IPAddresses[0].Equal(net.ParseIP(ip)) ||
		!slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		t.Errorf("issued certificate: DNS %v, IP %v, ext key usages %v", cert.DNSNames, cert.IPAddresses, cert.ExtKeyUsage)
	}
	// The serving certificate's expiry is tracked beside the client one.
	var expiry float64
	if err := poll(t, func(context.Context) (bool, error) {
		expiry = metricValue(t, "nodecsr_node_certificate_expiry_timestamp_seconds", map[string]string{"node": node, "signer": "serving"})
		return expiry == float64(cert.NotAfter.Unix()), nil
	}); err != nil {
		t.Errorf("nodecsr_node_certificate_expiry_timestamp_seconds{node=%q,signer=serving} = %v, want %d", node, expiry, cert.NotAfter.Unix())
	}
	if v := metricValue(t, "nodecsr_decisions_total", map[string]string{"decision": "Approve", "reason": approver.ReasonServingApproved, "path": "Serving", "signer": "serving"}); v != 1 {
		t.Errorf("nodecsr_decisions_total{Approve,ServingApproved,Serving,serving} = %v, want 1", v)
	}
}

// testWaitEvent waits for an Event about the controller's Pod with reason.
func testWaitEvent(ctx context.Context, reason string) (*eventsv1.Event, error) {
	return env.WaitEvent(ctx, admin, podNS, podName, func(e *eventsv1.Event) bool { return e.Reason == reason })
}
