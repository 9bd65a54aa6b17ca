package faults_test

import (
	"context"
	"crypto/elliptic"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/env"
	"github.com/nodecsr/nodecsr/webhook"
)

// The lease timings of the failover test: short, so the survivor takes over
// within seconds of the leader's death.
var shortLease = [3]time.Duration{4 * time.Second, 3 * time.Second, time.Second}

// chartLease is the Helm chart's default.
var chartLease = [3]time.Duration{15 * time.Second, 10 * time.Second, 2 * time.Second}

func writePolicy(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, content)
	return path
}

// TestLeaderFailoverDuringStorm runs two replicas with leader election,
// files a storm of renewals from distinct nodes and SIGKILLs the leader in
// the middle of it. The other replica takes over; every CSR is decided
// exactly once, with exactly one Event. The gap from the kill to the new
// leader's first decision is logged, not asserted.
func TestLeaderFailoverDuringStorm(t *testing.T) {
	policy := writePolicy(t, basePolicy)
	id := env.UniqueName("nodecsr-failover")
	a := startReplica(t, replicaOptions{name: id + "-a", policy: policy, leaderElectionID: id, lease: shortLease})
	b := startReplica(t, replicaOptions{name: id + "-b", policy: policy, leaderElectionID: id, lease: shortLease})
	leader := waitForLeader(t, id, a, b)
	survivor := map[*replica]*replica{a: b, b: a}[leader]
	holder := leaseHolder(t, id)
	t.Logf("%s leads (Lease %s/%s holderIdentity %q)", leader.name, podNamespace, id, holder)
	if holder != leader.name {
		t.Errorf("the Lease is held by %q; want the leader's --pod-name %q", holder, leader.name)
	}

	const storm = 400
	run := env.UniqueName("storm")
	reqs := make([]request, storm)
	for i := range reqs {
		name := fmt.Sprintf("%s-%03d", run, i)
		reqs[i] = renewal(name, name)
	}
	var killAt time.Time
	killAfter := storm * 3 / 8
	start := time.Now()
	err := fileAll(t.Context(), reqs, 8, 100, func(filed int) {
		if filed == killAfter {
			killAt = time.Now()
			leader.kill()
		}
	})
	filedIn := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if killAt.IsZero() {
		t.Fatal("the leader was not killed")
	}
	t.Logf("filed %d CSRs in %s; SIGKILLed %s after %d (%s)", storm, filedIn.Round(time.Millisecond), leader.name, killAfter, leader.waitErr)
	events := expectOneDecisionEach(t, reqs)
	decidedIn := time.Since(start)

	perReplica := map[string]int{}
	var lastByOld, firstAfterKill, firstByNew time.Time
	for _, r := range reqs {
		for _, e := range events[r.name] {
			if e.ReportingController != approver.Component {
				continue
			}
			perReplica[e.ReportingInstance]++
			at := e.EventTime.Time
			if at.After(killAt) && (firstAfterKill.IsZero() || at.Before(firstAfterKill)) {
				firstAfterKill = at
			}
			switch e.ReportingInstance {
			case leader.name:
				if at.After(lastByOld) {
					lastByOld = at
				}
			case survivor.name:
				if firstByNew.IsZero() || at.Before(firstByNew) {
					firstByNew = at
				}
			}
		}
	}
	if perReplica[survivor.name] == 0 {
		t.Errorf("%s never decided anything after the leader died", survivor.name)
	}
	if h := leaseHolder(t, id); h == holder {
		t.Errorf("the Lease is still held by %q", h)
	}
	t.Logf("FAILOVER: lease %s/%s/%s; %d CSRs filed in %s at 100/s, all decided %s after the first was filed; "+
		"decisions by %s (killed): %d, by %s: %d; old leader's last decision at kill%+dms; "+
		"first decision after the kill at kill+%dms; first decision by the new leader at kill+%dms (the gap)",
		shortLease[0], shortLease[1], shortLease[2], storm, filedIn.Round(time.Millisecond), decidedIn.Round(time.Millisecond),
		leader.name, perReplica[leader.name], survivor.name, perReplica[survivor.name],
		lastByOld.Sub(killAt).Milliseconds(), firstAfterKill.Sub(killAt).Milliseconds(), firstByNew.Sub(killAt).Milliseconds())
}

