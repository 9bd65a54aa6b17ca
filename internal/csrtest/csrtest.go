// Package csrtest builds kubelet client CertificateSigningRequests for tests:
// valid ones by default, hostile ones through options. Keys are generated
// once per process and cached by type and size.
//
// Build panics when it cannot build what was asked for: it is for tests.
package csrtest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Defaults of a built CSR.
const (
	DefaultNodeName = "worker-1"
	DefaultTokenID  = "abcdef"
	NodePrefix      = "system:node:"
	NodesGroup      = "system:nodes"
	BootstrapGroup  = "system:bootstrappers"
)

// Option changes what Build builds.
type Option func(*builder)

type builder struct {
	name       string
	created    time.Time
	cn         *string
	orgs       []string
	orgsSet    bool
	extraNames []pkix.AttributeTypeAndValue
	rawSubject []byte
	dns        []string
	ips        []net.IP
	emails     []string
	uris       []*url.URL
	extensions []pkix.Extension
	attributes []asn1.RawValue
	version    *int
	spki       []byte
	key        crypto.Signer
	sigAlg     x509.SignatureAlgorithm
	otherKey   bool
	corruptSig bool

	signer     string
	usages     []certificatesv1.KeyUsage
	username   *string
	groups     []string
	groupsSet  bool
	uid        string
	expiration *int32
	conditions []certificatesv1.CertificateSigningRequestCondition
	cert       []byte

	derMutators []func([]byte) []byte
	pemMutators []func([]byte) []byte
	request     []byte
	requestSet  bool
}

var seq atomic.Int64

// Build returns a CSR. With no options it is a valid renewal by node
// worker-1: CN system:node:worker-1, O system:nodes, an ECDSA P-256 key,
// usages digital signature and client auth, requested by
// system:node:worker-1 in groups system:nodes and system:authenticated,
// signer kubernetes.io/kube-apiserver-client-kubelet.
func Build(opts ...Option) *certificatesv1.CertificateSigningRequest {
	b := &builder{
		name:   fmt.Sprintf("csr-%d", seq.Add(1)),
		signer: certificatesv1.KubeAPIServerClientKubeletSignerName,
		usages: []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth},
	}
	for _, o := range opts {
		o(b)
	}
	cn := NodePrefix + DefaultNodeName
	if b.cn != nil {
		cn = *b.cn
	}
	username := cn
	if b.username != nil {
		username = *b.username
	}
	groups := []string{NodesGroup, "system:authenticated"}
	if b.groupsSet {
		groups = b.groups
	}

	req := b.request
	if !b.requestSet {
		req = b.pem(cn)
	}

	csr := &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: b.name, CreationTimestamp: metav1.NewTime(b.created)},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request:           req,
			SignerName:        b.signer,
			ExpirationSeconds: b.expiration,
			Usages:            b.usages,
			Username:          username,
			UID:               b.uid,
			Groups:            groups,
		},
		Status: certificatesv1.CertificateSigningRequestStatus{
			Conditions:  b.conditions,
			Certificate: b.cert,
		},
	}
	return csr
}

// Request returns just the PEM request Build would put in spec.request.
func Request(opts ...Option) []byte { return Build(opts...).Spec.Request }

func (b *builder) pem(cn string) []byte {
	key := b.key
	if key == nil {
		key = ECDSAKey(elliptic.P256())
	}
	orgs := []string{NodesGroup}
	if b.orgsSet {
		orgs = b.orgs
	}
	tmpl := &x509.CertificateRequest{
		Subject:            pkix.Name{CommonName: cn, Organization: orgs, ExtraNames: b.extraNames},
		RawSubject:         b.rawSubject,
		DNSNames:           b.dns,
		IPAddresses:        b.ips,
		EmailAddresses:     b.emails,
		URIs:               b.uris,
		ExtraExtensions:    b.extensions,
		SignatureAlgorithm: b.sigAlg,
	}
	if b.sigAlg == x509.SHA1WithRSA || b.sigAlg == x509.ECDSAWithSHA1 {
		// crypto/x509 no longer signs with SHA-1: sign with SHA-256 and
		// re-sign below.
		tmpl.SignatureAlgorithm = 0
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		panic(fmt.Sprintf("csrtest: create request: %v", err))
	}
	if b.attributes != nil || b.version != nil || b.spki != nil || b.otherKey || b.corruptSig || b.sigAlg == x509.SHA1WithRSA || b.sigAlg == x509.ECDSAWithSHA1 {
		der = b.resign(der, key)
	}
	for _, m := range b.derMutators {
		der = m(der)
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	for _, m := range b.pemMutators {
		out = m(out)
	}
	return out
}

type tbsRequest struct {
	Version       int
	Subject       asn1.RawValue
	PublicKey     asn1.RawValue
	RawAttributes []asn1.RawValue `asn1:"tag:0"`
}

type requestASN1 struct {
	TBS                asn1.RawValue
	SignatureAlgorithm pkix.AlgorithmIdentifier
	SignatureValue     asn1.BitString
}

var (
	oidSHA1WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 5}
	oidECDSAWithSHA1 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 1}
)

