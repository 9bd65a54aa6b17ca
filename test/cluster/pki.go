package cluster

import "github.com/nodecsr/nodecsr/internal/testpki"

// CA is the test control plane's certificate authority (internal/testpki).
type CA = testpki.CA

// KeyPair is a certificate and its key, PEM-encoded (internal/testpki).
type KeyPair = testpki.KeyPair

// NewCA creates a self-signed ECDSA P-256 CA valid for a day.
func NewCA(commonName string) (*CA, error) { return testpki.NewCA(commonName) }
