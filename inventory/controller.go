package inventory

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	nodecsrv1alpha1 "github.com/nodecsr/nodecsr/api/v1alpha1"
	"github.com/nodecsr/nodecsr/approver"
)

// Defaults of the Controller's tunables.
const (
	DefaultInterval          = 10 * time.Second
	DefaultUnregisteredGrace = 24 * time.Hour
	DefaultHeartbeatFresh    = 2 * time.Minute
	DefaultOverdueRecheck    = time.Minute
	DefaultWriteQPS          = 10
	DefaultWriteBurst        = 20
	defaultWorkers           = 4
	// staleRecheckFactor spaces the rechecks of an entry past its rotation
	// window whose node does not heartbeat.
	staleRecheckFactor = 10
	// maxRetryDelay caps the backoff of a node whose write keeps failing
	// (an API server outage): its certificates stay in memory meanwhile.
	maxRetryDelay = 30 * time.Second
)

// queueName names the inventory's work queue in the workqueue_* metrics.
const queueName = "nodecsr-inventory"

// ReasonRotationOverdue is the reason of the Warning Event on a
// NodeCertificate whose client certificate is past its rotation window
// while the node heartbeats.
const ReasonRotationOverdue = "RotationOverdue"

// Controller keeps the NodeCertificate inventory.
//
// Every replica watches the CSRs (the manager's CSR informer) and the
// NodeCertificates: issued certificates are remembered per node until the
// leader has written them, and the NodeCertificates feed Expiry, so a
// follower's expiry series are warm when it takes over. Only the leader
// writes: one worker pass per node, at most once per Interval (a renewal
// storm of one node coalesces into one write), never in the approval path.
type Controller struct {
	// Client reads NodeCertificates and Node metadata from the cache and
	// writes NodeCertificates.
	Client client.Client
	// APIReader reads a NodeCertificate from the API server after a write
	// conflict.
	APIReader client.Reader
	// Heartbeats tells when a node's kubelet last renewed its Lease.
	Heartbeats approver.HeartbeatLookup
	// Events records RotationOverdue, once per certificate serial.
	Events *approver.EventRecorder
	// Expiry, when set, is fed every NodeCertificate's client certificate.
	Expiry  *approver.ExpiryTracker
	Metrics *Metrics
	Clock   clock.PassiveClock

	// Interval is the least time between two writes of one node's entry.
	Interval time.Duration
	// WriteQPS and WriteBurst bound the inventory's write passes across
	// all nodes (a pass is at most a create, an owner-reference update and
	// a status write; default 10 per second, burst 20): in a storm of new nodes
	// the API server's time goes to the approvals first, and the entries
	// follow (the certificates wait in memory, coalesced per node).
	WriteQPS   float64
	WriteBurst int
	// UnregisteredGrace is how long an entry whose name never registered a
	// Node is kept after its newest certificate was seen.
	UnregisteredGrace time.Duration
	// HeartbeatFresh is how recent a node's Lease renewal must be for the
	// node to count as alive (RotationOverdue).
	HeartbeatFresh time.Duration
	// OverdueRecheck is how often an entry past its rotation window is
	// looked at again (its Lease read); ten times as long while its node
	// does not heartbeat.
	OverdueRecheck time.Duration
	// Workers write entries in parallel.
	Workers int

	queue workqueue.TypedRateLimitingInterface[string]

	writes *rate.Limiter
	mu     sync.Mutex
	// pending holds issued certificates seen and not yet written.
	pending map[string]*pending
	// lastWrite is when each node's entry was last written.
	lastWrite map[string]time.Time
	// known is the set of entries in the cache.
	known map[string]struct{}
}

// pending is what was seen of a node since its entry was last written.
type pending struct {
	client, serving *nodecsrv1alpha1.CertificateRecord
	requested       metav1.Time // of client
	gen             uint64
}