// resign rebuilds the request with the raw changes asked for (attributes,
// version) and signs it again: with another key, with SHA-1, or corrupted.
func (b *builder) resign(der []byte, key crypto.Signer) []byte {
	var r requestASN1
	if _, err := asn1.Unmarshal(der, &r); err != nil {
		panic(fmt.Sprintf("csrtest: parse request: %v", err))
	}
	var tbs tbsRequest
	if _, err := asn1.Unmarshal(r.TBS.FullBytes, &tbs); err != nil {
		panic(fmt.Sprintf("csrtest: parse request body: %v", err))
	}
	if b.version != nil {
		tbs.Version = *b.version
	}
	if b.spki != nil {
		tbs.PublicKey = asn1.RawValue{FullBytes: b.spki}
	}
	if b.attributes != nil {
		tbs.RawAttributes = append(tbs.RawAttributes, b.attributes...)
	}
	if tbs.RawAttributes == nil {
		tbs.RawAttributes = []asn1.RawValue{}
	}
	tbsDER, err := asn1.Marshal(tbs)
	if err != nil {
		panic(fmt.Sprintf("csrtest: marshal request body: %v", err))
	}

	signer := key
	if b.otherKey {
		signer = otherKeyLike(key)
	}
	hash := crypto.SHA256
	alg := r.SignatureAlgorithm
	switch b.sigAlg {
	case x509.SHA1WithRSA:
		hash, alg = crypto.SHA1, pkix.AlgorithmIdentifier{Algorithm: oidSHA1WithRSA, Parameters: asn1.NullRawValue}
	case x509.ECDSAWithSHA1:
		hash, alg = crypto.SHA1, pkix.AlgorithmIdentifier{Algorithm: oidECDSAWithSHA1}
	default:
		hash = hashFor(key, b.sigAlg)
	}
	digest := tbsDER
	if hash != 0 {
		h := hash.New()
		h.Write(tbsDER)
		digest = h.Sum(nil)
	}
	var opts crypto.SignerOpts = hash
	if b.sigAlg == x509.SHA256WithRSAPSS || b.sigAlg == x509.SHA384WithRSAPSS || b.sigAlg == x509.SHA512WithRSAPSS {
		opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: hash}
	}
	sig, err := signer.Sign(rand.Reader, digest, opts)
	if err != nil {
		panic(fmt.Sprintf("csrtest: sign: %v", err))
	}
	if b.corruptSig {
		sig[len(sig)/2] ^= 0x40
	}
	out, err := asn1.Marshal(struct {
		TBS                asn1.RawValue
		SignatureAlgorithm pkix.AlgorithmIdentifier
		SignatureValue     asn1.BitString
	}{asn1.RawValue{FullBytes: tbsDER}, alg, asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}})
	if err != nil {
		panic(fmt.Sprintf("csrtest: marshal request: %v", err))
	}
	return out
}

// hashFor is the hash crypto/x509 picks for key, or the one in alg.
func hashFor(key crypto.Signer, alg x509.SignatureAlgorithm) crypto.Hash {
	switch alg {
	case x509.SHA384WithRSA, x509.ECDSAWithSHA384, x509.SHA384WithRSAPSS:
		return crypto.SHA384
	case x509.SHA512WithRSA, x509.ECDSAWithSHA512, x509.SHA512WithRSAPSS:
		return crypto.SHA512
	case x509.SHA256WithRSA, x509.ECDSAWithSHA256, x509.SHA256WithRSAPSS:
		return crypto.SHA256
	}
	switch k := key.Public().(type) {
	case *ecdsa.PublicKey:
		switch k.Curve.Params().BitSize {
		case 384:
			return crypto.SHA384
		case 521:
			return crypto.SHA512
		}
		return crypto.SHA256
	case ed25519.PublicKey:
		return 0
	}
	return crypto.SHA256
}

