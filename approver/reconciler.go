package approver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/time/rate"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/nodecsr/nodecsr/config"
)

// The signers nodecsr decides for: kubelet client certificates always,
// kubelet serving certificates when the policy enables serving.
const (
	KubeletClientSigner  = certificatesv1.KubeAPIServerClientKubeletSignerName
	KubeletServingSigner = certificatesv1.KubeletServingSignerName
)

// Decisions that write no condition are re-examined after these delays.
const (
	leftPendingRetry     = 5 * time.Minute
	factsIncompleteRetry = 30 * time.Second
	// conflictRetry decides a CSR again soon after a write lost a race on a
	// CSR that is still pending (the cache was stale).
	conflictRetry = 50 * time.Millisecond
)

// Reconciler decides pending kubelet client CSRs: it inspects the CSR once,
// decides it statically, gathers only the cluster facts the undecided rules
// need, decides it with them, throttles bootstrap approvals per requester,
// writes one approval-subresource update, and records the decision as a log
// line, metrics and an Event, which it hands to its Event writer (events.go)
// so that the next CSR does not wait for it.
type Reconciler struct {
	// Client reads CSRs from the cache and writes approvals and Events.
	Client client.Client
	// APIReader reads from the API server directly, after a write conflict.
	APIReader client.Reader
	// Policy returns the policy in force.
	Policy func() *config.Effective
	// Facts gathers the cluster facts a decision needs (a Gatherer with
	// the SubjectAccessReview, the Node cache, the Lease reader and the CSR
	// cache index).
	Facts FactGatherer
	// Events records decisions; Metrics counts them.
	Events  *EventRecorder
	Metrics *Metrics
	// Clock is the time source (a fake in tests).
	Clock clock.PassiveClock
	// Expiry, when set, is fed every issued kubelet client certificate.
	Expiry *ExpiryTracker
	// Serving: the manager's cache was set up for serving
	// (CacheOptions(true)): it holds every CSR and typed Nodes with their
	// addresses, and serving CSRs are reconciled (and decided while the
	// policy's serving.enabled is true).
	Serving bool
	// EventWorkers write the decision Events (default 16); at most
	// MaxPendingEvents wait to be written (default 10000: beyond it a
	// reconcile waits for room); on shutdown the writer drains for at most
	// EventDrainTimeout (default 5s) and leaves the rest to the next
	// leader's repair pass. While reconciles are in progress and fewer
	// than EventYieldBelow Events wait (default 1000), only
	// EventYieldWorkers of the writers write (default 2; EventWorkers or
	// more: never yield): Events yield to decisions.
	EventWorkers      int
	MaxPendingEvents  int
	EventDrainTimeout time.Duration
	EventYieldWorkers int
	EventYieldBelow   int

	// inflight counts the reconciles in progress (the Event writer yields
	// to them).
	inflight   atomic.Int64
	limiter    requesterLimiter
	reported   reportedSet
	writerOnce sync.Once
	writer     *eventWriter
	reloads    chan event.TypedGenericEvent[*certificatesv1.CertificateSigningRequest]
}

// events is the decision Event writer, created on first use.
func (r *Reconciler) events() *eventWriter {
	r.writerOnce.Do(func() {
		r.writer = newEventWriter(func(ctx context.Context, e *decisionEvent) error {
			_, err := r.recordDecision(ctx, e)
			return err
		}, r.Metrics, eventWriterOptions{
			Workers: r.EventWorkers, MaxPending: r.MaxPendingEvents, Drain: r.EventDrainTimeout,
			Busy:         func() bool { return r.inflight.Load() > 0 },
			YieldWorkers: r.EventYieldWorkers, YieldBelow: r.EventYieldBelow,
		})
	})
	return r.writer
}

