package main

// The apf part: nodecsr-controller as the chart installs it, under its own
// ServiceAccount (not system:masters, which API Priority and Fairness
// exempts), with a noisy tenant flooding the workload-low priority level
// that every ServiceAccount shares; with the chart's FlowSchema (nodecsr at
// workload-high, beside kube-controller-manager) and without it (nodecsr in
// workload-low, behind the tenant).
//
//	go run ./test/bench apf [-n 1000] [-rounds 2]

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"

	"github.com/nodecsr/nodecsr/test/cluster"
)

// The subcommand, listed before "all" (which runs it too).
func init() {
	i := slices.Index(subcommands, "all")
	if i < 0 {
		i = len(subcommands)
	}
	subcommands = slices.Insert(subcommands, i, "apf")
}

// The noisy tenant: apfTenantSAs ServiceAccounts (each its own flow in the
// service-accounts FlowSchema, which distinguishes by user), as many
// goroutines in all as the API server has seats, each making dry-run
// ConfigMap creates that a validating webhook on loopback holds for
// apfTenantHold: seats held for a second at almost no CPU, as slow webhooks
// and big LISTs hold them in real clusters. (A longer hold slows nodecsr in
// workload-low down further: at 5 s it decided 2 CSRs a second, and 1000
// CSRs would outlast the phase's timeout.) (Hammering cheap GETs would fill
// the two cores of a small machine long before the ~250-370 seats
// workload-low gets, and measure CPU contention, which APF does not address.)
const (
	apfTenantSAs       = 100
	apfTenantHold      = time.Second
	apfTenantWarmup    = 12 * time.Second // past one of APF's 10 s seat-borrowing adjustments
	apfTenantMaxRun    = 10 * time.Minute // per phase, whatever happens
	apfTenantNamespace = "bench-apf-tenant"
	apfWebhookName     = "bench-apf-slow-tenant"
	apfServiceAccounts = "service-accounts" // the suggested FlowSchema of every ServiceAccount
	apfWorkloadLow     = "workload-low"
	apfWorkloadHigh    = "workload-high"
)

// apfResult is the apf part's outcome.
type apfResult struct {
	N      int    `json:"n"`
	Rounds int    `json:"rounds"`
	Tenant string `json:"tenant"`
	// ServerSeats is the API server's total concurrency limit (the sum of
	// the priority levels' nominal seats); the other seats are per level.
	ServerSeats       int     `json:"serverSeats"`
	WorkloadLowSeats  float64 `json:"workloadLowNominalSeats"`
	WorkloadLowUpper  float64 `json:"workloadLowUpperSeats"`
	WorkloadHighSeats float64 `json:"workloadHighNominalSeats"`
	// Classified is where the API server put each identity's requests
	// (its X-Kubernetes-PF-* response headers).
	Classified []apfClass `json:"classified"`
	Runs       []apfRun   `json:"runs"`
	// WithVsWithout: decisions/s with the FlowSchema over without, under the tenant.
	WithVsWithout float64 `json:"withVsWithout"`
	// LoadAverage is /proc/loadavg at the end of the part.
	LoadAverage string `json:"loadAverage,omitempty"`
}

type apfClass struct {
	Who           string `json:"who"`
	FlowSchema    string `json:"flowSchema"`
	PriorityLevel string `json:"priorityLevel"`
}

type apfRun struct {
	Name          string          `json:"name"`
	FlowSchema    string          `json:"flowSchema"`
	PriorityLevel string          `json:"priorityLevel"`
	Tenant        bool            `json:"tenant"`
	Result        contenderResult `json:"result"`
	TenantStats   *tenantStats    `json:"tenantStats,omitempty"`
	// WorkloadLow is workload-low just before the CSRs were filed (the
	// tenant warmed up), mean over the rounds.
	WorkloadLow apfLevelSample `json:"workloadLow"`
}

// apfLevelSample is a priority level's state from kube-apiserver's metrics.
type apfLevelSample struct {
	LimitSeats      float64 `json:"currentLimitSeats"`
	ExecutingSeats  float64 `json:"executingSeats"`
	InQueueRequests float64 `json:"inQueueRequests"`
}

