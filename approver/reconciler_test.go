package approver

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
)

// These are narrow unit tests of the reconciler's bookkeeping (one write,
// conflicts, DryRun, rate limits) on a fake client; the behaviour against a
// real API server is in test/integration/approver.

type fakeAuthorizer struct {
	allowed bool
	err     error
	calls   int
}

func (f *fakeAuthorizer) Authorize(context.Context, *certificatesv1.CertificateSigningRequest, string) (bool, error) {
	f.calls++
	return f.allowed, f.err
}

type fakeNodes map[string]bool

func (f fakeNodes) NodeExists(_ context.Context, name string) (bool, error) { return f[name], nil }

type harness struct {
	r      *Reconciler
	client client.Client
	auth   *fakeAuthorizer
	policy *config.Effective
	// stopEvents stops the Event writer (draining it) and returns when it
	// has stopped; it runs at the end of the test too.
	stopEvents func()
}

func newHarness(t *testing.T, policyYAML string, funcs interceptor.Funcs, objs ...client.Object) *harness {
	t.Helper()
	return newHarnessWith(t, policyYAML, funcs, nil, objs...)
}

// newHarnessWith is newHarness with configure applied to the Reconciler
// before its Event writer starts.
func newHarnessWith(t *testing.T, policyYAML string, funcs interceptor.Funcs, configure func(*Reconciler), objs ...client.Object) *harness {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c := fake.NewClientBuilder().WithScheme(scheme).
		WithObjects(objs...).
		WithStatusSubresource(&certificatesv1.CertificateSigningRequest{}).
		WithIndex(&certificatesv1.CertificateSigningRequest{}, IndexNodeName, IndexCSRByNodeName).
		WithIndex(&corev1.Node{}, IndexNodeAddress, IndexNodeByAddress).
		WithInterceptorFuncs(funcs).
		Build()
	p := config.Default()
	if policyYAML != "" {
		var err error
		if p, err = config.Parse([]byte(policyYAML)); err != nil {
			t.Fatal(err)
		}
	}
	h := &harness{client: c, auth: &fakeAuthorizer{allowed: true}, policy: p}
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC))
	h.r = &Reconciler{
		Client: c, APIReader: c,
		Policy: func() *config.Effective { return h.policy },
		Facts: &Gatherer{
			Authorizer: h.auth,
			Nodes:      fakeNodes{"worker-1": true},
			Heartbeats: LeaseHeartbeats{Leases: c, Nodes: c},
			Pending:    IndexedPending{Reader: c},
			Clock:      clk,
		},
		Events:  &EventRecorder{Client: c, Instance: "test", Namespace: "default"},
		Metrics: NewMetrics(prometheus.NewRegistry(), nil, false),
		Clock:   clk,
		// A test that stops the writer with Events it cannot write does not
		// wait the default 5s.
		EventDrainTimeout: time.Second,
	}
	if configure != nil {
		configure(h.r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		if err := h.r.events().run(ctx); err != nil {
			t.Errorf("Event writer: %v", err)
		}
	}()
	h.stopEvents = func() { cancel(); <-stopped }
	t.Cleanup(h.stopEvents)
	return h
}

// settle waits until the Event writer holds no Event.
func (h *harness) settle(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if !h.r.events().waitIdle(ctx) {
		t.Fatalf("%d decision Events still unwritten after 10s", h.r.events().depth())
	}
}

func (h *harness) reconcile(t *testing.T, name string) reconcile.Result {
	t.Helper()
	res, err := h.r.Reconcile(t.Context(), reconcile.Request{NamespacedName: types.NamespacedName{Name: name}})
	if err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	return res
}

func (h *harness) csr(t *testing.T, name string) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	csr := &certificatesv1.CertificateSigningRequest{}
	if err := h.client.Get(t.Context(), client.ObjectKey{Name: name}, csr); err != nil {
		t.Fatal(err)
	}
	return csr
}

// events lists the Events once the Event writer has written what it holds.
func (h *harness) events(t *testing.T) []eventsv1.Event {
	t.Helper()
	h.settle(t)
	return h.eventsNow(t)
}

