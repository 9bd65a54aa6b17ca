package requester

import (
	"context"
	"crypto"
	"errors"
	"io"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/clock"
)

func newTestRequester(t *testing.T) *Requester {
	t.Helper()
	o := NewOptions()
	o.CertDir, o.NodeName, o.BootstrapKubeconfig, o.Timeout = t.TempDir(), "n1", "/unused", time.Minute
	return NewRequester(o, clock.RealClock{}, func() float64 { return 0.5 }, io.Discard)
}

// csrWith builds the CSR object for req with the given conditions and certificate.
func csrWith(req *Request, certPEM []byte, conds ...certificatesv1.CertificateSigningRequestCondition) *certificatesv1.CertificateSigningRequest {
	return &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: req.Name},
		Spec:       certificatesv1.CertificateSigningRequestSpec{Request: req.PEM, SignerName: SignerName, Usages: req.Usages},
		Status:     certificatesv1.CertificateSigningRequestStatus{Conditions: conds, Certificate: certPEM},
	}
}

func cond(typ certificatesv1.RequestConditionType, reason, msg string) certificatesv1.CertificateSigningRequestCondition {
	return certificatesv1.CertificateSigningRequestCondition{Type: typ, Status: corev1.ConditionTrue, Reason: reason, Message: msg}
}

// TestPrepareFindsTheEarlierCSR covers a run started again after an
// interruption: the pending key is reused and the CSR it names is checked.
func TestPrepareFindsTheEarlierCSR(t *testing.T) {
	ca := newTestCA(t)
	now := time.Now()
	tests := map[string]struct {
		earlier     func(req *Request, key interface{ Public() crypto.PublicKey }) *certificatesv1.CertificateSigningRequest
		wantErr     func(error) bool
		wantSameKey bool
		wantPending bool // the pending key file still exists afterwards
	}{
		"no earlier CSR": {
			earlier: func(*Request, interface{ Public() crypto.PublicKey }) *certificatesv1.CertificateSigningRequest {
				return nil
			},
			wantSameKey: true, wantPending: true,
		},
		"earlier CSR still pending": {
			earlier: func(req *Request, _ interface{ Public() crypto.PublicKey }) *certificatesv1.CertificateSigningRequest {
				return csrWith(req, nil)
			},
			wantSameKey: true, wantPending: true,
		},
		"earlier CSR issued (crash before the certificate was written)": {
			earlier: func(req *Request, key interface{ Public() crypto.PublicKey }) *certificatesv1.CertificateSigningRequest {
				return csrWith(req, ca.issue(t, key.Public(), "system:node:n1", now.Add(-time.Minute), now.Add(time.Hour)), cond(certificatesv1.CertificateApproved, "A", "ok"))
			},
			wantSameKey: true, wantPending: true,
		},
		"earlier CSR denied": {
			earlier: func(req *Request, _ interface{ Public() crypto.PublicKey }) *certificatesv1.CertificateSigningRequest {
				return csrWith(req, nil, cond(certificatesv1.CertificateDenied, "NodeAlreadyExists", "node n1 exists"))
			},
			wantErr: func(err error) bool {
				var d *DeniedError
				return errors.As(err, &d) && d.Reason == "NodeAlreadyExists" && d.Message == "node n1 exists"
			},
		},
		"earlier CSR failed": {
			earlier: func(req *Request, _ interface{ Public() crypto.PublicKey }) *certificatesv1.CertificateSigningRequest {
				return csrWith(req, nil, cond(certificatesv1.CertificateApproved, "A", "ok"), cond(certificatesv1.CertificateFailed, "SignerValidationFailure", "bad"))
			},
			wantErr: func(err error) bool {
				var f *FailedError
				return errors.As(err, &f) && f.Reason == "SignerValidationFailure"
			},
		},
		"earlier CSR's certificate expired": {
			earlier: func(req *Request, key interface{ Public() crypto.PublicKey }) *certificatesv1.CertificateSigningRequest {
				return csrWith(req, ca.issue(t, key.Public(), "system:node:n1", now.Add(-2*time.Hour), now.Add(-time.Hour)), cond(certificatesv1.CertificateApproved, "A", "ok"))
			},
			wantSameKey: false, wantPending: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := newTestRequester(t)
			ctx := t.Context()
			key, _, err := r.store.PendingKey(ctx, ECDSAP256, nil)
			if err != nil {
				t.Fatal(err)
			}
			req, err := NewRequest(key, "n1")
			if err != nil {
				t.Fatal(err)
			}
			client := fake.NewClientset()
			if obj := tc.earlier(req, key); obj != nil {
				if _, err := client.CertificatesV1().CertificateSigningRequests().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}

			gotKey, gotReq, err := r.prepare(ctx, client, nil)
			if tc.wantErr != nil {
				if !tc.wantErr(err) {
					t.Fatalf("prepare() error = %v", err)
				}
			} else if err != nil {
				t.Fatalf("prepare(): %v", err)
			} else {
				if same := publicEqual(gotKey, key); same != tc.wantSameKey {
					t.Errorf("reused the earlier key: %v, want %v", same, tc.wantSameKey)
				}
				if (gotReq.Name == req.Name) != tc.wantSameKey {
					t.Errorf("CSR name %s (earlier %s)", gotReq.Name, req.Name)
				}
			}
			_, statErr := os.Stat(r.store.PendingKeyPath())
			if pending := statErr == nil; pending != tc.wantPending {
				t.Errorf("pending key present = %v, want %v", pending, tc.wantPending)
			}
		})
	}
}

