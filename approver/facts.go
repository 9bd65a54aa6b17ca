package approver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
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

	"github.com/nodecsr/nodecsr/config"
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
	// Addresses reads the Node's addresses and finds the other Nodes that
	// report a requested SAN (FactAddresses, FactNeighbours; serving only).
	Addresses AddressLookup
	// Resolver resolves the DNS SANs (FactDNS; serving.resolveDNS only),
	// each lookup bounded by serving.resolveDNS.timeoutSeconds.
	Resolver Resolver
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
	if g.Addresses != nil {
		if err := g.gatherAddresses(ctx, r, need, &f); err != nil {
			return f, err
		}
	}
	if need.Has(FactDNS) && g.Resolver != nil && (f.NodeAddresses == nil || f.NodeAddresses.Exists) {
		// Not for a Node that does not exist: the CSR waits for it anyway.
		resolved, err := g.resolve(ctx, r)
		if err != nil {
			return f, &FactError{Fact: FactDNS, Err: err}
		}
		f.Resolved = resolved
	}
	return f, nil
}

func (g *Gatherer) gatherAddresses(ctx context.Context, r *Request, need Fact, f *Facts) error {
	if need.Has(FactAddresses) || need.Has(FactDNS) {
		na, err := g.Addresses.NodeAddresses(ctx, r.NodeName)
		if err != nil {
			return &FactError{Fact: FactAddresses, Err: err}
		}
		f.NodeAddresses = na
	}
	if need.Has(FactNeighbours) {
		f.Neighbours = map[string][]string{}
		for _, key := range r.SANKeys() {
			names, err := g.Addresses.NodesWithAddress(ctx, key)
			if err != nil {
				return &FactError{Fact: FactNeighbours, Err: err}
			}
			names = slices.DeleteFunc(names, func(n string) bool { return n == r.NodeName })
			if len(names) > 0 {
				slices.Sort(names)
				f.Neighbours[key] = names
			}
		}
	}
	return nil
}

// resolve looks every DNS SAN up. A name that does not exist is a fact
// (NotFound); any other failure (a timeout, a server failure) is an error,
// so the CSR is retried rather than denied.
func (g *Gatherer) resolve(ctx context.Context, r *Request) (map[string]Resolution, error) {
	timeout := config.DefaultResolveTimeoutSeconds * time.Second
	if r.policy != nil {
		timeout = r.policy.Serving.ResolveTimeout
	}
	out := make(map[string]Resolution, len(r.DNSNames))
	for _, name := range r.DNSNames {
		key := NodeAddressKey(name)
		if _, done := out[key]; done {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, timeout)
		ips, err := g.Resolver.LookupNetIP(lctx, "ip", name)
		cancel()
		var dnsErr *net.DNSError
		switch {
		case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
			out[key] = Resolution{NotFound: true}
		case err != nil:
			return nil, fmt.Errorf("failed to resolve %q: %w", name, err)
		default:
			res := Resolution{NotFound: len(ips) == 0}
			for _, ip := range ips {
				res.IPs = append(res.IPs, ip.Unmap())
			}
			out[key] = res
		}
	}
	return out, nil
}

// Resolver resolves a DNS name (*net.Resolver is one).
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// AddressLookup reads Node addresses for serving CSRs.
type AddressLookup interface {
	// NodeAddresses returns the Node's addresses; Exists is false when
	// there is no Node of that name.
	NodeAddresses(ctx context.Context, name string) (*NodeAddresses, error)
	// NodesWithAddress names the Nodes that report an address whose
	// NodeAddressKey is key.
	NodesWithAddress(ctx context.Context, key string) ([]string, error)
}

// CachedNodeAddresses reads the typed Node cache that serving sets up
// (CacheOptions, IndexNodeAddress).
type CachedNodeAddresses struct {
	Reader client.Reader
}

// NodeAddresses implements AddressLookup.
func (c CachedNodeAddresses) NodeAddresses(ctx context.Context, name string) (*NodeAddresses, error) {
	return nodeAddresses(ctx, c.Reader, name)
}

// NodesWithAddress implements AddressLookup, through the IndexNodeAddress
// index.
func (c CachedNodeAddresses) NodesWithAddress(ctx context.Context, key string) ([]string, error) {
	var list corev1.NodeList
	if err := c.Reader.List(ctx, &list, client.MatchingFields{IndexNodeAddress: key}); err != nil {
		return nil, fmt.Errorf("failed to look up the Nodes with address %q: %w", key, err)
	}
	names := make([]string, 0, len(list.Items))
	for i := range list.Items {
		names = append(names, list.Items[i].Name)
	}
	return names, nil
}

// ListedNodeAddresses asks the API server (for explain, which has no
// cache): it lists every Node once per lookup.
type ListedNodeAddresses struct {
	Reader client.Reader
}

// NodeAddresses implements AddressLookup.
func (l ListedNodeAddresses) NodeAddresses(ctx context.Context, name string) (*NodeAddresses, error) {
	return nodeAddresses(ctx, l.Reader, name)
}

// NodesWithAddress implements AddressLookup.
func (l ListedNodeAddresses) NodesWithAddress(ctx context.Context, key string) ([]string, error) {
	var list corev1.NodeList
	if err := l.Reader.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("failed to list Nodes: %w", err)
	}
	var names []string
	for i := range list.Items {
		if slices.Contains(IndexNodeByAddress(&list.Items[i]), key) {
			names = append(names, list.Items[i].Name)
		}
	}
	return names, nil
}

