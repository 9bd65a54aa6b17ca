package approver

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	certificatesv1 "k8s.io/api/certificates/v1"
	"k8s.io/utils/clock"
)

// ExpiryTracker remembers, for every node, the newest kubelet client
// certificate, and with serving the newest kubelet serving certificate,
// issued to it through a CSR nodecsr watches, and exports when they expire. It learns from the CSRs the API server still holds and, with the
// inventory on, from the NodeCertificate objects (ObserveCertificate), which
// outlive the CSRs: kube-controller-manager's CSR cleaner deletes issued
// CSRs after an hour, so without the inventory a restarted controller knows
// only the nodes that received a certificate since then.
type ExpiryTracker struct {
	// Horizon is how far ahead an expiry counts as coming soon.
	Horizon time.Duration
	Clock   clock.PassiveClock
	// Serving exports the serving certificates' counts even while none is
	// known (set when serving CSRs are decided).
	Serving bool

	mu    sync.Mutex
	nodes map[certKey]issuedCert
}

// certKey is a node's certificate of one signer.
type certKey struct {
	signer Signer
	node   string
}

type issuedCert struct {
	notBefore, notAfter time.Time
	csr                 string
}

var (
	expiryDesc = prometheus.NewDesc("nodecsr_node_certificate_expiry_timestamp_seconds",
		"When the newest kubelet certificate of the signer (client, serving) issued to the node through a CSR expires (Unix time).", []string{"node", "signer"}, nil)
	issuedDesc = prometheus.NewDesc("nodecsr_node_certificate_issued_timestamp_seconds",
		"When the newest kubelet certificate of the signer (client, serving) issued to the node became valid (Unix time).", []string{"node", "signer"}, nil)
	expiringDesc = prometheus.NewDesc("nodecsr_node_certificates_expiring",
		"Nodes whose newest kubelet certificate of the signer (client, serving) expires within the horizon (or has expired).", []string{"horizon", "signer"}, nil)
	trackedDesc = prometheus.NewDesc("nodecsr_node_certificates_tracked",
		"Nodes for which nodecsr knows the newest issued kubelet certificate of the signer (client, serving).", []string{"signer"}, nil)
)

// Observe records the certificate of an issued kubelet CSR. A certificate
// that is not newer than the one known for its node and signer changes
// nothing.
func (t *ExpiryTracker) Observe(csr *certificatesv1.CertificateSigningRequest) {
	signer := SignerOf(csr.Spec.SignerName)
	if signer&signersKubelet == 0 || len(csr.Status.Certificate) == 0 {
		return
	}
	block, _ := pem.Decode(csr.Status.Certificate)
	if block == nil || block.Type != "CERTIFICATE" {
		return
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return
	}
	node, ok := strings.CutPrefix(cert.Subject.CommonName, "system:node:")
	if !ok || node == "" {
		return
	}
	t.ObserveCertificate(signer, node, cert.NotBefore, cert.NotAfter, csr.Name)
}

// ObserveCertificate records a kubelet certificate of node (signer
// SignerClient or SignerServing) known from elsewhere than a CSR (the
// inventory, which outlives the CSRs). A certificate that is not newer than
// the one known for the node and signer changes nothing.
func (t *ExpiryTracker) ObserveCertificate(signer Signer, node string, notBefore, notAfter time.Time, csr string) {
	if signer != SignerClient && signer != SignerServing {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.nodes == nil {
		t.nodes = map[certKey]issuedCert{}
	}
	k := certKey{signer: signer, node: node}
	if known, ok := t.nodes[k]; ok && !newerCert(notBefore, notAfter, known) {
		return
	}
	t.nodes[k] = issuedCert{notBefore: notBefore, notAfter: notAfter, csr: csr}
}

// newerCert orders certificates by NotBefore, then NotAfter.
func newerCert(notBefore, notAfter time.Time, known issuedCert) bool {
	if !notBefore.Equal(known.notBefore) {
		return notBefore.After(known.notBefore)
	}
	return notAfter.After(known.notAfter)
}

// ObserveUpdate records a CSR update when its certificate changed.
func (t *ExpiryTracker) ObserveUpdate(old, csr *certificatesv1.CertificateSigningRequest) {
	if old != nil && bytes.Equal(old.Status.Certificate, csr.Status.Certificate) {
		return
	}
	t.Observe(csr)
}

// Forget drops a node's certificates (its Node object was deleted).
func (t *ExpiryTracker) Forget(node string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.nodes, certKey{signer: SignerClient, node: node})
	delete(t.nodes, certKey{signer: SignerServing, node: node})
}

// Describe implements prometheus.Collector.
func (t *ExpiryTracker) Describe(ch chan<- *prometheus.Desc) {
	ch <- expiryDesc
	ch <- issuedDesc
	ch <- expiringDesc
	ch <- trackedDesc
}

// Collect implements prometheus.Collector.
func (t *ExpiryTracker) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	if t.Clock != nil {
		now = t.Clock.Now()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	expiring, tracked := map[Signer]int{}, map[Signer]int{}
	for k, c := range t.nodes {
		signer := k.signer.String()
		ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue, float64(c.notAfter.Unix()), k.node, signer)
		ch <- prometheus.MustNewConstMetric(issuedDesc, prometheus.GaugeValue, float64(c.notBefore.Unix()), k.node, signer)
		tracked[k.signer]++
		if c.notAfter.Sub(now) < t.Horizon {
			expiring[k.signer]++
		}
	}
	for _, s := range []Signer{SignerClient, SignerServing} {
		if s&signersFor(t.Serving) == 0 && tracked[s] == 0 {
			continue
		}
		ch <- prometheus.MustNewConstMetric(expiringDesc, prometheus.GaugeValue, float64(expiring[s]), t.Horizon.String(), s.String())
		ch <- prometheus.MustNewConstMetric(trackedDesc, prometheus.GaugeValue, float64(tracked[s]), s.String())
	}
}

// Expiry returns the NotAfter of the newest certificate of signer known for
// node.
func (t *ExpiryTracker) Expiry(signer Signer, node string) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, ok := t.nodes[certKey{signer: signer, node: node}]
	return c.notAfter, ok
}