func (e *env) sampleLevel(ctx context.Context, level string) apfLevelSample {
	m, err := apiServerMetrics(ctx, e.admin)
	if err != nil {
		return apfLevelSample{}
	}
	return apfLevelSample{
		LimitSeats:      m.sum("apiserver_flowcontrol_current_limit_seats", "priority_level", level),
		ExecutingSeats:  m.sum("apiserver_flowcontrol_current_executing_seats", "priority_level", level),
		InQueueRequests: m.sum("apiserver_flowcontrol_current_inqueue_requests", "priority_level", level),
	}
}

type tenantStats struct {
	Seconds       float64 `json:"seconds"`
	Requests      int64   `json:"requests"`
	Rejected      int64   `json:"rejected429"`
	Errors        int64   `json:"errors"`
	RatePerSecond float64 `json:"ratePerSecond"`
}

// chartRelease is one installation of the chart; the approve and apf parts
// run nodecsr-controller (and, in approve, the bare loops) as its
// ServiceAccount.
type chartRelease struct {
	release, namespace string
	apf                bool
	// kubeconfig and config authenticate with a token of the release's
	// ServiceAccount (TokenRequest), as the chart's pod does: exactly its
	// RBAC and its APF classification.
	kubeconfig string
	config     *rest.Config
}

func (r chartRelease) serviceAccount() string { return r.release } // the release name contains "nodecsr"
func (r chartRelease) flowSchema() string     { return r.release }
func (r chartRelease) userName() string       { return saIdentity(r.namespace, r.serviceAccount()).UserName }

// apfPart runs the apf part when the subcommand asks for it; main.go calls
// it among the other parts.
func apfPart(ctx context.Context, want func(string) bool, step func(string, func() error), e *env, o *options, rep *report) {
	if want("apf") {
		step("apf", func() (err error) { rep.APF, err = e.measureAPF(ctx, o); return err })
	}
}