func (c *Controller) defaults() {
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.UnregisteredGrace <= 0 {
		c.UnregisteredGrace = DefaultUnregisteredGrace
	}
	if c.HeartbeatFresh <= 0 {
		c.HeartbeatFresh = DefaultHeartbeatFresh
	}
	if c.OverdueRecheck <= 0 {
		c.OverdueRecheck = DefaultOverdueRecheck
	}
	if c.Workers <= 0 {
		c.Workers = defaultWorkers
	}
	if c.WriteQPS <= 0 {
		c.WriteQPS = DefaultWriteQPS
	}
	if c.WriteBurst <= 0 {
		c.WriteBurst = DefaultWriteBurst
	}
	c.writes = rate.NewLimiter(rate.Limit(c.WriteQPS), c.WriteBurst)
}

// SetupWithManager checks that the NodeCertificate API is served, registers
// the informer handlers (every replica) and the leader's writer.
func (c *Controller) SetupWithManager(ctx context.Context, mgr ctrl.Manager) error {
	c.defaults()
	gvk := nodecsrv1alpha1.SchemeGroupVersion.WithKind(nodecsrv1alpha1.NodeCertificateKind)
	if _, err := mgr.GetRESTMapper().RESTMapping(gvk.GroupKind(), gvk.Version); err != nil {
		return fmt.Errorf("the NodeCertificate API (%s) is not served: install its CustomResourceDefinition (the chart does with crds.enabled=true) or turn the inventory off with --inventory=false: %w", gvk.GroupVersion(), err)
	}
	c.pending, c.lastWrite, c.known = map[string]*pending{}, map[string]time.Time{}, map[string]struct{}{}
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, maxRetryDelay),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: queueName},
	)
	informers := mgr.GetCache()
	csrs, err := informers.GetInformer(ctx, &certificatesv1.CertificateSigningRequest{})
	if err != nil {
		return fmt.Errorf("failed to get the CSR informer: %w", err)
	}
	_, err = csrs.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if csr, ok := obj.(*certificatesv1.CertificateSigningRequest); ok {
				c.observe(ctx, csr)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			old, _ := oldObj.(*certificatesv1.CertificateSigningRequest)
			csr, ok := newObj.(*certificatesv1.CertificateSigningRequest)
			if ok && (old == nil || len(old.Status.Certificate) != len(csr.Status.Certificate) || string(old.Status.Certificate) != string(csr.Status.Certificate)) {
				c.observe(ctx, csr)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("failed to watch CSRs for the inventory: %w", err)
	}
	entries, err := informers.GetInformer(ctx, &nodecsrv1alpha1.NodeCertificate{})
	if err != nil {
		return fmt.Errorf("failed to get the NodeCertificate informer: %w", err)
	}
	_, err = entries.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.entrySeen(obj) },
		UpdateFunc: func(_, obj any) { c.entrySeen(obj) },
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if nc, ok := obj.(*nodecsrv1alpha1.NodeCertificate); ok {
				c.mu.Lock()
				delete(c.known, nc.Name)
				delete(c.lastWrite, nc.Name)
				c.mu.Unlock()
				if c.Expiry != nil {
					c.Expiry.Forget(nc.Name)
				}
				c.Metrics.Overdue.DeleteLabelValues(nc.Name)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("failed to watch NodeCertificates: %w", err)
	}
	nodes, err := informers.GetInformer(ctx, approver.NodeMetadata())
	if err != nil {
		return fmt.Errorf("failed to get the Node informer: %w", err)
	}
	// A Node that registers gets its entry's owner reference; one that goes
	// away before it had one starts its entry's grace period.
	nodeEvent := func(obj any) {
		if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		if m, ok := obj.(client.Object); ok && c.tracked(m.GetName()) {
			c.queue.Add(m.GetName())
		}
	}
	_, err = nodes.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: nodeEvent, DeleteFunc: nodeEvent})
	if err != nil {
		return fmt.Errorf("failed to watch Nodes for the inventory: %w", err)
	}
	// The writer runs while this replica leads.
	return mgr.Add(manager.RunnableFunc(func(ctx context.Context) error { return c.run(ctx, informers) }))
}