// CacheOptions restricts the manager's cache to what the approver needs,
// without managedFields. Without serving: kubelet client CSRs only (a field
// selector on spec.signerName), and Nodes as metadata only. With serving
// (decided at startup: field selectors cannot OR two signers): every CSR,
// those of other signers stripped of their request and certificate and
// filtered out before any work, and typed Nodes trimmed to their addresses
// (TrimNode).
func CacheOptions(serving bool) cache.Options {
	if !serving {
		return cache.Options{
			DefaultTransform: cache.TransformStripManagedFields(),
			ByObject: map[client.Object]cache.ByObject{
				&certificatesv1.CertificateSigningRequest{}: {
					Field: fields.OneTermEqualSelector("spec.signerName", KubeletClientSigner),
				},
			},
		}
	}
	return cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&certificatesv1.CertificateSigningRequest{}: {Transform: trimForeignCSR},
			&corev1.Node{}: {Transform: TrimNode},
		},
	}
}

// trimForeignCSR keeps of a CSR for a signer nodecsr does not decide only
// what says it is not ours: its metadata, signer and conditions.
func trimForeignCSR(obj any) (any, error) {
	csr, ok := obj.(*certificatesv1.CertificateSigningRequest)
	if !ok {
		return obj, nil
	}
	csr.ManagedFields = nil
	if SignerOf(csr.Spec.SignerName) == SignerOther {
		csr.Spec.Request, csr.Status.Certificate = nil, nil
	}
	return csr, nil
}

// ours reports whether the reconciler decides CSRs of this signer.
func (r *Reconciler) ours(signer string) bool {
	switch SignerOf(signer) {
	case SignerClient:
		return true
	case SignerServing:
		return r.Serving
	}
	return false
}

// SetupWithManager registers the indexes and the controller.
func (r *Reconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, workers int) error {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	r.reloads = make(chan event.TypedGenericEvent[*certificatesv1.CertificateSigningRequest], 1024)
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &certificatesv1.CertificateSigningRequest{}, IndexNodeName, IndexCSRByNodeName); err != nil {
		return fmt.Errorf("failed to index CSRs by node name: %w", err)
	}
	if r.Serving {
		if err := idx.IndexField(ctx, &corev1.Node{}, IndexNodeAddress, IndexNodeByAddress); err != nil {
			return fmt.Errorf("failed to index Nodes by address: %w", err)
		}
	}
	if r.Expiry != nil {
		if err := r.trackExpiry(ctx, mgr); err != nil {
			return err
		}
	}
	ours := predicate.NewPredicateFuncs(func(o client.Object) bool {
		csr, ok := o.(*certificatesv1.CertificateSigningRequest)
		return ok && r.ours(csr.Spec.SignerName) && IsPending(csr)
	})
	// A Node that appears or goes away can change the verdict on CSRs left
	// pending for it (onViolation: LeavePending); with serving, so can a
	// change of its addresses (WaitingForNodeAddresses).
	nodeLifecycle := predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, ok1 := e.ObjectOld.(*corev1.Node)
			n, ok2 := e.ObjectNew.(*corev1.Node)
			return ok1 && ok2 && !equality.Semantic.DeepEqual(o.Status.Addresses, n.Status.Addresses)
		},
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
	// The decision Event writer runs while this replica leads; it drains on
	// the way out (leader-elected runnables).
	if err := mgr.Add(manager.RunnableFunc(r.events().run)); err != nil {
		return err
	}
	// A new leader records the decision Events its predecessor may have
	// died (or stopped) before writing.
	err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		if !mgr.GetCache().WaitForCacheSync(ctx) {
			return nil // stopping
		}
		return r.repairDecisionEvents(ctx)
	}))
	if err != nil {
		return err
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("nodecsr-approver").
		For(&certificatesv1.CertificateSigningRequest{}, builder.WithPredicates(ours))
	if r.Serving {
		b = b.Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(r.csrsForNode), builder.WithPredicates(nodeLifecycle))
	} else {
		b = b.WatchesMetadata(NodeMetadata(), handler.EnqueueRequestsFromMapFunc(r.csrsForNode), builder.WithPredicates(nodeLifecycle))
	}
	return b.
		WatchesRawSource(source.Channel(r.reloads, &handler.TypedEnqueueRequestForObject[*certificatesv1.CertificateSigningRequest]{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: workers, RateLimiter: retryLimiter()}).
		WithLogConstructor(reconcileLogger(mgr.GetLogger())).
		Complete(r)
}