func (e *env) measureAPF(ctx context.Context, o *options) (*apfResult, error) {
	res := &apfResult{N: o.n, Rounds: o.rounds}
	// The approver alone, as in the approve part.
	restore, err := e.withoutCSRSigning(ctx)
	if err != nil {
		return nil, err
	}
	defer restore()
	if err := e.waitAPFBootstrap(ctx); err != nil {
		return nil, err
	}

	// The chart, twice: with its FlowSchema and without.
	ch, err := loadChart()
	if err != nil {
		return nil, err
	}
	with := &chartRelease{release: "nodecsr-with", namespace: "bench-apf-with", apf: true}
	without := &chartRelease{release: "nodecsr-without", namespace: "bench-apf-without", apf: false}
	for _, r := range []*chartRelease{with, without} {
		undo, err := e.installChart(ctx, ch, r)
		if undo != nil {
			defer undo()
		}
		if err != nil {
			return nil, err
		}
	}

	// Where the API server puts each identity's requests.
	tenantID := func(i int) rest.ImpersonationConfig {
		return saIdentity(apfTenantNamespace, fmt.Sprintf("tenant-%03d", i))
	}
	want := []struct {
		who, user string
		cfg       *rest.Config
		fs, pl    string
	}{
		{"nodecsr-controller, chart with apf.enabled=true", with.userName(), with.config, with.flowSchema(), apfWorkloadHigh},
		{"nodecsr-controller, chart with apf.enabled=false", without.userName(), without.config, apfServiceAccounts, apfWorkloadLow},
		{"the noisy tenant", tenantID(0).UserName, e.impersonating(tenantID(0)), apfServiceAccounts, apfWorkloadLow},
	}
	for _, w := range want {
		c, err := e.waitClassified(ctx, w.who+" ("+w.user+")", w.cfg, w.fs, w.pl)
		if err != nil {
			return nil, err
		}
		res.Classified = append(res.Classified, c)
	}

	m, err := apiServerMetrics(ctx, e.admin)
	if err != nil {
		return nil, err
	}
	res.ServerSeats = int(m.sum("apiserver_flowcontrol_nominal_limit_seats"))
	res.WorkloadLowSeats = m.sum("apiserver_flowcontrol_nominal_limit_seats", "priority_level", apfWorkloadLow)
	res.WorkloadLowUpper = m.sum("apiserver_flowcontrol_upper_limit_seats", "priority_level", apfWorkloadLow)
	res.WorkloadHighSeats = m.sum("apiserver_flowcontrol_nominal_limit_seats", "priority_level", apfWorkloadHigh)
	if res.ServerSeats <= 0 {
		return nil, errors.New("kube-apiserver reports no apiserver_flowcontrol_nominal_limit_seats: is API Priority and Fairness off?")
	}
	perSA := max(1, (res.ServerSeats+apfTenantSAs-1)/apfTenantSAs)
	res.Tenant = fmt.Sprintf("%d ServiceAccounts × %d goroutines = %d concurrent dry-run ConfigMap creates (as many as the API server's %d seats), each held %s by a validating webhook on loopback",
		apfTenantSAs, perSA, apfTenantSAs*perSA, res.ServerSeats, apfTenantHold)

	wh, err := e.startSlowWebhook(ctx)
	if err != nil {
		return nil, err
	}
	defer wh.stop()

	type phase struct {
		name   string
		rel    *chartRelease
		tenant bool
		fs, pl string
	}
	withP := phase{name: "with the FlowSchema", rel: with, tenant: true, fs: with.flowSchema(), pl: apfWorkloadHigh}
	withoutP := phase{name: "without the FlowSchema", rel: without, tenant: true, fs: apfServiceAccounts, pl: apfWorkloadLow}
	phases := []phase{{name: "no tenant, without the FlowSchema", rel: without, fs: apfServiceAccounts, pl: apfWorkloadLow}}
	for round := range o.rounds {
		if round%2 == 0 {
			phases = append(phases, withoutP, withP)
		} else {
			phases = append(phases, withP, withoutP)
		}
	}
	rounds := map[string][]contenderResult{}
	tenants := map[string][]tenantStats{}
	levels := map[string][]apfLevelSample{}
	for i, p := range phases {
		group := fmt.Sprintf("apf-%d", i)
		var tn *tenant
		if p.tenant {
			tn = e.startTenant(ctx, wh, tenantID, apfTenantSAs, perSA)
			e.logf("apf: tenant started (%s); nodecsr %s in %s", res.Tenant, p.name, apfTenantWarmup)
			select {
			case <-time.After(apfTenantWarmup):
			case <-ctx.Done():
			}
		}
		ls := e.sampleLevel(ctx, apfWorkloadLow)
		levels[p.name] = append(levels[p.name], ls)
		e.logf("apf: workload-low: %.0f of %.0f seats executing, %.0f requests queued", ls.ExecutingSeats, ls.LimitSeats, ls.InQueueRequests)
		c := e.apfContender(p.name, p.rel)
		r, err := e.approvePhase(ctx, c, group, o.n)
		if tn != nil {
			st := tn.stop()
			wh.waitIdle(ctx, apfTenantHold+10*time.Second)
			tenants[p.name] = append(tenants[p.name], st)
			e.logf("apf: tenant: %d requests (%.1f/s), %d rejected with 429, %d other errors", st.Requests, st.RatePerSecond, st.Rejected, st.Errors)
			if st.Errors > 0 {
				err = errors.Join(err, fmt.Errorf("the tenant's requests failed %d times, first: %s", st.Errors, tn.firstError()))
			}
		}
		if err != nil {
			return nil, fmt.Errorf("nodecsr %s: %w", p.name, err)
		}
		e.logf("apf: nodecsr %s: %d CSRs, %.1f/s, p99 start→approved %s", p.name, o.n, r.RatePerSecond, secs(r.StartToDecision.P99))
		rounds[p.name] = append(rounds[p.name], r)
	}
	for _, p := range []phase{phases[0], withoutP, withP} {
		run := apfRun{Name: p.name, FlowSchema: p.fs, PriorityLevel: p.pl, Tenant: p.tenant, Result: combineRounds(rounds[p.name])}
		for _, l := range levels[p.name] {
			k := float64(len(levels[p.name]))
			run.WorkloadLow.LimitSeats += l.LimitSeats / k
			run.WorkloadLow.ExecutingSeats += l.ExecutingSeats / k
			run.WorkloadLow.InQueueRequests += l.InQueueRequests / k
		}
		if ts := tenants[p.name]; len(ts) > 0 {
			sum := tenantStats{}
			for _, t := range ts {
				sum.Seconds += t.Seconds
				sum.Requests += t.Requests
				sum.Rejected += t.Rejected
				sum.Errors += t.Errors
			}
			sum.RatePerSecond = float64(sum.Requests) / sum.Seconds
			run.TenantStats = &sum
		}
		res.Runs = append(res.Runs, run)
	}
	res.WithVsWithout = ratio(res.Runs[2].Result.RatePerSecond, res.Runs[1].Result.RatePerSecond)
	res.LoadAverage = loadAverage()
	return res, nil
}

