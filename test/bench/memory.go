package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// memoryResult is nodecsr-controller's memory: idle, with CSRs of another
// signer (which its cache must not hold), and with kubelet client CSRs kept
// pending (which it must hold).
type memoryResult struct {
	PendingN int    `json:"pendingN"`
	ForeignN int    `json:"foreignN"`
	Policy   string `json:"policy"`
	// Idle: a fresh start with no CSRs.
	Idle memSample `json:"idle"`
	// Foreign: the same process after ForeignN CSRs of example.com/foo were created.
	Foreign memSample `json:"foreign"`
	// ForeignFresh: a fresh start with the ForeignN CSRs present.
	ForeignFresh memSample `json:"foreignFresh"`
	// Pending: the same process after PendingN kubelet client CSRs were
	// created and each examined once (left pending by the policy).
	Pending memSample `json:"pending"`
	// PendingFresh: a fresh start with the PendingN and ForeignN CSRs present.
	PendingFresh      memSample `json:"pendingFresh"`
	ForeignRatio      float64   `json:"foreignRSSOverIdle"`
	ForeignFreshRatio float64   `json:"foreignFreshRSSOverIdle"`
	// ForeignCreatePerSecond and PendingCreatePerSecond: how fast the bench filed them.
	ForeignCreatePerSecond float64 `json:"foreignCreatePerSecond"`
	PendingCreatePerSecond float64 `json:"pendingCreatePerSecond"`
	// StillPending: kubelet client CSRs still pending at the end (should be PendingN).
	StillPending int `json:"stillPending"`
	// EnvVariants are further fresh starts with everything present and
	// Go runtime settings in the environment (GOMEMLIMIT, GOGC).
	EnvVariants []memVariant `json:"envVariants,omitempty"`
}

type memVariant struct {
	Env    []string  `json:"env"`
	Sample memSample `json:"sample"`
}

// memSample is the median of a few readings a second apart.
type memSample struct {
	RSS       int64 `json:"rssBytes"`       // VmRSS
	HWM       int64 `json:"hwmBytes"`       // VmHWM: peak RSS since the process started
	HeapInuse int64 `json:"heapInuseBytes"` // go_memstats_heap_inuse_bytes
	// CachedPending is nodecsr_pending_csrs (kubelet client CSRs pending in its cache).
	CachedPending int `json:"cachedPending"`
}

const memoryPolicy = `apiVersion: nodecsr.io/v1alpha1
kind: Policy
spec:
  # Keep the bench's CSRs pending (and in nodecsr's cache) instead of denying them.
  onViolation: LeavePending
  nodeNames:
    denied: ["bench-mem-.*"]
`

