package approver

import (
	"crypto/dsa" //nolint:staticcheck // only to recognise and refuse DSA keys
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
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
	// policy is the policy the request was inspected for.
	policy *config.Effective

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
	// Signer is the kind of certificate asked for (spec.signerName).
	Signer Signer
	// Subresource is the certificatesigningrequests subresource the
	// SubjectAccessReview checks for the path ("" for none).
	Subresource string
	// DNSNames and IPAddresses are the DNS and IP SANs, as crypto/x509
	// (and so the signer) reads them.
	DNSNames    []string
	IPAddresses []netip.Addr

	sigOnce sync.Once
	sigErr  error
}

// Inspect parses a CSR for policy p. It is pure and never panics; whatever
// does not parse is recorded for the rules to report.
func Inspect(p *config.Effective, csr *certificatesv1.CertificateSigningRequest) *Request {
	r := &Request{CSR: csr, Signer: SignerOf(csr.Spec.SignerName), policy: p}
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
		if req.cr != nil {
			r.DNSNames = req.cr.DNSNames
			for _, ip := range req.cr.IPAddresses {
				if a, ok := netip.AddrFromSlice(ip); ok {
					r.IPAddresses = append(r.IPAddresses, a.Unmap())
				}
			}
		}
	}
	r.Path, r.BootstrapBy = classify(p, csr.Spec.Username, csr.Spec.Groups, r.CommonName, r.req != nil)
	switch {
	case r.Signer == SignerServing && r.Path == PathRenewal:
		r.Path, r.Subresource = PathServing, p.Serving.Subresource
	case r.Signer == SignerServing:
		// A bootstrapper has no serving path; nothing to authorize.
	default:
		r.Subresource = SubresourceFor(r.Path)
	}
	return r
}

// SANKeys are the requested SANs as the Node address index keys them
// (NodeAddressKey): IPs in canonical form, DNS names in lower case, each once.
func (r *Request) SANKeys() []string {
	keys := make([]string, 0, len(r.IPAddresses)+len(r.DNSNames))
	seen := make(map[string]bool, cap(keys))
	add := func(k string) {
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	for _, ip := range r.IPAddresses {
		add(ip.String())
	}
	for _, n := range r.DNSNames {
		add(NodeAddressKey(n))
	}
	return keys
}

// NodeAddressKey is how an address of a Node is indexed, and how a SAN is
// looked up: an IP in canonical form, anything else in lower case.
func NodeAddressKey(address string) string {
	if ip, err := netip.ParseAddr(address); err == nil {
		return ip.Unmap().String()
	}
	return strings.ToLower(address)
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