// apfContender is nodecsr-controller with its defaults (as the approve
// part runs it) under the release's ServiceAccount.
func (e *env) apfContender(name string, r *chartRelease) contender {
	return contender{
		name:     "nodecsr-controller " + name,
		settings: "defaults, as " + r.userName() + " (a ServiceAccount token) with the chart's RBAC",
		qps:      float64(defaults.KubeAPIQPS), burst: float64(defaults.KubeAPIBurst),
		start: func(ctx context.Context, group string) (running, error) {
			c, err := e.startController("nodecsr-"+group, "--kubeconfig="+r.kubeconfig)
			if err != nil {
				return running{}, err
			}
			return running{pid: c.pid(), alive: c.exitedErr, metrics: c.metrics, stop: func() { c.stop(10 * time.Second) }}, nil
		},
	}
}

// waitAPFBootstrap waits for the FlowSchemas and priority levels that the
// API server's APF bootstrap controller creates after it starts.
func (e *env) waitAPFBootstrap(ctx context.Context) error {
	fc := e.admin.FlowcontrolV1()
	err := pollUntil(ctx, time.Minute, func() (bool, error) {
		fs, err := fc.FlowSchemas().Get(ctx, apfServiceAccounts, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		if fs.Spec.PriorityLevelConfiguration.Name != apfWorkloadLow {
			return false, fmt.Errorf("FlowSchema %s is at %s, not %s", fs.Name, fs.Spec.PriorityLevelConfiguration.Name, apfWorkloadLow)
		}
		for _, pl := range []string{apfWorkloadLow, apfWorkloadHigh} {
			if _, err := fc.PriorityLevelConfigurations().Get(ctx, pl, metav1.GetOptions{}); err != nil {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("the API server's suggested APF configuration (FlowSchema %s, priority levels %s and %s): %w", apfServiceAccounts, apfWorkloadLow, apfWorkloadHigh, err)
	}
	return nil
}

// loadChart loads charts/nodecsr.
func loadChart() (*chart.Chart, error) {
	root, err := cluster.RepoRoot()
	if err != nil {
		return nil, err
	}
	ch, err := loader.Load(filepath.Join(root, "charts", "nodecsr"))
	if err != nil {
		return nil, fmt.Errorf("failed to load the chart: %w", err)
	}
	return ch, nil
}

// installChart creates the release's namespace, installs the chart there
// (no webhooks, one replica: only its ServiceAccount, RBAC and FlowSchema
// matter here; nothing schedules its pods) and writes a kubeconfig with a
// token of its ServiceAccount. undo uninstalls and deletes the namespace.
func (e *env) installChart(ctx context.Context, ch *chart.Chart, r *chartRelease) (undo func(), err error) {
	var steps []func()
	undo = func() {
		for _, s := range slices.Backward(steps) {
			s()
		}
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: r.namespace}}
	if _, err := e.admin.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return undo, err
	}
	steps = append(steps, func() {
		_ = e.admin.CoreV1().Namespaces().Delete(context.WithoutCancel(ctx), r.namespace, metav1.DeleteOptions{})
	})
	cfg, err := helmConfig(e.c.AdminKubeconfig(), r.namespace)
	if err != nil {
		return undo, err
	}
	inst := action.NewInstall(cfg)
	inst.ReleaseName, inst.Namespace, inst.Timeout = r.release, r.namespace, time.Minute
	vals := map[string]any{
		"replicaCount":   1,
		"leaderElection": map[string]any{"enabled": false},
		"webhook":        map[string]any{"enabled": false},
		"tests":          map[string]any{"enabled": false},
		"apf":            map[string]any{"enabled": r.apf},
		// The two releases share the CRD setupEnv installed.
		"crds": map[string]any{"enabled": false},
	}
	if _, err := inst.RunWithContext(ctx, ch, vals); err != nil {
		return undo, fmt.Errorf("helm install %s: %w", r.release, err)
	}
	steps = append(steps, func() {
		un := action.NewUninstall(cfg)
		un.Timeout = time.Minute
		if _, err := un.Run(r.release); err != nil {
			e.logf("helm uninstall %s: %v", r.release, err)
		}
	})
	r.kubeconfig = filepath.Join(e.dir, r.release+".kubeconfig")
	if r.config, err = e.serviceAccountConfig(ctx, r.namespace, r.serviceAccount(), r.kubeconfig); err != nil {
		return undo, err
	}
	e.logf("installed the chart as %s in %s (apf.enabled=%v); its ServiceAccount's kubeconfig: %s", r.release, r.namespace, r.apf, r.kubeconfig)
	return undo, nil
}

// serviceAccountTokenSeconds is how long the bench's ServiceAccount tokens
// are valid: longer than any bench run.
const serviceAccountTokenSeconds = 6 * 3600

// serviceAccountConfig asks the API server for a token of the ServiceAccount
// (TokenRequest, as the kubelet does for a pod's projected token), writes a
// kubeconfig that uses it to path and returns the same as a rest.Config.
func (e *env) serviceAccountConfig(ctx context.Context, ns, name, path string) (*rest.Config, error) {
	tr, err := e.admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](serviceAccountTokenSeconds)},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("failed to get a token of ServiceAccount %s/%s: %w", ns, name, err)
	}
	kc, err := clientcmd.LoadFromFile(e.c.AdminKubeconfig())
	if err != nil {
		return nil, err
	}
	for k := range kc.AuthInfos {
		kc.AuthInfos[k] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	}
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, err
	}
	if cfg.BearerToken == "" || cfg.CertData != nil || cfg.CertFile != "" {
		return nil, fmt.Errorf("%s does not authenticate with the ServiceAccount's token alone", path)
	}
	return cfg, nil
}