func (e *env) runMemory(ctx context.Context, o *options) (*memoryResult, error) {
	res := &memoryResult{PendingN: o.pendingN, ForeignN: o.foreignN, Policy: memoryPolicy}
	policy := filepath.Join(e.dir, "memory-policy.yaml")
	if err := os.WriteFile(policy, []byte(memoryPolicy), 0o600); err != nil {
		return nil, err
	}
	start := func(name string) (*controller, error) {
		c, err := e.startController(name, "--policy="+policy)
		if err != nil {
			return nil, err
		}
		if err := c.waitReady(ctx, 2*time.Minute); err != nil {
			c.stop(10 * time.Second)
			return nil, err
		}
		return c, nil
	}
	c, err := start("nodecsr-memory-idle")
	if err != nil {
		return nil, err
	}
	defer func() {
		if c != nil {
			c.stop(10 * time.Second)
		}
	}()
	if res.Idle, err = e.sampleMemory(ctx, c); err != nil {
		return nil, err
	}
	e.logf("memory: idle RSS %.1f MiB, heap in use %.1f MiB", float64(res.Idle.RSS)/mib, float64(res.Idle.HeapInuse)/mib)

	if o.foreignN > 0 {
		t := time.Now()
		if err := e.createForeign(ctx, o.foreignN); err != nil {
			return nil, err
		}
		res.ForeignCreatePerSecond = float64(o.foreignN) / time.Since(t).Seconds()
		if res.Foreign, err = e.sampleMemory(ctx, c); err != nil {
			return nil, err
		}
		c.stop(10 * time.Second)
		if c, err = start("nodecsr-memory-foreign"); err != nil {
			return nil, err
		}
		if res.ForeignFresh, err = e.sampleMemory(ctx, c); err != nil {
			return nil, err
		}
		res.ForeignRatio = ratio(float64(res.Foreign.RSS), float64(res.Idle.RSS))
		res.ForeignFreshRatio = ratio(float64(res.ForeignFresh.RSS), float64(res.Idle.RSS))
		e.logf("memory: with %d foreign CSRs RSS %.1f MiB (fresh start %.1f MiB)", o.foreignN, float64(res.Foreign.RSS)/mib, float64(res.ForeignFresh.RSS)/mib)
	}

	t := time.Now()
	if err := e.createPending(ctx, o.pendingN); err != nil {
		return nil, err
	}
	res.PendingCreatePerSecond = float64(o.pendingN) / time.Since(t).Seconds()
	// Wait until nodecsr has examined every one (each is left pending once).
	if err := waitMetric(ctx, c, 5*time.Minute, func(m samples) bool {
		return m.sum("nodecsr_decisions_total", "decision", "Ignore") >= float64(o.pendingN)
	}); err != nil {
		return nil, fmt.Errorf("waiting for nodecsr to examine the pending CSRs: %w", err)
	}
	if res.Pending, err = e.sampleMemory(ctx, c); err != nil {
		return nil, err
	}
	c.stop(10 * time.Second)
	if c, err = start("nodecsr-memory-pending"); err != nil {
		return nil, err
	}
	if err := waitMetric(ctx, c, 5*time.Minute, func(m samples) bool {
		return m.sum("nodecsr_decisions_total", "decision", "Ignore") >= float64(o.pendingN)
	}); err != nil {
		return nil, fmt.Errorf("waiting for nodecsr to examine the pending CSRs after a restart: %w", err)
	}
	if res.PendingFresh, err = e.sampleMemory(ctx, c); err != nil {
		return nil, err
	}
	e.logf("memory: with %d pending RSS %.1f MiB (fresh start %.1f MiB, peak %.1f MiB)", o.pendingN,
		float64(res.Pending.RSS)/mib, float64(res.PendingFresh.RSS)/mib, float64(res.PendingFresh.HWM)/mib)
	for _, env := range o.memoryEnv {
		c.stop(10 * time.Second)
		c = nil
		nc, err := e.startControllerEnv("nodecsr-memory-"+strings.Join(env, "-"), env, "--policy="+policy)
		if err != nil {
			return nil, err
		}
		c = nc
		if err := c.waitReady(ctx, 2*time.Minute); err != nil {
			return nil, err
		}
		if err := waitMetric(ctx, c, 5*time.Minute, func(m samples) bool {
			return m.sum("nodecsr_decisions_total", "decision", "Ignore") >= float64(o.pendingN)
		}); err != nil {
			return nil, fmt.Errorf("waiting for nodecsr (%s) to examine the pending CSRs: %w", strings.Join(env, " "), err)
		}
		sample, err := e.sampleMemory(ctx, c)
		if err != nil {
			return nil, err
		}
		res.EnvVariants = append(res.EnvVariants, memVariant{Env: env, Sample: sample})
		e.logf("memory: %s, fresh start with everything present: RSS %.1f MiB, peak %.1f MiB", strings.Join(env, " "), float64(sample.RSS)/mib, float64(sample.HWM)/mib)
	}
	seen, decided := e.tracker.counts("bench-mem")
	res.StillPending = seen - decided
	if decided > 0 {
		return res, fmt.Errorf("%d of the CSRs meant to stay pending were decided", decided)
	}
	return res, nil
}