func leaseHolder(t *testing.T, id string) string {
	t.Helper()
	l, err := admin.CoordinationV1().Leases(podNamespace).Get(t.Context(), id, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// TestAPIServerRestart restarts kube-apiserver while CSRs are being filed:
// nodecsr-controller (leader-elected, with a lease that outlasts the
// restart) recovers and decides every CSR, including the ones filed after
// the restart.
func TestAPIServerRestart(t *testing.T) {
	policy := writePolicy(t, basePolicy)
	id := env.UniqueName("nodecsr-restart")
	r := startReplica(t, replicaOptions{name: id, policy: policy, leaderElectionID: id,
		lease: [3]time.Duration{60 * time.Second, 45 * time.Second, 2 * time.Second}})
	waitForLeader(t, id, r)

	run := env.UniqueName("restart")
	mixed := func(phase string, n int) []request {
		reqs := make([]request, n)
		for i := range reqs {
			name := fmt.Sprintf("%s-%s-%03d", run, phase, i)
			if i%5 == 4 {
				reqs[i] = hostileRenewal(name, "blocked-"+name, approver.ReasonNodeNameDenied)
			} else {
				reqs[i] = renewal(name, name)
			}
		}
		return reqs
	}
	before, after := mixed("before", 80), mixed("after", 40)
	restartNow := make(chan struct{})
	var once sync.Once
	filed := make(chan error, 1)
	go func() {
		filed <- fileAll(t.Context(), before, 4, 40, func(n int) {
			if n == 20 {
				once.Do(func() { close(restartNow) })
			}
		})
	}()
	select {
	case <-restartNow:
	case err := <-filed:
		t.Fatalf("filing stopped early: %v", err)
	}
	begin := time.Now()
	if err := tc.RestartAPIServer(t.Context(), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver restarted: ready again %s after the stop began (2s down)", time.Since(begin).Round(time.Millisecond))
	if err := <-filed; err != nil {
		t.Fatal(err)
	}
	if err := fileAll(t.Context(), after, 4, 0, nil); err != nil {
		t.Fatal(err)
	}
	expectOneDecisionEach(t, append(before, after...))
	t.Logf("all %d CSRs decided %s after the restart began", len(before)+len(after), time.Since(begin).Round(time.Millisecond))
	if r.exited() {
		t.Errorf("nodecsr-controller exited: %v", r.waitErr)
	}
}

// TestControllerRestartWithBacklog stops nodecsr-controller (SIGTERM),
// files a backlog of good and hostile CSRs while nobody decides, and starts
// it again: every CSR is decided, the hostile ones denied for their reason.
func TestControllerRestartWithBacklog(t *testing.T) {
	policy := writePolicy(t, basePolicy)
	id := env.UniqueName("nodecsr-backlog")
	o := replicaOptions{name: id, policy: policy, leaderElectionID: id, lease: chartLease}
	first := startReplica(t, o)
	waitForLeader(t, id, first)
	if !first.stop() {
		t.Errorf("%s did not stop within 20s of SIGTERM", first.name)
	} else if first.waitErr != nil {
		t.Errorf("%s exited with %v after SIGTERM, want success", first.name, first.waitErr)
	}

	run := env.UniqueName("backlog")
	var reqs []request
	for i := range 120 {
		name := fmt.Sprintf("%s-%03d", run, i)
		reqs = append(reqs, renewal(name, name))
	}
	reqs = append(reqs, hostile(run, 5)...)
	if err := fileAll(t.Context(), reqs, 8, 0, nil); err != nil {
		t.Fatal(err)
	}
	// Nobody decides while nodecsr is down.
	list, err := admin.CertificatesV1().CertificateSigningRequests().List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range list.Items {
		if strings.HasPrefix(list.Items[i].Name, run) && len(env.Decisions(&list.Items[i])) > 0 {
			t.Fatalf("%s was decided while nodecsr-controller was down: %+v", list.Items[i].Name, list.Items[i].Status.Conditions)
		}
	}
	begin := time.Now()
	startReplica(t, o)
	expectOneDecisionEach(t, reqs)
	t.Logf("a backlog of %d CSRs was decided within %s of the restart (including recheckAfter %s)", len(reqs), time.Since(begin).Round(time.Millisecond), recheckAfter)
}

// hostile returns n CSRs of each of several hostile classes, filed as
// renewals (or as another node), and the reason each must be denied for.
func hostile(run string, n int) []request {
	var reqs []request
	for i := range n {
		name := func(class string) string { return fmt.Sprintf("%s-%s-%d", run, class, i) }
		reqs = append(reqs,
			hostileRenewal(name("san"), name("san"), approver.ReasonSANsNotAllowed, csrtest.WithDNSSAN("kubernetes.default.svc")),
			hostileRenewal(name("masters"), name("masters"), approver.ReasonInvalidOrganization, csrtest.WithOrg("system:nodes", "system:masters")),
			hostileRenewal(name("usage"), name("usage"), approver.ReasonInvalidUsages,
				csrtest.WithUsages(certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageServerAuth)),
			hostileRenewal(name("rsa1024"), name("rsa1024"), approver.ReasonKeySizeNotAllowed, csrtest.WithKey(csrtest.RSAKey(1024))),
			hostileRenewal(name("p224"), name("p224"), approver.ReasonKeyCurveNotAllowed, csrtest.WithKey(csrtest.ECDSAKey(elliptic.P224()))),
			hostileRenewal(name("blocked"), "blocked-"+name("blocked"), approver.ReasonNodeNameDenied),
		)
		// Another node's name, filed by a node identity outside system:nodes
		// (NodeRestriction does not apply), with RBAC to create CSRs.
		mismatch := hostileRenewal(name("mismatch"), name("victim"), approver.ReasonRequesterMismatch)
		mismatch.client = impersonating("system:node:"+name("attacker"), csrCreators, "system:authenticated")
		reqs = append(reqs, mismatch)
	}
	return reqs
}

// TestWebhookDownHostileCSRs registers the webhooks of one replica, checks
// they reject a hostile CSR, kills that replica and runs another without
// webhooks: hostile CSRs are now admitted (failurePolicy Ignore) and the
// approver denies every one of them for the right reason.
func TestWebhookDownHostileCSRs(t *testing.T) {
	policy := writePolicy(t, basePolicy)
	certDir := t.TempDir()
	serving, err := tc.ClusterCA().IssueServing("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := serving.WriteFiles(certDir, "tls"); err != nil {
		t.Fatal(err)
	}
	port := env.FreePort(t)
	name := env.UniqueName("nodecsr-webhook")
	withWebhooks := startReplica(t, replicaOptions{name: name + "-a", policy: policy, webhookCertDir: certDir, webhookPort: port})

	opts := webhook.ConfigOptions{Name: name, URL: fmt.Sprintf("https://127.0.0.1:%d", port), CABundle: tc.ClusterCA().CertPEM, Self: selfUser}
	mwc, err := webhook.MutatingWebhookConfiguration(opts)
	if err != nil {
		t.Fatal(err)
	}
	vwc, err := webhook.ValidatingWebhookConfiguration(opts)
	if err != nil {
		t.Fatal(err)
	}
	ar := admin.AdmissionregistrationV1()
	if _, err := ar.MutatingWebhookConfigurations().Create(t.Context(), mwc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = ar.MutatingWebhookConfigurations().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	if _, err := ar.ValidatingWebhookConfigurations().Create(t.Context(), vwc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = ar.ValidatingWebhookConfigurations().Delete(context.Background(), name, metav1.DeleteOptions{})
	})

	// The webhook is effective: a hostile CSR is rejected at creation (dry run).
	probe := hostileRenewal("probe", "probe", approver.ReasonSANsNotAllowed, csrtest.WithDNSSAN("probe.example"))
	probe.csr.Spec.Username, probe.csr.Spec.Groups = "", nil
	var last error
	err = wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, testutil.Remaining(t), true, func(ctx context.Context) (bool, error) {
		_, last = probe.client.CertificatesV1().CertificateSigningRequests().Create(ctx, probe.csr, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return last != nil && strings.Contains(last.Error(), webhook.WebhookNameValidate) && strings.Contains(last.Error(), approver.ReasonSANsNotAllowed), nil
	})
	if err != nil {
		t.Fatalf("the validating webhook does not reject a hostile CSR: %v", last)
	}

	withWebhooks.kill()
	startReplica(t, replicaOptions{name: name + "-b", policy: policy})
	run := env.UniqueName("nowebhook")
	reqs := hostile(run, 2)
	if err := fileAll(t.Context(), reqs, 4, 0, nil); err != nil {
		t.Fatalf("with the webhook down (failurePolicy Ignore) every CSR must be admitted: %v", err)
	}
	for _, r := range reqs {
		csr, err := admin.CertificatesV1().CertificateSigningRequests().Get(t.Context(), r.name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := csr.Labels[webhook.LabelNodeName]; ok {
			t.Errorf("%s carries %s: the mutating webhook was reached after all", r.name, webhook.LabelNodeName)
		}
	}
	expectOneDecisionEach(t, reqs)
}

// TestBrokenPolicyReloadUnderLoad replaces the policy file by a broken one
// while CSRs keep coming: the old policy stays in force (blocked-* names are
// still denied, the others approved), nodecsr_policy_reloads_total{result="error"}
// counts it and a Warning Event PolicyReloadFailed names the problem.
func TestBrokenPolicyReloadUnderLoad(t *testing.T) {
	policy := writePolicy(t, basePolicy)
	p, err := config.Parse([]byte(basePolicy))
	if err != nil {
		t.Fatal(err)
	}
	name := env.UniqueName("nodecsr-reload")
	r := startReplica(t, replicaOptions{name: name, policy: policy})
	if r.metric(t, "nodecsr_policy_info", map[string]string{"digest": p.Digest}) != 1 {
		t.Fatalf("policy %s is not in force", p.Digest)
	}

	var (
		mu         sync.Mutex
		reqs       []request
		broken     bool
		afterBreak int
	)
	stop, done := make(chan struct{}), make(chan error, 1)
	run := env.UniqueName("reload")
	go func() {
		tick := time.NewTicker(40 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			case <-tick.C:
			}
			n := fmt.Sprintf("%s-%03d", run, i)
			req := renewal(n, n)
			if i%2 == 1 {
				req = hostileRenewal(n, "blocked-"+n, approver.ReasonNodeNameDenied)
			}
			if err := req.file(context.Background()); err != nil {
				done <- err
				return
			}
			mu.Lock()
			reqs = append(reqs, req)
			if broken {
				afterBreak++
			}
			mu.Unlock()
		}
	}()
	stopLoad := func() {
		select {
		case <-stop:
			return
		default:
		}
		close(stop)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(stopLoad)

	time.Sleep(time.Second)
	errorsBefore := r.metric(t, "nodecsr_policy_reloads_total", map[string]string{"result": "error"})
	// Invalid (mode), and it would approve blocked-* names if any of it applied.
	writeFile(t, policy, "apiVersion: nodecsr.io/v1alpha1\nkind: Policy\nspec:\n  mode: Sometimes\n  nodeNames:\n    denied: []\n  renewal:\n    requireNodeExists: false\n")
	brokenAt := time.Now()
	mu.Lock()
	broken = true
	mu.Unlock()

	err = wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, testutil.Remaining(t), true, func(context.Context) (bool, error) {
		return r.metric(t, "nodecsr_policy_reloads_total", map[string]string{"result": "error"}) > errorsBefore, nil
	})
	if err != nil {
		t.Errorf("nodecsr_policy_reloads_total{result=\"error\"} did not increase: %v", err)
	}
	t.Logf("reload error counted %s after the file was replaced", time.Since(brokenAt).Round(time.Millisecond))
	var warning *eventsv1.Event
	err = wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, testutil.Remaining(t), true, func(ctx context.Context) (bool, error) {
		list, err := admin.EventsV1().Events(podNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for i := range list.Items {
			if e := &list.Items[i]; e.Reason == "PolicyReloadFailed" && e.Regarding.Name == name {
				warning = e
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Errorf("no PolicyReloadFailed Event about %s: %v", name, err)
	} else {
		if warning.Type != corev1.EventTypeWarning || !strings.Contains(warning.Note, "Sometimes") || !strings.Contains(warning.Note, p.Digest) {
			t.Errorf("PolicyReloadFailed Event %s %q; want a Warning naming the problem and the policy kept (%s)", warning.Type, warning.Note, p.Digest)
		}
		t.Logf("Event %s/%s on %s/%s: %s", warning.Type, warning.Reason, warning.Regarding.Namespace, warning.Regarding.Name, warning.Note)
	}

	time.Sleep(1500 * time.Millisecond) // more load under the broken file
	stopLoad()
	mu.Lock()
	filed, late := append([]request(nil), reqs...), afterBreak
	mu.Unlock()
	if late == 0 {
		t.Fatal("no CSR was filed after the policy file broke")
	}
	expectOneDecisionEach(t, filed)
	t.Logf("%d CSRs decided, %d filed after the policy file broke, all under the old policy", len(filed), late)
	if v := r.metric(t, "nodecsr_policy_info", map[string]string{"digest": p.Digest}); v != 1 {
		t.Errorf("nodecsr_policy_info{digest=%q} = %v, want 1 (the old policy kept)", p.Digest, v)
	}
}