func helmConfig(kubeconfig, namespace string) (*action.Configuration, error) {
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig, flags.Namespace = &kubeconfig, &namespace
	cfg := new(action.Configuration)
	if err := cfg.Init(flags, namespace, "secret", func(string, ...any) {}); err != nil {
		return nil, fmt.Errorf("failed to initialise Helm: %w", err)
	}
	return cfg, nil
}

// saIdentity is what the API server authenticates a ServiceAccount token as.
func saIdentity(ns, name string) rest.ImpersonationConfig {
	return rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + ns + ":" + name,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
	}
}

// impersonating is the admin's client configuration impersonating id.
func (e *env) impersonating(id rest.ImpersonationConfig) *rest.Config {
	cfg := e.c.AdminConfig()
	cfg.Impersonate = id
	return cfg
}

// waitClassified waits until the API server puts the requests made with cfg
// in FlowSchema fs at priority level pl (its APF controller applies a new
// FlowSchema a moment after its create).
func (e *env) waitClassified(ctx context.Context, who string, cfg *rest.Config, fs, pl string) (apfClass, error) {
	var gotFS, gotPL string
	err := pollUntil(ctx, time.Minute, func() (bool, error) {
		var err error
		gotFS, gotPL, err = e.classify(ctx, cfg)
		return gotFS == fs && gotPL == pl, err
	})
	if err != nil {
		return apfClass{}, fmt.Errorf("requests of %s are in FlowSchema %q at %q, want %q at %q: %w", who, gotFS, gotPL, fs, pl, err)
	}
	e.logf("%s: FlowSchema %s, priority level %s", who, gotFS, gotPL)
	return apfClass{Who: who, FlowSchema: gotFS, PriorityLevel: gotPL}, nil
}

// classify makes one request with cfg and returns the names of the
// FlowSchema and priority level the API server's X-Kubernetes-PF-* response
// headers name. APF classifies before authorization, so a refused request
// has them too.
func (e *env) classify(ctx context.Context, cfg *rest.Config) (flowSchema, priorityLevel string, err error) {
	var fsUID, plUID string
	cfg = rest.CopyConfig(cfg)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(req *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(req)
			if err == nil {
				fsUID = resp.Header.Get(flowcontrolv1.ResponseHeaderMatchedFlowSchemaUID)
				plUID = resp.Header.Get(flowcontrolv1.ResponseHeaderMatchedPriorityLevelConfigurationUID)
			}
			return resp, err
		})
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", "", err
	}
	_, _ = cs.CertificatesV1().RESTClient().Get().AbsPath("/apis/certificates.k8s.io/v1/certificatesigningrequests").Param("limit", "1").DoRaw(ctx)
	fss, err := e.admin.FlowcontrolV1().FlowSchemas().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", "", err
	}
	for _, fs := range fss.Items {
		if string(fs.UID) == fsUID {
			flowSchema = fs.Name
		}
	}
	pls, err := e.admin.FlowcontrolV1().PriorityLevelConfigurations().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", "", err
	}
	for _, pl := range pls.Items {
		if string(pl.UID) == plUID {
			priorityLevel = pl.Name
		}
	}
	return flowSchema, priorityLevel, nil
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func pollUntil(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	return pollEvery(ctx, timeout, 200*time.Millisecond, cond)
}

