package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nodecsr/nodecsr/cmd/nodecsr-controller/app"
)

// approveResult compares the approvers on one API server.
type approveResult struct {
	N          int    `json:"n"`
	IncumbentN int    `json:"incumbentN"`
	Note       string `json:"note"`
	// Identity is who nodecsr-controller and the bare loops ran as, and
	// where API Priority and Fairness put their requests.
	Identity apfClass `json:"identity"`
	// BackgroundRequestsPerSecond is what the API server serves with no
	// approver running (its own loopback clients, the bench's scrapes); it is
	// subtracted from every contender's request count.
	BackgroundRequestsPerSecond float64 `json:"backgroundRequestsPerSecond"`

	Incumbent contenderResult `json:"incumbent"`
	Nodecsr   contenderResult `json:"nodecsr"`
	Bare      contenderResult `json:"bare"`
	// Patterns are the bare loop making other requests per CSR (nodecsr's
	// three, and what they would be without the Event or with it written
	// asynchronously): they separate nodecsr's request pattern from its code.
	Patterns []contenderResult `json:"patterns,omitempty"`
	// Variants are nodecsr-controller with other flags.
	Variants []contenderResult `json:"variants,omitempty"`
	// BareWorkers is the bare loops' concurrency.
	BareWorkers int `json:"bareWorkers"`
	// Rounds is how many times each contender but the incumbent ran (N CSRs
	// each time, alternating the order); its figures are the means.
	Rounds int `json:"rounds"`

	// Ratios of decision rates, first decision to last (steady state).
	NodecsrVsIncumbent float64 `json:"nodecsrVsIncumbent"`
	NodecsrVsBare      float64 `json:"nodecsrVsBare"`
	// The same ratios with rates measured from each contender's start.
	NodecsrVsIncumbentFromStart float64 `json:"nodecsrVsIncumbentFromStart"`
	NodecsrVsBareFromStart      float64 `json:"nodecsrVsBareFromStart"`
}

// contenderResult is one approver's run over N pending CSRs.
type contenderResult struct {
	Name     string `json:"name"`
	Settings string `json:"settings"`
	N        int    `json:"n"`
	Approved int    `json:"approved"`
	Denied   int    `json:"denied"`
	// RatePerSecond: decisions per second from the first decision to the last.
	RatePerSecond float64 `json:"ratePerSecond"`
	// RateFromStartPerSecond: N divided by the time from the contender's start to the last decision.
	RateFromStartPerSecond float64 `json:"rateFromStartPerSecond"`
	// SecondHalfRatePerSecond: decisions per second over the second half of the decisions (past any client burst).
	SecondHalfRatePerSecond float64 `json:"secondHalfRatePerSecond"`
	// FirstDecisionSeconds: from the contender's start to its first decision (start-up, cache sync).
	FirstDecisionSeconds float64 `json:"firstDecisionSeconds"`
	// DurationSeconds: from the contender's start to its last decision.
	DurationSeconds float64 `json:"durationSeconds"`
	// CreateToDecision: from the client-side create of each CSR (all were
	// created before the contender started) to the decision seen through a watch.
	CreateToDecision latency `json:"createToDecision"`
	// StartToDecision: from the contender's start to each decision.
	StartToDecision latency `json:"startToDecision"`
	// APIRequests is what kube-apiserver served during the run, background
	// included; RequestsPerDecision has the background subtracted.
	APIRequests         requestDelta `json:"apiRequests"`
	RequestsPerDecision float64      `json:"requestsPerDecision"`
	// ClientRequestsPerDecision is nodecsr's own count (rest_client_requests_total).
	ClientRequestsPerDecision float64 `json:"clientRequestsPerDecision,omitempty"`
	// ReconcileMeanMillis is nodecsr's mean reconcile time (controller_runtime_reconcile_time_seconds).
	ReconcileMeanMillis float64 `json:"reconcileMeanMillis,omitempty"`
	// QueueWaitMeanMillis is nodecsr's mean time in the work queue (workqueue_queue_duration_seconds).
	QueueWaitMeanMillis float64 `json:"queueWaitMeanMillis,omitempty"`
	// EventsTrailSeconds: from the last decision until the contender had
	// written every decision Event (nodecsr's Event writer empty, the
	// pattern loop's Event writers done); absent for contenders that write
	// none or none after the decision.
	EventsTrailSeconds *float64 `json:"eventsTrailSeconds,omitempty"`
	// GCCycles is the Go garbage collections nodecsr-controller made from its
	// start to the last decision (go_gc_duration_seconds_count).
	GCCycles float64  `json:"gcCycles,omitempty"`
	CPU      cpuUse   `json:"cpu"`
	Memory   *memInfo `json:"memory,omitempty"`
	// ClientQPS and ClientBurst are nodecsr-controller's client rate limit
	// (controller-runtime applies it per resource type; each decision takes
	// one token of each of its three types).
	ClientQPS   float64 `json:"clientQPS,omitempty"`
	ClientBurst float64 `json:"clientBurst,omitempty"`
	// LimiterMinHeadroom is the fewest tokens the client rate limiter can
	// have had left at any decision: burst + qps × (time since start) −
	// decisions so far. At or near zero the limiter set the pace.
	LimiterMinHeadroom float64 `json:"limiterMinHeadroom,omitempty"`
	// LimiterBoundFrom is the first decision (0-based) at which the headroom
	// was down to limiterBoundTokens, or -1.
	LimiterBoundFrom int `json:"limiterBoundFrom,omitempty"`
	// RoundRates is RatePerSecond of each round (when there were several),
	// RoundOthers the cores other processes used meanwhile.
	RoundRates  []float64 `json:"roundRates,omitempty"`
	RoundOthers []float64 `json:"roundOthersCores,omitempty"`

	createToDecision, startToDecision []time.Duration
}