// reconcileLogger gives each reconcile a logger with the controller's name
// and the CSR's ("controller", "csr"; controller-runtime adds
// "reconcileID"). It replaces controller-runtime's default, which adds four
// more keys in two more WithValues per reconcile: each one copies the
// logger's encoder, a few KiB of garbage per decision at hundreds of
// decisions a second.
func reconcileLogger(base logr.Logger) func(*reconcile.Request) logr.Logger {
	base = base.WithValues("controller", "nodecsr-approver")
	return func(req *reconcile.Request) logr.Logger {
		if req == nil {
			return base
		}
		return base.WithValues("csr", req.Name)
	}
}

// maxErrorRetry caps the backoff of a CSR whose reconcile failed (a fact
// that could not be gathered, a failed write). The default cap, 1000 s,
// would retry a CSR whose SubjectAccessReview keeps failing so rarely that
// nodecsr_fact_errors_total looks quiet over any five minutes.
const maxErrorRetry = time.Minute

// retryLimiter is controller-runtime's default rate limiter with the
// per-item backoff capped at maxErrorRetry.
func retryLimiter() workqueue.TypedRateLimiter[reconcile.Request] {
	return workqueue.NewTypedMaxOfRateLimiter(
		workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](5*time.Millisecond, maxErrorRetry),
		&workqueue.TypedBucketRateLimiter[reconcile.Request]{Limiter: rate.NewLimiter(rate.Limit(10), 100)},
	)
}

// trackExpiry feeds the expiry tracker from the CSR informer (every replica
// runs it, so a follower's view is warm when it takes over) and forgets nodes
// whose Node is deleted.
func (r *Reconciler) trackExpiry(ctx context.Context, mgr ctrl.Manager) error {
	csrs, err := mgr.GetCache().GetInformer(ctx, &certificatesv1.CertificateSigningRequest{})
	if err != nil {
		return fmt.Errorf("failed to get the CSR informer: %w", err)
	}
	_, err = csrs.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if csr, ok := obj.(*certificatesv1.CertificateSigningRequest); ok {
				r.Expiry.Observe(csr)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			old, _ := oldObj.(*certificatesv1.CertificateSigningRequest)
			if csr, ok := newObj.(*certificatesv1.CertificateSigningRequest); ok {
				r.Expiry.ObserveUpdate(old, csr)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("failed to watch CSRs for certificate expiry: %w", err)
	}
	nodes, err := mgr.GetCache().GetInformer(ctx, NodeObject(r.Serving))
	if err != nil {
		return fmt.Errorf("failed to get the Node informer: %w", err)
	}
	_, err = nodes.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if m, ok := obj.(client.Object); ok {
				r.Expiry.Forget(m.GetName())
			}
		},
	})
	if err != nil {
		return fmt.Errorf("failed to watch Nodes for certificate expiry: %w", err)
	}
	return nil
}

func (r *Reconciler) csrsForNode(ctx context.Context, node client.Object) []reconcile.Request {
	var list certificatesv1.CertificateSigningRequestList
	if err := r.Client.List(ctx, &list, client.MatchingFields{IndexNodeName: node.GetName()}); err != nil {
		log.FromContext(ctx).Error(err, "Failed to list CSRs for node", "node", node.GetName())
		return nil
	}
	var reqs []reconcile.Request
	for i := range list.Items {
		if IsPending(&list.Items[i]) && r.ours(list.Items[i].Spec.SignerName) {
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: list.Items[i].Name}})
		}
	}
	return reqs
}

// PolicyChanged re-queues every pending CSR so the new policy applies to the
// ones decided without a condition (DryRun, LeavePending, rate limited).
func (r *Reconciler) PolicyChanged(ctx context.Context) {
	var list certificatesv1.CertificateSigningRequestList
	if err := r.Client.List(ctx, &list); err != nil {
		log.FromContext(ctx).Error(err, "Failed to list CSRs after a policy change")
		return
	}
	for i := range list.Items {
		if !IsPending(&list.Items[i]) || !r.ours(list.Items[i].Spec.SignerName) {
			continue
		}
		select {
		case r.reloads <- event.TypedGenericEvent[*certificatesv1.CertificateSigningRequest]{Object: &list.Items[i]}:
		case <-ctx.Done():
			return
		}
	}
}

