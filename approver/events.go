package approver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/time/rate"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// Component is the Event source and the owner of the approval conditions.
const Component = "nodecsr"

// EventRecorder writes one events.k8s.io/v1 Event per call, synchronously:
// the caller knows whether it was written. client-go's asynchronous
// recorders drop Events when their queue is full, which is exactly when a
// renewal storm needs them; decision Events go through the eventWriter
// below instead, which never drops one.
type EventRecorder struct {
	Client client.Client
	// Instance identifies this replica (the pod name).
	Instance string
	// Namespace receives Events about cluster-scoped objects ("default").
	Namespace string
}

// Event records one Event about obj. eventType is corev1.EventTypeNormal or
// corev1.EventTypeWarning; reason is a reason code, action what was done.
func (r *EventRecorder) Event(ctx context.Context, obj client.Object, kind, apiVersion, eventType, reason, action, note string) error {
	now := time.Now()
	name := fmt.Sprintf("%s.%x.%s", truncateName(obj.GetName(), 200), now.UnixNano(), rand.String(5))
	return r.create(ctx, obj, name, now, kind, apiVersion, eventType, reason, action, note)
}

// Record is Event with a name derived from the object's UID and key, so
// recording the same key again finds the Event there and creates nothing
// (created is false). A decision recorded once per CSR this way survives a
// crash between the decision and its Event: the next leader records it again
// without doubling it.
func (r *EventRecorder) Record(ctx context.Context, obj client.Object, key, kind, apiVersion, eventType, reason, action, note string) (created bool, err error) {
	sum := sha256.Sum256([]byte(string(obj.GetUID()) + "\x00" + obj.GetName() + "\x00" + key))
	name := truncateName(obj.GetName(), 200) + "." + hex.EncodeToString(sum[:8])
	err = r.create(ctx, obj, name, time.Now(), kind, apiVersion, eventType, reason, action, note)
	if apierrors.IsAlreadyExists(err) {
		return false, nil
	}
	return err == nil, err
}

func (r *EventRecorder) create(ctx context.Context, obj client.Object, name string, now time.Time, kind, apiVersion, eventType, reason, action, note string) error {
	ns := obj.GetNamespace()
	if ns == "" {
		ns = r.Namespace
	}
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	const maxNote = 1024 // the API server's limit for events.k8s.io notes
	if len(note) > maxNote {
		note = note[:maxNote-3] + "..."
	}
	ev := &eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{Name: name, Namespace: ns},
		EventTime:           metav1.NewMicroTime(now),
		ReportingController: Component,
		ReportingInstance:   r.Instance,
		Action:              action,
		Reason:              reason,
		Regarding: corev1.ObjectReference{
			Kind: kind, APIVersion: apiVersion, Name: obj.GetName(), Namespace: obj.GetNamespace(),
			UID: obj.GetUID(), ResourceVersion: obj.GetResourceVersion(),
		},
		Note: note,
		Type: eventType,
	}
	if err := r.Client.Create(ctx, ev); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return err
		}
		return fmt.Errorf("failed to record %s event %s on %s: %w", eventType, reason, obj.GetName(), err)
	}
	return nil
}

// truncateName turns an object name into the start of a DNS-1123 subdomain
// (CSR names may hold upper case and underscores; Event names may not).
func truncateName(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.':
			return r
		case r >= 'A' && r <= 'Z':
			return r + ('a' - 'A')
		default:
			return '-'
		}
	}, s)
	if len(s) > n {
		s = s[:n]
	}
	s = strings.Trim(s, "-.")
	if s == "" {
		s = "object"
	}
	return s
}

// The decision Event writer: the reconciler hands a decided CSR's Event to
// it after the approval write and goes on to the next CSR, so a decision
// costs the reconcile two requests in a row (the SubjectAccessReview and the
// approval), not three. The writer keeps the Event until it is written:
//
//   - its own workers (a client-go work queue) write it, and retry a failed
//     write with rate-limited backoff until it succeeds, through an API
//     server outage;
//   - at most maxPending Events wait; beyond that the reconciler waits for
//     room (decisions slow to the pace of Event writes rather than lose
//     Events);
//   - Events yield to decisions: while the approver has reconciles in
//     progress (a storm) and fewer than yieldBelow Events are held, only
//     yieldWorkers of the workers write, so that the API server spends its
//     time on the approvals nodes wait for; the backlog is written at full
//     concurrency as soon as the reconciles stop, or once yieldBelow Events
//     wait (a storm long enough to fill it is then decided at the pace it
//     would have been without yielding);
//   - on shutdown it drains for at most its drain bound, at full
//     concurrency; an Event still unwritten then is left to the next
//     leader's repair pass (repairDecisionEvents), which records the
//     decisions of the last repairWindow whose Event is missing.
//
// Every write goes through EventRecorder.Record with a name derived from the
// CSR, so a retry of a write that did succeed (a timeout), a second hand-off
// of the same decision or the repair pass finds the Event there and adds
// none: one decision, one Event.