// limiterBoundTokens: with this few tokens left (about the requests in
// flight) the client rate limiter is what paces the decisions.
const limiterBoundTokens = 32

// limiterHeadroom estimates the tokens the client rate limiter had left at
// each decision: burst + qps × (time since the first decision) − decisions
// so far. controller-runtime builds a resource type's client, and so its
// token bucket, on first use, just before the first decision; a decision
// seen at t took its tokens a little earlier. It returns the minimum and the
// first decision at which it was down to limiterBoundTokens (-1: never).
func limiterHeadroom(decidedAt []time.Time, qps, burst float64) (float64, int) {
	minimum, from := burst, -1
	if len(decidedAt) == 0 {
		return minimum, from
	}
	for i, t := range decidedAt {
		h := burst + qps*t.Sub(decidedAt[0]).Seconds() - float64(i+1)
		minimum = min(minimum, h)
		if from < 0 && h <= limiterBoundTokens {
			from = i
		}
	}
	return minimum, from
}

// clientLimits are the --kube-api-qps and --kube-api-burst in args, or
// nodecsr-controller's defaults.
// defaults are nodecsr-controller's own defaults, which the reports name.
var defaults = app.NewOptions()

func clientLimits(args []string) (qps, burst float64) {
	qps, burst = float64(defaults.KubeAPIQPS), float64(defaults.KubeAPIBurst)
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--kube-api-qps="); ok {
			_, _ = fmt.Sscan(v, &qps)
		}
		if v, ok := strings.CutPrefix(a, "--kube-api-burst="); ok {
			_, _ = fmt.Sscan(v, &burst)
		}
	}
	return qps, burst
}