// Reconcile decides one CSR.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	r.inflight.Add(1)
	defer func() {
		if r.inflight.Add(-1) == 0 {
			r.events().signal() // the storm is over: the Event writers catch up
		}
	}()
	csr := &certificatesv1.CertificateSigningRequest{}
	if err := r.Client.Get(ctx, req.NamespacedName, csr); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if !r.ours(csr.Spec.SignerName) || !IsPending(csr) {
		return reconcile.Result{}, nil
	}
	policy := r.Policy()

	// Inspect once; the static decision first, so a hopeless CSR costs no
	// API call and no signature check.
	inspected := Inspect(policy, csr)
	d := Decide(policy, inspected, Facts{})
	if d.Verdict == Ignore && d.Reason == ReasonFactsIncomplete {
		facts, err := r.Facts.Gather(ctx, inspected, d.Needs)
		if err != nil {
			var fe *FactError
			if errors.As(err, &fe) {
				r.Metrics.FactErrors.WithLabelValues(fe.Fact.String()).Inc()
			}
			return reconcile.Result{}, err
		}
		d = Decide(policy, inspected, facts)
	}
	// The throttle acts after the decision: an approval over the
	// requester's bootstrap.rateLimit waits, it is never denied.
	var retry time.Duration
	if d.Verdict == Approve && d.Path == PathBootstrap {
		b := &policy.Bootstrap
		if ok, wait := r.limiter.take(csr.Spec.Username, b.RateLimitPerMinute, b.RateLimitBurst, r.Clock.Now()); !ok {
			d.Verdict, d.Reason = Ignore, ReasonRateLimited
			d.Message = fmt.Sprintf("requester %s exceeded bootstrap.rateLimit (%d per minute, burst %d); the CSR stays pending and is retried", quote(csr.Spec.Username), b.RateLimitPerMinute, b.RateLimitBurst)
			retry = wait
		}
	}
	return r.record(ctx, policy, csr, d, retry)
}

// record makes the decision's one write and records it.
func (r *Reconciler) record(ctx context.Context, policy *config.Effective, csr *certificatesv1.CertificateSigningRequest, d Decision, retry time.Duration) (reconcile.Result, error) {
	l := log.FromContext(ctx)
	switch {
	case d.Verdict == Ignore && (d.Reason == ReasonNotKubeletClientSigner || d.Reason == ReasonAlreadyDecided):
		return reconcile.Result{}, nil
	case d.Verdict == Ignore:
		if retry == 0 {
			retry = leftPendingRetry
			if d.Reason == ReasonFactsIncomplete {
				retry = factsIncompleteRetry
			}
		}
		r.report(ctx, policy, csr, d, "Ignore", "LeftPending")
		return reconcile.Result{RequeueAfter: retry}, nil
	case policy.Mode == config.ModeDryRun:
		label := "Would" + string(d.Verdict)
		r.report(ctx, policy, csr, d, label, label)
		return reconcile.Result{}, nil
	}

	condType := certificatesv1.CertificateApproved
	if d.Verdict == Deny {
		condType = certificatesv1.CertificateDenied
	}
	now := r.Clock.Now()
	csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
		Type:           condType,
		Status:         corev1.ConditionTrue,
		Reason:         d.Reason,
		Message:        d.Message,
		LastUpdateTime: metav1.NewTime(now),
	})
	if err := r.Client.SubResource("approval").Update(ctx, csr); err != nil {
		switch {
		case apierrors.IsNotFound(err):
			return reconcile.Result{}, nil
		case apierrors.IsConflict(err):
			return r.conflict(ctx, csr.Name)
		default:
			return reconcile.Result{}, fmt.Errorf("failed to write %s for CSR %q: %w", condType, csr.Name, err)
		}
	}
	r.Metrics.Decisions.WithLabelValues(string(d.Verdict), d.Reason, string(d.Path), d.Signer.String()).Inc()
	r.Metrics.DecisionLatency.WithLabelValues(string(d.Verdict), d.Signer.String()).Observe(now.Sub(csr.CreationTimestamp.Time).Seconds())
	l.Info("Decided CSR", "signer", d.Signer.String(), "requester", csr.Spec.Username, "policy", policy.Digest, "decision", d.Verdict, "reason", d.Reason, "path", d.Path, "node", d.NodeName, "message", d.Message)
	// The Event is written by the Event writer, which holds it until it is
	// written (retrying through an outage); the CSR is done.
	r.events().enqueue(ctx, newDecisionEvent(csr, condType, d.Reason, d.Message))
	return reconcile.Result{}, nil
}

