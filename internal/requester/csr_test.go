package requester

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"strings"
	"testing"

	certificatesv1 "k8s.io/api/certificates/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

func TestNewRequestIsWhatKubeletSends(t *testing.T) {
	tests := map[KeyAlgorithm]struct {
		check  func(pub any) bool
		usages []certificatesv1.KeyUsage
	}{
		ECDSAP256: {
			check:  func(pub any) bool { k, ok := pub.(*ecdsa.PublicKey); return ok && k.Curve == elliptic.P256() },
			usages: []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth},
		},
		ECDSAP384: {
			check:  func(pub any) bool { k, ok := pub.(*ecdsa.PublicKey); return ok && k.Curve == elliptic.P384() },
			usages: []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth},
		},
		RSA2048: {
			check:  func(pub any) bool { k, ok := pub.(*rsa.PublicKey); return ok && k.N.BitLen() == 2048 },
			usages: []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageKeyEncipherment},
		},
		RSA3072: {
			check:  func(pub any) bool { k, ok := pub.(*rsa.PublicKey); return ok && k.N.BitLen() == 3072 },
			usages: []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageKeyEncipherment},
		},
		RSA4096: {
			check:  func(pub any) bool { k, ok := pub.(*rsa.PublicKey); return ok && k.N.BitLen() == 4096 },
			usages: []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageKeyEncipherment},
		},
	}
	for alg, tc := range tests {
		t.Run(string(alg), func(t *testing.T) {
			key := mustKey(t, alg)
			if got := AlgorithmOf(key.Public()); got != alg {
				t.Errorf("AlgorithmOf = %q, want %q", got, alg)
			}
			req, err := NewRequest(key, "worker-1.example")
			if err != nil {
				t.Fatal(err)
			}
			block, rest := pem.Decode(req.PEM)
			if block == nil || block.Type != "CERTIFICATE REQUEST" || len(rest) != 0 {
				t.Fatalf("request is not one CERTIFICATE REQUEST PEM block: %q", req.PEM)
			}
			cr, err := x509.ParseCertificateRequest(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if err := cr.CheckSignature(); err != nil {
				t.Errorf("signature: %v", err)
			}
			if !tc.check(cr.PublicKey) {
				t.Errorf("public key is %T, not %s", cr.PublicKey, alg)
			}
			if cr.Subject.CommonName != "system:node:worker-1.example" {
				t.Errorf("CN = %q", cr.Subject.CommonName)
			}
			if !slices.Equal(cr.Subject.Organization, []string{"system:nodes"}) {
				t.Errorf("O = %q", cr.Subject.Organization)
			}
			if got := cr.Subject.String(); got != "CN=system:node:worker-1.example,O=system:nodes" {
				t.Errorf("subject = %q, want only CN and O", got)
			}
			if len(cr.DNSNames)+len(cr.IPAddresses)+len(cr.EmailAddresses)+len(cr.URIs) != 0 {
				t.Errorf("request has SANs: %v %v %v %v", cr.DNSNames, cr.IPAddresses, cr.EmailAddresses, cr.URIs)
			}
			if !slices.Equal(req.Usages, tc.usages) {
				t.Errorf("usages = %v, want %v", req.Usages, tc.usages)
			}
			if !strings.HasPrefix(req.Name, "node-csr-") || len(validation.IsDNS1123Label(req.Name)) != 0 {
				t.Errorf("name %q is not node-csr-<DNS label>", req.Name)
			}
		})
	}
}

func TestCSRNameIsDeterministic(t *testing.T) {
	key := mustKey(t, ECDSAP256)
	other := mustKey(t, ECDSAP256)
	usages := Usages(key.Public())
	name := func(k any, node string, u []certificatesv1.KeyUsage) string {
		t.Helper()
		n, err := CSRName(k, Subject(node), u)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	base := name(key.Public(), "a", usages)
	if again := name(key.Public(), "a", usages); again != base {
		t.Errorf("same inputs gave %q and %q", base, again)
	}
	// Requests made from the same key (new signature each time) share the name.
	r1, err := NewRequest(key, "a")
	if err != nil {
		t.Fatal(err)
	}
	r2, err := NewRequest(key, "a")
	if err != nil {
		t.Fatal(err)
	}
	if r1.Name != base || r2.Name != base {
		t.Errorf("NewRequest names %q, %q; want %q", r1.Name, r2.Name, base)
	}
	differ := map[string]string{
		"other key":    name(other.Public(), "a", usages),
		"other node":   name(key.Public(), "b", usages),
		"other usages": name(key.Public(), "a", append(slices.Clone(usages), certificatesv1.UsageKeyEncipherment)),
	}
	for what, n := range differ {
		if n == base {
			t.Errorf("%s gave the same name %q", what, n)
		}
	}
	if len(base) != len("node-csr-")+52 {
		t.Errorf("name %q has length %d, want %d", base, len(base), len("node-csr-")+52)
	}
}
