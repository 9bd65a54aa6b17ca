package approver

import (
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"

	"github.com/nodecsr/nodecsr/internal/csrtest"
)

// A kubelet that files again in the second its last certificate was issued
// (a restart right after bootstrap, a recovery) is not superseded by that
// issued CSR: within one second the order is unknown. A pending duplicate in
// the same second still loses to the later name, so a burst keeps one.
func TestIssuedCSRSupersedesOnlyAcrossSeconds(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	me := csrtest.Build(csrtest.WithName("csr-aaaaa"), csrtest.WithCreationTimestamp(t0))
	issued := *csrtest.Build(csrtest.WithName("csr-zzzzz"), csrtest.WithCreationTimestamp(t0),
		csrtest.WithCondition(certificatesv1.CertificateApproved))
	issued.Status.Certificate = []byte("issued")
	if newer, older := PendingAround(me, "worker-1", []certificatesv1.CertificateSigningRequest{issued}); newer || older != 0 {
		t.Fatalf("same-second issued CSR: newer=%v older=%d, want false 0", newer, older)
	}
	issued.CreationTimestamp.Time = t0.Add(time.Second)
	if newer, _ := PendingAround(me, "worker-1", []certificatesv1.CertificateSigningRequest{issued}); !newer {
		t.Fatal("an issued CSR from a later second does not supersede")
	}
	pending := *csrtest.Build(csrtest.WithName("csr-zzzzz"), csrtest.WithCreationTimestamp(t0))
	if newer, _ := PendingAround(me, "worker-1", []certificatesv1.CertificateSigningRequest{pending}); !newer {
		t.Fatal("a same-second pending duplicate with a later name does not supersede")
	}
	if _, older := PendingAround(&pending, "worker-1", []certificatesv1.CertificateSigningRequest{*me}); older != 1 {
		t.Fatalf("older = %d, want 1", older)
	}
}