// Defaults of the Event writer (Reconciler.EventWorkers, MaxPendingEvents,
// EventDrainTimeout).
const (
	DefaultEventWorkers      = 16
	defaultMaxPendingEvents  = 10_000
	defaultEventDrainTimeout = 5 * time.Second
)

// Defaults of the yield (Reconciler.EventYieldWorkers, EventYieldBelow).
// Two writers keep Events flowing during a storm without taking the API
// server from the approvals. A thousand held Events bounds what a storm
// defers: the sixteen writers write them in a few seconds once the storm is
// over, and a graceful shutdown's drain (5 s) can write about that many on
// a busy API server, so yielding does not leave more to the repair pass.
const (
	DefaultEventYieldWorkers = 2
	DefaultEventYieldBelow   = 1000
)

// Retries of a failed Event write: per Event, exponential from
// eventRetryBaseDelay to eventRetryMaxDelay; overall at most
// eventRetryQPS retries a second (burst eventRetryBurst), so a backlog of
// failures does not hammer an API server that is coming back.
var (
	eventRetryBaseDelay = 50 * time.Millisecond
	eventRetryMaxDelay  = 5 * time.Second
)

const (
	eventRetryQPS   = 100
	eventRetryBurst = 1000
	// lateEventTimeout bounds the inline write of an Event handed over after
	// the writer stopped (a reconcile that finished during shutdown).
	lateEventTimeout = 5 * time.Second
)

// eventQueueName names the writer's work queue in the workqueue_* metrics.
const eventQueueName = "nodecsr-decision-events"

// decisionEvent is one decision Event to write. csr holds only what the
// Event needs of the CSR (name, UID, resource version), not its request.
type decisionEvent struct {
	csr      *certificatesv1.CertificateSigningRequest
	condType certificatesv1.RequestConditionType
	reason   string
	message  string
	// failed: a write failed at least once (counted once in EventErrors).
	failed bool
	// slot: it holds one of the writer's maxPending slots.
	slot bool
}

// eventKey identifies a decision: a CSR has one, so one Event.
type eventKey struct {
	uid  types.UID
	name string
}

func newDecisionEvent(csr *certificatesv1.CertificateSigningRequest, condType certificatesv1.RequestConditionType, reason, message string) *decisionEvent {
	return &decisionEvent{
		csr: &certificatesv1.CertificateSigningRequest{ObjectMeta: metav1.ObjectMeta{
			Name: csr.Name, Namespace: csr.Namespace, UID: csr.UID, ResourceVersion: csr.ResourceVersion,
		}},
		condType: condType, reason: reason, message: message,
	}
}

func (e *decisionEvent) key() eventKey { return eventKey{uid: e.csr.UID, name: e.csr.Name} }

// eventWriter writes decision Events off the reconcile's critical path.
type eventWriter struct {
	write   func(ctx context.Context, e *decisionEvent) error
	metrics *Metrics
	workers int
	drain   time.Duration
	queue   workqueue.TypedRateLimitingInterface[eventKey]
	// slots bounds the Events held (queued, being written or waiting for a
	// retry) to its capacity.
	slots chan struct{}
	// busy reports whether decisions are in progress; while it does and
	// fewer than yieldBelow Events are held, only yieldWorkers write.
	busy         func() bool
	yieldWorkers int
	yieldBelow   int

	mu       sync.Mutex
	pending  map[eventKey]*decisionEvent
	started  bool
	stopped  bool
	draining bool
	// idle is closed and replaced whenever pending becomes empty (tests and
	// the drain wait on it).
	idle chan struct{}
	// wake is closed and replaced whenever the yield may have ended.
	wake chan struct{}
}

// eventWriterOptions configure an eventWriter; zero values take the
// defaults. Busy nil never yields.
type eventWriterOptions struct {
	Workers, MaxPending      int
	Drain                    time.Duration
	Busy                     func() bool
	YieldWorkers, YieldBelow int
}