// pollEvery checks cond every interval until it holds, it fails, timeout
// passes (none if not positive: ctx alone bounds it) or ctx ends.
func pollEvery(ctx context.Context, timeout, interval time.Duration, cond func() (bool, error)) error {
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if !deadline.IsZero() && time.Now().After(deadline) {
			return errTimeout
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// slowWebhook is a validating admission webhook on loopback that holds
// every request for apfTenantHold, registered for ConfigMap creates in the
// tenant's namespace only.
type slowWebhook struct {
	srv      *http.Server
	inFlight atomic.Int64
	calls    atomic.Int64
	stopOnce sync.Once
	stopFn   func()

	mu       sync.Mutex
	released chan struct{} // closed: requests are let go at once
}

// hold makes the webhook hold requests; release lets them go.
func (wh *slowWebhook) hold() {
	wh.mu.Lock()
	defer wh.mu.Unlock()
	if closed(wh.released) {
		wh.released = make(chan struct{})
	}
}

func (wh *slowWebhook) release() {
	wh.mu.Lock()
	defer wh.mu.Unlock()
	if !closed(wh.released) {
		close(wh.released)
	}
}

func (wh *slowWebhook) releasedCh() <-chan struct{} {
	wh.mu.Lock()
	defer wh.mu.Unlock()
	return wh.released
}

func (e *env) startSlowWebhook(ctx context.Context) (wh *slowWebhook, err error) {
	wh = &slowWebhook{released: make(chan struct{})}
	close(wh.released) // holds only while a tenant runs
	var steps []func()
	wh.stopFn = func() {
		for _, s := range slices.Backward(steps) {
			s()
		}
	}
	defer func() {
		if err != nil {
			wh.stop()
		}
	}()
	bg := context.WithoutCancel(ctx)

	// The tenant's namespace and its permission to create ConfigMaps there.
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: apfTenantNamespace}}
	if _, err := e.admin.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	steps = append(steps, func() { _ = e.admin.CoreV1().Namespaces().Delete(bg, apfTenantNamespace, metav1.DeleteOptions{}) })
	// (A Role of its own: the aggregated ClusterRole "edit" stays empty
	// without kube-controller-manager's aggregation controller.)
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "tenant", Namespace: apfTenantNamespace},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"create", "get", "list"}}},
	}
	if _, err := e.admin.RbacV1().Roles(apfTenantNamespace).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "tenant", Namespace: apfTenantNamespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "tenant"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:serviceaccounts:" + apfTenantNamespace}},
	}
	if _, err := e.admin.RbacV1().RoleBindings(apfTenantNamespace).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		return nil, err
	}

	serving, err := e.c.ClusterCA().IssueServing("127.0.0.1")
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(serving.CertPEM, serving.KeyPEM)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	stopping := make(chan struct{})
	wh.srv = &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { wh.admit(w, r, stopping) }),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go func() { _ = wh.srv.ServeTLS(ln, "", "") }()
	steps = append(steps, func() {
		close(stopping)
		sctx, cancel := context.WithTimeout(bg, 5*time.Second)
		defer cancel()
		_ = wh.srv.Shutdown(sctx)
	})

	url := "https://" + ln.Addr().String() + "/"
	none := admissionregistrationv1.SideEffectClassNone
	ignore := admissionregistrationv1.Ignore
	scope := admissionregistrationv1.NamespacedScope
	timeout := int32(apfTenantHold/time.Second) + 10
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: apfWebhookName},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name:                    "slow.tenant.bench.nodecsr.io",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: e.c.ClusterCA().CertPEM},
			Rules:                   []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create}, Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"configmaps"}, Scope: &scope}}},
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: apfTenantNamespace}},
			SideEffects:             &none, // so that dry-run requests call it
			FailurePolicy:           &ignore,
			TimeoutSeconds:          &timeout,
			AdmissionReviewVersions: []string{"v1"},
		}},
	}
	if _, err := e.admin.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, vwc, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	steps = append(steps, func() {
		_ = e.admin.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(bg, apfWebhookName, metav1.DeleteOptions{})
	})
	// The API server calls it once its webhook informer has it.
	err = pollUntil(ctx, time.Minute, func() (bool, error) {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "probe"}}
		if _, err := e.admin.CoreV1().ConfigMaps(apfTenantNamespace).Create(ctx, cm, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
			return false, err
		}
		return wh.calls.Load() > 0, nil
	})
	if err != nil {
		return nil, fmt.Errorf("the API server does not call the tenant's webhook: %w", err)
	}
	return wh, nil
}

