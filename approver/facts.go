package approver

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
	authorizationv1 "k8s.io/api/authorization/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// FactGatherer collects the cluster facts a decision still needs. The
// reconciler's is cache-backed, explain's asks the API server, the webhook's
// reads only its cache.
type FactGatherer interface {
	// Gather returns the facts in need that it can gather for r; a fact
	// it has no source for stays nil. An error is a *FactError.
	Gather(ctx context.Context, r *Request, need Fact) (Facts, error)
}

// FactError is a failure to gather one fact.
type FactError struct {
	Fact Fact
	Err  error
}

func (e *FactError) Error() string { return e.Err.Error() }
func (e *FactError) Unwrap() error { return e.Err }

// Gatherer is the FactGatherer: each source answers its facts, and a nil
// source leaves them ungathered (Decide then says FactsIncomplete). Only the
// facts asked for are gathered: a hopeless CSR costs no API call, and the
// heartbeat is looked up only for a bootstrap request whose Node exists.
type Gatherer struct {
	// Authorizer runs the SubjectAccessReview (FactAuthorized).
	Authorizer Authorizer
	// Nodes tells whether a Node exists (FactNode).
	Nodes NodeLookup
	// Heartbeats tells when an existing Node last heartbeated
	// (FactHeartbeat).
	Heartbeats HeartbeatLookup
	// Pending looks at the other CSRs for the node (FactPending).
	Pending PendingLookup
	// Clock stamps Facts.Now.
	Clock clock.PassiveClock
}

// Gather implements FactGatherer.
func (g *Gatherer) Gather(ctx context.Context, r *Request, need Fact) (Facts, error) {
	f := Facts{Now: g.Clock.Now()}
	if need.Has(FactAuthorized) && g.Authorizer != nil && r.Path != PathUnknown {
		allowed, err := g.Authorizer.Authorize(ctx, r.CSR, SubresourceFor(r.Path))
		if err != nil {
			return f, &FactError{Fact: FactAuthorized, Err: err}
		}
		f.Authorized = &allowed
	}
	if r.NodeName == "" {
		return f, nil
	}
	if need.Has(FactNode) && g.Nodes != nil {
		exists, err := g.Nodes.NodeExists(ctx, r.NodeName)
		if err != nil {
			return f, &FactError{Fact: FactNode, Err: err}
		}
		f.NodeExists = &exists
		if exists && need.Has(FactHeartbeat) && g.Heartbeats != nil {
			hb, err := g.Heartbeats.LastHeartbeat(ctx, r.NodeName)
			if err != nil {
				return f, &FactError{Fact: FactHeartbeat, Err: err}
			}
			f.NodeHeartbeat = &hb
		}
	}
	if need.Has(FactPending) && g.Pending != nil {
		newer, older, err := g.Pending.PendingAround(ctx, r.CSR, r.NodeName)
		if err != nil {
			return f, &FactError{Fact: FactPending, Err: err}
		}
		f.NewerPendingForNode, f.PendingForNode = &newer, &older
	}
	return f, nil
}

// Authorizer answers whether a CSR's requester may create the given
// certificatesigningrequests subresource (nodeclient or selfnodeclient).
type Authorizer interface {
	Authorize(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, subresource string) (bool, error)
}

// SARAuthorizer asks the API server with a SubjectAccessReview, exactly as
// kube-controller-manager's csrapproving controller does, so existing RBAC
// bindings keep meaning what they mean.
type SARAuthorizer struct {
	Client client.Client
}

// Authorize implements Authorizer.
func (a SARAuthorizer) Authorize(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, subresource string) (bool, error) {
	extra := make(map[string]authorizationv1.ExtraValue, len(csr.Spec.Extra))
	for k, v := range csr.Spec.Extra {
		extra[k] = authorizationv1.ExtraValue(v)
	}
	sar := &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   csr.Spec.Username,
			UID:    csr.Spec.UID,
			Groups: csr.Spec.Groups,
			Extra:  extra,
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Group:       certificatesv1.GroupName,
				Resource:    "certificatesigningrequests",
				Verb:        "create",
				Subresource: subresource,
			},
		},
	}
	if err := a.Client.Create(ctx, sar); err != nil {
		return false, fmt.Errorf("failed to create SubjectAccessReview for %q: %w", csr.Spec.Username, err)
	}
	return sar.Status.Allowed, nil
}

