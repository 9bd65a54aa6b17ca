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
// certificate issued to it through a CSR nodecsr watches, and exports when it
// expires. It learns from the CSRs the API server still holds and, with the
// inventory on, from the NodeCertificate objects (ObserveCertificate), which
// outlive the CSRs: kube-controller-manager's CSR cleaner deletes issued
// CSRs after an hour, so without the inventory a restarted controller knows
// only the nodes that received a certificate since then.
type ExpiryTracker struct {
	// Horizon is how far ahead an expiry counts as coming soon.
	Horizon time.Duration
	Clock   clock.PassiveClock

	mu    sync.Mutex
	nodes map[string]issuedCert
}

type issuedCert struct {
	notBefore, notAfter time.Time
	csr                 string
}

var (
	expiryDesc = prometheus.NewDesc("nodecsr_node_certificate_expiry_timestamp_seconds",
		"When the newest kubelet client certificate issued to the node through a CSR expires (Unix time).", []string{"node"}, nil)
	issuedDesc = prometheus.NewDesc("nodecsr_node_certificate_issued_timestamp_seconds",
		"When the newest kubelet client certificate issued to the node became valid (Unix time).", []string{"node"}, nil)
	expiringDesc = prometheus.NewDesc("nodecsr_node_certificates_expiring",
		"Nodes whose newest kubelet client certificate expires within the horizon (or has expired).", []string{"horizon"}, nil)
	trackedDesc = prometheus.NewDesc("nodecsr_node_certificates_tracked",
		"Nodes for which nodecsr knows the newest issued kubelet client certificate.", nil, nil)
)

// Observe records the certificate of an issued CSR. A certificate that is
// not newer than the one known for its node changes nothing.
func (t *ExpiryTracker) Observe(csr *certificatesv1.CertificateSigningRequest) {
	if csr.Spec.SignerName != KubeletClientSigner || len(csr.Status.Certificate) == 0 {
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
	t.ObserveCertificate(node, cert.NotBefore, cert.NotAfter, csr.Name)
}

// ObserveCertificate records a kubelet client certificate of node known from
// elsewhere than a CSR (the inventory, which outlives the CSRs). A
// certificate that is not newer than the one known for the node changes
// nothing.
func (t *ExpiryTracker) ObserveCertificate(node string, notBefore, notAfter time.Time, csr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.nodes == nil {
		t.nodes = map[string]issuedCert{}
	}
	if known, ok := t.nodes[node]; ok && !newerCert(notBefore, notAfter, known) {
		return
	}
	t.nodes[node] = issuedCert{notBefore: notBefore, notAfter: notAfter, csr: csr}
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

// Forget drops a node (its Node object was deleted).
func (t *ExpiryTracker) Forget(node string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.nodes, node)
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
	expiring := 0
	for node, c := range t.nodes {
		ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue, float64(c.notAfter.Unix()), node)
		ch <- prometheus.MustNewConstMetric(issuedDesc, prometheus.GaugeValue, float64(c.notBefore.Unix()), node)
		if c.notAfter.Sub(now) < t.Horizon {
			expiring++
		}
	}
	ch <- prometheus.MustNewConstMetric(expiringDesc, prometheus.GaugeValue, float64(expiring), t.Horizon.String())
	ch <- prometheus.MustNewConstMetric(trackedDesc, prometheus.GaugeValue, float64(len(t.nodes)))
}

// Expiry returns the NotAfter of the newest certificate known for node.
func (t *ExpiryTracker) Expiry(node string) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, ok := t.nodes[node]
	return c.notAfter, ok
}
