package inventory

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nodecsrv1alpha1 "github.com/nodecsr/nodecsr/api/v1alpha1"
)

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

// issue makes a certificate for cn valid from notBefore for lifetime.
func issue(t *testing.T, cn string, serial int64, notBefore time.Time, lifetime time.Duration) (pemBytes []byte, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"system:nodes"}},
		NotBefore:    notBefore, NotAfter: notBefore.Add(lifetime),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err = x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), cert
}

func csrWith(name, signer, user string, certPEM []byte) *certificatesv1.CertificateSigningRequest {
	return &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(t0.Add(time.Minute))},
		Spec:       certificatesv1.CertificateSigningRequestSpec{SignerName: signer, Username: user},
		Status:     certificatesv1.CertificateSigningRequestStatus{Certificate: certPEM},
	}
}

func TestFromCSR(t *testing.T) {
	certPEM, cert := issue(t, "system:node:a", 0xbeef, t0, 100*time.Hour)
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	now := t0.Add(90 * time.Minute).Add(300 * time.Millisecond)
	tests := map[string]struct {
		csr      *certificatesv1.CertificateSigningRequest
		wantKind Kind
		wantPath string
		notOurs  bool
		wantErr  bool
	}{
		"renewal by the node": {
			csr:      csrWith("r", ClientSigner, "system:node:a", certPEM),
			wantKind: KindClient, wantPath: nodecsrv1alpha1.PathRenewal,
		},
		"bootstrap by a token": {
			csr:      csrWith("b", ClientSigner, "system:bootstrap:abcdef", certPEM),
			wantKind: KindClient, wantPath: nodecsrv1alpha1.PathBootstrap,
		},
		"another node's name is not a renewal": {
			csr:      csrWith("o", ClientSigner, "system:node:b", certPEM),
			wantKind: KindClient, wantPath: nodecsrv1alpha1.PathBootstrap,
		},
		"serving": {
			csr:      csrWith("s", ServingSigner, "system:node:a", certPEM),
			wantKind: KindServing, wantPath: nodecsrv1alpha1.PathRenewal,
		},
		"chain: the leaf first": {
			csr:      csrWith("c", ClientSigner, "system:node:a", append(append([]byte{}, certPEM...), certPEM...)),
			wantKind: KindClient, wantPath: nodecsrv1alpha1.PathRenewal,
		},
		"other signer":   {csr: csrWith("x", "example.com/other", "system:node:a", certPEM), notOurs: true},
		"not issued yet": {csr: csrWith("p", ClientSigner, "system:node:a", nil), notOurs: true},
		"garbage":        {csr: csrWith("g", ClientSigner, "system:node:a", []byte("not pem")), wantErr: true},
		"not a node":     {csr: csrWith("n", ClientSigner, "someone", mustPEM(t, "someone")), wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			o, err := FromCSR(tc.csr, now)
			switch {
			case tc.notOurs:
				if !errors.Is(err, errNotOurs) {
					t.Fatalf("got %v, %v; want errNotOurs", o, err)
				}
				return
			case tc.wantErr:
				if err == nil || errors.Is(err, errNotOurs) {
					t.Fatalf("got %v, %v; want a parse error", o, err)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			want := nodecsrv1alpha1.CertificateRecord{
				SignerName:      tc.csr.Spec.SignerName,
				SerialNumber:    "BEEF",
				NotBefore:       metav1.NewTime(t0),
				NotAfter:        metav1.NewTime(t0.Add(100 * time.Hour)),
				RenewAfter:      metav1.NewTime(t0.Add(70 * time.Hour)),
				RenewBefore:     metav1.NewTime(t0.Add(90 * time.Hour)),
				PublicKeySHA256: hex.EncodeToString(sum[:]),
				CSRName:         tc.csr.Name,
				Path:            tc.wantPath,
				Requester:       tc.csr.Spec.Username,
				ObservedTime:    metav1.NewTime(t0.Add(90 * time.Minute)),
			}
			if o.Node != "a" || o.Kind != tc.wantKind || o.Record != want || !o.Requested.Equal(&tc.csr.CreationTimestamp) {
				t.Fatalf("got %s %s %+v (requested %s)\nwant a %s %+v", o.Node, o.Kind, o.Record, o.Requested, tc.wantKind, want)
			}
		})
	}
}

func mustPEM(t *testing.T, cn string) []byte {
	p, _ := issue(t, cn, 1, t0, time.Hour)
	return p
}

func rec(notBefore, notAfter time.Time) *nodecsrv1alpha1.CertificateRecord {
	return &nodecsrv1alpha1.CertificateRecord{NotBefore: metav1.NewTime(notBefore), NotAfter: metav1.NewTime(notAfter)}
}

func TestNewer(t *testing.T) {
	base := rec(t0, t0.Add(time.Hour))
	tests := map[string]struct {
		a, b *nodecsrv1alpha1.CertificateRecord
		want bool
	}{
		"later NotBefore":             {rec(t0.Add(time.Second), t0.Add(time.Minute)), base, true},
		"earlier NotBefore":           {rec(t0.Add(-time.Second), t0.Add(2*time.Hour)), base, false},
		"same NotBefore, later end":   {rec(t0, t0.Add(2*time.Hour)), base, true},
		"same NotBefore, earlier end": {rec(t0, t0.Add(time.Minute)), base, false},
		"the same":                    {rec(t0, t0.Add(time.Hour)), base, false},
		"anything beats nothing":      {base, nil, true},
		"nothing beats nothing":       {nil, nil, false},
		"nothing is not newer":        {nil, base, false},
		"same second, renewal after bootstrap": {
			withPath(rec(t0, t0.Add(time.Hour)), "B", nodecsrv1alpha1.PathRenewal, t0),
			withPath(rec(t0, t0.Add(time.Hour)), "A", nodecsrv1alpha1.PathBootstrap, t0.Add(time.Second)), true},
		"same second, bootstrap not after renewal": {
			withPath(rec(t0, t0.Add(time.Hour)), "A", nodecsrv1alpha1.PathBootstrap, t0.Add(time.Second)),
			withPath(rec(t0, t0.Add(time.Hour)), "B", nodecsrv1alpha1.PathRenewal, t0), false},
		"same second, both renewals, seen later": {
			withPath(rec(t0, t0.Add(time.Hour)), "B", nodecsrv1alpha1.PathRenewal, t0.Add(time.Second)),
			withPath(rec(t0, t0.Add(time.Hour)), "A", nodecsrv1alpha1.PathRenewal, t0), true},
		"same serial": {
			withPath(rec(t0, t0.Add(time.Hour)), "A", nodecsrv1alpha1.PathRenewal, t0.Add(time.Second)),
			withPath(rec(t0, t0.Add(time.Hour)), "A", nodecsrv1alpha1.PathBootstrap, t0), false},
	}
	for name, tc := range tests {
		if got := Newer(tc.a, tc.b); got != tc.want {
			t.Errorf("%s: Newer = %v, want %v", name, got, tc.want)
		}
	}
}

func TestResidual(t *testing.T) {
	end := t0.Add(1000 * 24 * time.Hour)
	tests := []struct {
		left     time.Duration
		want     string
		nextLeft time.Duration // left at the next change; -1: none
	}{
		{1000 * 24 * time.Hour, "2y", 2*365*24*time.Hour - time.Second},
		{730 * 24 * time.Hour, "2y", 730*24*time.Hour - time.Second},
		{730*24*time.Hour - time.Second, "729d", 729*24*time.Hour - time.Second},
		{364*24*time.Hour + 5*time.Hour, "364d", 364*24*time.Hour - time.Second},
		{48 * time.Hour, "2d", 48*time.Hour - time.Second},
		{48*time.Hour - time.Second, "47h", 47*time.Hour - time.Second},
		{90 * time.Minute, "1h", time.Hour - time.Second},
		{time.Hour - time.Second, "<1h", 0},
		{time.Second, "<1h", 0},
		{0, "expired", -1},
		{-time.Hour, "expired", -1},
	}
	for _, tc := range tests {
		now := end.Add(-tc.left)
		got, next := Residual(end, now)
		if got != tc.want {
			t.Errorf("left %s: %q, want %q", tc.left, got, tc.want)
		}
		switch {
		case tc.nextLeft < 0 && !next.IsZero():
			t.Errorf("left %s: next change at %s, want none", tc.left, next)
		case tc.nextLeft >= 0 && !next.Equal(end.Add(-tc.nextLeft)):
			t.Errorf("left %s: next change with %s left, want %s", tc.left, end.Sub(next), tc.nextLeft)
		case tc.nextLeft >= 0:
			// The value really changes then, and not a second before.
			if v, _ := Residual(end, next); v == got {
				t.Errorf("left %s: still %q at the next change", tc.left, v)
			}
			if v, _ := Residual(end, next.Add(-time.Second)); v != got {
				t.Errorf("left %s: %q a second before the next change, want %q", tc.left, v, got)
			}
		}
	}
}

func TestOverdue(t *testing.T) {
	cl := rec(t0, t0.Add(10*time.Hour))
	cl.RenewBefore = metav1.NewTime(t0.Add(9 * time.Hour))
	fresh := 2 * time.Minute
	tests := map[string]struct {
		now, heartbeat time.Time
		want           bool
	}{
		"inside the window":             {t0.Add(8 * time.Hour), t0.Add(8 * time.Hour), false},
		"past the window, heartbeating": {t0.Add(9*time.Hour + time.Second), t0.Add(9 * time.Hour), true},
		"expired, still heartbeating":   {t0.Add(11 * time.Hour), t0.Add(11*time.Hour - time.Minute), true},
		"past the window, node silent":  {t0.Add(9*time.Hour + time.Hour), t0.Add(9 * time.Hour), false},
		"heartbeat exactly fresh":       {t0.Add(9*time.Hour + fresh), t0.Add(9 * time.Hour), true},
	}
	for name, tc := range tests {
		if got := Overdue(cl, tc.heartbeat, tc.now, fresh); got != tc.want {
			t.Errorf("%s: Overdue = %v, want %v", name, got, tc.want)
		}
	}
	if Overdue(nil, t0, t0, fresh) {
		t.Error("no certificate is not overdue")
	}
}

func TestMergeNewerWins(t *testing.T) {
	now := t0.Add(5 * time.Hour)
	stored := rec(t0, t0.Add(100*time.Hour))
	stored.SerialNumber = "01"
	lastRenewal := metav1.NewTime(t0)
	observed := metav1.NewTime(t0)
	cur := nodecsrv1alpha1.NodeCertificateStatus{Client: stored, LastRenewal: &lastRenewal, ObservedTime: &observed, ClientResidual: "4d"}

	older := rec(t0.Add(-time.Hour), t0.Add(200*time.Hour))
	older.SerialNumber = "00"
	got := merge(cur, &pending{client: older, requested: metav1.NewTime(t0.Add(-time.Hour))}, now)
	if got.Client.SerialNumber != "01" || !got.LastRenewal.Equal(&lastRenewal) {
		t.Fatalf("an older certificate replaced the stored one: %+v", got)
	}
	if got.ClientResidual != "3d" || got.ObservedTime.Equal(&observed) {
		t.Fatalf("residual %q (want 3d), observed %s (want now)", got.ClientResidual, got.ObservedTime)
	}

	newer := rec(t0.Add(time.Hour), t0.Add(101*time.Hour))
	newer.SerialNumber = "02"
	requested := metav1.NewTime(t0.Add(time.Hour))
	got = merge(cur, &pending{client: newer, requested: requested}, now)
	if got.Client.SerialNumber != "02" || !got.LastRenewal.Equal(&requested) {
		t.Fatalf("the newer certificate did not win: %+v", got)
	}
	if cur.Client.SerialNumber != "01" {
		t.Fatal("merge changed its input")
	}

	// Nothing new and the residual unchanged: the same status, no write.
	same := merge(cur, &pending{}, t0.Add(4*time.Hour))
	if !sameStatus(&cur, &same) || !same.ObservedTime.Equal(&observed) {
		t.Fatalf("nothing changed but the status did: %+v", same)
	}
}

func withPath(r *nodecsrv1alpha1.CertificateRecord, serial string, path string, observed time.Time) *nodecsrv1alpha1.CertificateRecord {
	r.SerialNumber, r.Path, r.ObservedTime = serial, path, metav1.NewTime(observed)
	return r
}