// combineRounds merges the rounds of one contender: rates, request counts,
// CPU and means are averaged, latencies pooled, the Events' trail the
// longest.
func combineRounds(rs []contenderResult) contenderResult {
	if len(rs) == 1 {
		return rs[0]
	}
	out := contenderResult{Name: rs[0].Name, Settings: rs[0].Settings, ClientQPS: rs[0].ClientQPS, ClientBurst: rs[0].ClientBurst, LimiterMinHeadroom: rs[0].LimiterMinHeadroom, LimiterBoundFrom: -1}
	k := float64(len(rs))
	kinds := map[string]*requestKind{}
	for _, r := range rs {
		out.N += r.N
		out.Approved += r.Approved
		out.Denied += r.Denied
		out.RatePerSecond += r.RatePerSecond / k
		out.RateFromStartPerSecond += r.RateFromStartPerSecond / k
		out.SecondHalfRatePerSecond += r.SecondHalfRatePerSecond / k
		out.FirstDecisionSeconds += r.FirstDecisionSeconds / k
		out.DurationSeconds += r.DurationSeconds / k
		out.RequestsPerDecision += r.RequestsPerDecision / k
		out.ClientRequestsPerDecision += r.ClientRequestsPerDecision / k
		out.ReconcileMeanMillis += r.ReconcileMeanMillis / k
		out.QueueWaitMeanMillis += r.QueueWaitMeanMillis / k
		out.GCCycles += r.GCCycles / k
		if t := r.EventsTrailSeconds; t != nil && (out.EventsTrailSeconds == nil || *t > *out.EventsTrailSeconds) {
			out.EventsTrailSeconds = t // the longest
		}
		out.CPU.APIServer += r.CPU.APIServer / k
		out.CPU.Etcd += r.CPU.Etcd / k
		out.CPU.Contender += r.CPU.Contender / k
		out.CPU.Bench += r.CPU.Bench / k
		out.CPU.Machine += r.CPU.Machine / k
		out.CPU.Cores = r.CPU.Cores
		if r.Memory != nil {
			out.Memory = r.Memory
		}
		out.RoundRates = append(out.RoundRates, r.RatePerSecond)
		out.RoundOthers = append(out.RoundOthers, othersCores(r))
		out.LimiterMinHeadroom = min(out.LimiterMinHeadroom, r.LimiterMinHeadroom)
		if r.LimiterBoundFrom >= 0 && (out.LimiterBoundFrom < 0 || r.LimiterBoundFrom < out.LimiterBoundFrom) {
			out.LimiterBoundFrom = r.LimiterBoundFrom
		}
		out.createToDecision = append(out.createToDecision, r.createToDecision...)
		out.startToDecision = append(out.startToDecision, r.startToDecision...)
		out.APIRequests.Total += r.APIRequests.Total
		for _, rk := range r.APIRequests.ByKind {
			if kinds[rk.Kind] == nil {
				kinds[rk.Kind] = &requestKind{Kind: rk.Kind}
			}
			t := kinds[rk.Kind]
			// Weighted mean of the server time.
			if c := t.Count + rk.Count; c > 0 {
				t.MeanServerMillis = (t.MeanServerMillis*t.Count + rk.MeanServerMillis*rk.Count) / c
			}
			t.Count += rk.Count
		}
	}
	for _, rk := range kinds {
		out.APIRequests.ByKind = append(out.APIRequests.ByKind, *rk)
	}
	slices.SortFunc(out.APIRequests.ByKind, func(a, b requestKind) int {
		if a.Count != b.Count {
			if a.Count > b.Count {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Kind, b.Kind)
	})
	if out.ClientQPS == 0 {
		out.LimiterBoundFrom = 0
	}
	out.CreateToDecision, out.StartToDecision = summarize(out.createToDecision), summarize(out.startToDecision)
	return out
}

// variant is an extra nodecsr-controller run with other flags and
// environment variables (the Go runtime's GOGC, GOMAXPROCS, ...).
type variant struct {
	name string
	args []string
	env  []string
}

// defaultVariants show what limits nodecsr's throughput: more workers, a
// higher client rate limit, and both.
func defaultVariants() []variant {
	return []variant{
		// The defaults before this benchmark raised them.
		{name: "workers=16,qps=200", args: []string{"--max-concurrent-reconciles=16", "--kube-api-qps=200", "--kube-api-burst=400"}},
		// The default before this benchmark raised it to 128, and more.
		{name: "workers=64", args: []string{"--max-concurrent-reconciles=64"}},
		{name: "workers=256", args: []string{"--max-concurrent-reconciles=256"}},
		// The Go runtime's own GC pacing, which nodecsr-controller replaces
		// unless GOGC is set (cmd/nodecsr-controller/app/gc.go).
		{name: "gogc=100", env: []string{"GOGC=100"}},
	}
}

func defaultVariantsHelp() string {
	var parts []string
	for _, v := range defaultVariants() {
		parts = append(parts, strings.Join(append(slices.Clone(v.env), v.args...), " "))
	}
	return strings.Join(parts, "; ")
}

// parseVariant reads NAME=FLAGS: FLAGS are nodecsr-controller's flags
// (--...) and environment variables (NAME=value) for it, space-separated.
func parseVariant(s string) (variant, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok || name == "" || strings.TrimSpace(rest) == "" || strings.ToLower(name) != name {
		return variant{}, fmt.Errorf("-variant must be NAME=FLAGS with a lower-case NAME (it names Nodes; e.g. 'qps2000=--kube-api-qps=2000 --kube-api-burst=4000' or 'gogc200=GOGC=200'), got %q", s)
	}
	v := variant{name: name}
	for _, f := range strings.Fields(rest) {
		k, _, isEnv := strings.Cut(f, "=")
		switch {
		case strings.HasPrefix(f, "-"):
			v.args = append(v.args, f)
		case isEnv && k != "":
			v.env = append(v.env, f)
		default:
			return variant{}, fmt.Errorf("-variant %s: %q is neither a flag (--name=value) nor an environment variable (NAME=value)", name, f)
		}
	}
	return v, nil
}

// contender is an approver under test.
type contender struct {
	name, settings string
	// qps and burst are nodecsr-controller's client rate limit (per
	// resource type); zero for the others.
	qps, burst float64
	// start starts it and returns its pid (0: runs inside the bench), a
	// function that reports an error when it died, one that scrapes its
	// metrics (nil: none), and one that stops it.
	start func(ctx context.Context, group string) (running, error)
}

type running struct {
	pid     int
	alive   func() error
	metrics func(ctx context.Context) (samples, error)
	// eventsWritten waits until every decision Event is written (nil: the
	// contender writes none after its decisions).
	eventsWritten func(ctx context.Context) error
	stop          func()
}

func (e *env) runApprove(ctx context.Context, o *options) (*approveResult, error) {
	res := &approveResult{N: o.n, IncumbentN: o.incumbentN, BareWorkers: o.bareWorkers}
	res.Note = fmt.Sprintf("kube-controller-manager's csrapproving decided %d CSRs, the others %d each: its rate is steady-state bound by its client (20 QPS, 2 requests per CSR), so a smaller N measures the same rate in less time. "+
		"csrsigning was stopped during these runs: they measure time to the Approved condition, not to the certificate.", o.incumbentN, o.n)

	// The approvers alone on the API server.
	restore, err := e.withoutCSRSigning(ctx)
	if err != nil {
		return nil, err
	}
	defer restore()

	// nodecsr-controller as the chart installs it: its ServiceAccount (a
	// token, not system:masters, which API Priority and Fairness exempts),
	// the chart's RBAC and FlowSchema (apf.enabled, the chart's default). The
	// bare loops run as the same ServiceAccount, so that the ratios compare
	// code, not identities: the same authentication, authorization and
	// priority level for every request.
	if err := e.waitAPFBootstrap(ctx); err != nil {
		return nil, err
	}
	ch, err := loadChart()
	if err != nil {
		return nil, err
	}
	rel := &chartRelease{release: "nodecsr", namespace: "bench-nodecsr", apf: true}
	undo, err := e.installChart(ctx, ch, rel)
	if undo != nil {
		defer undo()
	}
	if err != nil {
		return nil, err
	}
	if res.Identity, err = e.waitClassified(ctx, rel.userName(), rel.config, rel.flowSchema(), apfWorkloadHigh); err != nil {
		return nil, err
	}
	as := fmt.Sprintf("as %s (a ServiceAccount token; the chart's RBAC; FlowSchema %s → %s)", rel.userName(), res.Identity.FlowSchema, res.Identity.PriorityLevel)
	if slices.Contains(o.patterns, patternPatchAsyncEvent) {
		// The chart grants update on the approval subresource, not patch.
		undo, err := e.grantApprovalPatch(ctx, rel)
		defer undo()
		if err != nil {
			return nil, err
		}
	}

	bg, err := e.backgroundRate(ctx, 5*time.Second)
	if err != nil {
		return nil, err
	}
	res.BackgroundRequestsPerSecond, e.bgRate = bg, bg

	incumbent := contender{
		name:     "kube-controller-manager csrapproving",
		settings: "kube-controller-manager " + clusterVersion() + " --controllers=csrapproving, default flags (--kube-api-qps=20 --kube-api-burst=30, 5 workers), as system:kube-controller-manager in system:masters (exempt from API Priority and Fairness; its own client limit binds long before APF could)",
		start: func(ctx context.Context, group string) (running, error) {
			m, err := e.c.StartExtraControllerManager(ctx, "kcm-csrapproving", []string{"csrapproving"}, nil)
			if err != nil {
				return running{}, err
			}
			return running{pid: m.PID(), stop: func() { _ = m.Stop() }, alive: func() error {
				if m.PID() == 0 {
					return errors.New("kube-controller-manager (csrapproving) exited")
				}
				return nil
			}}, nil
		},
	}
	nodecsr := func(name string, args, environ []string) contender {
		settings := fmt.Sprintf("defaults (--max-concurrent-reconciles=%d --kube-api-qps=%g --kube-api-burst=%d), default policy",
			defaults.MaxConcurrentReconciles, defaults.KubeAPIQPS, defaults.KubeAPIBurst)
		if len(args) > 0 || len(environ) > 0 {
			settings = strings.Join(append(slices.Clone(environ), args...), " ") + ", default policy"
		}
		settings += ", " + as
		qps, burst := clientLimits(args)
		args = append([]string{"--kubeconfig=" + rel.kubeconfig}, args...)
		return contender{
			name: name, settings: settings, qps: qps, burst: burst,
			start: func(ctx context.Context, group string) (running, error) {
				c, err := e.startControllerEnv("nodecsr-"+group, environ, args...)
				if err != nil {
					return running{}, err
				}
				return running{pid: c.pid(), alive: c.exitedErr, metrics: c.metrics, stop: func() { c.stop(10 * time.Second) },
					eventsWritten: func(ctx context.Context) error { return eventQueueEmpty(ctx, c.metrics, c.exitedErr) }}, nil
			},
		}
	}
	bare := func(pat pattern) contender {
		c := contender{
			name:     "bare loop",
			settings: fmt.Sprintf("in the bench: one List, then %d workers doing UpdateApproval with no checks; no client rate limit; protobuf; %s", o.bareWorkers, as),
		}
		if pat != patternBare {
			c.name = "bare loop: " + string(pat)
			c.settings = fmt.Sprintf("in the bench: one List, then %d workers each doing %s per CSR with no checks; no client rate limit; protobuf; %s", o.bareWorkers, pat.describe(), as)
		}
		c.start = func(ctx context.Context, group string) (running, error) {
			ctx, cancel := context.WithCancel(ctx)
			var (
				mu      sync.Mutex
				loopErr error
			)
			finished := make(chan struct{})
			go func() {
				err := e.bareLoop(ctx, rel.config, group, o.bareWorkers, pat)
				mu.Lock()
				loopErr = err
				mu.Unlock()
				close(finished)
			}()
			r := running{
				alive: func() error {
					mu.Lock()
					defer mu.Unlock()
					return loopErr
				},
				stop: func() { cancel(); <-finished },
			}
			if pat.asyncEvent() {
				// The loop returns once its Event writers are done.
				r.eventsWritten = func(ctx context.Context) error {
					select {
					case <-finished:
						return r.alive()
					case <-ctx.Done():
						return ctx.Err()
					}
				}
			}
			return r, nil
		}
		return c
	}

	run := func(c contender, group string, n int) (contenderResult, error) {
		r, err := e.approvePhase(ctx, c, group, n)
		if err != nil {
			return r, fmt.Errorf("%s: %w", c.name, err)
		}
		e.logf("%s: %d CSRs, %.1f/s (first to last), %.1f/s (from start), %.2f API requests per decision",
			c.name, n, r.RatePerSecond, r.RateFromStartPerSecond, r.RequestsPerDecision)
		return r, nil
	}
	if res.Incumbent, err = run(incumbent, "approve-incumbent", o.incumbentN); err != nil {
		return nil, err
	}
	// The others run in rounds, in alternating order (A B C, C B A, ...), so
	// that a change in the machine's load over time falls on all of them.
	type entry struct {
		c      contender
		group  string
		rounds []contenderResult
	}
	entries := []*entry{
		{c: nodecsr("nodecsr-controller", nil, nil), group: "approve-nodecsr"},
		{c: bare(patternBare), group: "approve-bare"},
	}
	for i, pat := range o.patterns {
		entries = append(entries, &entry{c: bare(pat), group: fmt.Sprintf("approve-pattern%d", i)})
	}
	for _, v := range o.variants {
		entries = append(entries, &entry{c: nodecsr("nodecsr-controller ("+v.name+")", v.args, v.env), group: "approve-variant-" + strings.NewReplacer("=", "", ",", "-").Replace(v.name)})
	}
	// The run order puts the async-Event pattern loop right before nodecsr
	// (and, reversed, right after it), so that the ratio the target is about
	// compares runs a few seconds apart: the load others put on a shared
	// machine drifts over minutes.
	runOrder := slices.Clone(entries)
	if i := slices.IndexFunc(runOrder, func(en *entry) bool { return strings.HasSuffix(en.c.name, ": "+string(patternAsyncEvent)) }); i > 0 {
		async := runOrder[i]
		runOrder = slices.Insert(slices.Delete(runOrder, i, i+1), 0, async)
	}
	for round := range o.rounds {
		order := slices.Clone(runOrder)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, en := range order {
			r, err := run(en.c, fmt.Sprintf("%s-r%d", en.group, round), o.n)
			if err != nil {
				return nil, err
			}
			en.rounds = append(en.rounds, r)
		}
	}
	res.Rounds = o.rounds
	res.Nodecsr, res.Bare = combineRounds(entries[0].rounds), combineRounds(entries[1].rounds)
	for _, en := range entries[2 : 2+len(o.patterns)] {
		res.Patterns = append(res.Patterns, combineRounds(en.rounds))
	}
	for _, en := range entries[2+len(o.patterns):] {
		res.Variants = append(res.Variants, combineRounds(en.rounds))
	}
	res.NodecsrVsIncumbent = ratio(res.Nodecsr.RatePerSecond, res.Incumbent.RatePerSecond)
	res.NodecsrVsBare = ratio(res.Nodecsr.RatePerSecond, res.Bare.RatePerSecond)
	res.NodecsrVsIncumbentFromStart = ratio(res.Nodecsr.RateFromStartPerSecond, res.Incumbent.RateFromStartPerSecond)
	res.NodecsrVsBareFromStart = ratio(res.Nodecsr.RateFromStartPerSecond, res.Bare.RateFromStartPerSecond)
	return res, nil
}

// grantApprovalPatch lets the release's ServiceAccount patch the approval
// subresource (for the sar+approval-patch+async-event pattern only; the
// chart grants update). undo removes the grant.
func (e *env) grantApprovalPatch(ctx context.Context, rel *chartRelease) (undo func(), err error) {
	const name = "bench-approval-patch"
	rbac := e.admin.RbacV1()
	undo = func() {
		bg := context.WithoutCancel(ctx)
		_ = rbac.ClusterRoleBindings().Delete(bg, name, metav1.DeleteOptions{})
		_ = rbac.ClusterRoles().Delete(bg, name, metav1.DeleteOptions{})
	}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{certificatesv1.GroupName}, Resources: []string{"certificatesigningrequests/approval"}, Verbs: []string{"patch"}}},
	}
	if _, err := rbac.ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		return undo, err
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: rel.serviceAccount(), Namespace: rel.namespace}},
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		return undo, err
	}
	// RBAC is read from the API server's informer: wait until it allows it.
	err = pollUntil(ctx, time.Minute, func() (bool, error) {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: rel.userName(), Groups: saIdentity(rel.namespace, rel.serviceAccount()).Groups,
			ResourceAttributes: &authorizationv1.ResourceAttributes{Group: certificatesv1.GroupName, Resource: "certificatesigningrequests", Subresource: "approval", Verb: "patch"},
		}}
		got, err := e.admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
		return err == nil && got.Status.Allowed, err
	})
	return undo, err
}