// eventsNow lists the Events written so far.
func (h *harness) eventsNow(t *testing.T) []eventsv1.Event {
	t.Helper()
	var list eventsv1.EventList
	if err := h.client.List(t.Context(), &list); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

func TestReconcileApprovesWithOneWriteAndOneEvent(t *testing.T) {
	csr := csrtest.Build(csrtest.WithName("renewal"))
	h := newHarness(t, "", interceptor.Funcs{}, csr)
	if res := h.reconcile(t, "renewal"); res != (reconcile.Result{}) {
		t.Fatalf("result %+v", res)
	}
	got := h.csr(t, "renewal")
	if len(got.Status.Conditions) != 1 || got.Status.Conditions[0].Type != certificatesv1.CertificateApproved ||
		got.Status.Conditions[0].Reason != ReasonRenewalApproved {
		t.Fatalf("conditions %+v", got.Status.Conditions)
	}
	// Decided CSRs are left alone: a second reconcile writes nothing.
	h.reconcile(t, "renewal")
	if n := len(h.csr(t, "renewal").Status.Conditions); n != 1 {
		t.Fatalf("%d conditions after a second reconcile", n)
	}
	ev := h.events(t)
	if len(ev) != 1 || ev[0].Reason != ReasonRenewalApproved || ev[0].Type != corev1.EventTypeNormal || ev[0].Regarding.Name != "renewal" {
		t.Fatalf("events %+v", ev)
	}
	if v := testutil.ToFloat64(h.r.Metrics.Decisions.WithLabelValues("Approve", ReasonRenewalApproved, "Renewal", "client")); v != 1 {
		t.Fatalf("decisions counter %v", v)
	}
}

func TestReconcileStaticDenialCostsNoAPICall(t *testing.T) {
	csr := csrtest.Build(csrtest.WithName("san"), csrtest.WithDNSSAN("x.example"))
	h := newHarness(t, "", interceptor.Funcs{}, csr)
	h.reconcile(t, "san")
	if h.auth.calls != 0 {
		t.Fatalf("%d SubjectAccessReviews for a hopeless CSR", h.auth.calls)
	}
	got := h.csr(t, "san")
	if c := got.Status.Conditions; len(c) != 1 || c[0].Type != certificatesv1.CertificateDenied || c[0].Reason != ReasonSANsNotAllowed {
		t.Fatalf("conditions %+v", c)
	}
	if ev := h.events(t); len(ev) != 1 || ev[0].Type != corev1.EventTypeWarning {
		t.Fatalf("events %+v", ev)
	}
}

func TestReconcileLeavesACSRDecidedElsewhereAlone(t *testing.T) {
	csr := csrtest.Build(csrtest.WithName("raced"))
	h := newHarness(t, "", interceptor.Funcs{
		SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
			// Someone else approves first.
			other := csrtest.Build(csrtest.WithName("raced"))
			stored := &certificatesv1.CertificateSigningRequest{}
			if err := c.Get(ctx, client.ObjectKey{Name: "raced"}, stored); err != nil {
				return err
			}
			stored.Status.Conditions = append(other.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
				Type: certificatesv1.CertificateDenied, Status: corev1.ConditionTrue, Reason: "ByHand"})
			if err := c.Status().Update(ctx, stored); err != nil {
				return err
			}
			return apierrors.NewConflict(schema.GroupResource{Group: "certificates.k8s.io", Resource: "certificatesigningrequests"}, "raced", errors.New("changed"))
		},
	}, csr)
	if res := h.reconcile(t, "raced"); res != (reconcile.Result{}) {
		t.Fatalf("result %+v, want done", res)
	}
	if v := testutil.ToFloat64(h.r.Metrics.DecidedElsewhere); v != 1 {
		t.Fatalf("decided elsewhere %v", v)
	}
	if ev := h.events(t); len(ev) != 0 {
		t.Fatalf("an Event for a decision nodecsr did not make: %+v", ev)
	}
}

func TestReconcileRetriesAConflictOnAPendingCSR(t *testing.T) {
	csr := csrtest.Build(csrtest.WithName("conflict"))
	h := newHarness(t, "", interceptor.Funcs{
		SubResourceUpdate: func(context.Context, client.Client, string, client.Object, ...client.SubResourceUpdateOption) error {
			return apierrors.NewConflict(schema.GroupResource{Resource: "certificatesigningrequests"}, "conflict", errors.New("stale"))
		},
	}, csr)
	if res := h.reconcile(t, "conflict"); res.RequeueAfter <= 0 {
		t.Fatalf("result %+v, want requeue", res)
	}
	if v := testutil.ToFloat64(h.r.Metrics.WriteConflicts); v != 1 {
		t.Fatalf("conflicts %v", v)
	}
}