func TestExplain(t *testing.T) {
	expired, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-expired.Done()
	cancelled, cancelNow := context.WithCancel(context.Background())
	cancelNow()
	waitErr := errors.New("cannot watch on the certificate signing request: boom")

	tests := map[string]struct {
		conds   []certificatesv1.CertificateSigningRequestCondition
		parent  context.Context
		reqCtx  context.Context
		check   func(t *testing.T, err error)
		pending bool
	}{
		"timed out while pending": {
			parent: context.Background(), reqCtx: expired, pending: true,
			check: func(t *testing.T, err error) {
				var to *TimeoutError
				if !errors.As(err, &to) || to.Waited != time.Minute || !strings.HasPrefix(to.State, "still pending") || !strings.HasPrefix(to.CSR, "node-csr-") {
					t.Errorf("err = %v, want a TimeoutError after 1m, still pending", err)
				}
			},
		},
		"timed out after approval": {
			conds:  []certificatesv1.CertificateSigningRequestCondition{cond(certificatesv1.CertificateApproved, "A", "ok")},
			parent: context.Background(), reqCtx: expired, pending: true,
			check: func(t *testing.T, err error) {
				var to *TimeoutError
				if !errors.As(err, &to) || !strings.HasPrefix(to.State, "approved, not yet signed") {
					t.Errorf("err = %v, want a TimeoutError, approved", err)
				}
			},
		},
		"denied": {
			conds:  []certificatesv1.CertificateSigningRequestCondition{cond(certificatesv1.CertificateDenied, "NodeAlreadyExists", "taken")},
			parent: context.Background(), reqCtx: context.Background(),
			check: func(t *testing.T, err error) {
				if got := err.Error(); !strings.HasPrefix(got, "denied: NodeAlreadyExists: taken (CSR node-csr-") || ExitCode(err) != ExitDenied {
					t.Errorf("err = %q (exit %d)", got, ExitCode(err))
				}
			},
		},
		"failed": {
			conds:  []certificatesv1.CertificateSigningRequestCondition{cond(certificatesv1.CertificateFailed, "Expired", "too late")},
			parent: context.Background(), reqCtx: expired,
			check: func(t *testing.T, err error) {
				if ExitCode(err) != ExitFailed || !strings.Contains(err.Error(), "failed: Expired: too late") {
					t.Errorf("err = %v", err)
				}
			},
		},
		"interrupted": {
			parent: cancelled, reqCtx: cancelled, pending: true,
			check: func(t *testing.T, err error) {
				if ExitCode(err) != ExitError || !strings.Contains(err.Error(), "interrupted") {
					t.Errorf("err = %v, want an interruption (exit 1)", err)
				}
			},
		},
		"other error": {
			parent: context.Background(), reqCtx: context.Background(), pending: true,
			check: func(t *testing.T, err error) {
				if !errors.Is(err, waitErr) || ExitCode(err) != ExitError {
					t.Errorf("err = %v, want the wait error", err)
				}
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := newTestRequester(t)
			key, _, err := r.store.PendingKey(t.Context(), ECDSAP256, nil)
			if err != nil {
				t.Fatal(err)
			}
			req, err := NewRequest(key, "n1")
			if err != nil {
				t.Fatal(err)
			}
			client := fake.NewClientset(csrWith(req, nil, tc.conds...))
			tc.check(t, r.explain(tc.parent, tc.reqCtx, client, req.Name, waitErr))
			_, statErr := os.Stat(r.store.PendingKeyPath())
			if pending := !errors.Is(statErr, fs.ErrNotExist); pending != tc.pending {
				t.Errorf("pending key kept = %v, want %v", pending, tc.pending)
			}
		})
	}
}

func TestRotateStopsOnConfigurationErrorsAndCancellation(t *testing.T) {
	r := newTestRequester(t)
	r.opts.BootstrapKubeconfig = "/nonexistent/bootstrap.conf"
	var usage *UsageError
	if err := r.Rotate(t.Context()); !errors.As(err, &usage) {
		t.Fatalf("Rotate() with an unreadable kubeconfig = %v, want a UsageError (retrying cannot fix it)", err)
	}

	// With a certificate far from its deadline, Rotate waits and returns nil
	// once cancelled, without contacting any server.
	now := time.Now()
	installCurrent(t, newTestCA(t), r.opts.CertDir, now.Add(-time.Hour), now.Add(100*time.Hour))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Rotate(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Rotate() after cancellation = %v, want nil", err)
	}
}
