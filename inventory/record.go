// Package inventory keeps the NodeCertificate inventory: one object per
// node, named after it, whose status holds the newest kubelet client and
// serving certificates issued to the node through a CSR. The leader writes
// it from the CSR informer, off the approval path (coalesced per node);
// every replica reads it back into the expiry metrics, so they survive
// restarts and failovers long after kube-controller-manager's cleaner
// deleted the CSRs.
package inventory

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nodecsrv1alpha1 "github.com/nodecsr/nodecsr/api/v1alpha1"
)

// Signers whose issued certificates the inventory records.
const (
	ClientSigner  = certificatesv1.KubeAPIServerClientKubeletSignerName
	ServingSigner = certificatesv1.KubeletServingSignerName
)

// nodePrefix is the CN prefix (and the username prefix) of a node.
const nodePrefix = "system:node:"

// Kind is the kind of a kubelet certificate.
type Kind int

// Kinds of kubelet certificates.
const (
	KindClient Kind = iota
	KindServing
)

func (k Kind) String() string {
	if k == KindServing {
		return "serving"
	}
	return "client"
}

// The kubelet's certificate manager renews at a random point between 70%
// and 90% of the certificate's lifetime (client-go
// util/certificate.nextRotationDeadline: jitter 0.2 over 0.7 of it).
// Fractions in tenths, so that the arithmetic is exact.
const (
	renewAfterTenths  = 7
	renewBeforeTenths = 9
)

// errNotOurs marks a CSR the inventory does not record.
var errNotOurs = errors.New("not an issued kubelet certificate")

// Observed is an issued kubelet certificate read from its CSR.
type Observed struct {
	Node   string
	Kind   Kind
	Record nodecsrv1alpha1.CertificateRecord
	// Requested is the CSR's creation time (LastRenewal of a client
	// certificate).
	Requested metav1.Time
}

// FromCSR reads the issued certificate of a kubelet client or serving CSR.
// A CSR of another signer or without a certificate is errNotOurs; a
// certificate that does not parse or does not name a node is an error.
func FromCSR(csr *certificatesv1.CertificateSigningRequest, now time.Time) (*Observed, error) {
	var kind Kind
	switch csr.Spec.SignerName {
	case ClientSigner:
		kind = KindClient
	case ServingSigner:
		kind = KindServing
	default:
		return nil, errNotOurs
	}
	if len(csr.Status.Certificate) == 0 {
		return nil, errNotOurs
	}
	cert, err := leafCertificate(csr.Status.Certificate)
	if err != nil {
		return nil, fmt.Errorf("failed to read the certificate of CSR %q: %w", csr.Name, err)
	}
	node, ok := strings.CutPrefix(cert.Subject.CommonName, nodePrefix)
	if !ok || node == "" {
		return nil, fmt.Errorf("the certificate of CSR %q has CN %q, not %s<node>", csr.Name, cert.Subject.CommonName, nodePrefix)
	}
	path := nodecsrv1alpha1.PathBootstrap
	if csr.Spec.Username == nodePrefix+node {
		path = nodecsrv1alpha1.PathRenewal
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	notBefore, notAfter := cert.NotBefore.UTC(), cert.NotAfter.UTC()
	life := notAfter.Sub(notBefore)
	return &Observed{
		Node: node,
		Kind: kind,
		Record: nodecsrv1alpha1.CertificateRecord{
			SignerName:      csr.Spec.SignerName,
			SerialNumber:    strings.ToUpper(cert.SerialNumber.Text(16)),
			NotBefore:       metav1.NewTime(notBefore),
			NotAfter:        metav1.NewTime(notAfter),
			RenewAfter:      metav1.NewTime(notBefore.Add(life * renewAfterTenths / 10).Truncate(time.Second)),
			RenewBefore:     metav1.NewTime(notBefore.Add(life * renewBeforeTenths / 10).Truncate(time.Second)),
			PublicKeySHA256: hex.EncodeToString(sum[:]),
			CSRName:         csr.Name,
			Path:            path,
			Requester:       csr.Spec.Username,
			ObservedTime:    metav1.NewTime(now.UTC().Truncate(time.Second)),
		},
		Requested: metav1.NewTime(csr.CreationTimestamp.UTC()),
	}, nil
}

// leafCertificate is the first certificate of a PEM bundle.
func leafCertificate(data []byte) (*x509.Certificate, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM CERTIFICATE block")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

// Newer reports whether a is a newer certificate than b: a later NotBefore,
// or the same NotBefore and a later NotAfter (as approver.ExpiryTracker
// orders them); for another certificate of the same validity, a renewal
// beats a bootstrap, then the later observed wins. A nil b is older than
// anything.
func Newer(a, b *nodecsrv1alpha1.CertificateRecord) bool {
	if b == nil {
		return a != nil
	}
	if a == nil {
		return false
	}
	if !a.NotBefore.Equal(&b.NotBefore) {
		return a.NotBefore.After(b.NotBefore.Time)
	}
	if !a.NotAfter.Equal(&b.NotAfter) {
		return a.NotAfter.After(b.NotAfter.Time)
	}
	if a.SerialNumber == b.SerialNumber {
		return false
	}
	// Two certificates issued within one second (the validity's
	// resolution), as when a node bootstraps and at once renews: a renewal
	// is authenticated by an earlier certificate, so it is the newer; else
	// the one seen later.
	if ar, br := a.Path == nodecsrv1alpha1.PathRenewal, b.Path == nodecsrv1alpha1.PathRenewal; ar != br {
		return ar
	}
	return a.ObservedTime.After(b.ObservedTime.Time)
}

// Residual is a certificate's time left as kubeadm certs check-expiration
// prints it, at a granularity that keeps the inventory's writes low: whole
// years beyond two years, whole days beyond two days ("364d"), whole hours
// beyond an hour ("47h"), then "<1h", then "expired". next is when the value
// changes (zero once expired).
func Residual(notAfter, now time.Time) (s string, next time.Time) {
	const day, year = 24 * time.Hour, 365 * 24 * time.Hour
	left := notAfter.Sub(now)
	step := func(unit time.Duration, suffix string) (string, time.Time) {
		n := left / unit
		// The value drops once less than n units are left.
		return fmt.Sprintf("%d%s", n, suffix), notAfter.Add(-n*unit + time.Second)
	}
	switch {
	case left <= 0:
		return "expired", time.Time{}
	case left >= 2*year:
		return step(year, "y")
	case left >= 2*day:
		return step(day, "d")
	case left >= time.Hour:
		return step(time.Hour, "h")
	default:
		return "<1h", notAfter
	}
}