func TestReconcileDryRunReportsOnce(t *testing.T) {
	csr := csrtest.Build(csrtest.WithName("dry"))
	h := newHarness(t, "apiVersion: nodecsr.io/v1alpha1\nkind: Policy\nspec:\n  mode: DryRun\n", interceptor.Funcs{}, csr)
	for range 3 {
		h.reconcile(t, "dry")
	}
	if c := h.csr(t, "dry").Status.Conditions; len(c) != 0 {
		t.Fatalf("DryRun wrote %+v", c)
	}
	ev := h.events(t)
	if len(ev) != 1 || ev[0].Action != "WouldApprove" || ev[0].Reason != ReasonRenewalApproved {
		t.Fatalf("events %+v", ev)
	}
	if v := testutil.ToFloat64(h.r.Metrics.Decisions.WithLabelValues("WouldApprove", ReasonRenewalApproved, "Renewal", "client")); v != 1 {
		t.Fatalf("WouldApprove counted %v times", v)
	}
}

func TestReconcileRateLimitsBootstrapPerRequester(t *testing.T) {
	a := csrtest.Build(csrtest.WithName("a"), csrtest.Bootstrap("abcdef"), csrtest.WithNodeName("new-1"))
	b := csrtest.Build(csrtest.WithName("b"), csrtest.Bootstrap("abcdef"), csrtest.WithNodeName("new-2"))
	other := csrtest.Build(csrtest.WithName("c"), csrtest.Bootstrap("ghijkl"), csrtest.WithNodeName("new-3"))
	h := newHarness(t, "apiVersion: nodecsr.io/v1alpha1\nkind: Policy\nspec:\n  bootstrap:\n    rateLimit: {perMinute: 1, burst: 1}\n",
		interceptor.Funcs{}, a, b, other)
	h.reconcile(t, "a")
	res := h.reconcile(t, "b")
	if res.RequeueAfter <= 0 || res.RequeueAfter > time.Minute {
		t.Fatalf("rate-limited CSR requeued after %v", res.RequeueAfter)
	}
	if c := h.csr(t, "b").Status.Conditions; len(c) != 0 {
		t.Fatalf("a rate-limited CSR got %+v", c)
	}
	// Another requester is not held back by the first one's bucket.
	h.reconcile(t, "c")
	if c := h.csr(t, "c").Status.Conditions; len(c) != 1 || c[0].Type != certificatesv1.CertificateApproved {
		t.Fatalf("other requester: %+v", c)
	}
}

func TestReconcileFactErrorIsRetried(t *testing.T) {
	csr := csrtest.Build(csrtest.WithName("sar"))
	h := newHarness(t, "", interceptor.Funcs{}, csr)
	h.auth.err = errors.New("API server unavailable")
	if _, err := h.r.Reconcile(t.Context(), reconcile.Request{NamespacedName: types.NamespacedName{Name: "sar"}}); err == nil {
		t.Fatal("no error: the CSR would not be retried")
	}
	if c := h.csr(t, "sar").Status.Conditions; len(c) != 0 {
		t.Fatalf("decided without facts: %+v", c)
	}
	if v := testutil.ToFloat64(h.r.Metrics.FactErrors.WithLabelValues("SubjectAccessReview")); v != 1 {
		t.Fatalf("fact errors %v", v)
	}
}