func newEventWriter(write func(context.Context, *decisionEvent) error, m *Metrics, o eventWriterOptions) *eventWriter {
	if o.Workers <= 0 {
		o.Workers = DefaultEventWorkers
	}
	if o.MaxPending <= 0 {
		o.MaxPending = defaultMaxPendingEvents
	}
	if o.Drain <= 0 {
		o.Drain = defaultEventDrainTimeout
	}
	if o.YieldWorkers <= 0 {
		o.YieldWorkers = DefaultEventYieldWorkers
	}
	if o.YieldBelow <= 0 {
		o.YieldBelow = DefaultEventYieldBelow
	}
	if o.Busy == nil || o.YieldWorkers >= o.Workers {
		o.Busy = func() bool { return false }
	}
	limiter := workqueue.NewTypedMaxOfRateLimiter(
		workqueue.NewTypedItemExponentialFailureRateLimiter[eventKey](eventRetryBaseDelay, eventRetryMaxDelay),
		&workqueue.TypedBucketRateLimiter[eventKey]{Limiter: rate.NewLimiter(rate.Limit(eventRetryQPS), eventRetryBurst)},
	)
	return &eventWriter{
		write: write, metrics: m, workers: o.Workers, drain: o.Drain,
		busy: o.Busy, yieldWorkers: o.YieldWorkers, yieldBelow: min(o.YieldBelow, o.MaxPending),
		queue:   workqueue.NewTypedRateLimitingQueueWithConfig(limiter, workqueue.TypedRateLimitingQueueConfig[eventKey]{Name: eventQueueName}),
		slots:   make(chan struct{}, o.MaxPending),
		pending: map[eventKey]*decisionEvent{},
		idle:    make(chan struct{}),
		wake:    make(chan struct{}),
	}
}

// signal wakes the workers that yield, to look again whether they still
// should (the reconciles stopped, the backlog grew, the drain began).
func (w *eventWriter) signal() {
	w.mu.Lock()
	w.signalLocked()
	w.mu.Unlock()
}

func (w *eventWriter) signalLocked() {
	close(w.wake)
	w.wake = make(chan struct{})
}

// yielding reports whether the workers beyond yieldWorkers should wait, and
// the channel that is closed when that may have changed.
func (w *eventWriter) yielding() (bool, <-chan struct{}) {
	w.mu.Lock()
	wake, draining, held := w.wake, w.draining, len(w.pending)
	w.mu.Unlock()
	// busy is read after wake was taken: a reconcile that ends in between
	// closes this wake.
	return !draining && held < w.yieldBelow && w.busy(), wake
}

// takeTurn waits while the writer yields to decisions; false when ctx is
// done.
func (w *eventWriter) takeTurn(ctx context.Context) bool {
	for {
		yield, wake := w.yielding()
		if !yield {
			return true
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return false
		}
	}
}

// enqueue hands an Event to the writer. It returns once the writer holds the
// Event, waiting for room while maxPending Events are held (or until ctx is
// done: the Event is then held beyond the bound rather than lost). After the
// writer stopped it writes the Event itself.
func (w *eventWriter) enqueue(ctx context.Context, e *decisionEvent) {
	select {
	case w.slots <- struct{}{}:
		e.slot = true
	default:
		log.FromContext(ctx).V(1).Info("Waiting for room in the decision Event queue", "held", cap(w.slots))
		select {
		case w.slots <- struct{}{}:
			e.slot = true
		case <-ctx.Done():
		}
	}
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		w.release(e)
		w.writeLate(ctx, e)
		return
	}
	k := e.key()
	if _, ok := w.pending[k]; ok {
		// The same decision handed over twice: it has its Event coming.
		w.mu.Unlock()
		w.release(e)
		return
	}
	w.pending[k] = e
	w.metrics.EventQueueDepth.Set(float64(len(w.pending)))
	if len(w.pending) == w.yieldBelow {
		w.signalLocked() // the backlog is as long as the yield lets it be
	}
	w.queue.Add(k)
	w.mu.Unlock()
}

// writeLate writes an Event handed over after the writer stopped.
func (w *eventWriter) writeLate(ctx context.Context, e *decisionEvent) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lateEventTimeout)
	defer cancel()
	if err := w.write(ctx, e); err != nil {
		w.metrics.EventErrors.Inc()
		w.metrics.EventsAbandoned.WithLabelValues("Shutdown").Inc()
		log.FromContext(ctx).Error(err, "Failed to record a decision Event during shutdown; the next leader's repair pass records it", "csr", e.csr.Name)
	}
}

