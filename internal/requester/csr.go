package requester

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base32"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"

	certificatesv1 "k8s.io/api/certificates/v1"
	certutil "k8s.io/client-go/util/cert"
)

const (
	// SignerName is the signer of kubelet client certificates.
	SignerName = certificatesv1.KubeAPIServerClientKubeletSignerName
	// NodeUserPrefix prefixes the node name in the certificate's common name.
	NodeUserPrefix = "system:node:"
	// NodesGroup is the certificate's organization.
	NodesGroup = "system:nodes"
	// csrNamePrefix is the prefix of every CSR name nodecsr-request files, as kubelet's.
	csrNamePrefix = "node-csr-"
)

// GenerateKey generates a private key of the given algorithm.
func GenerateKey(alg KeyAlgorithm) (crypto.Signer, error) {
	switch alg {
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	case RSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	}
	return nil, fmt.Errorf("unknown key algorithm %q", alg)
}

// AlgorithmOf names the algorithm of a public key, "" for one this program
// would not generate.
func AlgorithmOf(pub crypto.PublicKey) KeyAlgorithm {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return ECDSAP256
		case elliptic.P384():
			return ECDSAP384
		}
	case *rsa.PublicKey:
		switch k.N.BitLen() {
		case 2048:
			return RSA2048
		case 3072:
			return RSA3072
		case 4096:
			return RSA4096
		}
	}
	return ""
}

// Subject is the subject of a kubelet client certificate for the node.
func Subject(nodeName string) pkix.Name {
	return pkix.Name{CommonName: NodeUserPrefix + nodeName, Organization: []string{NodesGroup}}
}

// Usages are the key usages a kubelet requests for its client certificate:
// digital signature and client auth, plus key encipherment for RSA keys.
func Usages(pub crypto.PublicKey) []certificatesv1.KeyUsage {
	usages := []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}
	if _, ok := pub.(*rsa.PublicKey); ok {
		usages = append(usages, certificatesv1.UsageKeyEncipherment)
	}
	return usages
}

// Request is one kubelet client certificate request: the PEM-encoded
// x509 request and the fields of the CSR object.
type Request struct {
	// Name is the CSR object's name, derived from the key and subject.
	Name string
	// PEM is the x509 certificate request (spec.request).
	PEM []byte
	// Usages is spec.usages.
	Usages []certificatesv1.KeyUsage
}

// NewRequest builds the CSR a kubelet sends for its client certificate:
// CN=system:node:<name>, O=system:nodes, no SANs, kubelet's usages, signed
// with key.
func NewRequest(key crypto.Signer, nodeName string) (*Request, error) {
	subject := Subject(nodeName)
	usages := Usages(key.Public())
	der, err := certutil.MakeCSR(key, &subject, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("failed to create certificate request: %w", err)
	}
	name, err := CSRName(key.Public(), subject, usages)
	if err != nil {
		return nil, err
	}
	return &Request{Name: name, PEM: der, Usages: usages}, nil
}

// CSRName derives the CSR object name from the public key, subject and
// usages, so that a run that is interrupted and started again with the same
// pending key finds its own CSR instead of filing a second one. It is
// "node-csr-" and the unpadded lower-case base32 of a SHA-256 over the
// inputs: 61 characters, a valid DNS label.
func CSRName(pub crypto.PublicKey, subject pkix.Name, usages []certificatesv1.KeyUsage) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("failed to marshal public key: %w", err)
	}
	h := sha256.New()
	// Each field is base64-encoded and ended by '|', which base64 never
	// produces, so different field splits cannot hash the same stream.
	write := func(b []byte) {
		h.Write([]byte(base64.RawStdEncoding.EncodeToString(b)))
		h.Write([]byte{'|'})
	}
	write(der)
	write([]byte(subject.CommonName))
	write([]byte(strconv.Itoa(len(subject.Organization))))
	for _, o := range subject.Organization {
		write([]byte(o))
	}
	for _, u := range usages {
		write([]byte(u))
	}
	enc := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(h.Sum(nil))
	return csrNamePrefix + strings.ToLower(enc), nil
}
