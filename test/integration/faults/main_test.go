// Package faults_test runs the real nodecsr-controller binary (built once for
// the package) against a real control plane (etcd, kube-apiserver,
// kube-controller-manager's csrsigning) and breaks things under load: the
// leader is SIGKILLed during a storm, the leader is cut off from the API
// server while it keeps running (a partition), the API server restarts, the
// controller restarts with a backlog, the webhook goes away while hostile
// CSRs arrive, and the policy file is replaced by a broken one. Every CSR
// must still get exactly one decision, with the right reason, recorded by
// exactly one Event.
//
// Every process dies with the test binary (cluster.Spawn); its log is printed
// when a test fails. Only loopback traffic. Waits are generous polls; times
// are measured and logged, never asserted.
package faults_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/test/env"
)

var (
	tc     *cluster.Cluster
	admin  kubernetes.Interface
	binary string
	// auditLog is kube-apiserver's audit log (JSON lines): every write by a
	// user in auditedGroup, at Metadata level, and nothing else.
	auditLog string
)

const (
	// selfUser is the admin identity the binary runs as.
	selfUser = "nodecsr-test-admin"
	// csrCreators may create CSRs (system:node-bootstrapper) and nothing else.
	csrCreators = "faults-csr-creators"
	// podNamespace is where the replicas say they run; it holds the Lease
	// and the Events about the replicas.
	podNamespace = metav1.NamespaceSystem
	// auditedGroup: the API server audits every write of a user in this group.
	auditedGroup = "faults-audited"
	// recheckAfter: decisions are looked at again this long after the last
	// one; nothing may change.
	recheckAfter = 2 * time.Second
)

// basePolicy denies blocked-* names and lets renewals through without Node
// objects (the storms use thousands of distinct node identities).
const basePolicy = `apiVersion: nodecsr.io/v1alpha1
kind: Policy
spec:
  nodeNames:
    denied: ["blocked-.*"]
  renewal:
    requireNodeExists: false
`

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "nodecsr-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	if binary, err = buildController(dir); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		return 1
	}
	auditLog = filepath.Join(dir, "audit.log")
	auditPolicy := filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(auditPolicy, []byte(auditPolicyYAML), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	opts := cluster.Options{
		APIServerFlags: map[string]string{"audit-policy-file": auditPolicy, "audit-log-path": auditLog},
		// The signer keeps up with the storms instead of signing for minutes
		// after each test (its default client allows 20 QPS).
		ControllerManagerFlags: map[string]string{"kube-api-qps": "200", "kube-api-burst": "400"},
	}
	return cluster.RunTests(m, opts, func(c *cluster.Cluster) error {
		tc, admin = c, c.AdminClient()
		ctx := context.Background()
		if err := c.ApplyKubeadmRBAC(ctx); err != nil {
			return err
		}
		// nodecsr-controller's inventory (on by default) needs its CRD.
		if err := cluster.InstallInventoryCRD(ctx, c.AdminConfig()); err != nil {
			return err
		}
		binding := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: csrCreators},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:node-bootstrapper"},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: csrCreators}},
		}
		_, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{})
		return err
	})
}

