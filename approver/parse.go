package approver

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	certificatesv1 "k8s.io/api/certificates/v1"

	"github.com/nodecsr/nodecsr/config"
)

const (
	pemTypeCSR     = "CERTIFICATE REQUEST"
	nodeUserPrefix = "system:node:"
	maxNodeNameLen = 253
)

var (
	oidCommonName       = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidOrganization     = asn1.ObjectIdentifier{2, 5, 4, 10}
	oidExtensionRequest = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 14}
	oidExtensionSAN     = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidPublicKeyECDSA   = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}

	pemBegin = []byte("-----BEGIN ")
	pemEnd   = []byte("-----END ")
)

// namedCurves are the curve OIDs crypto/x509 understands.
var namedCurves = map[string]bool{
	"1.3.132.0.33":        true, // P-224
	"1.2.840.10045.3.1.7": true, // P-256
	"1.3.132.0.34":        true, // P-384
	"1.3.132.0.35":        true, // P-521
}

// tbsRequest is the part of a PKCS#10 request that crypto/x509 does not
// expose in full: the version, the attributes and the key's algorithm.
type tbsRequest struct {
	Raw           asn1.RawContent
	Version       int
	Subject       asn1.RawValue
	PublicKey     subjectPublicKeyInfo
	RawAttributes []asn1.RawValue `asn1:"tag:0"`
}

type subjectPublicKeyInfo struct {
	Raw       asn1.RawContent
	Algorithm pkix.AlgorithmIdentifier
	PublicKey asn1.BitString
}

type requestASN1 struct {
	TBS                tbsRequest
	SignatureAlgorithm pkix.AlgorithmIdentifier
	SignatureValue     asn1.BitString
}

type attribute struct {
	Type   asn1.ObjectIdentifier
	Values asn1.RawValue `asn1:"set"`
}

// request is a parsed spec.request.
type request struct {
	tbs *tbsRequest
	// cr is nil when crypto/x509 could not parse the request although its
	// structure is sound; unsupportedCurve then says why.
	cr               *x509.CertificateRequest
	unsupportedCurve string
	rdns             pkix.RDNSequence
}

// decodePEM returns the DER of the one PEM block in data, which must be of
// type CERTIFICATE REQUEST, without headers, with nothing but whitespace
// around it.
func decodePEM(data []byte) ([]byte, error) {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if !bytes.HasPrefix(trimmed, pemBegin) {
		return nil, errors.New("spec.request is not PEM-encoded (it must start with -----BEGIN CERTIFICATE REQUEST-----)")
	}
	// pem.Decode skips a block it cannot decode and returns a later one:
	// insist on exactly one BEGIN and one END so nothing hides.
	if bytes.Count(trimmed, pemBegin) != 1 || bytes.Count(trimmed, pemEnd) != 1 {
		return nil, errors.New("spec.request must hold exactly one PEM block")
	}
	block, rest := pem.Decode(trimmed)
	if block == nil {
		return nil, errors.New("spec.request holds a damaged PEM block")
	}
	if len(bytes.TrimLeft(rest, " \t\r\n")) != 0 {
		return nil, errors.New("spec.request has data after the PEM block")
	}
	if block.Type != pemTypeCSR {
		return nil, fmt.Errorf("PEM block type is %s, want %q", quote(block.Type), pemTypeCSR)
	}
	if len(block.Headers) != 0 {
		return nil, errors.New("PEM block has headers; a certificate request has none")
	}
	return block.Bytes, nil
}

// parseTBS parses the DER request structure without crypto/x509, so that
// the version, attributes and key algorithm are known even when x509 fails.
func parseTBS(der []byte) (*tbsRequest, error) {
	var r requestASN1
	rest, err := asn1.Unmarshal(der, &r)
	if err != nil {
		return nil, fmt.Errorf("not a PKCS#10 request: %s", truncate(err.Error()))
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%d bytes of trailing data after the request", len(rest))
	}
	return &r.TBS, nil
}

// parseRequest parses a PEM request fully. It never verifies the signature.
// When crypto/x509 cannot parse a structurally sound request because of its
// key's curve, it returns the request with cr nil and unsupportedCurve set.
func parseRequest(pemBytes []byte) (*request, error) {
	der, err := decodePEM(pemBytes)
	if err != nil {
		return nil, err
	}
	tbs, err := parseTBS(der)
	if err != nil {
		return nil, err
	}
	req := &request{tbs: tbs}
	if rest, err := asn1.Unmarshal(tbs.Subject.FullBytes, &req.rdns); err != nil || len(rest) != 0 {
		return nil, errors.New("the subject is not a valid distinguished name")
	}
	cr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		if oid, ok := unsupportedCurve(tbs); ok {
			req.unsupportedCurve = oid
			return req, nil
		}
		return nil, fmt.Errorf("not a valid certificate request: %s", truncate(err.Error()))
	}
	req.cr = cr
	return req, nil
}

// unsupportedCurve reports an ECDSA key on a curve crypto/x509 does not
// know (secp256k1, brainpool, ...), with the curve's OID.
func unsupportedCurve(tbs *tbsRequest) (string, bool) {
	alg := tbs.PublicKey.Algorithm
	if !alg.Algorithm.Equal(oidPublicKeyECDSA) {
		return "", false
	}
	var curve asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(alg.Parameters.FullBytes, &curve); err != nil || len(rest) != 0 {
		return "", false
	}
	if namedCurves[curve.String()] {
		return "", false
	}
	return curve.String(), true
}

// commonName returns the subject's common name as crypto/x509, and so the
// signer, reads it: the last common name whose value is a string.
func commonName(rdns pkix.RDNSequence) (string, bool) {
	cn, ok := "", false
	for _, rdn := range rdns {
		for _, atv := range rdn {
			if !atv.Type.Equal(oidCommonName) {
				continue
			}
			if v, isString := atv.Value.(string); isString {
				cn, ok = v, true
			}
		}
	}
	return cn, ok
}

// NodeNameOf extracts the node name from a CSR's common name
// (system:node:<name>) without verifying anything else, for indexing pending
// CSRs by node. It returns false for a request larger than
// config.MaxMaxRequestBytes (the largest any policy accepts), one that does
// not parse, or a name that is not a valid DNS-1123 subdomain. It does not
// look at the signer. It never panics.
func NodeNameOf(csr *certificatesv1.CertificateSigningRequest) (string, bool) {
	if csr == nil {
		return "", false
	}
	return nodeNameOf(csr.Spec.Request, config.MaxMaxRequestBytes)
}

func nodeNameOf(pemBytes []byte, maxBytes int) (string, bool) {
	cn, ok := commonNameOf(pemBytes, maxBytes)
	if !ok {
		return "", false
	}
	name, ok := strings.CutPrefix(cn, nodeUserPrefix)
	if !ok || !validNodeName(name) {
		return "", false
	}
	return name, true
}

// commonNameOf reads the subject's common name without crypto/x509: no key
// parsing, no signature.
func commonNameOf(pemBytes []byte, maxBytes int) (string, bool) {
	if len(pemBytes) == 0 || len(pemBytes) > maxBytes {
		return "", false
	}
	der, err := decodePEM(pemBytes)
	if err != nil {
		return "", false
	}
	tbs, err := parseTBS(der)
	if err != nil {
		return "", false
	}
	var rdns pkix.RDNSequence
	if rest, err := asn1.Unmarshal(tbs.Subject.FullBytes, &rdns); err != nil || len(rest) != 0 {
		return "", false
	}
	return commonName(rdns)
}