func TestPendingAroundCountsOnlyTheSameRequester(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	me := csrtest.Build(csrtest.WithName("me"), csrtest.WithCreationTimestamp(t0))
	others := []certificatesv1.CertificateSigningRequest{
		*csrtest.Build(csrtest.WithName("older"), csrtest.WithCreationTimestamp(t0.Add(-time.Second))),
		*csrtest.Build(csrtest.WithName("older-decided"), csrtest.WithCreationTimestamp(t0.Add(-time.Second)),
			csrtest.WithCondition(certificatesv1.CertificateDenied)),
		// A bootstrapper's newer CSR for the same name must not supersede the node's own.
		*csrtest.Build(csrtest.WithName("attacker"), csrtest.Bootstrap("abcdef"), csrtest.WithCreationTimestamp(t0.Add(time.Second))),
		*csrtest.Build(csrtest.WithName("other-node"), csrtest.WithNodeName("worker-2"), csrtest.WithCreationTimestamp(t0.Add(time.Second))),
		*me,
	}
	newer, older := PendingAround(me, "worker-1", others)
	if newer || older != 1 {
		t.Fatalf("newer=%v older=%d, want false 1", newer, older)
	}
	// A newer duplicate that was already approved supersedes this one too; a
	// newer denied one does not.
	approvedNewer := *csrtest.Build(csrtest.WithName("approved-newer"), csrtest.WithCreationTimestamp(t0.Add(time.Second)),
		csrtest.WithCondition(certificatesv1.CertificateApproved))
	if newer, _ := PendingAround(me, "worker-1", append(others, approvedNewer)); !newer {
		t.Fatal("an approved newer duplicate does not supersede")
	}
	deniedNewer := *csrtest.Build(csrtest.WithName("denied-newer"), csrtest.WithCreationTimestamp(t0.Add(time.Second)),
		csrtest.WithCondition(certificatesv1.CertificateDenied))
	if newer, _ := PendingAround(me, "worker-1", append(others, deniedNewer)); newer {
		t.Fatal("a denied newer duplicate supersedes")
	}
	// Same second: the name breaks the tie.
	sameSecond := *csrtest.Build(csrtest.WithName("zz"), csrtest.WithCreationTimestamp(t0))
	if newer, _ := PendingAround(me, "worker-1", append(others, sameSecond)); !newer {
		t.Fatal("a same-second CSR with a later name is not newer")
	}
}

func TestRequesterLimiter(t *testing.T) {
	var l requesterLimiter
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 3 {
		if ok, _ := l.take("a", 60, 3, now); !ok {
			t.Fatalf("take %d refused within burst", i)
		}
	}
	ok, wait := l.take("a", 60, 3, now)
	if ok || wait <= 0 || wait > time.Second {
		t.Fatalf("over burst: ok=%v wait=%v, want refused for about a second", ok, wait)
	}
	if ok, _ := l.take("a", 60, 3, now.Add(time.Second)); !ok {
		t.Fatal("not refilled after a second at 60/min")
	}
	if ok, _ := l.take("b", 60, 3, now); !ok {
		t.Fatal("requester b limited by a's bucket")
	}
	if ok, _ := l.take("a", 0, 0, now); !ok {
		t.Fatal("perMinute 0 must disable the limit")
	}
}

func TestEventNamesAreValid(t *testing.T) {
	for in, want := range map[string]string{
		"node-csr-AbC_dE": "node-csr-abc-de",
		"csr-1":           "csr-1",
		"__":              "object",
		"-a.":             "a",
	} {
		if got := truncateName(in, 200); got != want {
			t.Errorf("truncateName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRepairRecordsMissingDecisionEventsOnce(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	decided := func(name, reason string, at time.Time) *certificatesv1.CertificateSigningRequest {
		csr := csrtest.Build(csrtest.WithName(name))
		csr.Status.Conditions = []certificatesv1.CertificateSigningRequestCondition{{
			Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: reason, Message: "m",
			LastUpdateTime: metav1.NewTime(at),
		}}
		return csr
	}
	// Decided by nodecsr just before its leader died, Event missing.
	lost := decided("lost", ReasonRenewalApproved, now.Add(-10*time.Second))
	// Decided long ago (outside the window), and decided by someone else.
	old := decided("old", ReasonRenewalApproved, now.Add(-time.Hour))
	byHand := decided("by-hand", "ByHand", now.Add(-10*time.Second))
	pending := csrtest.Build(csrtest.WithName("pending"))
	h := newHarness(t, "", interceptor.Funcs{}, lost, old, byHand, pending)

	// The normal path and the repair agree on the Event's name.
	h.reconcile(t, "pending")
	for range 2 {
		if err := h.r.repairDecisionEvents(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	byCSR := map[string]int{}
	for _, ev := range h.events(t) {
		byCSR[ev.Regarding.Name]++
	}
	if byCSR["lost"] != 1 || byCSR["pending"] != 1 || byCSR["old"] != 0 || byCSR["by-hand"] != 0 {
		t.Fatalf("decision Events per CSR: %v", byCSR)
	}
}