func (w *eventWriter) release(e *decisionEvent) {
	if e.slot {
		e.slot = false
		<-w.slots
	}
}

// done forgets a written (or abandoned) Event.
func (w *eventWriter) done(k eventKey) {
	w.mu.Lock()
	defer w.mu.Unlock()
	e, ok := w.pending[k]
	if !ok {
		return
	}
	delete(w.pending, k)
	w.release(e)
	w.metrics.EventQueueDepth.Set(float64(len(w.pending)))
	if len(w.pending) == 0 {
		close(w.idle)
		w.idle = make(chan struct{})
	}
}

// depth is the number of Events held.
func (w *eventWriter) depth() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending)
}

// waitIdle waits until no Event is held, or ctx is done.
func (w *eventWriter) waitIdle(ctx context.Context) bool {
	for {
		w.mu.Lock()
		n, idle := len(w.pending), w.idle
		w.mu.Unlock()
		if n == 0 {
			return true
		}
		select {
		case <-idle:
		case <-ctx.Done():
			return false
		}
	}
}

// run writes Events until ctx is done, then drains for at most the drain
// bound and leaves what is left to the repair pass. It runs once.
func (w *eventWriter) run(ctx context.Context) error {
	w.mu.Lock()
	if w.started {
		w.mu.Unlock()
		return errors.New("the decision Event writer was started twice")
	}
	w.started = true
	w.mu.Unlock()

	l := log.FromContext(ctx).WithName("events")
	writeCtx, stopWrites := context.WithCancel(log.IntoContext(context.WithoutCancel(ctx), l))
	defer stopWrites()
	var wg sync.WaitGroup
	for i := range w.workers {
		yields := i >= w.yieldWorkers
		wg.Go(func() {
			for (!yields || w.takeTurn(writeCtx)) && w.processNext(writeCtx) {
			}
		})
	}
	<-ctx.Done()

	// Drain, with every worker: the reconcilers stop at the same time and
	// may still hand over an Event or two; the drain bound keeps a dead API
	// server from holding up the shutdown.
	w.mu.Lock()
	w.draining = true
	w.signalLocked()
	w.mu.Unlock()
	drainCtx, cancelDrain := context.WithTimeout(writeCtx, w.drain)
	w.waitIdle(drainCtx)
	cancelDrain()
	w.mu.Lock()
	w.stopped = true
	w.queue.ShutDown()
	w.mu.Unlock()
	stopWrites()
	wg.Wait()

	w.mu.Lock()
	left := len(w.pending)
	for k, e := range w.pending {
		delete(w.pending, k)
		w.release(e)
	}
	w.metrics.EventQueueDepth.Set(0)
	w.mu.Unlock()
	if left > 0 {
		w.metrics.EventsAbandoned.WithLabelValues("Shutdown").Add(float64(left))
		l.Info("Stopped with decision Events unwritten; the next leader's repair pass records them", "unwritten", left, "drainTimeout", w.drain)
	}
	return nil
}

// processNext writes one Event; false when the queue is shut down.
func (w *eventWriter) processNext(ctx context.Context) bool {
	k, shutdown := w.queue.Get()
	if shutdown {
		return false
	}
	defer w.queue.Done(k)
	w.mu.Lock()
	e, ok := w.pending[k]
	w.mu.Unlock()
	if !ok {
		w.queue.Forget(k)
		return true
	}
	// The logger with the Event's keys is made only when there is something
	// to log: most writes succeed at the first attempt and log nothing.
	l := func() logr.Logger { return log.FromContext(ctx).WithValues("csr", e.csr.Name, "reason", e.reason) }
	err := w.write(ctx, e)
	switch {
	case err == nil:
		if e.failed {
			l().Info("Recorded a decision Event that had failed", "attempts", w.queue.NumRequeues(k)+1)
		}
		w.queue.Forget(k)
		w.done(k)
	case apierrors.IsInvalid(err) || apierrors.IsBadRequest(err):
		// Retrying cannot help an Event the API server rejects as such.
		if !e.failed {
			w.metrics.EventErrors.Inc()
		}
		w.metrics.EventsAbandoned.WithLabelValues("Invalid").Inc()
		l().Error(err, "The API server rejected a decision Event; it is not retried")
		w.queue.Forget(k)
		w.done(k)
	default:
		if !e.failed {
			e.failed = true
			w.metrics.EventErrors.Inc()
			l().Error(err, "Failed to record the decision Event; it will be retried")
		}
		if ctx.Err() == nil {
			w.queue.AddRateLimited(k)
		}
	}
	return true
}