// NodeLookup answers whether a Node exists.
type NodeLookup interface {
	NodeExists(ctx context.Context, name string) (bool, error)
}

// CachedNodes looks Nodes up in a metadata-only informer cache.
type CachedNodes struct {
	Reader client.Reader
}

// NodeExists implements NodeLookup.
func (n CachedNodes) NodeExists(ctx context.Context, name string) (bool, error) {
	err := n.Reader.Get(ctx, client.ObjectKey{Name: name}, NodeMetadata())
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	default:
		return false, fmt.Errorf("failed to look up node %q: %w", name, err)
	}
}

// HeartbeatLookup answers when an existing Node last showed its kubelet
// alive.
type HeartbeatLookup interface {
	LastHeartbeat(ctx context.Context, name string) (time.Time, error)
}

// NodeLeaseNamespace holds the kubelets' heartbeat Leases.
const NodeLeaseNamespace = corev1.NamespaceNodeLease

// LeaseHeartbeats reads the node's Lease in kube-node-lease (renewed every
// 10 s by a live kubelet), falling back to the Node's creation time for a
// Node without a Lease. It reads the API server directly: the lookup is
// needed only for a bootstrap request for an existing Node, and watching
// every Lease would cost a watch event per node every 10 s.
type LeaseHeartbeats struct {
	// Leases reads kube-node-lease (the API server, not a cache).
	Leases client.Reader
	// Nodes reads Node metadata (the controller's cache).
	Nodes client.Reader
}

// LastHeartbeat implements HeartbeatLookup.
func (h LeaseHeartbeats) LastHeartbeat(ctx context.Context, name string) (time.Time, error) {
	lease := &coordinationv1.Lease{}
	err := h.Leases.Get(ctx, client.ObjectKey{Namespace: NodeLeaseNamespace, Name: name}, lease)
	switch {
	case err == nil && lease.Spec.RenewTime != nil:
		return lease.Spec.RenewTime.Time, nil
	case err != nil && !apierrors.IsNotFound(err):
		return time.Time{}, fmt.Errorf("failed to read the Lease of node %q: %w", name, err)
	}
	node := NodeMetadata()
	if err := h.Nodes.Get(ctx, client.ObjectKey{Name: name}, node); err != nil {
		return time.Time{}, fmt.Errorf("failed to read node %q: %w", name, err)
	}
	return node.GetCreationTimestamp().Time, nil
}

// PendingLookup looks at the other CSRs for the same node name from the
// same requester: whether a newer one supersedes this one, and how many
// older ones are pending.
type PendingLookup interface {
	PendingAround(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, node string) (newer bool, older int, err error)
}

// IndexedPending reads the cache's CSRs through the IndexNodeName index.
type IndexedPending struct {
	Reader client.Reader
}

// PendingAround implements PendingLookup.
func (p IndexedPending) PendingAround(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, node string) (bool, int, error) {
	var list certificatesv1.CertificateSigningRequestList
	// Read only: the cache's own objects, not deep copies of them.
	if err := p.Reader.List(ctx, &list, client.MatchingFields{IndexNodeName: node}, client.UnsafeDisableDeepCopy); err != nil {
		return false, 0, fmt.Errorf("failed to list pending CSRs for node %q: %w", node, err)
	}
	newer, older := PendingAround(csr, node, list.Items)
	return newer, older, nil
}

// ListedPending lists the kubelet client CSRs from the API server (for
// explain, which has no cache).
type ListedPending struct {
	Reader client.Reader
}

// PendingAround implements PendingLookup.
func (p ListedPending) PendingAround(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, node string) (bool, int, error) {
	var list certificatesv1.CertificateSigningRequestList
	if err := p.Reader.List(ctx, &list, client.MatchingFields{"spec.signerName": KubeletClientSigner}); err != nil {
		return false, 0, fmt.Errorf("failed to list kubelet client CSRs: %w", err)
	}
	newer, older := PendingAround(csr, node, list.Items)
	return newer, older, nil
}

// NodeMetadata is an empty metadata-only Node, the type the cache holds.
func NodeMetadata() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Node"))
	return m
}