// otherKeyLike returns a different cached key of the same kind.
func otherKeyLike(key crypto.Signer) crypto.Signer {
	switch k := key.Public().(type) {
	case *rsa.PublicKey:
		return cachedKey(fmt.Sprintf("rsa-%d-other", k.N.BitLen()), func() crypto.Signer { return genRSA(k.N.BitLen()) })
	case *ecdsa.PublicKey:
		c := k.Curve
		return cachedKey("ecdsa-"+c.Params().Name+"-other", func() crypto.Signer { return genECDSA(c) })
	case ed25519.PublicKey:
		return cachedKey("ed25519-other", genEd25519)
	}
	panic(fmt.Sprintf("csrtest: no other key for %T", key.Public()))
}

var (
	keyMu sync.Mutex
	keys  = map[string]crypto.Signer{}
)

func cachedKey(id string, gen func() crypto.Signer) crypto.Signer {
	keyMu.Lock()
	defer keyMu.Unlock()
	if k, ok := keys[id]; ok {
		return k
	}
	k := gen()
	keys[id] = k
	return k
}

// RSAKey returns the process's RSA key of the given size, generating it on
// first use (4096 bits take a second or so).
func RSAKey(bits int) crypto.Signer {
	return cachedKey(fmt.Sprintf("rsa-%d", bits), func() crypto.Signer { return genRSA(bits) })
}

// ECDSAKey returns the process's ECDSA key on curve.
func ECDSAKey(curve elliptic.Curve) crypto.Signer {
	return cachedKey("ecdsa-"+curve.Params().Name, func() crypto.Signer { return genECDSA(curve) })
}

// Ed25519Key returns the process's Ed25519 key.
func Ed25519Key() crypto.Signer { return cachedKey("ed25519", genEd25519) }

func genRSA(bits int) crypto.Signer {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		panic(fmt.Sprintf("csrtest: generate RSA-%d: %v", bits, err))
	}
	return k
}

func genECDSA(c elliptic.Curve) crypto.Signer {
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		panic(fmt.Sprintf("csrtest: generate ECDSA %s: %v", c.Params().Name, err))
	}
	return k
}

func genEd25519() crypto.Signer {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(fmt.Sprintf("csrtest: generate Ed25519: %v", err))
	}
	return k
}

// WithName sets metadata.name (default csr-<n>).
func WithName(name string) Option { return func(b *builder) { b.name = name } }

// WithCreationTimestamp sets metadata.creationTimestamp.
func WithCreationTimestamp(t time.Time) Option { return func(b *builder) { b.created = t } }

// WithNodeName sets the common name to system:node:<name>; the requester
// follows unless WithUsername or Bootstrap sets it.
func WithNodeName(name string) Option { return WithCN(NodePrefix + name) }

// WithCN sets the subject's common name; the requester follows unless
// WithUsername or Bootstrap sets it.
func WithCN(cn string) Option { return func(b *builder) { b.cn = &cn } }

// WithOrg replaces the subject's organizations (default system:nodes);
// none removes them.
func WithOrg(orgs ...string) Option {
	return func(b *builder) { b.orgs, b.orgsSet = orgs, true }
}

// WithSubjectAttribute adds an attribute to the subject (OU, C, ...).
func WithSubjectAttribute(oid asn1.ObjectIdentifier, value string) Option {
	return func(b *builder) {
		b.extraNames = append(b.extraNames, pkix.AttributeTypeAndValue{Type: oid, Value: value})
	}
}

// Subject attribute OIDs for WithSubjectAttribute and RDN.
var (
	OIDCommonName         = asn1.ObjectIdentifier{2, 5, 4, 3}
	OIDSerialNumber       = asn1.ObjectIdentifier{2, 5, 4, 5}
	OIDCountry            = asn1.ObjectIdentifier{2, 5, 4, 6}
	OIDLocality           = asn1.ObjectIdentifier{2, 5, 4, 7}
	OIDProvince           = asn1.ObjectIdentifier{2, 5, 4, 8}
	OIDOrganization       = asn1.ObjectIdentifier{2, 5, 4, 10}
	OIDOrganizationalUnit = asn1.ObjectIdentifier{2, 5, 4, 11}
	OIDEmailAddress       = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}
)

// ATV is one subject attribute for RawSubject.
func ATV(oid asn1.ObjectIdentifier, value any) pkix.AttributeTypeAndValue {
	return pkix.AttributeTypeAndValue{Type: oid, Value: value}
}