func nodeAddresses(ctx context.Context, r client.Reader, name string) (*NodeAddresses, error) {
	node := &corev1.Node{}
	err := r.Get(ctx, client.ObjectKey{Name: name}, node)
	switch {
	case apierrors.IsNotFound(err):
		return &NodeAddresses{}, nil
	case err != nil:
		return nil, fmt.Errorf("failed to read the addresses of node %q: %w", name, err)
	}
	return NodeAddressesOf(node.Status.Addresses), nil
}

// IndexNodeAddress indexes the typed Node cache by every address a Node
// reports (NodeAddressKey), to find the Nodes that report a requested SAN.
// Only with serving.
const IndexNodeAddress = "nodecsr.io/node-address"

// IndexNodeByAddress is the index function for IndexNodeAddress.
func IndexNodeByAddress(obj client.Object) []string {
	node, ok := obj.(*corev1.Node)
	if !ok {
		return nil
	}
	keys := make([]string, 0, len(node.Status.Addresses))
	for _, a := range node.Status.Addresses {
		if a.Address == "" {
			continue
		}
		if k := NodeAddressKey(a.Address); !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// TrimNode is the typed Node cache's transform: it keeps only what nodecsr
// reads (name, UID, resource version, creation and deletion time, the
// addresses). Node objects are large (images, conditions, capacity).
func TrimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{
		TypeMeta: n.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion,
			CreationTimestamp: n.CreationTimestamp, DeletionTimestamp: n.DeletionTimestamp,
		},
		Status: corev1.NodeStatus{Addresses: n.Status.Addresses},
	}, nil
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

// CachedNodes looks Nodes up in the informer cache: metadata only, or typed
// Nodes when the cache was set up for serving (Serving).
type CachedNodes struct {
	Reader client.Reader
	// Serving: the cache holds typed Nodes (CacheOptions(true)).
	Serving bool
}

// NodeExists implements NodeLookup.
func (n CachedNodes) NodeExists(ctx context.Context, name string) (bool, error) {
	err := n.Reader.Get(ctx, client.ObjectKey{Name: name}, NodeObject(n.Serving))
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
	// Serving: the cache holds typed Nodes (CacheOptions(true)).
	Serving bool
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
	node := NodeObject(h.Serving)
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

// ListedPending lists the CSRs of the same signer from the API server (for
// explain, which has no cache).
type ListedPending struct {
	Reader client.Reader
}

// PendingAround implements PendingLookup.
func (p ListedPending) PendingAround(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, node string) (bool, int, error) {
	var list certificatesv1.CertificateSigningRequestList
	if err := p.Reader.List(ctx, &list, client.MatchingFields{"spec.signerName": csr.Spec.SignerName}); err != nil {
		return false, 0, fmt.Errorf("failed to list the CSRs of signer %q: %w", csr.Spec.SignerName, err)
	}
	newer, older := PendingAround(csr, node, list.Items)
	return newer, older, nil
}

// NodeMetadata is an empty metadata-only Node, the type the cache holds
// without serving.
func NodeMetadata() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Node"))
	return m
}

// NodeObject is an empty Node of the type the cache holds: metadata only,
// or, with serving (CacheOptions(true)), a typed Node trimmed by TrimNode.
// One type only, so that the cache runs one Node watch.
func NodeObject(serving bool) client.Object {
	if serving {
		return &corev1.Node{}
	}
	return NodeMetadata()
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
// same requester, for the same signer, as csr (a node's client and serving
// CSRs never supersede each other). newer: one that is newer and pending, or approved
// and newer (supersededByApproved), supersedes csr (once the newest of a
// burst is approved, an older duplicate decided later must not be approved
// as well). older: how many older ones are still pending.
func PendingAround(csr *certificatesv1.CertificateSigningRequest, node string, others []certificatesv1.CertificateSigningRequest) (newer bool, older int) {
	for i := range others {
		other := &others[i]
		if other.Name == csr.Name || other.Spec.Username != csr.Spec.Username || other.Spec.SignerName != csr.Spec.SignerName {
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
		case pending && newerThan(other, csr), !pending && supersededByApproved(csr, other):
			newer = true
		case pending && !newerThan(other, csr):
			older++
		}
	}
	return newer, older
}

// supersededByApproved reports whether the approved CSR other supersedes
// the pending csr. It does when it was created in a later second. Within one
// second (the timestamps' resolution) it does only when csr was already
// pending when other was approved (created in an earlier second than the
// approval): both belong to one burst, and the name breaks the tie as among
// pending duplicates, so the burst keeps exactly one approval whatever order
// the workers decide it in. A kubelet that files again right after its last
// certificate was issued (in the approval's second or later) never loses to
// that CSR by name.
func supersededByApproved(csr, other *certificatesv1.CertificateSigningRequest) bool {
	if csr.CreationTimestamp.Before(&other.CreationTimestamp) {
		return true
	}
	if !csr.CreationTimestamp.Equal(&other.CreationTimestamp) || !newerThan(other, csr) {
		return false
	}
	approvedAt := approvalTime(other)
	return !approvedAt.IsZero() && csr.CreationTimestamp.Before(&approvedAt)
}

// approvalTime is when a CSR's Approved condition was written (zero when
// unknown).
func approvalTime(csr *certificatesv1.CertificateSigningRequest) metav1.Time {
	for _, c := range csr.Status.Conditions {
		if c.Type == certificatesv1.CertificateApproved {
			return c.LastUpdateTime
		}
	}
	return metav1.Time{}
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