func (wh *slowWebhook) admit(w http.ResponseWriter, r *http.Request, stopping <-chan struct{}) {
	wh.calls.Add(1)
	wh.inFlight.Add(1)
	defer wh.inFlight.Add(-1)
	review := &admissionv1.AdmissionReview{}
	if err := json.NewDecoder(r.Body).Decode(review); err != nil || review.Request == nil {
		http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
		return
	}
	select {
	case <-time.After(apfTenantHold):
	case <-wh.releasedCh():
	case <-r.Context().Done():
	case <-stopping:
	}
	review.Response = &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true}
	review.Request = nil
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(review)
}

// waitIdle waits until the webhook holds no request (the tenant's last ones
// finished), so that a phase does not inherit the previous one's load.
func (wh *slowWebhook) waitIdle(ctx context.Context, timeout time.Duration) {
	_ = pollUntil(ctx, timeout, func() (bool, error) { return wh.inFlight.Load() == 0, nil })
}

func (wh *slowWebhook) stop() { wh.stopOnce.Do(wh.stopFn) }

// tenant is the noisy neighbour: goroutines making dry-run ConfigMap
// creates as ServiceAccounts of the tenant namespace, until stopped or
// apfTenantMaxRun.
type tenant struct {
	cancel   context.CancelFunc
	done     chan struct{} // closed by stop: no new requests
	wh       *slowWebhook
	wg       sync.WaitGroup
	started  time.Time
	requests atomic.Int64
	rejected atomic.Int64
	errs     atomic.Int64
	firstErr atomic.Value // string
	stopOnce sync.Once
	stats    tenantStats
}

func (e *env) startTenant(ctx context.Context, wh *slowWebhook, id func(int) rest.ImpersonationConfig, sas, perSA int) *tenant {
	ctx, cancel := context.WithTimeout(ctx, apfTenantMaxRun)
	t := &tenant{cancel: cancel, done: make(chan struct{}), wh: wh, started: time.Now()}
	wh.hold()
	for i := range sas {
		cfg := e.c.AdminConfig()
		cfg.Impersonate = id(i)
		cfg.QPS, cfg.Burst, cfg.UserAgent = -1, 0, "bench-apf-tenant"
		cfg.Timeout = apfTenantHold + 60*time.Second
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.fail(err)
			continue
		}
		rc := cs.CoreV1().RESTClient()
		for j := range perSA {
			t.wg.Go(func() {
				cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("noise-%03d-%03d", i, j)}, Data: map[string]string{"noise": strings.Repeat("x", 64)}}
				for ctx.Err() == nil && !closed(t.done) {
					// MaxRetries(0): client-go would retry a 429 itself; the
					// tenant counts it and waits a second, as Retry-After says.
					err := rc.Post().Namespace(apfTenantNamespace).Resource("configmaps").Param("dryRun", metav1.DryRunAll).
						MaxRetries(0).Body(cm).Do(ctx).Error()
					switch {
					case ctx.Err() != nil:
						return
					case err == nil:
						t.requests.Add(1)
					case apierrors.IsTooManyRequests(err):
						t.rejected.Add(1)
						sleepCtx(ctx, time.Second)
					default:
						t.fail(err)
						sleepCtx(ctx, time.Second)
					}
				}
			})
		}
	}
	return t
}

func (t *tenant) fail(err error) {
	t.errs.Add(1)
	t.firstErr.CompareAndSwap(nil, err.Error())
}