// tracked: the node has an entry or certificates waiting to be written.
func (c *Controller) tracked(node string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, known := c.known[node]
	_, waiting := c.pending[node]
	return known || waiting
}

// entrySeen feeds the expiry metrics from an entry.
func (c *Controller) entrySeen(obj any) {
	nc, ok := obj.(*nodecsrv1alpha1.NodeCertificate)
	if !ok {
		return
	}
	c.mu.Lock()
	c.known[nc.Name] = struct{}{}
	c.mu.Unlock()
	if c.Expiry == nil {
		return
	}
	if cl := nc.Status.Client; cl != nil {
		c.Expiry.ObserveCertificate(approver.SignerClient, nc.Name, cl.NotBefore.Time, cl.NotAfter.Time, cl.CSRName)
	}
	if sv := nc.Status.Serving; sv != nil {
		c.Expiry.ObserveCertificate(approver.SignerServing, nc.Name, sv.NotBefore.Time, sv.NotAfter.Time, sv.CSRName)
	}
}

// observe remembers the certificate of an issued CSR and schedules its
// node's write: now if the entry was not written within Interval, else when
// Interval is over (one write however many certificates arrive meanwhile).
func (c *Controller) observe(ctx context.Context, csr *certificatesv1.CertificateSigningRequest) {
	now := c.Clock.Now()
	o, err := FromCSR(csr, now)
	if err != nil {
		if !errors.Is(err, errNotOurs) {
			log.FromContext(ctx).Error(err, "Not recording the certificate in the inventory", "csr", csr.Name)
		}
		return
	}
	c.mu.Lock()
	p := c.pending[o.Node]
	if p == nil {
		p = &pending{}
		c.pending[o.Node] = p
	}
	changed := false
	switch o.Kind {
	case KindClient:
		if Newer(&o.Record, p.client) {
			p.client, p.requested, changed = &o.Record, o.Requested, true
		}
	case KindServing:
		if Newer(&o.Record, p.serving) {
			p.serving, changed = &o.Record, true
		}
	}
	if changed {
		p.gen++
	}
	delay := c.lastWrite[o.Node].Add(c.Interval).Sub(now)
	c.Metrics.Pending.Set(float64(len(c.pending)))
	c.mu.Unlock()
	if changed {
		c.queue.AddAfter(o.Node, max(delay, 0))
	}
}

