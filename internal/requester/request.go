package requester

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/certificate/csr"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// Requester obtains and renews the node's kubelet client certificate.
type Requester struct {
	opts  *Options
	store *Store
	clock clock.Clock
	// jitter returns a uniformly random number in [0, 1).
	jitter func() float64
	// out receives one line per issued certificate.
	out io.Writer
}

// NewRequester returns a Requester for validated, completed options.
func NewRequester(o *Options, clk clock.Clock, jitter func() float64, out io.Writer) *Requester {
	return &Requester{opts: o, store: NewStore(o.CertDir, clk.Now), clock: clk, jitter: jitter, out: out}
}

// Issued describes one issued certificate.
type Issued struct {
	// CSR is the name of the CertificateSigningRequest.
	CSR string
	// Credentials says what the request authenticated with.
	Credentials CredentialSource
	// Pair is the stored certificate and key.
	Pair *Pair
}

// getTimeout bounds the lookups made after a wait ended, to explain why.
const getTimeout = 10 * time.Second

// RequestOnce requests a new certificate, waits until it is issued (at most
// --timeout) and stores it. The private key is written to the pending key
// file before the CSR is created and the CSR is named after the key, so a run
// that is interrupted and started again finds its own CSR.
func (r *Requester) RequestOnce(ctx context.Context) (*Issued, error) {
	logger := klog.FromContext(ctx).WithValues("node", r.opts.NodeName)
	ctx = klog.NewContext(ctx, logger)
	if err := r.store.Recover(ctx); err != nil {
		return nil, err
	}
	current, err := r.store.Current()
	if err != nil {
		if !errors.Is(err, ErrNoCertificate) {
			logger.Info("Ignoring the unreadable current certificate", "err", err)
		}
		current = nil
	}
	creds, err := chooseCredentials(ctx, r.opts, current, r.clock.Now())
	if err != nil {
		return nil, err
	}
	logger.V(1).Info("Chose credentials", "credentials", creds.Source, "server", creds.Server.Host)
	client, err := kubernetes.NewForConfig(creds.Config)
	if err != nil {
		return nil, &UsageError{Err: fmt.Errorf("failed to create a client: %w", err)}
	}

	reqCtx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()

	var currentPub crypto.PublicKey
	if current != nil {
		currentPub = current.Leaf().PublicKey
	}
	key, req, err := r.prepare(reqCtx, client, currentPub)
	if err != nil {
		return nil, r.explain(ctx, reqCtx, client, nameOf(req), err)
	}
	logger = logger.WithValues("csr", req.Name)
	ctx = klog.NewContext(ctx, logger)
	reqCtx = klog.NewContext(reqCtx, logger)

	var expiration *time.Duration
	if r.opts.Expiration > 0 {
		expiration = &r.opts.Expiration
	}
	name, uid, err := csr.RequestCertificateWithContext(reqCtx, client, req.PEM, req.Name, SignerName, expiration, req.Usages, key)
	if err != nil {
		return nil, r.explain(ctx, reqCtx, client, req.Name, fmt.Errorf("failed to create CSR %s: %w", req.Name, err))
	}
	logger.Info("Waiting for the certificate to be approved and issued", "credentials", creds.Source, "timeout", r.opts.Timeout)
	certPEM, err := csr.WaitForCertificate(reqCtx, client, name, uid)
	if err != nil {
		return nil, r.explain(ctx, reqCtx, client, name, fmt.Errorf("failed waiting for CSR %s: %w", name, err))
	}

	pair, err := r.store.Update(certPEM, key)
	if err != nil {
		return nil, fmt.Errorf("failed to store the certificate issued for CSR %s: %w", name, err)
	}
	if err := r.store.DiscardPendingKey(); err != nil {
		logger.Info("Could not remove the pending key; the next run replaces it", "err", err)
	}
	if cn, want := pair.Leaf().Subject.CommonName, NodeUserPrefix+r.opts.NodeName; cn != want {
		logger.Info("Warning: the signer issued a certificate for another name", "commonName", cn, "want", want)
	}
	if r.opts.WriteKubeconfig != "" {
		if err := writeKubeconfig(r.opts.WriteKubeconfig, creds.Server, r.store.CurrentPath()); err != nil {
			return nil, err
		}
	}
	leaf := pair.Leaf()
	logger.Info("Certificate issued", "file", pair.Path, "notAfter", leaf.NotAfter)
	fmt.Fprintf(r.out, "issued %s for %s by CSR %s (credentials: %s), valid until %s\n",
		pair.Path, leaf.Subject.CommonName, name, creds.Source, leaf.NotAfter.UTC().Format(time.RFC3339))
	return &Issued{CSR: name, Credentials: creds.Source, Pair: pair}, nil
}