// firstError is the tenant's first error other than a 429 ("" if none).
func (t *tenant) firstError() string {
	s, _ := t.firstErr.Load().(string)
	return s
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// stop stops the tenant and returns what it did: no new requests, the
// webhook lets the held ones go, and their goroutines end.
func (t *tenant) stop() tenantStats {
	t.stopOnce.Do(func() {
		close(t.done)
		t.wh.release()
		t.wg.Wait()
		t.cancel()
		d := time.Since(t.started).Seconds()
		t.stats = tenantStats{Seconds: d, Requests: t.requests.Load(), Rejected: t.rejected.Load(), Errors: t.errs.Load(), RatePerSecond: float64(t.requests.Load()) / d}
	})
	return t.stats
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
}

// apfTable renders the apf part as text or (md) Markdown.
func apfTable(a *apfResult, md bool) string {
	var b strings.Builder
	// para ends a paragraph: a line in text, a blank line in Markdown.
	para, item := "\n", "  "
	if md {
		para, item = "\n\n", "- "
	}
	fmt.Fprintf(&b, "API Priority and Fairness: nodecsr-controller as the chart's ServiceAccount (a token of it, the chart's RBAC), %d CSRs per run (%d rounds of the tenant runs, alternating order).%s", a.N, a.Rounds, para)
	fmt.Fprintf(&b, "Seats: %d in the API server (its default --max-requests-inflight=400 plus --max-mutating-requests-inflight=200, rounded up per level); workload-low %.0f nominal (upper limit %.0f with borrowing), workload-high %.0f nominal.%s", a.ServerSeats, a.WorkloadLowSeats, a.WorkloadLowUpper, a.WorkloadHighSeats, para)
	fmt.Fprintf(&b, "Tenant: %s.%s", a.Tenant, para)
	for _, c := range a.Classified {
		fmt.Fprintf(&b, "%s%s → FlowSchema %s, priority level %s\n", item, c.Who, c.FlowSchema, c.PriorityLevel)
	}
	if md {
		b.WriteString("\n")
	}
	header := []string{"run", "nodecsr's FlowSchema → level", "decisions/s", "p50 / p99 start→approved", "p99 create→approved", "first decision after", "reconcile mean", "tenant requests/s (429s)", "workload-low seats busy / limit, queued", "CPU cores: apiserver / machine"}
	var rows [][]string
	for _, r := range a.Runs {
		c := r.Result
		tenantCol := "-"
		if t := r.TenantStats; t != nil {
			tenantCol = fmt.Sprintf("%.1f (%d)", t.RatePerSecond, t.Rejected)
		}
		rows = append(rows, []string{
			r.Name, r.FlowSchema + " → " + r.PriorityLevel,
			fmt.Sprintf("%.1f", c.RatePerSecond),
			secs(c.StartToDecision.P50) + " / " + secs(c.StartToDecision.P99),
			secs(c.CreateToDecision.P99),
			secs(c.FirstDecisionSeconds),
			fmt.Sprintf("%.1f ms", c.ReconcileMeanMillis),
			tenantCol,
			fmt.Sprintf("%.0f / %.0f, %.0f", r.WorkloadLow.ExecutingSeats, r.WorkloadLow.LimitSeats, r.WorkloadLow.InQueueRequests),
			fmt.Sprintf("%.2f / %.2f of %d", c.CPU.APIServer, c.CPU.Machine, c.CPU.Cores),
		})
	}
	b.WriteString(table(md, header, rows))
	if md {
		b.WriteString("\n")
	}
	if len(a.Runs) == 3 {
		w, wo := a.Runs[2].Result, a.Runs[1].Result
		fmt.Fprintf(&b, "Under the tenant, with the FlowSchema vs without: %.2fx decisions/s (%.1f vs %.1f), p99 start→approved %s vs %s.%s",
			a.WithVsWithout, w.RatePerSecond, wo.RatePerSecond, secs(w.StartToDecision.P99), secs(wo.StartToDecision.P99), para)
	}
	fmt.Fprintf(&b, "APF divides the API server's seats, not its CPU: the tenant's own requests still compete for the cores with nodecsr's, with the FlowSchema too.%s", para)
	if a.LoadAverage != "" {
		fmt.Fprintf(&b, "Load average at the end of the apf part: %s.%s", a.LoadAverage, para)
	}
	return b.String()
}