// RawSubject encodes a subject from RDNs given in order; an RDN with more
// than one attribute is multi-valued.
func RawSubject(rdns ...[]pkix.AttributeTypeAndValue) []byte {
	seq := make(pkix.RDNSequence, len(rdns))
	for i, r := range rdns {
		seq[i] = pkix.RelativeDistinguishedNameSET(r)
	}
	der, err := asn1.Marshal(seq)
	if err != nil {
		panic(fmt.Sprintf("csrtest: marshal subject: %v", err))
	}
	return der
}

// WithRawSubject sets the DER subject, overriding CN, O and attributes (the
// requester still follows WithCN/WithNodeName when given). Build it with
// RawSubject.
func WithRawSubject(der []byte) Option { return func(b *builder) { b.rawSubject = der } }

// WithDNSSAN adds DNS subject alternative names.
func WithDNSSAN(names ...string) Option {
	return func(b *builder) { b.dns = append(b.dns, names...) }
}

// WithIPSAN adds IP subject alternative names.
func WithIPSAN(ips ...string) Option {
	return func(b *builder) {
		for _, s := range ips {
			ip := net.ParseIP(s)
			if ip == nil {
				panic("csrtest: bad IP " + s)
			}
			b.ips = append(b.ips, ip)
		}
	}
}

// WithEmailSAN adds email subject alternative names.
func WithEmailSAN(emails ...string) Option {
	return func(b *builder) { b.emails = append(b.emails, emails...) }
}

// WithURISAN adds URI subject alternative names.
func WithURISAN(uris ...string) Option {
	return func(b *builder) {
		for _, s := range uris {
			u, err := url.Parse(s)
			if err != nil {
				panic("csrtest: bad URI " + s)
			}
			b.uris = append(b.uris, u)
		}
	}
}

// WithExtension adds a requested extension.
func WithExtension(ext pkix.Extension) Option {
	return func(b *builder) { b.extensions = append(b.extensions, ext) }
}

// WithAttribute adds a raw PKCS#10 attribute (not an extension request),
// e.g. challengePassword.
func WithAttribute(oid asn1.ObjectIdentifier, value any) Option {
	return func(b *builder) {
		v, err := asn1.Marshal(value)
		if err != nil {
			panic(fmt.Sprintf("csrtest: marshal attribute value: %v", err))
		}
		a, err := asn1.Marshal(struct {
			Type   asn1.ObjectIdentifier
			Values []asn1.RawValue `asn1:"set"`
		}{oid, []asn1.RawValue{{FullBytes: v}}})
		if err != nil {
			panic(fmt.Sprintf("csrtest: marshal attribute: %v", err))
		}
		b.attributes = append(b.attributes, asn1.RawValue{FullBytes: a})
	}
}

// OIDChallengePassword is the PKCS#9 challengePassword attribute.
var OIDChallengePassword = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 7}

// WithVersion sets the PKCS#10 version field (valid: 0).
func WithVersion(v int) Option { return func(b *builder) { b.version = &v } }

// WithSubjectPublicKeyInfo replaces the request's DER SubjectPublicKeyInfo
// (for keys crypto/x509 cannot make: DSA, unknown algorithms, exotic
// curves). The request is still signed with the builder's key, so its
// signature does not verify.
func WithSubjectPublicKeyInfo(der []byte) Option {
	return func(b *builder) { b.spki = der }
}

// WithKey sets the request's key (default: ECDSAKey(elliptic.P256())).
func WithKey(key crypto.Signer) Option { return func(b *builder) { b.key = key } }

// WithSignatureAlgorithm sets the signature algorithm; SHA1WithRSA and
// ECDSAWithSHA1 are produced although crypto/x509 no longer signs with them.
func WithSignatureAlgorithm(alg x509.SignatureAlgorithm) Option {
	return func(b *builder) { b.sigAlg = alg }
}

// SignedByOtherKey signs the request with a different key of the same kind
// than the one it holds: the signature does not verify.
func SignedByOtherKey() Option { return func(b *builder) { b.otherKey = true } }

// CorruptSignature flips a bit of the signature.
func CorruptSignature() Option { return func(b *builder) { b.corruptSig = true } }

// TrailingGarbage appends non-whitespace after the PEM block.
func TrailingGarbage() Option {
	return WithPEMMutator(func(p []byte) []byte { return append(p, []byte("garbage\n")...) })
}

// LeadingGarbage puts text before the PEM block.
func LeadingGarbage() Option {
	return WithPEMMutator(func(p []byte) []byte { return append([]byte("hello\n"), p...) })
}