// auditPolicyYAML records the writes of auditedGroup's users when they are
// done (ResponseComplete), with who, from where, what and the status code.
const auditPolicyYAML = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  userGroups: ["` + auditedGroup + `"]
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
`

func buildController(dir string) (string, error) {
	return filepath.Join(dir, "nodecsr-controller"), cluster.BuildBinaries(context.Background(), dir, "./cmd/nodecsr-controller")
}

// writeFile replaces path atomically, as a ConfigMap volume update does.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// replicaOptions configures one nodecsr-controller process.
type replicaOptions struct {
	// name is --pod-name (Events' reportingInstance, the Lease's holderIdentity).
	name string
	// kubeconfig is --kubeconfig; empty: the admin's.
	kubeconfig string
	// policy is the --policy file; empty: the default policy.
	policy string
	// leaderElectionID turns on --leader-elect with this Lease name.
	leaderElectionID string
	// lease is lease duration, renew deadline and retry period (with leader election).
	lease [3]time.Duration
	// webhookCertDir and webhookPort turn the webhooks on.
	webhookCertDir string
	webhookPort    int
}

// replica is one running nodecsr-controller process.
type replica struct {
	name                  string
	cmd                   *exec.Cmd
	logPath               string
	metricsURL, readyzURL string
	done                  chan struct{}
	waitErr               error
}

// startReplica starts the binary and waits until /readyz answers. The
// process is stopped when the test ends, and its log printed if it failed.
func startReplica(t *testing.T, o replicaOptions) *replica {
	t.Helper()
	metrics, health := env.FreePort(t), env.FreePort(t)
	r := &replica{
		name:       o.name,
		logPath:    filepath.Join(t.TempDir(), o.name+".log"),
		metricsURL: fmt.Sprintf("http://127.0.0.1:%d/metrics", metrics),
		readyzURL:  fmt.Sprintf("http://127.0.0.1:%d/readyz", health),
		done:       make(chan struct{}),
	}
	kubeconfig := o.kubeconfig
	if kubeconfig == "" {
		kubeconfig = tc.AdminKubeconfig()
	}
	args := []string{
		"--kubeconfig", kubeconfig,
		"--metrics-bind-address", fmt.Sprintf("127.0.0.1:%d", metrics),
		"--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", health),
		"--pod-name", o.name, "--pod-namespace", podNamespace,
		"--self-username", selfUser,
		"--policy-reload-interval", "200ms",
		"--log-format", "json",
	}
	if o.policy != "" {
		args = append(args, "--policy", o.policy)
	}
	if o.leaderElectionID != "" {
		args = append(args, "--leader-elect", "--leader-election-id", o.leaderElectionID,
			"--leader-election-lease-duration", o.lease[0].String(),
			"--leader-election-renew-deadline", o.lease[1].String(),
			"--leader-election-retry-period", o.lease[2].String())
	}
	if o.webhookCertDir != "" {
		args = append(args, "--webhook-cert-dir", o.webhookCertDir, "--webhook-host", "127.0.0.1", "--webhook-port", strconv.Itoa(o.webhookPort))
	}
	logFile, err := os.Create(r.logPath)
	if err != nil {
		t.Fatal(err)
	}
	r.cmd = exec.Command(binary, args...)
	r.cmd.Stdout, r.cmd.Stderr = logFile, logFile
	if err := cluster.Spawn(r.cmd); err != nil {
		_ = logFile.Close()
		t.Fatal(err)
	}
	go func() {
		r.waitErr = r.cmd.Wait()
		_ = logFile.Close()
		close(r.done)
	}()
	t.Cleanup(func() {
		r.stop()
		if t.Failed() {
			t.Logf("--- last lines of %s's log ---\n%s", r.name, env.Tail(r.logPath, 25))
		}
	})
	err = wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, testutil.Remaining(t), true, func(context.Context) (bool, error) {
		if r.exited() {
			return false, fmt.Errorf("%s exited: %v", r.name, r.waitErr)
		}
		resp, err := http.Get(r.readyzURL)
		if err != nil {
			return false, nil
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		t.Fatalf("%s did not become ready: %v", r.name, err)
	}
	t.Logf("%s is ready (pid %d)", r.name, r.cmd.Process.Pid)
	return r
}

func (r *replica) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// kill SIGKILLs the process and waits for it.
func (r *replica) kill() {
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
}

// stop sends SIGTERM and waits up to 20 s, then SIGKILLs. It reports
// whether the process stopped by itself.
func (r *replica) stop() bool {
	if r.exited() {
		return true
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
		return true
	case <-time.After(20 * time.Second):
		r.kill()
		return false
	}
}

// metric scrapes the replica's /metrics and sums the samples of name whose
// labels include want. A series that does not exist yet counts as 0.
func (r *replica) metric(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	v, err := r.scrape(name, want)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// scrape is metric for a replica that may have exited: it returns the error.
func (r *replica) scrape(name string, want map[string]string) (float64, error) {
	resp, err := http.Get(r.metricsURL)
	if err != nil {
		return 0, fmt.Errorf("scrape %s: %w", r.name, err)
	}
	defer func() { _ = resp.Body.Close() }()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		metricName, labels, _ := strings.Cut(series, "{")
		if metricName != name {
			continue
		}
		match := true
		for k, v := range want {
			if !strings.Contains(labels, k+"="+strconv.Quote(v)) {
				match = false
			}
		}
		if !match {
			continue
		}
		f, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
		if err != nil {
			return 0, fmt.Errorf("bad sample %q from %s: %w", line, r.name, err)
		}
		sum += f
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("scrape %s: %w", r.name, err)
	}
	return sum, nil
}

// isLeader reports whether the replica holds the Lease (controller-runtime's
// leader_election_master_status). The Lease's holderIdentity is the
// replica's --pod-name (leaseHolder).
func (r *replica) isLeader(t *testing.T, id string) bool {
	t.Helper()
	return r.metric(t, "leader_election_master_status", map[string]string{"name": id}) == 1
}

// waitForLeader waits until exactly one of the replicas leads.
func waitForLeader(t *testing.T, id string, replicas ...*replica) *replica {
	t.Helper()
	var leader *replica
	err := wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, testutil.Remaining(t), true, func(context.Context) (bool, error) {
		leader = nil
		n := 0
		for _, r := range replicas {
			if r.exited() {
				continue
			}
			if r.isLeader(t, id) {
				leader = r
				n++
			}
		}
		return n == 1, nil
	})
	if err != nil {
		t.Fatalf("no single leader for %s: %v", id, err)
	}
	return leader
}

// impersonating is the admin acting as user in groups: the API server
// records exactly that identity as the CSR's requester.
func impersonating(user string, groups ...string) kubernetes.Interface {
	cfg := tc.AdminConfig()
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	return kubernetes.NewForConfigOrDie(cfg)
}

// nodeIdentity is the kubelet of node: system:node:<node> in system:nodes.
func nodeIdentity(node string) kubernetes.Interface {
	return impersonating("system:node:"+node, "system:nodes", "system:authenticated")
}

// request is one CSR to file and the decision it must get.
type request struct {
	name   string
	client kubernetes.Interface
	csr    *certificatesv1.CertificateSigningRequest
	typ    certificatesv1.RequestConditionType
	reason string
}

// renewal is node's renewal of its own certificate: approved.
func renewal(name, node string) request {
	return request{
		name: name, client: nodeIdentity(node), csr: csrtest.Build(csrtest.WithNodeName(node)),
		typ: certificatesv1.CertificateApproved, reason: approver.ReasonRenewalApproved,
	}
}

// hostileRenewal is node's renewal with opts: denied with reason.
func hostileRenewal(name, node, reason string, opts ...csrtest.Option) request {
	r := renewal(name, node)
	r.csr = csrtest.Build(append([]csrtest.Option{csrtest.WithNodeName(node)}, opts...)...)
	r.typ, r.reason = certificatesv1.CertificateDenied, reason
	return r
}

// file creates the CSR, retrying while the API server is unreachable; a
// retry that finds the CSR already created counts as success.
func (r request) file(ctx context.Context) error {
	csr := r.csr.DeepCopy()
	csr.Name = r.name
	csr.Spec.Username, csr.Spec.Groups, csr.Spec.UID = "", nil, ""
	var last error
	// Until ctx ends (the caller's test deadline): no deadline of its own.
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, last = r.client.CertificatesV1().CertificateSigningRequests().Create(ctx, csr, metav1.CreateOptions{})
		switch {
		case last == nil, apierrors.IsAlreadyExists(last):
			return true, nil
		case apierrors.IsInvalid(last), apierrors.IsForbidden(last), apierrors.IsBadRequest(last):
			return false, last
		}
		return false, nil // the API server is restarting
	})
	if err != nil {
		return fmt.Errorf("create %s: %w (last: %v)", r.name, err, last)
	}
	return nil
}

// fileAll files the requests with workers in parallel, at most perSecond a
// second (0: as fast as possible); after each one filed, progress is called
// with the number filed so far.
func fileAll(ctx context.Context, reqs []request, workers, perSecond int, progress func(int)) error {
	next := make(chan request)
	errs := make(chan error, len(reqs))
	var wg sync.WaitGroup
	var mu sync.Mutex
	filed := 0
	for range workers {
		wg.Go(func() {
			for r := range next {
				if err := r.file(ctx); err != nil {
					errs <- err
					continue
				}
				mu.Lock()
				filed++
				n := filed
				mu.Unlock()
				if progress != nil {
					progress(n)
				}
			}
		})
	}
	var tick <-chan time.Time
	if perSecond > 0 {
		t := time.NewTicker(time.Second / time.Duration(perSecond))
		defer t.Stop()
		tick = t.C
	}
	for _, r := range reqs {
		if tick != nil {
			<-tick
		}
		next <- r
	}
	close(next)
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// waitDecided waits until every request's CSR has a decision and returns
// the CSRs then.
func waitDecided(t *testing.T, reqs []request) map[string]*certificatesv1.CertificateSigningRequest {
	t.Helper()
	var all map[string]*certificatesv1.CertificateSigningRequest
	var pending []string
	err := wait.PollUntilContextTimeout(t.Context(), 500*time.Millisecond, testutil.Remaining(t), true, func(ctx context.Context) (bool, error) {
		list, err := admin.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil // the API server may be restarting
		}
		all = make(map[string]*certificatesv1.CertificateSigningRequest, len(list.Items))
		for i := range list.Items {
			all[list.Items[i].Name] = &list.Items[i]
		}
		pending = pending[:0]
		for _, r := range reqs {
			if csr := all[r.name]; csr == nil || len(env.Decisions(csr)) == 0 {
				pending = append(pending, r.name)
			}
		}
		return len(pending) == 0, nil
	})
	if err != nil {
		shown := pending
		if len(shown) > 10 {
			shown = shown[:10]
		}
		t.Fatalf("%d of %d CSRs got no decision: %v (first: %s)", len(pending), len(reqs), err, strings.Join(shown, ", "))
	}
	return all
}

// csrEvents lists the Events about CSRs, as
// `kubectl get events -n default --field-selector involvedObject.kind=CertificateSigningRequest`,
// by CSR name.
func csrEvents(t *testing.T) map[string][]corev1.Event {
	t.Helper()
	sel := fields.OneTermEqualSelector("involvedObject.kind", "CertificateSigningRequest").String()
	list, err := admin.CoreV1().Events(metav1.NamespaceDefault).List(t.Context(), metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]corev1.Event{}
	for _, e := range list.Items {
		out[e.InvolvedObject.Name] = append(out[e.InvolvedObject.Name], e)
	}
	return out
}

// expectOneDecisionEach waits for every decision, waits recheckAfter more,
// and checks that each CSR holds exactly one decision, the expected one, is
// never approved when it must be denied, and has exactly one decision Event
// with the same reason. It returns the Events by CSR name.
func expectOneDecisionEach(t *testing.T, reqs []request) map[string][]corev1.Event {
	t.Helper()
	waitDecided(t, reqs)
	time.Sleep(recheckAfter)
	all := waitDecided(t, reqs)
	events := csrEvents(t)
	var wrong, multi, approvedHostile, eventless, multiEvent []string
	for _, r := range reqs {
		csr := all[r.name]
		ds := env.Decisions(csr)
		switch {
		case len(ds) != 1:
			multi = append(multi, fmt.Sprintf("%s: %d decisions %+v", r.name, len(ds), ds))
		case ds[0].Type != r.typ || ds[0].Reason != r.reason:
			wrong = append(wrong, fmt.Sprintf("%s: %s/%s (%s), want %s/%s", r.name, ds[0].Type, ds[0].Reason, ds[0].Message, r.typ, r.reason))
		}
		if r.typ == certificatesv1.CertificateDenied && (env.HasApproved(csr) || len(csr.Status.Certificate) > 0) {
			approvedHostile = append(approvedHostile, r.name)
		}
		var ours []corev1.Event
		for _, e := range events[r.name] {
			if e.ReportingController == approver.Component {
				ours = append(ours, e)
			}
		}
		switch {
		case len(ours) == 0:
			what := r.name
			if len(ds) == 1 {
				what = fmt.Sprintf("%s (decided %s/%s at %s, but its Event was never written)", r.name, ds[0].Type, ds[0].Reason, ds[0].LastUpdateTime.Format(time.RFC3339))
			}
			eventless = append(eventless, what)
		case len(ours) > 1:
			multiEvent = append(multiEvent, fmt.Sprintf("%s: %d Events", r.name, len(ours)))
		case ours[0].Reason != r.reason:
			wrong = append(wrong, fmt.Sprintf("%s: Event reason %s, want %s", r.name, ours[0].Reason, r.reason))
		}
	}
	report := func(what string, items []string) {
		if len(items) == 0 {
			return
		}
		shown := items
		if len(shown) > 10 {
			shown = shown[:10]
		}
		t.Errorf("%d of %d CSRs %s: %s", len(items), len(reqs), what, strings.Join(shown, "; "))
	}
	report("were APPROVED or issued although they must be denied", approvedHostile)
	report("have not exactly one decision", multi)
	report("have the wrong decision", wrong)
	report("have no decision Event", eventless)
	report("have more than one decision Event", multiEvent)
	return events
}
