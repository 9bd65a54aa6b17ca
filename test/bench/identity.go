package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	certsclient "k8s.io/client-go/kubernetes/typed/certificates/v1"
	"k8s.io/client-go/rest"

	"github.com/nodecsr/nodecsr/internal/csrtest"
)

// identity is one node: its name, a client that authenticates with its own
// client certificate (system:node:<name> in system:nodes), and the kubelet
// client CSR it will file (renewal path), with a key of its own.
type identity struct {
	node      string
	csr       *certificatesv1.CertificateSigningRequest
	client    certsclient.CertificateSigningRequestInterface
	transport *http.Transport
}

// makeIdentities prepares n node identities named <prefix>-<i> whose CSRs
// carry the group label. Certificates and requests are made in parallel.
func (e *env) makeIdentities(ctx context.Context, prefix, group string, n int) ([]*identity, error) {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(e.c.ServingCAPEM())
	out := make([]*identity, n)
	err := parallel(ctx, n, runtime.NumCPU(), func(i int) error {
		node := fmt.Sprintf("%s-%05d", prefix, i)
		cfg, err := e.c.NodeConfig(node)
		if err != nil {
			return err
		}
		cert, err := tls.X509KeyPair(cfg.CertData, cfg.KeyData)
		if err != nil {
			return fmt.Errorf("failed to load the client certificate of %s: %w", node, err)
		}
		// A transport of its own, as a kubelet has: its own TLS connection,
		// closed after its one request. (client-go would cache one transport
		// per certificate for the life of the program.)
		tr := &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
			ForceAttemptHTTP2:   true,
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     30 * time.Second,
		}
		client, err := certsclient.NewForConfigAndClient(&rest.Config{Host: e.c.Host(), QPS: -1, UserAgent: "bench-kubelet"}, &http.Client{Transport: tr})
		if err != nil {
			return err
		}
		out[i] = &identity{node: node, csr: kubeletCSR(node, group), client: client.CertificateSigningRequests(), transport: tr}
		return nil
	})
	return out, err
}

// kubeletCSR is the CSR a kubelet files for node, with a fresh ECDSA P-256
// key; the API server fills in the requester.
func kubeletCSR(node, group string) *certificatesv1.CertificateSigningRequest {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	csr := csrtest.Build(csrtest.WithNodeName(node), csrtest.WithKey(key), csrtest.WithName(node))
	csr.Spec.Username, csr.Spec.Groups, csr.Spec.UID, csr.Spec.Extra = "", nil, "", nil
	csr.Labels = map[string]string{groupLabel: group}
	return csr
}

// create files the identity's CSR with its own credentials and records the
// client-side creation time (taken just before the call).
func (id *identity) create(ctx context.Context, t *tracker) error {
	defer id.transport.CloseIdleConnections()
	at := time.Now()
	t.setCreated(id.csr.Name, at)
	if _, err := id.client.Create(ctx, id.csr, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("failed to create CSR %s as system:node:%s: %w", id.csr.Name, id.node, err)
	}
	return nil
}

// createNodes creates a Node object for every identity (the renewal path
// requires the Node to exist), labelled with the group.
func (e *env) createNodes(ctx context.Context, ids []*identity, group string) error {
	return parallel(ctx, len(ids), 32, func(i int) error {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: ids[i].node, Labels: map[string]string{groupLabel: group}}}
		_, err := e.admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("failed to create Node %s: %w", ids[i].node, err)
		}
		return nil
	})
}

// createCSRs files every identity's CSR, with the given concurrency.
func (e *env) createCSRs(ctx context.Context, ids []*identity, workers int) error {
	return parallel(ctx, len(ids), workers, func(i int) error { return ids[i].create(ctx, e.tracker) })
}

// cleanupGroup deletes the group's CSRs and Nodes and forgets them.
func (e *env) cleanupGroup(ctx context.Context, group string) error {
	sel := metav1.ListOptions{LabelSelector: groupLabel + "=" + group}
	if err := e.admin.CertificatesV1().CertificateSigningRequests().DeleteCollection(ctx, metav1.DeleteOptions{}, sel); err != nil {
		return fmt.Errorf("failed to delete the CSRs of %s: %w", group, err)
	}
	if err := e.admin.CoreV1().Nodes().DeleteCollection(ctx, metav1.DeleteOptions{}, sel); err != nil {
		return fmt.Errorf("failed to delete the Nodes of %s: %w", group, err)
	}
	e.tracker.forget(group)
	return nil
}

// parallel runs f(0..n-1) on workers goroutines and returns the first error.
func parallel(ctx context.Context, n, workers int, f func(i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := f(i); err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		// The parent was cancelled.
		return ctx.Err()
	}
	return firstErr
}
