package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/nodecsr/nodecsr/test/cluster"
)

// groupLabel marks every CSR the bench creates with the phase it belongs to.
const groupLabel = "bench.nodecsr.io/group"

// csrTimes is what the bench knows about one CSR.
type csrTimes struct {
	Group    string
	Username string
	Created  time.Time // client side, just before the create call
	Seen     time.Time // first seen through the watch
	Decided  time.Time // Approved or Denied first seen through the watch
	Approved bool
	Reason   string
	Issued   time.Time // status.certificate first seen through the watch
}

// tracker watches kubelet client CSRs (an informer with a field selector on
// the signer, so CSRs of other signers never reach the bench) and records
// when each was first seen, decided and issued.
type tracker struct {
	mu      sync.Mutex
	csrs    map[string]*csrTimes
	seen    map[string]int // by group
	decided map[string]int // by group
	changed chan struct{}
}

func startTracker(ctx context.Context, client kubernetes.Interface) (*tracker, error) {
	t := &tracker{
		csrs: map[string]*csrTimes{}, seen: map[string]int{}, decided: map[string]int{},
		changed: make(chan struct{}, 1),
	}
	sel := fields.OneTermEqualSelector("spec.signerName", cluster.KubeletClientSigner).String()
	csrs := client.CertificatesV1().CertificateSigningRequests()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return csrs.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return csrs.Watch(ctx, o)
		},
	}
	inf := cache.NewSharedIndexInformer(lw, &certificatesv1.CertificateSigningRequest{}, 0, cache.Indexers{})
	// Keep only what the tracker reads.
	if err := inf.SetTransform(func(o any) (any, error) {
		if csr, ok := o.(*certificatesv1.CertificateSigningRequest); ok {
			csr.ManagedFields, csr.Spec.Request, csr.Status.Certificate = nil, nil, issuedMarker(csr)
		}
		return o, nil
	}); err != nil {
		return nil, err
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { t.observe(o) },
		UpdateFunc: func(_, o any) { t.observe(o) },
	}); err != nil {
		return nil, err
	}
	go inf.RunWithContext(ctx)
	syncCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), inf.HasSynced) {
		return nil, fmt.Errorf("the CSR watch did not sync: %w", syncCtx.Err())
	}
	return t, nil
}

// issuedMarker keeps one byte of an issued certificate, to remember that it is there.
func issuedMarker(csr *certificatesv1.CertificateSigningRequest) []byte {
	if len(csr.Status.Certificate) > 0 {
		return []byte{1}
	}
	return nil
}

func (t *tracker) observe(o any) {
	now := time.Now()
	csr, ok := o.(*certificatesv1.CertificateSigningRequest)
	if !ok {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	ct := t.csrs[csr.Name]
	if ct == nil {
		ct = &csrTimes{}
		t.csrs[csr.Name] = ct
	}
	if ct.Seen.IsZero() {
		ct.Seen = now
		ct.Group = groupOf(csr)
		ct.Username = csr.Spec.Username
		t.seen[ct.Group]++
	}
	if ct.Decided.IsZero() {
		for _, c := range csr.Status.Conditions {
			if c.Type == certificatesv1.CertificateApproved || c.Type == certificatesv1.CertificateDenied {
				ct.Decided, ct.Approved, ct.Reason = now, c.Type == certificatesv1.CertificateApproved, c.Reason
				t.decided[ct.Group]++
				break
			}
		}
	}
	if ct.Issued.IsZero() && len(csr.Status.Certificate) > 0 {
		ct.Issued = now
	}
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

// setCreated records the client-side creation time of a CSR.
func (t *tracker) setCreated(name string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ct := t.csrs[name]
	if ct == nil {
		ct = &csrTimes{}
		t.csrs[name] = ct
	}
	ct.Created = at
}

func (t *tracker) counts(group string) (seen, decided int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.seen[group], t.decided[group]
}

// waitFor waits until cond(seen, decided) holds for group, failing early
// when abort returns an error.
func (t *tracker) waitFor(ctx context.Context, group string, timeout time.Duration, what string, cond func(seen, decided int) bool, abort func() error) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		seen, decided := t.counts(group)
		if cond(seen, decided) {
			return nil
		}
		if abort != nil {
			if err := abort(); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("%s: %w after %s (group %s: %d seen, %d decided)", what, errTimeout, timeout, group, seen, decided)
		case <-t.changed:
		case <-tick.C:
		}
	}
}

// group returns a copy of the records of every CSR in group.
func (t *tracker) group(group string) map[string]csrTimes {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string]csrTimes{}
	for name, ct := range t.csrs {
		if ct.Group == group {
			out[name] = *ct
		}
	}
	return out
}

// forget drops the records of a group (after its CSRs are deleted).
func (t *tracker) forget(group string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for name, ct := range t.csrs {
		if ct.Group == group {
			delete(t.csrs, name)
		}
	}
	delete(t.seen, group)
	delete(t.decided, group)
}

// byUsername finds the CSR filed by username (the newest if several).
func (t *tracker) byUsername(username string) (string, csrTimes, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var (
		name string
		best *csrTimes
	)
	for n, ct := range t.csrs {
		if ct.Username == username && (best == nil || ct.Seen.After(best.Seen)) {
			name, best = n, ct
		}
	}
	if best == nil {
		return "", csrTimes{}, false
	}
	return name, *best, true
}

// groupOf is a CSR's group: its group label, else its name without the
// "-<number>" suffix the bench gives the CSRs it files without labels
// (the memory run files CSRs exactly as kubelets do, without labels).
func groupOf(csr *certificatesv1.CertificateSigningRequest) string {
	if g, ok := csr.Labels[groupLabel]; ok {
		return g
	}
	if i := strings.LastIndexByte(csr.Name, '-'); i > 0 && strings.Trim(csr.Name[i+1:], "0123456789") == "" {
		return csr.Name[:i]
	}
	return ""
}