// backgroundRate is the API server's request rate with nothing but the
// bench's scrapes running.
func (e *env) backgroundRate(ctx context.Context, d time.Duration) (float64, error) {
	before, err := apiServerMetrics(ctx, e.admin)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	select {
	case <-time.After(d):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	after, err := apiServerMetrics(ctx, e.admin)
	if err != nil {
		return 0, err
	}
	return diffRequests(before, after).Total / time.Since(t0).Seconds(), nil
}

// approvePhase files n pending CSRs from n nodes, starts the contender and
// measures until every CSR is decided.
func (e *env) approvePhase(ctx context.Context, c contender, group string, n int) (contenderResult, error) {
	res := contenderResult{Name: c.name, Settings: c.settings, N: n}
	ids, err := e.makeIdentities(ctx, "bench-"+strings.TrimPrefix(group, "approve-"), group, n)
	if err != nil {
		return res, err
	}
	defer func() {
		if err := e.cleanupGroup(context.WithoutCancel(ctx), group); err != nil {
			e.logf("cleanup of %s: %v", group, err)
		}
	}()
	if err := e.createNodes(ctx, ids, group); err != nil {
		return res, err
	}
	t := time.Now()
	if err := e.createCSRs(ctx, ids, 32); err != nil {
		return res, err
	}
	if err := e.tracker.waitFor(ctx, group, time.Minute, "waiting for the CSRs to show in the watch",
		func(seen, _ int) bool { return seen >= n }, nil); err != nil {
		return res, err
	}
	if _, decided := e.tracker.counts(group); decided > 0 {
		return res, fmt.Errorf("%d CSRs were decided before the contender started: is another approver running?", decided)
	}
	e.logf("%s: %d pending CSRs from %d nodes created in %s; starting %s", group, n, n, time.Since(t).Round(100*time.Millisecond), c.name)

	before, err := apiServerMetrics(ctx, e.admin)
	if err != nil {
		return res, err
	}
	cpu0 := e.cpu(0)
	t0 := time.Now()
	r, err := c.start(ctx, group)
	if err != nil {
		return res, err
	}
	stopped := false
	defer func() {
		if !stopped {
			r.stop()
		}
	}()
	timeout := time.Minute + time.Duration(n)*200*time.Millisecond
	if err := e.tracker.waitFor(ctx, group, timeout, "waiting for decisions",
		func(_, decided int) bool { return decided >= n }, r.alive); err != nil {
		return res, err
	}
	cpu1 := e.cpu(r.pid)
	// Let writes that follow a decision (the Events) finish before counting
	// the requests, and measure how long they trailed.
	var eventsAt time.Time
	if r.eventsWritten != nil {
		wctx, cancel := context.WithTimeout(ctx, timeout)
		err := r.eventsWritten(wctx)
		cancel()
		if err != nil {
			return res, fmt.Errorf("waiting for the decision Events: %w", err)
		}
		eventsAt = time.Now()
	}
	time.Sleep(time.Second)
	if r.metrics != nil {
		m, err := r.metrics(ctx)
		if err != nil {
			return res, err
		}
		if v := m.sum("controller_runtime_reconcile_time_seconds_count", "controller", "nodecsr-approver"); v > 0 {
			res.ReconcileMeanMillis = 1000 * m.sum("controller_runtime_reconcile_time_seconds_sum", "controller", "nodecsr-approver") / v
		}
		if v := m.sum("workqueue_queue_duration_seconds_count", "name", "nodecsr-approver"); v > 0 {
			res.QueueWaitMeanMillis = 1000 * m.sum("workqueue_queue_duration_seconds_sum", "name", "nodecsr-approver") / v
		}
		res.ClientRequestsPerDecision = m.sum("rest_client_requests_total") / float64(n)
		res.GCCycles = m.sum("go_gc_duration_seconds_count")
	}
	if r.pid > 0 {
		mem, err := readMem(r.pid)
		if err == nil {
			res.Memory = &mem
		}
	}
	after, err := apiServerMetrics(ctx, e.admin)
	if err != nil {
		return res, err
	}
	window := time.Since(t0)
	r.stop()
	stopped = true

	res.CPU = cpuBetween(cpu0, cpu1, numCPU())
	res.APIRequests = diffRequests(before, after)
	res.RequestsPerDecision = (res.APIRequests.Total - e.bgRate*window.Seconds()) / float64(n)

	var first, last time.Time
	var c2d, s2d []time.Duration
	var decidedAt []time.Time
	for _, ct := range e.tracker.group(group) {
		if ct.Decided.IsZero() {
			continue
		}
		if ct.Approved {
			res.Approved++
		} else {
			res.Denied++
		}
		if first.IsZero() || ct.Decided.Before(first) {
			first = ct.Decided
		}
		if ct.Decided.After(last) {
			last = ct.Decided
		}
		c2d = append(c2d, ct.Decided.Sub(ct.Created))
		s2d = append(s2d, ct.Decided.Sub(t0))
		decidedAt = append(decidedAt, ct.Decided)
	}
	slices.SortFunc(decidedAt, time.Time.Compare)
	if c.qps > 0 {
		res.ClientQPS, res.ClientBurst = c.qps, c.burst
		res.LimiterMinHeadroom, res.LimiterBoundFrom = limiterHeadroom(decidedAt, c.qps, c.burst)
	}
	if h := len(decidedAt) / 2; h > 0 {
		if d := decidedAt[len(decidedAt)-1].Sub(decidedAt[h]).Seconds(); d > 0 {
			res.SecondHalfRatePerSecond = float64(len(decidedAt)-1-h) / d
		}
	}
	if res.Denied > 0 {
		return res, fmt.Errorf("%d of %d CSRs were denied; every one should be approved", res.Denied, n)
	}
	if !eventsAt.IsZero() {
		trail := max(0, eventsAt.Sub(last).Seconds())
		res.EventsTrailSeconds = &trail
	}
	res.FirstDecisionSeconds = first.Sub(t0).Seconds()
	res.DurationSeconds = last.Sub(t0).Seconds()
	if d := last.Sub(first).Seconds(); d > 0 {
		res.RatePerSecond = float64(n-1) / d
	}
	res.RateFromStartPerSecond = float64(n) / res.DurationSeconds
	res.createToDecision, res.startToDecision = c2d, s2d
	res.CreateToDecision, res.StartToDecision = summarize(c2d), summarize(s2d)
	return res, nil
}

// pattern is what a bare loop does per CSR.
type pattern string

// The bare loop's patterns.
const (
	patternBare             pattern = "approval"
	patternNodecsr          pattern = "sar+approval+event"
	patternAsyncEvent       pattern = "sar+approval+async-event"
	patternNoEvent          pattern = "sar+approval"
	patternPatchAsyncEvent  pattern = "sar+approval-patch+async-event"
	defaultPatterns                 = "sar+approval+event,sar+approval+async-event,sar+approval"
	asyncEventWriters               = 16
	asyncEventQueue                 = 1024
	patternsHelpValidValues         = "sar+approval+event, sar+approval+async-event, sar+approval, sar+approval-patch+async-event"
)

func parsePatterns(s string) ([]pattern, error) {
	if s == "" || s == "none" {
		return nil, nil
	}
	var out []pattern
	for _, p := range strings.Split(s, ",") {
		switch pt := pattern(strings.TrimSpace(p)); pt {
		case patternNodecsr, patternAsyncEvent, patternNoEvent, patternPatchAsyncEvent:
			out = append(out, pt)
		default:
			return nil, fmt.Errorf("-patterns: unknown pattern %q (valid: %s)", p, patternsHelpValidValues)
		}
	}
	return out, nil
}

// asyncEvent reports whether the pattern hands its Events to separate
// writers.
func (p pattern) asyncEvent() bool {
	return p == patternAsyncEvent || p == patternPatchAsyncEvent
}

func (p pattern) describe() string {
	switch p {
	case patternNodecsr:
		return "the three requests (SubjectAccessReview, UpdateApproval, events.k8s.io Event) one after another (nodecsr's pattern before its Event writer)"
	case patternAsyncEvent:
		return fmt.Sprintf("a SubjectAccessReview and UpdateApproval, the Event handed to %d separate Event writers (nodecsr's pattern)", asyncEventWriters)
	case patternNoEvent:
		return "a SubjectAccessReview and UpdateApproval, no Event"
	case patternPatchAsyncEvent:
		return fmt.Sprintf("a SubjectAccessReview and a JSON merge patch of the approval subresource (the condition and the resourceVersion only, instead of the whole CSR), the Event handed to %d separate Event writers", asyncEventWriters)
	}
	return "UpdateApproval"
}

// bareLoop approves every pending CSR of the group with no checks at all,
// as the client configuration as says:
// one List, then UpdateApproval from workers goroutines, with a
// SubjectAccessReview before and an events.k8s.io Event after as the
// pattern says, so that nodecsr's request pattern can be told apart from
// nodecsr's own cost.
func (e *env) bareLoop(ctx context.Context, as *rest.Config, group string, workers int, pat pattern) error {
	cfg := rest.CopyConfig(as)
	cfg.QPS, cfg.Burst, cfg.UserAgent = -1, 0, "bench-bare-loop"
	cfg.ContentType = runtime.ContentTypeProtobuf
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	csrs := client.CertificatesV1().CertificateSigningRequests()
	list, err := csrs.List(ctx, metav1.ListOptions{LabelSelector: groupLabel + "=" + group})
	if err != nil {
		return fmt.Errorf("bare loop: %w", err)
	}
	withSAR := pat != patternBare
	writeEvent := func(csr *certificatesv1.CertificateSigningRequest) error {
		now := time.Now()
		ev := &eventsv1.Event{
			ObjectMeta:          metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", csr.Name, now.UnixNano()), Namespace: metav1.NamespaceDefault},
			EventTime:           metav1.NewMicroTime(now),
			ReportingController: "bench", ReportingInstance: "bench", Action: "Approved", Reason: "BenchApproved", Type: corev1.EventTypeNormal,
			Note: "approved by the bench's bare loop",
			Regarding: corev1.ObjectReference{Kind: "CertificateSigningRequest", APIVersion: "certificates.k8s.io/v1",
				Name: csr.Name, UID: csr.UID, ResourceVersion: csr.ResourceVersion},
		}
		if _, err := client.EventsV1().Events(metav1.NamespaceDefault).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("bare loop: %w", err)
		}
		return nil
	}
	var (
		events   chan *certificatesv1.CertificateSigningRequest
		eventsWG sync.WaitGroup
		eventErr error
		eventMu  sync.Mutex
	)
	async := pat.asyncEvent()
	if async {
		events = make(chan *certificatesv1.CertificateSigningRequest, asyncEventQueue)
		for range asyncEventWriters {
			eventsWG.Go(func() {
				for csr := range events {
					if err := writeEvent(csr); err != nil {
						eventMu.Lock()
						eventErr = err
						eventMu.Unlock()
					}
				}
			})
		}
	}
	err = parallel(ctx, len(list.Items), workers, func(i int) error {
		csr := &list.Items[i]
		if withSAR {
			sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User: csr.Spec.Username, UID: csr.Spec.UID, Groups: csr.Spec.Groups,
				ResourceAttributes: &authorizationv1.ResourceAttributes{
					Group: certificatesv1.GroupName, Resource: "certificatesigningrequests", Verb: "create", Subresource: "selfnodeclient",
				},
			}}
			got, err := client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
			if err != nil {
				return fmt.Errorf("bare loop: %w", err)
			}
			if !got.Status.Allowed {
				return fmt.Errorf("bare loop: SubjectAccessReview for %s denied: %s", csr.Spec.Username, got.Status.Reason)
			}
		}
		csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
			Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue,
			Reason: "BenchApproved", Message: "approved by the bench's bare loop", LastUpdateTime: metav1.Now(),
		})
		var (
			updated *certificatesv1.CertificateSigningRequest
			err     error
		)
		if pat == patternPatchAsyncEvent {
			// As guarded as the update: the patch names the resourceVersion.
			var patch []byte
			patch, err = json.Marshal(map[string]any{
				"metadata": map[string]any{"resourceVersion": csr.ResourceVersion},
				"status":   map[string]any{"conditions": csr.Status.Conditions},
			})
			if err != nil {
				return err
			}
			updated, err = csrs.Patch(ctx, csr.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "approval")
			if err != nil {
				return fmt.Errorf("bare loop: %w", err)
			}
		} else if updated, err = csrs.UpdateApproval(ctx, csr.Name, csr, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("bare loop: %w", err)
		}
		switch pat {
		case patternNodecsr:
			return writeEvent(updated)
		case patternAsyncEvent, patternPatchAsyncEvent:
			select {
			case events <- updated:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	if events != nil {
		close(events)
		eventsWG.Wait()
	}
	if err != nil {
		return err
	}
	return eventErr
}

// eventQueueEmpty waits until nodecsr-controller's decision Event writer
// holds no Event (nodecsr_event_queue_depth 0), polling its metrics often
// enough to time the Events' trail.
func eventQueueEmpty(ctx context.Context, metrics func(context.Context) (samples, error), exited func() error) error {
	var held float64
	err := pollEvery(ctx, 0, 50*time.Millisecond, func() (bool, error) {
		m, err := metrics(ctx)
		if err != nil {
			return false, err
		}
		if held = m.sum("nodecsr_event_queue_depth"); held == 0 {
			return true, nil
		}
		return false, exited()
	})
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%w: %v decision Events still held", err, held)
	}
	return err
}

// withoutCSRSigning stops kube-controller-manager (its csrsigning would add
// a status update per approval) until restore starts it again.
func (e *env) withoutCSRSigning(ctx context.Context) (restore func(), err error) {
	if err := e.c.StopControllerManager(); err != nil {
		return nil, err
	}
	return func() {
		if err := e.c.StartControllerManager(context.WithoutCancel(ctx)); err != nil {
			e.logf("restarting kube-controller-manager (csrsigning): %v", err)
		}
	}, nil
}
