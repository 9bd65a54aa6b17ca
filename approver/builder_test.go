package approver

import (
	"crypto/dsa" //nolint:staticcheck // DSA keys are built only to be refused
	"crypto/ecdh"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net/netip"
	"sync"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"

	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
)

// The CSR builder: the mutators of csrtest under the names Kubernetes'
// sarapprove_test.go uses. Keys are cached per test binary by csrtest.
var (
	newCSR           = csrtest.Build
	withCN           = csrtest.WithCN
	withNodeName     = csrtest.WithNodeName
	withOrg          = csrtest.WithOrg
	withSubjectAttr  = csrtest.WithSubjectAttribute
	withRawSubject   = csrtest.WithRawSubject
	withDNSSAN       = csrtest.WithDNSSAN
	withIPSAN        = csrtest.WithIPSAN
	withEmailSAN     = csrtest.WithEmailSAN
	withURISAN       = csrtest.WithURISAN
	withExtension    = csrtest.WithExtension
	withAttribute    = csrtest.WithAttribute
	withVersion      = csrtest.WithVersion
	withSPKI         = csrtest.WithSubjectPublicKeyInfo
	withUsages       = csrtest.WithUsages
	withKey          = csrtest.WithKey
	withSigAlg       = csrtest.WithSignatureAlgorithm
	withUsername     = csrtest.WithUsername
	withGroups       = csrtest.WithGroups
	withExpiration   = csrtest.WithExpiration
	withSigner       = csrtest.WithSignerName
	withCondition    = csrtest.WithCondition
	withCertificate  = csrtest.WithCertificate
	withRequest      = csrtest.WithRequest
	withPEMType      = csrtest.WithPEMType
	withPEMHeaders   = csrtest.WithPEMHeaders
	withPEMMutator   = csrtest.WithPEMMutator
	withDERMutator   = csrtest.WithDERMutator
	bootstrap        = csrtest.Bootstrap
	signedByOtherKey = csrtest.SignedByOtherKey
	corruptSignature = csrtest.CorruptSignature
	trailingGarbage  = csrtest.TrailingGarbage
	leadingGarbage   = csrtest.LeadingGarbage
	twoBlocks        = csrtest.TwoBlocks
	trailingDER      = csrtest.TrailingDERBytes
	notPEM           = csrtest.NotPEM
	atv              = csrtest.ATV
	rawSubject       = csrtest.RawSubject
)

func rsaKey(bits int) csrtest.Option { return withKey(csrtest.RSAKey(bits)) }
func ecKey(c elliptic.Curve) csrtest.Option {
	return withKey(csrtest.ECDSAKey(c))
}
func ed25519Key() csrtest.Option { return withKey(csrtest.Ed25519Key()) }

var (
	usagesDSCA   = []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}
	usagesDSKECA = csrtest.KeyEnciphermentUsages()
)

func ptr[T any](v T) *T { return &v }

// goodFacts are the facts of a CSR that should be approved on path; for
// PathServing, those of node worker-1 (servingNode) with no neighbour
// sharing its addresses.
func goodFacts(path Path) Facts {
	f := Facts{
		Authorized:          ptr(true),
		NodeExists:          ptr(path == PathRenewal || path == PathServing),
		NewerPendingForNode: ptr(false),
		PendingForNode:      ptr(0),
	}
	if path == PathServing {
		f.NodeAddresses = NodeAddressesOf(servingNode)
		f.Neighbours = map[string][]string{}
		f.Resolved = map[string]Resolution{"worker-1.cluster.internal": {IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}}
	}
	return f
}

// evaluate inspects and decides a CSR, as every caller of the engine does; a
// nil policy is the default one.
func evaluate(p *config.Effective, csr *certificatesv1.CertificateSigningRequest, facts Facts) Decision {
	if p == nil {
		p = config.Default()
	}
	return Decide(p, Inspect(p, csr), facts)
}

// policyWith returns the default policy changed by f and completed.
func policyWith(t testing.TB, f func(*config.Spec)) *config.Effective {
	t.Helper()
	p := &config.Policy{APIVersion: config.APIVersion, Kind: config.Kind}
	if f != nil {
		f(&p.Spec)
	}
	e, err := config.Compile(p)
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	return e
}

// SubjectPublicKeyInfos crypto/x509 cannot marshal.
var (
	oidDSA             = asn1.ObjectIdentifier{1, 2, 840, 10040, 4, 1}
	oidECPublicKey     = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidSecp256k1       = asn1.ObjectIdentifier{1, 3, 132, 0, 10}
	oidUnknownKey      = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}
	oidBasicConstraint = asn1.ObjectIdentifier{2, 5, 29, 19}
)

func spki(alg pkix.AlgorithmIdentifier, key []byte) []byte {
	der, err := asn1.Marshal(struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}{alg, asn1.BitString{Bytes: key, BitLength: 8 * len(key)}})
	if err != nil {
		panic(err)
	}
	return der
}

var dsaSPKI = sync.OnceValue(func() []byte {
	var params dsa.Parameters
	if err := dsa.GenerateParameters(&params, rand.Reader, dsa.L1024N160); err != nil {
		panic(err)
	}
	priv := &dsa.PrivateKey{PublicKey: dsa.PublicKey{Parameters: params}}
	if err := dsa.GenerateKey(priv, rand.Reader); err != nil {
		panic(err)
	}
	p, _ := asn1.Marshal(struct{ P, Q, G *big.Int }{params.P, params.Q, params.G})
	y, _ := asn1.Marshal(priv.Y)
	return spki(pkix.AlgorithmIdentifier{Algorithm: oidDSA, Parameters: asn1.RawValue{FullBytes: p}}, y)
})

var x25519SPKI = sync.OnceValue(func() []byte {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	der, err := x509.MarshalPKIXPublicKey(k.PublicKey())
	if err != nil {
		panic(err)
	}
	return der
})

func secp256k1SPKI() []byte {
	curve, _ := asn1.Marshal(oidSecp256k1)
	point := make([]byte, 65)
	point[0] = 4
	point[64] = 1
	return spki(pkix.AlgorithmIdentifier{Algorithm: oidECPublicKey, Parameters: asn1.RawValue{FullBytes: curve}}, point)
}

func unknownSPKI() []byte {
	return spki(pkix.AlgorithmIdentifier{Algorithm: oidUnknownKey}, []byte{1, 2, 3, 4})
}

// now is the fixed time the heartbeat cases are decided at.
var now = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