// prepare returns the pending key and the request made from it. When a CSR of
// that name already exists it is checked first: a denied or failed one is
// reported (and its key discarded, so that the next run starts afresh); one
// whose certificate has expired cannot be reused, so the key is replaced once.
func (r *Requester) prepare(ctx context.Context, client kubernetes.Interface, currentPub crypto.PublicKey) (crypto.Signer, *Request, error) {
	logger := klog.FromContext(ctx)
	for attempt := 0; ; attempt++ {
		key, reused, err := r.store.PendingKey(ctx, KeyAlgorithm(r.opts.KeyAlgorithm), currentPub)
		if err != nil {
			return nil, nil, err
		}
		req, err := NewRequest(key, r.opts.NodeName)
		if err != nil {
			return nil, nil, err
		}
		logger.V(1).Info("Prepared the certificate request", "csr", req.Name, "reusedKey", reused, "keyAlgorithm", r.opts.KeyAlgorithm)
		if !reused {
			return key, req, nil
		}
		existing, err := client.CertificatesV1().CertificateSigningRequests().Get(ctx, req.Name, metav1.GetOptions{})
		if err != nil {
			if !apierrors.IsNotFound(err) {
				logger.V(1).Info("Could not look up an earlier CSR; creating it will tell", "csr", req.Name, "err", err)
			}
			return key, req, nil
		}
		logger.Info("Found the CSR of an earlier run with the same key", "csr", req.Name)
		if err := r.finalState(existing); err != nil {
			return nil, req, err
		}
		if reason := unusableCertificate(existing.Status.Certificate, r.clock.Now()); reason != "" && attempt == 0 {
			logger.Info("Not reusing the earlier CSR; generating a new key", "csr", req.Name, "reason", reason)
			if err := r.store.DiscardPendingKey(); err != nil {
				return nil, nil, err
			}
			continue
		}
		return key, req, nil
	}
}

// finalState returns a DeniedError or FailedError for a CSR with such a
// condition (and discards its key), nil otherwise.
func (r *Requester) finalState(c *certificatesv1.CertificateSigningRequest) error {
	for _, cond := range c.Status.Conditions {
		var err error
		switch cond.Type {
		case certificatesv1.CertificateDenied:
			err = &DeniedError{CSR: c.Name, Reason: cond.Reason, Message: cond.Message}
		case certificatesv1.CertificateFailed:
			err = &FailedError{CSR: c.Name, Reason: cond.Reason, Message: cond.Message}
		default:
			continue
		}
		if derr := r.store.DiscardPendingKey(); derr != nil {
			return errors.Join(err, derr)
		}
		return err
	}
	return nil
}

// unusableCertificate says why an issued certificate cannot be taken over,
// "" when it can (or when there is none yet).
func unusableCertificate(certPEM []byte, now time.Time) string {
	if len(certPEM) == 0 {
		return ""
	}
	certs, err := certutil.ParseCertsPEM(certPEM)
	if err != nil {
		return "its certificate cannot be parsed: " + err.Error()
	}
	for _, c := range certs {
		if now.After(c.NotAfter) {
			return "its certificate has expired"
		}
	}
	return ""
}

// explain turns a failed create or wait into the error the caller acts on: a
// denial or failure recorded on the CSR, a timeout, or an interruption.
func (r *Requester) explain(ctx, reqCtx context.Context, client kubernetes.Interface, name string, err error) error {
	var denied *DeniedError
	var failed *FailedError
	var usage *UsageError
	if errors.As(err, &denied) || errors.As(err, &failed) || errors.As(err, &usage) {
		return err
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted (CSR %s): %w", orUnknown(name), context.Cause(ctx))
	}
	var got *certificatesv1.CertificateSigningRequest
	if name != "" {
		getCtx, cancel := context.WithTimeout(ctx, getTimeout)
		defer cancel()
		if c, gerr := client.CertificatesV1().CertificateSigningRequests().Get(getCtx, name, metav1.GetOptions{}); gerr == nil {
			got = c
			if ferr := r.finalState(c); ferr != nil {
				return ferr
			}
		}
	}
	if reqCtx.Err() != nil {
		return &TimeoutError{CSR: orUnknown(name), Waited: r.opts.Timeout, State: describe(got)}
	}
	return err
}

// describe says where a CSR stands, for timeout messages.
func describe(c *certificatesv1.CertificateSigningRequest) string {
	if c == nil {
		return ""
	}
	for _, cond := range c.Status.Conditions {
		if cond.Type == certificatesv1.CertificateApproved {
			if len(c.Status.Certificate) == 0 {
				return "approved, not yet signed: is the signer running?"
			}
			return "issued"
		}
	}
	return "still pending: nobody approved it; it stays pending and a new run with the same pending key picks it up"
}

func nameOf(req *Request) string {
	if req == nil {
		return ""
	}
	return req.Name
}