// sampleMemory lets the process settle, then takes the median of five
// readings a second apart.
func (e *env) sampleMemory(ctx context.Context, c *controller) (memSample, error) {
	select {
	case <-time.After(5 * time.Second):
	case <-ctx.Done():
		return memSample{}, ctx.Err()
	}
	var rss, heap []int64
	var s memSample
	for i := range 5 {
		if i > 0 {
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
				return memSample{}, ctx.Err()
			}
		}
		m, err := readMem(c.pid())
		if err != nil {
			return s, err
		}
		met, err := c.metrics(ctx)
		if err != nil {
			return s, err
		}
		rss = append(rss, m.RSS)
		heap = append(heap, int64(met.sum("go_memstats_heap_inuse_bytes")))
		s.HWM = m.HWM
		s.CachedPending = int(met.sum("nodecsr_pending_csrs"))
	}
	slices.Sort(rss)
	slices.Sort(heap)
	s.RSS, s.HeapInuse = rss[len(rss)/2], heap[len(heap)/2]
	return s, nil
}

func waitMetric(ctx context.Context, c *controller, timeout time.Duration, cond func(samples) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if err := c.exitedErr(); err != nil {
			return err
		}
		m, err := c.metrics(ctx)
		if err == nil && cond(m) {
			return nil
		}
		if time.Now().After(deadline) {
			return errTimeout
		}
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// createForeign files n CSRs for the signer example.com/foo, with one small
// request shared by all, from the admin client with 32 workers.
func (e *env) createForeign(ctx context.Context, n int) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "f"}}, key)
	if err != nil {
		return err
	}
	req := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	csrs := e.admin.CertificatesV1().CertificateSigningRequests()
	t := time.Now()
	e.logf("memory: creating %d CSRs of signer example.com/foo", n)
	return parallel(ctx, n, 32, func(i int) error {
		csr := &certificatesv1.CertificateSigningRequest{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("foreign-%06d", i), Labels: map[string]string{groupLabel: "foreign"}},
			Spec: certificatesv1.CertificateSigningRequestSpec{
				Request: req, SignerName: "example.com/foo",
				Usages: []certificatesv1.KeyUsage{certificatesv1.UsageClientAuth},
			},
		}
		if _, err := csrs.Create(ctx, csr, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("failed to create foreign CSR %s: %w", csr.Name, err)
		}
		if (i+1)%20000 == 0 {
			e.logf("memory: %d foreign CSRs (%.0f/s)", i+1, float64(i+1)/time.Since(t).Seconds())
		}
		return nil
	})
}

// createPending files n kubelet client CSRs as nodes bench-mem-<i>
// (impersonated by the admin: the objects are exactly what those nodes would
// file, without n TLS handshakes).
func (e *env) createPending(ctx context.Context, n int) error {
	e.logf("memory: creating %d kubelet client CSRs to keep pending", n)
	return parallel(ctx, n, 32, func(i int) error {
		node := fmt.Sprintf("bench-mem-%05d", i)
		csr := kubeletCSR(node, "")
		csr.Labels = nil // as a kubelet files it; the tracker groups it by name
		return e.createAsNode(ctx, node, csr, nil)
	})
}

// createAsNode creates csr impersonating system:node:<node> and returns the
// created object in out (when not nil).
func (e *env) createAsNode(ctx context.Context, node string, csr *certificatesv1.CertificateSigningRequest, out *certificatesv1.CertificateSigningRequest) error {
	body, err := json.Marshal(csr)
	if err != nil {
		return err
	}
	e.tracker.setCreated(csr.Name, time.Now())
	data, err := e.admin.CertificatesV1().RESTClient().Post().Resource("certificatesigningrequests").
		SetHeader("Content-Type", "application/json").
		SetHeader("Accept", "application/json").
		SetHeader("Impersonate-User", "system:node:"+node).
		SetHeader("Impersonate-Group", "system:nodes").
		Body(body).DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("failed to create CSR %s as system:node:%s: %w", csr.Name, node, err)
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}
