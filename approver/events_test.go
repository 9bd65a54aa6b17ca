package approver

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	certificatesv1 "k8s.io/api/certificates/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/nodecsr/nodecsr/internal/csrtest"
)

// eventCreates intercepts the creation of Events: before runs first (it may
// block or fail the write), and every attempt is counted.
type eventCreates struct {
	attempts atomic.Int32
	before   func(ctx context.Context) error
}

func (e *eventCreates) funcs() interceptor.Funcs {
	return interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			if _, ok := obj.(*eventsv1.Event); ok {
				e.attempts.Add(1)
				if e.before != nil {
					if err := e.before(ctx); err != nil {
						return err
					}
				}
			}
			return c.Create(ctx, obj, opts...)
		},
	}
}

func withUID(name string) *certificatesv1.CertificateSigningRequest {
	csr := csrtest.Build(csrtest.WithName(name))
	csr.UID = types.UID(name + "-uid")
	return csr
}

func TestDecisionEventIsWrittenAsynchronouslyAndOnce(t *testing.T) {
	release := make(chan struct{})
	creates := &eventCreates{before: func(ctx context.Context) error {
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	csr := withUID("async")
	h := newHarness(t, "", creates.funcs(), csr)

	// The reconcile is done while its Event is still being written.
	h.reconcile(t, "async")
	if c := h.csr(t, "async").Status.Conditions; len(c) != 1 || c[0].Type != certificatesv1.CertificateApproved {
		t.Fatalf("conditions %+v", c)
	}
	if ev := h.eventsNow(t); len(ev) != 0 {
		t.Fatalf("the Event was written before the reconcile returned: %+v", ev)
	}
	if v := testutil.ToFloat64(h.r.Metrics.EventQueueDepth); v != 1 {
		t.Fatalf("event queue depth %v, want 1", v)
	}
	// The same decision handed over again while its Event is pending adds nothing.
	decided := h.csr(t, "async")
	h.r.events().enqueue(t.Context(), newDecisionEvent(decided, certificatesv1.CertificateApproved, ReasonRenewalApproved, "again"))
	if v := testutil.ToFloat64(h.r.Metrics.EventQueueDepth); v != 1 {
		t.Fatalf("event queue depth %v after a second hand-over, want 1", v)
	}

	close(release)
	ev := h.events(t)
	if len(ev) != 1 || ev[0].Reason != ReasonRenewalApproved || ev[0].Action != "Approved" || ev[0].Regarding.Name != "async" || ev[0].Regarding.UID != csr.UID {
		t.Fatalf("events %+v", ev)
	}
	if n := creates.attempts.Load(); n != 1 {
		t.Fatalf("%d Event writes, want 1", n)
	}
	// Handed over once more after it was written (a retry of a write that
	// did succeed looks the same): the Event is found, not doubled.
	h.r.events().enqueue(t.Context(), newDecisionEvent(decided, certificatesv1.CertificateApproved, ReasonRenewalApproved, "again"))
	if ev := h.events(t); len(ev) != 1 {
		t.Fatalf("%d Events after a repeated write, want 1: %+v", len(ev), ev)
	}
	if v := testutil.ToFloat64(h.r.Metrics.EventQueueDepth); v != 0 {
		t.Fatalf("event queue depth %v, want 0", v)
	}
	if v := testutil.ToFloat64(h.r.Metrics.EventErrors); v != 0 {
		t.Fatalf("event errors %v", v)
	}
}

func TestFailedDecisionEventIsRetriedUntilWritten(t *testing.T) {
	creates := &eventCreates{}
	creates.before = func(context.Context) error {
		if creates.attempts.Load() <= 3 {
			return apierrors.NewServiceUnavailable("the API server is restarting")
		}
		return nil
	}
	h := newHarness(t, "", creates.funcs(), withUID("outage"))
	h.reconcile(t, "outage")
	if c := h.csr(t, "outage").Status.Conditions; len(c) != 1 {
		t.Fatalf("the decision must stand without its Event: %+v", c)
	}
	ev := h.events(t)
	if len(ev) != 1 || ev[0].Reason != ReasonRenewalApproved {
		t.Fatalf("events after the retries: %+v", ev)
	}
	if n := creates.attempts.Load(); n != 4 {
		t.Fatalf("%d Event writes, want 3 failures and 1 success", n)
	}
	// Counted once per Event, not per attempt.
	if v := testutil.ToFloat64(h.r.Metrics.EventErrors); v != 1 {
		t.Fatalf("event errors %v, want 1", v)
	}
}

func TestShutdownDrainsPendingEvents(t *testing.T) {
	release := make(chan struct{})
	creates := &eventCreates{before: func(context.Context) error {
		<-release // the writes are slow: they finish during the shutdown
		return nil
	}}
	const n = 10
	var objs []client.Object
	for i := range n {
		objs = append(objs, withUID(string(rune('a'+i))))
	}
	h := newHarnessWith(t, "", creates.funcs(), func(r *Reconciler) { r.EventWorkers = 2 }, objs...)
	for i := range n {
		h.reconcile(t, string(rune('a'+i)))
	}
	if d := h.r.events().depth(); d != n {
		t.Fatalf("%d Events pending, want %d", d, n)
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		h.stopEvents()
	}()
	select {
	case <-stopped:
		t.Fatal("the Event writer stopped with Events pending and its drain bound not reached")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	<-stopped
	if ev := h.eventsNow(t); len(ev) != n {
		t.Fatalf("%d Events written by the end of the drain, want %d", len(ev), n)
	}
	if v := testutil.ToFloat64(h.r.Metrics.EventsAbandoned.WithLabelValues("Shutdown")); v != 0 {
		t.Fatalf("%v Events abandoned", v)
	}
}

func TestShutdownLeavesUnwritableEventsToTheRepairPass(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	creates := &eventCreates{before: func(context.Context) error {
		if failing.Load() {
			return apierrors.NewServiceUnavailable("the API server is away")
		}
		return nil
	}}
	const drain = 300 * time.Millisecond
	h := newHarnessWith(t, "", creates.funcs(), func(r *Reconciler) { r.EventDrainTimeout = drain },
		withUID("x"), withUID("y"), withUID("z"), withUID("late"))
	for _, name := range []string{"x", "y", "z"} {
		h.reconcile(t, name)
	}
	start := time.Now()
	h.stopEvents()
	if took := time.Since(start); took > drain+2*time.Second {
		t.Fatalf("shutdown took %s with a drain bound of %s", took, drain)
	}
	if v := testutil.ToFloat64(h.r.Metrics.EventsAbandoned.WithLabelValues("Shutdown")); v != 3 {
		t.Fatalf("%v Events left to the repair pass, want 3", v)
	}
	if v := testutil.ToFloat64(h.r.Metrics.EventQueueDepth); v != 0 {
		t.Fatalf("event queue depth %v after shutdown", v)
	}
	if ev := h.eventsNow(t); len(ev) != 0 {
		t.Fatalf("events while the API server is away: %+v", ev)
	}

	// The API server is back. A reconcile that finishes after the writer
	// stopped writes its Event itself.
	failing.Store(false)
	h.reconcile(t, "late")
	// The next leader's repair pass records the three others, once.
	for range 2 {
		if err := h.r.repairDecisionEvents(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	byCSR := map[string]int{}
	for _, ev := range h.eventsNow(t) {
		byCSR[ev.Regarding.Name]++
	}
	if len(byCSR) != 4 || byCSR["x"] != 1 || byCSR["y"] != 1 || byCSR["z"] != 1 || byCSR["late"] != 1 {
		t.Fatalf("decision Events per CSR after the repair: %v", byCSR)
	}
}

func TestFullEventQueueHoldsTheReconcile(t *testing.T) {
	release := make(chan struct{})
	creates := &eventCreates{before: func(ctx context.Context) error {
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	h := newHarnessWith(t, "", creates.funcs(), func(r *Reconciler) { r.MaxPendingEvents = 1 }, withUID("first"), withUID("second"))
	h.reconcile(t, "first")
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		h.reconcile(t, "second")
	}()
	select {
	case <-returned:
		t.Fatal("a reconcile handed over an Event beyond MaxPendingEvents")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatal("the reconcile still waits after the queue emptied")
	}
	if ev := h.events(t); len(ev) != 2 {
		t.Fatalf("events %+v", ev)
	}
}

// yieldHarness runs an Event writer whose writes block until released and
// whose busy signal the test sets.
type yieldHarness struct {
	w        *eventWriter
	busy     atomic.Bool
	inFlight atomic.Int32
	written  atomic.Int32
	release  chan struct{}
	stop     context.CancelFunc
	stopped  chan struct{}
}

func newYieldHarness(t *testing.T, workers, yieldWorkers, yieldBelow int) *yieldHarness {
	t.Helper()
	h := &yieldHarness{release: make(chan struct{}), stopped: make(chan struct{})}
	h.busy.Store(true)
	h.w = newEventWriter(func(ctx context.Context, _ *decisionEvent) error {
		h.inFlight.Add(1)
		defer h.inFlight.Add(-1)
		select {
		case <-h.release:
		case <-ctx.Done():
			return ctx.Err()
		}
		h.written.Add(1)
		return nil
	}, NewMetrics(prometheus.NewRegistry(), nil, false), eventWriterOptions{
		Workers: workers, YieldWorkers: yieldWorkers, YieldBelow: yieldBelow,
		Busy: h.busy.Load, Drain: time.Hour, // the drain ends when every Event is written
	})
	ctx, cancel := context.WithCancel(t.Context())
	h.stop = cancel
	go func() {
		defer close(h.stopped)
		if err := h.w.run(ctx); err != nil {
			t.Error(err)
		}
	}()
	t.Cleanup(func() {
		h.releaseWrites()
		cancel()
		<-h.stopped
	})
	return h
}

func (h *yieldHarness) releaseWrites() {
	select {
	case <-h.release:
	default:
		close(h.release)
	}
}

func (h *yieldHarness) enqueue(t *testing.T, names ...string) {
	t.Helper()
	for _, name := range names {
		h.w.enqueue(t.Context(), newDecisionEvent(withUID(name), certificatesv1.CertificateApproved, ReasonRenewalApproved, "m"))
	}
}

// waitInFlight waits until exactly want writes are in progress, then checks
// that no further write starts for a moment.
func (h *yieldHarness) waitInFlight(t *testing.T, want int32) {
	t.Helper()
	for h.inFlight.Load() < want {
		if t.Context().Err() != nil {
			t.Fatalf("%d writes in progress, want %d", h.inFlight.Load(), want)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if n := h.inFlight.Load(); n != want {
		t.Fatalf("%d writes in progress, want %d", n, want)
	}
}

// finish lets the writes complete and checks that want Events were written.
func (h *yieldHarness) finish(t *testing.T, want int32) {
	t.Helper()
	h.releaseWrites()
	if !h.w.waitIdle(t.Context()) || h.written.Load() != want {
		t.Fatalf("%d of %d Events written", h.written.Load(), want)
	}
}

func names(prefix string, n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("%s-%d", prefix, i))
	}
	return out
}

func TestEventsYieldToDecisionsInProgress(t *testing.T) {
	h := newYieldHarness(t, 8, 2, 100)
	h.enqueue(t, names("storm", 10)...)
	// Reconciles are in progress: two writers write, six wait.
	h.waitInFlight(t, 2)
	// The storm is over: every writer catches up.
	h.busy.Store(false)
	h.w.signal()
	h.waitInFlight(t, 8)
	h.finish(t, 10)
}

func TestEventsStopYieldingWhenTheBacklogIsFull(t *testing.T) {
	h := newYieldHarness(t, 8, 2, 5)
	h.enqueue(t, names("storm", 4)...)
	h.waitInFlight(t, 2)
	// The fifth held Event reaches the bound: the writers no longer yield
	// although reconciles are still in progress.
	h.enqueue(t, "storm-4")
	h.waitInFlight(t, 5)
	h.finish(t, 5)
}

func TestEventDrainDoesNotYield(t *testing.T) {
	h := newYieldHarness(t, 8, 2, 100)
	h.enqueue(t, names("storm", 10)...)
	h.waitInFlight(t, 2)
	// Shutdown while reconciles are still reported in progress: the drain
	// writes with every writer.
	h.stop()
	h.waitInFlight(t, 8)
	h.releaseWrites()
	<-h.stopped
	if n := h.written.Load(); n != 10 {
		t.Fatalf("%d of 10 Events written by the drain", n)
	}
}

func TestEventsDoNotYieldWithoutDecisionsInProgress(t *testing.T) {
	h := newYieldHarness(t, 8, 2, 100)
	h.busy.Store(false)
	h.enqueue(t, names("quiet", 10)...)
	h.waitInFlight(t, 8)
}
