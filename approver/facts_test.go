package approver

import (
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
	// Approved and issued in that same second, before the kubelet filed again.
	issued.Status.Conditions[0].LastUpdateTime = metav1.NewTime(t0)
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

// A burst filed in one second, decided in any order: once the newest is
// approved, an older duplicate of the same second that was pending before
// that approval is superseded by it (the name breaks the tie, as among
// pending duplicates), so the burst gets exactly one approval. A CSR filed in
// the second of the approval, or later, is not.
func TestApprovedDuplicateOfTheSameSecondSupersedesTheBurst(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	approvedAt := func(at time.Time) certificatesv1.CertificateSigningRequest {
		c := *csrtest.Build(csrtest.WithName("csr-zzzzz"), csrtest.WithCreationTimestamp(t0))
		c.Status.Conditions = []certificatesv1.CertificateSigningRequestCondition{{
			Type: certificatesv1.CertificateApproved, Status: "True", LastUpdateTime: metav1.NewTime(at),
		}}
		return c
	}
	older := csrtest.Build(csrtest.WithName("csr-aaaaa"), csrtest.WithCreationTimestamp(t0))
	later := approvedAt(t0.Add(3 * time.Second))
	if newer, _ := PendingAround(older, "worker-1", []certificatesv1.CertificateSigningRequest{later}); !newer {
		t.Fatal("the burst's newest, approved after the older duplicate was filed, does not supersede it")
	}
	// The approved one is the older by name: it never supersedes a newer one.
	newest := csrtest.Build(csrtest.WithName("csr-zzzzzz"), csrtest.WithCreationTimestamp(t0))
	if newer, _ := PendingAround(newest, "worker-1", []certificatesv1.CertificateSigningRequest{later}); newer {
		t.Fatal("an approved CSR older by name supersedes the newest of the burst")
	}
	// Filed in the approval's own second: it may be a new request after the
	// certificate was issued; the order is unknown, so it is not superseded.
	same := approvedAt(t0)
	if newer, _ := PendingAround(older, "worker-1", []certificatesv1.CertificateSigningRequest{same}); newer {
		t.Fatal("a CSR filed in the second of the approval is superseded")
	}
	// An approval without a time (written by hand) keeps the rule of seconds.
	unknown := approvedAt(time.Time{})
	if newer, _ := PendingAround(older, "worker-1", []certificatesv1.CertificateSigningRequest{unknown}); newer {
		t.Fatal("an approval of unknown time supersedes a same-second CSR")
	}
}
