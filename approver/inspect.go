package approver

import (
	"crypto/dsa" //nolint:staticcheck // only to recognise and refuse DSA keys
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
	"sync"

	certificatesv1 "k8s.io/api/certificates/v1"
	"k8s.io/apiserver/pkg/authentication/user"

	"github.com/nodecsr/nodecsr/config"
)

// Request is a CSR inspected once: its PEM and PKCS#10 structure parsed, its
// key, subject, SANs, extensions and usages read, the node name and the
// request path found. The webhook, the reconciler and explain all start from
// one; the rules only read it. The signature is verified at most once, the
// first time a rule asks (SignatureError).
type Request struct {
	// CSR is the request as stored. It is not modified.
	CSR *certificatesv1.CertificateSigningRequest

	// TooLarge: spec.request exceeds keys.maxRequestBytes; nothing was
	// parsed.
	TooLarge bool
	// ParseError says why spec.request did not parse ("" when it did).
	ParseError string

	req *request // nil when the request did not parse

	// CommonName is the subject's common name as the signer reads it.
	CommonName string
	// NodeName is the name after system:node:, set only when it is a valid
	// DNS-1123 subdomain.
	NodeName string
	// Path is how the requester is recognised.
	Path Path
	// BootstrapBy says what made the requester a bootstrapper: the group
	// that matched, or "user <name>".
	BootstrapBy string
	// KeyAlgorithm describes the public key (ECDSA-P256, RSA-2048, Ed25519,
	// DSA, X25519, ECDSA-unknown, Unknown); empty when nothing parsed.
	KeyAlgorithm string
	// PublicKeySHA256 is the hex SHA-256 of the DER SubjectPublicKeyInfo.
	PublicKeySHA256 string

	sigOnce sync.Once
	sigErr  error
}

// Inspect parses a CSR for policy p. It is pure and never panics; whatever
// does not parse is recorded for the rules to report.
func Inspect(p *config.Effective, csr *certificatesv1.CertificateSigningRequest) *Request {
	r := &Request{CSR: csr}
	raw := csr.Spec.Request
	switch {
	case len(raw) > p.Keys.MaxRequestBytes:
		r.TooLarge = true
	case len(raw) == 0:
		r.ParseError = "spec.request is empty"
	default:
		req, err := parseRequest(raw)
		if err != nil {
			r.ParseError = err.Error()
			break
		}
		r.req = req
		r.CommonName, _ = commonName(req.rdns)
		sum := sha256.Sum256(req.tbs.PublicKey.Raw)
		r.PublicKeySHA256 = hex.EncodeToString(sum[:])
		r.KeyAlgorithm = keyAlgorithm(req)
		if name, ok := strings.CutPrefix(r.CommonName, nodeUserPrefix); ok && validNodeName(name) {
			r.NodeName = name
		}
	}
	r.Path, r.BootstrapBy = classify(p, csr.Spec.Username, csr.Spec.Groups, r.CommonName, r.req != nil)
	return r
}

// x509Parsed reports whether crypto/x509 parsed the request.
func (r *Request) x509Parsed() bool { return r.req != nil && r.req.cr != nil }

// SignatureError verifies the request's signature with its own public key,
// once; later calls return the first answer.
func (r *Request) SignatureError() error {
	r.sigOnce.Do(func() { r.sigErr = r.req.cr.CheckSignature() })
	return r.sigErr
}

// classify recognises the requester. For a system:node: user it needs the
// common name (known); it returns what made a bootstrapper one.
func classify(p *config.Effective, username string, groups []string, cn string, known bool) (Path, string) {
	if strings.HasPrefix(username, nodeUserPrefix) {
		if known && username == cn {
			return PathRenewal, ""
		}
		return PathUnknown, ""
	}
	for _, g := range groups {
		if p.IsBootstrapGroup(g) {
			return PathBootstrap, "group " + g
		}
	}
	if p.IsBootstrapUser(username) {
		return PathBootstrap, "user " + username
	}
	return PathUnknown, ""
}

func keyAlgorithm(req *request) string {
	if req.cr == nil {
		return "ECDSA-unknown"
	}
	switch pub := req.cr.PublicKey.(type) {
	case *rsa.PublicKey:
		return "RSA-" + strconv.Itoa(pub.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA-" + strings.ReplaceAll(pub.Curve.Params().Name, "-", "")
	case ed25519.PublicKey:
		return "Ed25519"
	case *dsa.PublicKey:
		return "DSA"
	case *ecdh.PublicKey:
		return "X25519"
	}
	if name, ok := keyAlgorithmNames[req.tbs.PublicKey.Algorithm.Algorithm.String()]; ok {
		return name
	}
	return "Unknown"
}

// keyAlgorithmNames names key algorithms crypto/x509 does not parse.
var keyAlgorithmNames = map[string]string{
	"1.3.101.110": "X25519",
	"1.3.101.111": "X448",
	"1.3.101.113": "Ed448",
}

// nodesGroup is the organization of every kubelet client certificate.
const nodesGroup = user.NodesGroup