// TwoBlocks appends a second copy of the PEM block.
func TwoBlocks() Option {
	return WithPEMMutator(func(p []byte) []byte { return append(p, p...) })
}

// TrailingDERBytes appends bytes inside the PEM block, after the DER.
func TrailingDERBytes() Option {
	return WithDERMutator(func(d []byte) []byte { return append(d, 0x00, 0x00) })
}

// WithPEMType re-encodes the PEM block with another type.
func WithPEMType(t string) Option {
	return WithPEMMutator(func(p []byte) []byte {
		blk, _ := pem.Decode(p)
		blk.Type = t
		return pem.EncodeToMemory(blk)
	})
}

// WithPEMHeaders re-encodes the PEM block with headers.
func WithPEMHeaders(h map[string]string) Option {
	return WithPEMMutator(func(p []byte) []byte {
		blk, _ := pem.Decode(p)
		blk.Headers = h
		return pem.EncodeToMemory(blk)
	})
}

// NotPEM puts the raw DER in spec.request.
func NotPEM() Option {
	return WithPEMMutator(func(p []byte) []byte {
		blk, _ := pem.Decode(p)
		return blk.Bytes
	})
}

// WithPEMMutator rewrites the PEM-encoded request.
func WithPEMMutator(f func([]byte) []byte) Option {
	return func(b *builder) { b.pemMutators = append(b.pemMutators, f) }
}

// WithDERMutator rewrites the DER request before PEM encoding.
func WithDERMutator(f func([]byte) []byte) Option {
	return func(b *builder) { b.derMutators = append(b.derMutators, f) }
}

// WithRequest sets spec.request verbatim; every option about the request
// itself is then ignored.
func WithRequest(req []byte) Option {
	return func(b *builder) { b.request, b.requestSet = bytes.Clone(req), true }
}

// WithSignerName sets spec.signerName.
func WithSignerName(s string) Option { return func(b *builder) { b.signer = s } }

// WithUsages sets spec.usages.
func WithUsages(u ...certificatesv1.KeyUsage) Option {
	return func(b *builder) { b.usages = u }
}

// KeyEnciphermentUsages are the usages older kubelets and many client-go
// requesters send.
func KeyEnciphermentUsages() []certificatesv1.KeyUsage {
	return []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageKeyEncipherment, certificatesv1.UsageClientAuth}
}

// WithUsername sets spec.username.
func WithUsername(u string) Option { return func(b *builder) { b.username = &u } }

// WithGroups sets spec.groups.
func WithGroups(g ...string) Option { return func(b *builder) { b.groups, b.groupsSet = g, true } }

// WithUID sets spec.uid.
func WithUID(uid string) Option { return func(b *builder) { b.uid = uid } }

// Bootstrap makes the requester the bootstrap token tokenID:
// system:bootstrap:<tokenID> in groups system:bootstrappers and
// system:authenticated.
func Bootstrap(tokenID string) Option {
	return func(b *builder) {
		u := "system:bootstrap:" + tokenID
		b.username = &u
		b.groups, b.groupsSet = []string{BootstrapGroup, "system:authenticated"}, true
	}
}

// WithExpiration sets spec.expirationSeconds.
func WithExpiration(seconds int32) Option {
	return func(b *builder) { b.expiration = &seconds }
}

// WithCondition adds a status condition of the given type (status True).
func WithCondition(t certificatesv1.RequestConditionType) Option {
	return func(b *builder) {
		b.conditions = append(b.conditions, certificatesv1.CertificateSigningRequestCondition{
			Type: t, Status: corev1.ConditionTrue, Reason: "Test", LastUpdateTime: metav1.Now(),
		})
	}
}

// WithCertificate sets status.certificate.
func WithCertificate(cert []byte) Option { return func(b *builder) { b.cert = cert } }

// ServingUsages are the usages a kubelet's serving CSR carries for an ECDSA
// key.
func ServingUsages() []certificatesv1.KeyUsage {
	return []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth}
}

// Serving makes the CSR a kubelet serving CSR (signer
// kubernetes.io/kubelet-serving, usages digital signature and server auth)
// with the given SANs: each one that parses as an IP is an IP SAN, the
// others DNS SANs. Options after it can still change the usages or signer.
func Serving(sans ...string) Option {
	return func(b *builder) {
		b.signer = certificatesv1.KubeletServingSignerName
		b.usages = ServingUsages()
		for _, s := range sans {
			if ip := net.ParseIP(s); ip != nil {
				b.ips = append(b.ips, ip)
			} else {
				b.dns = append(b.dns, s)
			}
		}
	}
}