// IndexNodeName indexes the CSR cache by the node name in the subject. It
// is the only index: the requester is compared on the few CSRs per node, which
// keeps the cache's memory per CSR down.
const IndexNodeName = "nodecsr.io/node-name"

// IndexCSRByNodeName is the index function for IndexNodeName.
func IndexCSRByNodeName(obj client.Object) []string {
	csr, ok := obj.(*certificatesv1.CertificateSigningRequest)
	if !ok {
		return nil
	}
	if name, ok := NodeNameOf(csr); ok {
		return []string{name}
	}
	return nil
}

// IsPending reports whether a CSR has no decision and no certificate yet.
func IsPending(csr *certificatesv1.CertificateSigningRequest) bool {
	if len(csr.Status.Certificate) > 0 {
		return false
	}
	for _, c := range csr.Status.Conditions {
		switch c.Type {
		case certificatesv1.CertificateApproved, certificatesv1.CertificateDenied, certificatesv1.CertificateFailed:
			return false
		}
	}
	return true
}

// newerThan orders CSRs by creation time, then by name: the order in which
// "newest wins" is decided. Creation timestamps have one-second resolution,
// so the name breaks ties deterministically.
func newerThan(a, b *certificatesv1.CertificateSigningRequest) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return b.CreationTimestamp.Before(&a.CreationTimestamp)
	}
	return a.Name > b.Name
}

// PendingAround looks through others for CSRs for the same node name from the
// same requester as csr. newer: one that is newer and pending, or approved
// and created in a later second, supersedes csr (once the newest of a burst
// is approved, an older duplicate decided later must not be approved as
// well). older: how many older ones are still pending.
func PendingAround(csr *certificatesv1.CertificateSigningRequest, node string, others []certificatesv1.CertificateSigningRequest) (newer bool, older int) {
	for i := range others {
		other := &others[i]
		if other.Name == csr.Name || other.Spec.Username != csr.Spec.Username {
			continue
		}
		pending := IsPending(other)
		if !pending && !isApproved(other) {
			continue // denied or failed: it supersedes nothing
		}
		if name, ok := NodeNameOf(other); !ok || name != node {
			continue
		}
		switch {
		// An approved CSR supersedes only one it is strictly newer than:
		// within one second (the timestamps' resolution) the order is
		// unknown, and a kubelet that files again right after its last
		// certificate was issued must not lose to it by name.
		case pending && newerThan(other, csr), !pending && csr.CreationTimestamp.Before(&other.CreationTimestamp):
			newer = true
		case pending && !newerThan(other, csr):
			older++
		}
	}
	return newer, older
}

// isApproved reports whether a CSR was approved and neither denied nor failed.
func isApproved(csr *certificatesv1.CertificateSigningRequest) bool {
	approved := false
	for _, c := range csr.Status.Conditions {
		switch c.Type {
		case certificatesv1.CertificateApproved:
			approved = true
		case certificatesv1.CertificateDenied, certificatesv1.CertificateFailed:
			return false
		}
	}
	return approved
}

// requesterLimiter keeps one token bucket per bootstrap requester. Buckets
// idle for longer than a refill period are dropped so the map stays small.
type requesterLimiter struct {
	mu        sync.Mutex
	perMinute int
	burst     int
	buckets   map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

// take reports whether the requester may have one more approval now, and if
// not, how long until it may.
func (l *requesterLimiter) take(requester string, perMinute, burst int, now time.Time) (bool, time.Duration) {
	if perMinute <= 0 {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buckets == nil || l.perMinute != perMinute || l.burst != burst {
		// A new policy starts from full buckets.
		l.buckets, l.perMinute, l.burst = map[string]*bucket{}, perMinute, burst
	}
	if now.Sub(l.lastSweep) > time.Minute {
		for k, b := range l.buckets {
			if now.Sub(b.seen) > 10*time.Minute {
				delete(l.buckets, k)
			}
		}
		l.lastSweep = now
	}
	b := l.buckets[requester]
	if b == nil {
		b = &bucket{lim: rate.NewLimiter(rate.Limit(float64(perMinute)/60), burst)}
		l.buckets[requester] = b
	}
	b.seen = now
	if b.lim.AllowN(now, 1) {
		return true, 0
	}
	r := b.lim.ReserveN(now, 1)
	delay := r.DelayFrom(now)
	r.CancelAt(now)
	return false, delay
}
