package approver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	certificatesv1 "k8s.io/api/certificates/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/nodecsr/nodecsr/internal/csrtest"
)

func issued(t *testing.T, cn string, notBefore, notAfter time.Time, opts ...csrtest.Option) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: notBefore, NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return csrtest.Build(append(opts, csrtest.WithCertificate(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))...)
}

func TestExpiryTrackerKeepsTheNewestCertificatePerNode(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	tr := &ExpiryTracker{Horizon: 48 * time.Hour, Clock: clocktesting.NewFakePassiveClock(now)}
	first := issued(t, "system:node:a", now.Add(-10*24*time.Hour), now.Add(24*time.Hour))
	tr.Observe(first)
	if got, _ := tr.Expiry(SignerClient, "a"); !got.Equal(now.Add(24 * time.Hour)) {
		t.Fatalf("expiry %v", got)
	}
	renewed := issued(t, "system:node:a", now.Add(-time.Hour), now.Add(30*24*time.Hour))
	tr.ObserveUpdate(nil, renewed)
	// An older certificate seen later (an informer relist) changes nothing.
	tr.Observe(first)
	if got, _ := tr.Expiry(SignerClient, "a"); !got.Equal(now.Add(30 * 24 * time.Hour)) {
		t.Fatalf("expiry after renewal %v", got)
	}
	tr.Observe(issued(t, "system:node:b", now.Add(-time.Hour), now.Add(time.Hour)))
	tr.Observe(issued(t, "system:node:c", now.Add(-48*time.Hour), now.Add(-time.Hour))) // expired
	// Not a node certificate, or not issued: ignored.
	tr.Observe(issued(t, "alice", now, now.Add(time.Hour)))
	tr.Observe(csrtest.Build())
	tr.Observe(csrtest.Build(csrtest.WithCertificate([]byte("garbage"))))

	reg := prometheus.NewRegistry()
	reg.MustRegister(tr)
	want := `
# HELP nodecsr_node_certificates_expiring Nodes whose newest kubelet certificate of the signer (client, serving) expires within the horizon (or has expired).
# TYPE nodecsr_node_certificates_expiring gauge
nodecsr_node_certificates_expiring{horizon="48h0m0s",signer="client"} 2
# HELP nodecsr_node_certificates_tracked Nodes for which nodecsr knows the newest issued kubelet certificate of the signer (client, serving).
# TYPE nodecsr_node_certificates_tracked gauge
nodecsr_node_certificates_tracked{signer="client"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "nodecsr_node_certificates_expiring", "nodecsr_node_certificates_tracked"); err != nil {
		t.Fatal(err)
	}
	tr.Forget("c")
	if _, ok := tr.Expiry(SignerClient, "c"); ok {
		t.Fatal("a deleted node is still tracked")
	}
	if n := testutil.CollectAndCount(tr, "nodecsr_node_certificate_expiry_timestamp_seconds"); n != 2 {
		t.Fatalf("%d expiry series, want 2", n)
	}
}

func TestExpiryTrackerKeepsServingCertificatesApart(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	tr := &ExpiryTracker{Horizon: 48 * time.Hour, Clock: clocktesting.NewFakePassiveClock(now), Serving: true}
	reg := prometheus.NewRegistry()
	reg.MustRegister(tr)
	counts := func(want string) {
		t.Helper()
		header := `
# HELP nodecsr_node_certificates_expiring Nodes whose newest kubelet certificate of the signer (client, serving) expires within the horizon (or has expired).
# TYPE nodecsr_node_certificates_expiring gauge
`
		if err := testutil.GatherAndCompare(reg, strings.NewReader(header+want), "nodecsr_node_certificates_expiring"); err != nil {
			t.Fatal(err)
		}
	}
	// With serving, its counts are there before any serving certificate.
	counts(`nodecsr_node_certificates_expiring{horizon="48h0m0s",signer="client"} 0
nodecsr_node_certificates_expiring{horizon="48h0m0s",signer="serving"} 0
`)

	tr.Observe(issued(t, "system:node:a", now.Add(-time.Hour), now.Add(30*24*time.Hour)))
	// The serving certificate of the same node expires first; a newer client
	// certificate does not hide it, nor does a serving one hide the client's.
	tr.Observe(issued(t, "system:node:a", now.Add(-time.Hour), now.Add(time.Hour), csrtest.WithSignerName(KubeletServingSigner)))
	tr.Observe(issued(t, "system:node:a", now, now.Add(60*24*time.Hour)))
	// Another signer's certificate is none of the tracker's business.
	tr.Observe(issued(t, "system:node:a", now, now.Add(time.Minute), csrtest.WithSignerName("example.com/other")))
	if got, _ := tr.Expiry(SignerClient, "a"); !got.Equal(now.Add(60 * 24 * time.Hour)) {
		t.Fatalf("client expiry %v", got)
	}
	if got, _ := tr.Expiry(SignerServing, "a"); !got.Equal(now.Add(time.Hour)) {
		t.Fatalf("serving expiry %v", got)
	}
	counts(`nodecsr_node_certificates_expiring{horizon="48h0m0s",signer="client"} 0
nodecsr_node_certificates_expiring{horizon="48h0m0s",signer="serving"} 1
`)
	want := `
# HELP nodecsr_node_certificate_expiry_timestamp_seconds When the newest kubelet certificate of the signer (client, serving) issued to the node through a CSR expires (Unix time).
# TYPE nodecsr_node_certificate_expiry_timestamp_seconds gauge
` + fmt.Sprintf("nodecsr_node_certificate_expiry_timestamp_seconds{node=\"a\",signer=\"client\"} %d\nnodecsr_node_certificate_expiry_timestamp_seconds{node=\"a\",signer=\"serving\"} %d\n",
		now.Add(60*24*time.Hour).Unix(), now.Add(time.Hour).Unix())
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "nodecsr_node_certificate_expiry_timestamp_seconds"); err != nil {
		t.Fatal(err)
	}

	// A deleted node takes both with it.
	tr.Forget("a")
	if n := testutil.CollectAndCount(tr, "nodecsr_node_certificate_expiry_timestamp_seconds"); n != 0 {
		t.Fatalf("%d expiry series after the node was deleted", n)
	}

	// Without serving, no serving counts while none is known.
	plain := &ExpiryTracker{Horizon: time.Hour}
	if n := testutil.CollectAndCount(plain, "nodecsr_node_certificates_tracked"); n != 1 {
		t.Fatalf("%d tracked series without serving, want the client's only", n)
	}
}
