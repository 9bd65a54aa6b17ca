package env

import (
	"crypto/x509"
	"encoding/pem"
	"testing"
)

// ParseCert parses the first PEM block of certPEM as a certificate.
func ParseCert(t testing.TB, certPEM []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("no PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// ParseRequest parses the first PEM block of reqPEM (a CSR's
// spec.request) as a certificate request.
func ParseRequest(t testing.TB, reqPEM []byte) *x509.CertificateRequest {
	t.Helper()
	block, _ := pem.Decode(reqPEM)
	if block == nil {
		t.Fatal("no PEM certificate request")
	}
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return req
}