// run is the leader's writer: every entry is looked at once (residuals,
// owner references, grace periods, overdue rotations), then as scheduled.
func (c *Controller) run(ctx context.Context, informers interface {
	WaitForCacheSync(context.Context) bool
}) error {
	if !informers.WaitForCacheSync(ctx) {
		return nil // stopping
	}
	var list nodecsrv1alpha1.NodeCertificateList
	if err := c.Client.List(ctx, &list); err != nil {
		return fmt.Errorf("failed to list NodeCertificates: %w", err)
	}
	for i := range list.Items {
		c.queue.Add(list.Items[i].Name)
	}
	var wg sync.WaitGroup
	for range c.Workers {
		wg.Go(func() {
			for c.next(ctx) {
			}
		})
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	return nil
}

func (c *Controller) next(ctx context.Context) bool {
	node, shutdown := c.queue.Get()
	if shutdown {
		return false
	}
	defer c.queue.Done(node)
	l := log.FromContext(ctx).WithValues("node", node)
	after, err := c.sync(log.IntoContext(ctx, l), node)
	if err != nil {
		if ctx.Err() == nil {
			l.Error(err, "Failed to update the inventory; retrying")
		}
		c.queue.AddRateLimited(node)
		return true
	}
	c.queue.Forget(node)
	if after > 0 {
		c.queue.AddAfter(node, after)
	}
	return true
}

// sync brings a node's entry up to date and returns when to look at it
// again (0: only when something happens).
func (c *Controller) sync(ctx context.Context, name string) (time.Duration, error) {
	now := c.Clock.Now()
	c.mu.Lock()
	// At most one pass that may write per node and Interval: what arrives
	// meanwhile waits and is written together.
	if lw, ok := c.lastWrite[name]; ok {
		if wait := lw.Add(c.Interval).Sub(now); wait > 0 {
			c.mu.Unlock()
			return wait, nil
		}
	}
	var p pending
	if q := c.pending[name]; q != nil {
		p = *q
	}
	_, hasPending := c.pending[name]
	c.mu.Unlock()

	nc := &nodecsrv1alpha1.NodeCertificate{}
	err := c.Client.Get(ctx, client.ObjectKey{Name: name}, nc)
	exists := err == nil
	if err != nil && !apierrors.IsNotFound(err) {
		return 0, fmt.Errorf("failed to read NodeCertificate %q: %w", name, err)
	}
	node := approver.NodeMetadata()
	err = c.Client.Get(ctx, client.ObjectKey{Name: name}, node)
	nodeExists := err == nil
	if err != nil && !apierrors.IsNotFound(err) {
		return 0, fmt.Errorf("failed to read node %q: %w", name, err)
	}
	if !exists && !hasPending {
		c.Metrics.Overdue.DeleteLabelValues(name)
		return 0, nil
	}

	wrote := false
	for attempt := 0; ; attempt++ {
		if err := c.writes.Wait(ctx); err != nil {
			return 0, err
		}
		status := merge(nc.Status, &p, now)
		if !exists {
			nc = &nodecsrv1alpha1.NodeCertificate{ObjectMeta: metav1.ObjectMeta{Name: name}}
			if nodeExists {
				nc.OwnerReferences = []metav1.OwnerReference{ownerRef(node)}
			}
			if err := c.Client.Create(ctx, nc); err != nil {
				if apierrors.IsAlreadyExists(err) && attempt < 3 {
					c.Metrics.WriteErrors.WithLabelValues(opCreate).Inc()
					if err := c.APIReader.Get(ctx, client.ObjectKey{Name: name}, nc); err != nil {
						return 0, fmt.Errorf("failed to read NodeCertificate %q: %w", name, err)
					}
					exists = true
					continue
				}
				c.Metrics.WriteErrors.WithLabelValues(opCreate).Inc()
				return 0, fmt.Errorf("failed to create NodeCertificate %q: %w", name, err)
			}
			c.Metrics.Writes.WithLabelValues(opCreate).Inc()
			exists, wrote = true, true
		} else if nodeExists && !ownedBy(nc, node.GetUID()) {
			nc.OwnerReferences = append(withoutNodeOwners(nc.OwnerReferences), ownerRef(node))
			if err := c.Client.Update(ctx, nc); err != nil {
				c.Metrics.WriteErrors.WithLabelValues(opUpdate).Inc()
				if apierrors.IsConflict(err) && attempt < 3 {
					if err := c.APIReader.Get(ctx, client.ObjectKey{Name: name}, nc); err != nil {
						return 0, fmt.Errorf("failed to read NodeCertificate %q: %w", name, err)
					}
					continue
				}
				return 0, fmt.Errorf("failed to set the owner reference of NodeCertificate %q: %w", name, err)
			}
			c.Metrics.Writes.WithLabelValues(opUpdate).Inc()
			wrote = true
		}
		if sameStatus(&nc.Status, &status) {
			break
		}
		nc.Status = status
		if err := c.Client.Status().Update(ctx, nc); err != nil {
			c.Metrics.WriteErrors.WithLabelValues(opStatus).Inc()
			if (apierrors.IsConflict(err) || apierrors.IsNotFound(err)) && attempt < 3 {
				if err := c.APIReader.Get(ctx, client.ObjectKey{Name: name}, nc); err != nil {
					if !apierrors.IsNotFound(err) {
						return 0, fmt.Errorf("failed to read NodeCertificate %q: %w", name, err)
					}
					exists, nc = false, &nodecsrv1alpha1.NodeCertificate{}
				}
				continue
			}
			return 0, fmt.Errorf("failed to write the status of NodeCertificate %q: %w", name, err)
		}
		c.Metrics.Writes.WithLabelValues(opStatus).Inc()
		wrote = true
		break
	}
	c.mu.Lock()
	if q := c.pending[name]; q != nil && q.gen == p.gen {
		delete(c.pending, name)
	}
	if wrote {
		c.lastWrite[name] = now
	}
	c.Metrics.Pending.Set(float64(len(c.pending)))
	c.mu.Unlock()

	// A name that never registered a Node goes after the grace period; an
	// entry owned by a Node is the garbage collector's.
	if !nodeExists && !hasNodeOwner(nc) {
		deadline := lastSeen(nc).Add(c.UnregisteredGrace)
		if !now.Before(deadline) {
			uid := nc.UID
			err := c.Client.Delete(ctx, nc, client.Preconditions{UID: &uid, ResourceVersion: &nc.ResourceVersion})
			switch {
			case err == nil:
				c.Metrics.Writes.WithLabelValues(opDelete).Inc()
				log.FromContext(ctx).Info("Deleted the inventory entry of a name that never registered a Node", "grace", c.UnregisteredGrace)
			case apierrors.IsNotFound(err):
			default:
				c.Metrics.WriteErrors.WithLabelValues(opDelete).Inc()
				return 0, fmt.Errorf("failed to delete NodeCertificate %q: %w", name, err)
			}
			c.mu.Lock()
			delete(c.lastWrite, name)
			c.mu.Unlock()
			c.Metrics.Overdue.DeleteLabelValues(name)
			return 0, nil
		}
		return c.schedule(ctx, nc, false, now, deadline.Sub(now))
	}
	return c.schedule(ctx, nc, nodeExists, now, 0)
}

// schedule reports a rotation that is overdue and returns when to look at
// the entry again: when its residual changes, when its rotation window
// ends, or (past it) after OverdueRecheck; limit, when positive, bounds it.
func (c *Controller) schedule(ctx context.Context, nc *nodecsrv1alpha1.NodeCertificate, nodeExists bool, now time.Time, limit time.Duration) (time.Duration, error) {
	after := limit
	sooner := func(d time.Duration) {
		if d > 0 && (after <= 0 || d < after) {
			after = d
		}
	}
	cl := nc.Status.Client
	if cl == nil {
		c.Metrics.Overdue.DeleteLabelValues(nc.Name)
		return after, nil
	}
	if _, next := Residual(cl.NotAfter.Time, now); !next.IsZero() {
		sooner(next.Sub(now))
	}
	if now.Before(cl.RenewBefore.Time) {
		c.Metrics.Overdue.DeleteLabelValues(nc.Name)
		sooner(cl.RenewBefore.Sub(now) + time.Second)
		return after, nil
	}
	overdue := false
	if nodeExists {
		hb, err := c.Heartbeats.LastHeartbeat(ctx, nc.Name)
		if err != nil {
			return 0, err
		}
		overdue = Overdue(cl, hb, now, c.HeartbeatFresh)
	}
	if !overdue {
		// A node that does not heartbeat (down, or gone) is looked at
		// less often: one Lease read per ten rechecks.
		sooner(staleRecheckFactor * c.OverdueRecheck)
		c.Metrics.Overdue.DeleteLabelValues(nc.Name)
		return after, nil
	}
	sooner(c.OverdueRecheck)
	c.Metrics.Overdue.WithLabelValues(nc.Name).Set(1)
	note := fmt.Sprintf("the kubelet client certificate %s (CSR %s) passed the end of its rotation window at %s and expires at %s, and no newer one was issued; the node's Lease is renewed, so its kubelet runs but does not rotate (or its renewals are not approved)",
		cl.SerialNumber, cl.CSRName, cl.RenewBefore.UTC().Format(time.RFC3339), cl.NotAfter.UTC().Format(time.RFC3339))
	created, err := c.Events.Record(ctx, nc, "rotation-overdue/"+cl.SerialNumber, nodecsrv1alpha1.NodeCertificateKind, nodecsrv1alpha1.SchemeGroupVersion.String(), corev1.EventTypeWarning, ReasonRotationOverdue, "CheckRotation", note)
	if err != nil {
		return 0, err
	}
	if created {
		log.FromContext(ctx).Info("Kubelet client certificate rotation is overdue", "serial", cl.SerialNumber, "renewBefore", cl.RenewBefore, "notAfter", cl.NotAfter)
	}
	return after, nil
}

// Overdue: the certificate is past its rotation window and the node's
// last heartbeat is no older than fresh.
func Overdue(cl *nodecsrv1alpha1.CertificateRecord, lastHeartbeat, now time.Time, fresh time.Duration) bool {
	return cl != nil && now.After(cl.RenewBefore.Time) && now.Sub(lastHeartbeat) <= fresh
}

// merge is the entry's status with what was seen since: the newer
// certificate of each kind wins, the residual is recomputed.
func merge(cur nodecsrv1alpha1.NodeCertificateStatus, p *pending, now time.Time) nodecsrv1alpha1.NodeCertificateStatus {
	out := *cur.DeepCopy()
	if Newer(p.client, out.Client) {
		out.Client = p.client.DeepCopy()
		requested := p.requested
		out.LastRenewal = &requested
	}
	if Newer(p.serving, out.Serving) {
		out.Serving = p.serving.DeepCopy()
	}
	out.ClientResidual = ""
	if out.Client != nil {
		out.ClientResidual, _ = Residual(out.Client.NotAfter.Time, now)
	}
	if !sameStatus(&cur, &out) || out.ObservedTime == nil {
		t := metav1.NewTime(now.UTC().Truncate(time.Second))
		out.ObservedTime = &t
	}
	return out
}

// sameStatus compares two statuses but for when they were written.
func sameStatus(a, b *nodecsrv1alpha1.NodeCertificateStatus) bool {
	x, y := a.DeepCopy(), b.DeepCopy()
	x.ObservedTime, y.ObservedTime = nil, nil
	return equality.Semantic.DeepEqual(x, y)
}

// lastSeen is when the entry's newest certificate was seen (its creation
// for an entry without one).
func lastSeen(nc *nodecsrv1alpha1.NodeCertificate) time.Time {
	t := nc.CreationTimestamp.Time
	for _, r := range []*nodecsrv1alpha1.CertificateRecord{nc.Status.Client, nc.Status.Serving} {
		if r != nil && r.ObservedTime.After(t) {
			t = r.ObservedTime.Time
		}
	}
	return t
}

func ownerRef(node client.Object) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: "v1", Kind: "Node", Name: node.GetName(), UID: node.GetUID()}
}

func isNodeOwner(r metav1.OwnerReference) bool { return r.APIVersion == "v1" && r.Kind == "Node" }

func ownedBy(nc *nodecsrv1alpha1.NodeCertificate, uid types.UID) bool {
	for _, r := range nc.OwnerReferences {
		if isNodeOwner(r) && r.UID == uid && r.Name == nc.Name {
			return true
		}
	}
	return false
}

func hasNodeOwner(nc *nodecsrv1alpha1.NodeCertificate) bool {
	for _, r := range nc.OwnerReferences {
		if isNodeOwner(r) {
			return true
		}
	}
	return false
}

func withoutNodeOwners(refs []metav1.OwnerReference) []metav1.OwnerReference {
	var out []metav1.OwnerReference
	for _, r := range refs {
		if !isNodeOwner(r) {
			out = append(out, r)
		}
	}
	return out
}