// decisionEventKey names the one decision Event of a CSR (EventRecorder.Record).
const decisionEventKey = "decision"

// recordDecision writes a decision's Event, or finds it there (created false).
func (r *Reconciler) recordDecision(ctx context.Context, e *decisionEvent) (created bool, err error) {
	eventType, action := corev1.EventTypeNormal, "Approved"
	if e.condType == certificatesv1.CertificateDenied {
		eventType, action = corev1.EventTypeWarning, "Denied"
	}
	return r.Events.Record(ctx, e.csr, decisionEventKey, "CertificateSigningRequest", certificatesv1.SchemeGroupVersion.String(), eventType, e.reason, action, e.message)
}

// conflict handles a write that lost a race: if someone else decided the CSR
// it is left alone; otherwise it is decided again from fresh state.
func (r *Reconciler) conflict(ctx context.Context, name string) (reconcile.Result, error) {
	fresh := &certificatesv1.CertificateSigningRequest{}
	if err := r.APIReader.Get(ctx, client.ObjectKey{Name: name}, fresh); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if !IsPending(fresh) {
		r.Metrics.DecidedElsewhere.Inc()
		log.FromContext(ctx).Info("CSR was decided elsewhere; leaving it alone")
		return reconcile.Result{}, nil
	}
	r.Metrics.WriteConflicts.Inc()
	return reconcile.Result{RequeueAfter: conflictRetry}, nil
}

// report records a decision that writes no condition (DryRun, left pending).
// The same verdict and reason under the same policy is reported once per
// CSR, however often the CSR is re-examined.
func (r *Reconciler) report(ctx context.Context, policy *config.Effective, csr *certificatesv1.CertificateSigningRequest, d Decision, label, action string) {
	key := label + "/" + d.Reason + "/" + policy.Digest
	if !r.reported.add(string(csr.UID) + "/" + key) {
		return
	}
	r.Metrics.Decisions.WithLabelValues(label, d.Reason, string(d.Path), d.Signer.String()).Inc()
	log.FromContext(ctx).Info("Decided CSR without writing a condition", "signer", d.Signer.String(), "requester", csr.Spec.Username, "policy", policy.Digest, "decision", label, "reason", d.Reason, "path", d.Path, "node", d.NodeName, "message", d.Message)
	eventType := corev1.EventTypeNormal
	if d.Verdict == Deny || d.Reason != ReasonRateLimited && d.Verdict == Ignore {
		eventType = corev1.EventTypeWarning
	}
	note := fmt.Sprintf("%s (%s): %s", label, policy.Mode, d.Message)
	// The same report after a restart finds its Event and adds none.
	if _, err := r.Events.Record(ctx, csr, key, "CertificateSigningRequest", certificatesv1.SchemeGroupVersion.String(), eventType, d.Reason, action, note); err != nil {
		r.Metrics.EventErrors.Inc()
		log.FromContext(ctx).Error(err, "Failed to record the decision Event")
	}
}

// reportedSet remembers which condition-less decisions were reported. It is
// bounded: when full it starts again (at worst an Event is repeated).
type reportedSet struct {
	mu   sync.Mutex
	seen map[string]struct{}
}

const reportedSetMax = 100_000

func (s *reportedSet) add(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[key]; ok {
		return false
	}
	if s.seen == nil || len(s.seen) >= reportedSetMax {
		s.seen = map[string]struct{}{}
	}
	s.seen[key] = struct{}{}
	return true
}
