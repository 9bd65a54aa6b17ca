// Package approver_test runs the real nodecsr-controller binary against a
// real control plane (etcd, kube-apiserver with Node,RBAC and
// NodeRestriction, kube-controller-manager's csrsigning; its csrapproving is
// not running) and checks the decisions it writes, the Events, the metrics
// it serves and policy reloads.
package approver_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/test/env"
)

var (
	tc    *cluster.Cluster
	admin kubernetes.Interface
	// ctl is the nodecsr-controller process all the tests share.
	ctl     *env.Controller
	podName = "nodecsr-controller-test"
	podNS   = "kube-system"
)

const basePolicy = `apiVersion: nodecsr.io/v1alpha1
kind: Policy
spec:
  nodeNames:
    denied: ["control-plane-.*"]
  lifetime:
    maxExpirationSeconds: 86400
`

func TestMain(m *testing.M) {
	os.Exit(env.Main(m, env.MainOptions{Build: []string{"./cmd/nodecsr-controller"}, Setup: func(s *env.Suite) error {
		tc, admin = s.Cluster, s.Cluster.AdminClient()
		if err := tc.ApplyKubeadmRBAC(s.Context()); err != nil {
			return err
		}
		var err error
		ctl, err = s.LaunchController(env.ControllerOptions{
			Policy:  []byte(basePolicy),
			PodName: podName, PodNamespace: podNS,
			Args: map[string]string{"policy-reload-interval": "200ms"},
		})
		return err
	}}))
}

func uniqueName(prefix string) string { return env.UniqueName(prefix) }

func createNode(t *testing.T, name string) { env.CreateNode(t, admin, name) }

func bootstrapClient(t *testing.T) (kubernetes.Interface, cluster.BootstrapToken) {
	t.Helper()
	return env.BootstrapClient(t, tc)
}

func nodeClient(t *testing.T, node string) kubernetes.Interface {
	t.Helper()
	return env.NodeClient(t, tc, node)
}

// poll polls cond every 50ms until it is done or the test's deadline nears
// (testutil.Poll); a nodecsr-controller that has died ends it at once.
func poll(t *testing.T, cond func(context.Context) (bool, error)) error {
	t.Helper()
	return ctl.Poll(t, cond)
}

// create files csr with the requester's client.
func create(t *testing.T, requester kubernetes.Interface, csr *certificatesv1.CertificateSigningRequest) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	return env.CreateCSR(t, requester, "it", csr)
}

// decision waits for nodecsr's condition on the CSR.
func decision(t *testing.T, name string) (certificatesv1.CertificateSigningRequestCondition, *certificatesv1.CertificateSigningRequest) {
	t.Helper()
	var cond certificatesv1.CertificateSigningRequestCondition
	var got *certificatesv1.CertificateSigningRequest
	err := poll(t, func(ctx context.Context) (bool, error) {
		var err error
		got, err = admin.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range got.Status.Conditions {
			if c.Type == certificatesv1.CertificateApproved || c.Type == certificatesv1.CertificateDenied {
				cond = c
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("CSR %s got no decision: %v", name, err)
	}
	return cond, got
}

func expectDecision(t *testing.T, name string, wantType certificatesv1.RequestConditionType, wantReason string) certificatesv1.CertificateSigningRequestCondition {
	t.Helper()
	cond, got := decision(t, name)
	if cond.Type != wantType || cond.Reason != wantReason {
		t.Fatalf("CSR %s: %s/%s (%s), want %s/%s", name, cond.Type, cond.Reason, cond.Message, wantType, wantReason)
	}
	if n := len(got.Status.Conditions); n != 1 {
		t.Errorf("CSR %s has %d conditions, want exactly one decision: %+v", name, n, got.Status.Conditions)
	}
	ev := decisionEvents(t, name, 1)
	if ev[0].Reason != wantReason || ev[0].ReportingController != approver.Component {
		t.Errorf("event reason %q from %q, want %q from %q", ev[0].Reason, ev[0].ReportingController, wantReason, approver.Component)
	}
	wantType2 := corev1.EventTypeNormal
	if wantType == certificatesv1.CertificateDenied {
		wantType2 = corev1.EventTypeWarning
	}
	if ev[0].Type != wantType2 {
		t.Errorf("event type %q, want %q", ev[0].Type, wantType2)
	}
	return cond
}

// decisionEvents waits for exactly n Events about the CSR, as
// `kubectl get events --field-selector involvedObject.kind=CertificateSigningRequest,involvedObject.name=NAME` lists them.
func decisionEvents(t *testing.T, csrName string, n int) []corev1.Event {
	t.Helper()
	sel := fields.Set{"involvedObject.kind": "CertificateSigningRequest", "involvedObject.name": csrName}.AsSelector().String()
	var items []corev1.Event
	err := poll(t, func(ctx context.Context) (bool, error) {
		list, err := admin.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			return false, err
		}
		items = list.Items
		return len(items) >= n, nil
	})
	if err != nil {
		t.Fatalf("CSR %s: %d events, want %d: %v", csrName, len(items), n, err)
	}
	// Nothing more may come: a decision is recorded once.
	time.Sleep(300 * time.Millisecond)
	list, err := admin.CoreV1().Events(metav1.NamespaceDefault).List(t.Context(), metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != n {
		t.Fatalf("CSR %s: %d events, want exactly %d: %+v", csrName, len(list.Items), n, list.Items)
	}
	return list.Items
}

func issuedConfig(t *testing.T, name string) *rest.Config {
	t.Helper()
	var certPEM []byte
	err := poll(t, func(ctx context.Context) (bool, error) {
		got, err := admin.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		certPEM = got.Status.Certificate
		return len(certPEM) > 0, nil
	})
	if err != nil {
		t.Fatalf("CSR %s was not signed: %v", name, err)
	}
	der, err := x509.MarshalECPrivateKey(csrtest.ECDSAKey(elliptic.P256()).(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	return tc.ConfigFromKeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
}

func whoAmI(t *testing.T, cfg *rest.Config) authenticationv1.UserInfo {
	t.Helper()
	r, err := kubernetes.NewForConfigOrDie(cfg).AuthenticationV1().SelfSubjectReviews().Create(t.Context(), &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r.Status.UserInfo
}

func TestRenewalIsApprovedAndIssued(t *testing.T) {
	node := uniqueName("renew")
	createNode(t, node)
	csr := create(t, nodeClient(t, node), csrtest.Build(csrtest.WithNodeName(node)))
	cond := expectDecision(t, csr.Name, certificatesv1.CertificateApproved, approver.ReasonRenewalApproved)
	if !strings.Contains(cond.Message, "SubjectAccessReview") {
		t.Errorf("approval message does not say what was verified: %q", cond.Message)
	}
	if who := whoAmI(t, issuedConfig(t, csr.Name)); who.Username != "system:node:"+node || !slices.Contains(who.Groups, "system:nodes") {
		t.Fatalf("issued certificate authenticates as %+v", who)
	}
}

func TestBootstrapWithARealTokenIsApproved(t *testing.T) {
	boot, tok := bootstrapClient(t)
	node := uniqueName("boot")
	csr := create(t, boot, csrtest.Build(csrtest.WithNodeName(node)))
	if csr.Spec.Username != tok.Username() {
		t.Fatalf("requester %q, want %q", csr.Spec.Username, tok.Username())
	}
	expectDecision(t, csr.Name, certificatesv1.CertificateApproved, approver.ReasonBootstrapApproved)
	if who := whoAmI(t, issuedConfig(t, csr.Name)); who.Username != "system:node:"+node {
		t.Fatalf("issued certificate authenticates as %+v", who)
	}
}

// TestNodeAskingForAnotherNodesName files the CSR through impersonation of a
// node user outside the system:nodes group, which NodeRestriction does not
// recognise as a node, so only nodecsr stands in the way.
func TestNodeAskingForAnotherNodesName(t *testing.T) {
	victim, attacker := uniqueName("victim"), uniqueName("attacker")
	createNode(t, victim)
	cfg := tc.AdminConfig()
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:node:" + attacker, Groups: []string{"system:authenticated", "it-csr-creators"}}
	grantCSRCreate(t, "it-csr-creators")
	csr := create(t, kubernetes.NewForConfigOrDie(cfg), csrtest.Build(csrtest.WithNodeName(victim)))
	expectDecision(t, csr.Name, certificatesv1.CertificateDenied, approver.ReasonRequesterMismatch)
}

// TestBootstrapClaimingAnExistingNode is the takeover upstream allows.
func TestBootstrapClaimingAnExistingNode(t *testing.T) {
	for _, victim := range []string{uniqueName("worker"), uniqueName("control-plane")} {
		t.Run(victim, func(t *testing.T) {
			createNode(t, victim)
			boot, _ := bootstrapClient(t)
			csr := create(t, boot, csrtest.Build(csrtest.WithNodeName(victim)))
			want := approver.ReasonNodeAlreadyExists
			if strings.HasPrefix(victim, "control-plane") {
				want = approver.ReasonNodeNameDenied // the policy denies those names outright
			}
			expectDecision(t, csr.Name, certificatesv1.CertificateDenied, want)
		})
	}
}

func TestBadRequestsAreDeniedWithTheirReason(t *testing.T) {
	cases := map[string]struct {
		opts   []csrtest.Option
		reason string
		// apiRefuses: the API server's own validation refuses the create with
		// this text (so the CSR can never reach nodecsr).
		apiRefuses string
	}{
		"trailing garbage":        {[]csrtest.Option{csrtest.TrailingGarbage()}, approver.ReasonMalformedRequest, ""},
		"extra organization":      {[]csrtest.Option{csrtest.WithOrg("system:nodes", "system:masters")}, approver.ReasonInvalidOrganization, ""},
		"common name no prefix":   {[]csrtest.Option{csrtest.WithCN("worker-x")}, approver.ReasonInvalidCommonName, ""},
		"DNS SAN":                 {[]csrtest.Option{csrtest.WithDNSSAN("kubernetes.default")}, approver.ReasonSANsNotAllowed, ""},
		"server auth usage":       {[]csrtest.Option{csrtest.WithUsages(certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageServerAuth)}, approver.ReasonInvalidUsages, ""},
		"weak RSA key":            {[]csrtest.Option{csrtest.WithKey(csrtest.RSAKey(1024))}, approver.ReasonKeySizeNotAllowed, ""},
		"over-long lifetime":      {[]csrtest.Option{csrtest.WithExpiration(7 * 86400)}, approver.ReasonLifetimeTooLong, ""},
		"signed by another key":   {[]csrtest.Option{csrtest.SignedByOtherKey()}, approver.ReasonInvalidSignature, "verification failure"},
		"organizational unit":     {[]csrtest.Option{csrtest.WithSubjectAttribute(csrtest.OIDOrganizationalUnit, "x")}, approver.ReasonExtraSubjectAttributes, ""},
		"denied node name":        {[]csrtest.Option{csrtest.WithNodeName("control-plane-9")}, approver.ReasonNodeNameDenied, ""},
		"invalid node name":       {[]csrtest.Option{csrtest.WithNodeName("Worker_1")}, approver.ReasonInvalidNodeName, ""},
		"unicode look-alike name": {[]csrtest.Option{csrtest.WithNodeName("wоrker-1")}, approver.ReasonInvalidNodeName, ""},
	}
	boot, _ := bootstrapClient(t)
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			opts := append([]csrtest.Option{csrtest.WithNodeName(uniqueName("bad"))}, c.opts...)
			csr := csrtest.Build(opts...)
			csr.Name = uniqueName("bad")
			created, err := boot.CertificatesV1().CertificateSigningRequests().Create(t.Context(), csr, metav1.CreateOptions{})
			if c.apiRefuses != "" {
				if err == nil || !strings.Contains(err.Error(), c.apiRefuses) {
					t.Fatalf("the API server admitted it (%v); want a refusal containing %q", err, c.apiRefuses)
				}
				return
			}
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			expectDecision(t, created.Name, certificatesv1.CertificateDenied, c.reason)
		})
	}
}

func TestUnrecognizedRequesterIsDenied(t *testing.T) {
	cfg, err := tc.UserConfig(uniqueName("alice"), "developers")
	if err != nil {
		t.Fatal(err)
	}
	// alice may create CSRs, but she is neither a node nor a bootstrapper.
	grantCSRCreate(t, "developers")
	csr := create(t, kubernetes.NewForConfigOrDie(cfg), csrtest.Build(csrtest.WithNodeName(uniqueName("n"))))
	expectDecision(t, csr.Name, certificatesv1.CertificateDenied, approver.ReasonUnrecognizedRequester)
}

func TestDuplicatesCollapseToTheNewest(t *testing.T) {
	node := uniqueName("dup")
	createNode(t, node)
	client := nodeClient(t, node)
	// Stop decisions racing ahead of the burst: several CSRs exist before the
	// first one is looked at only if they are created faster than one
	// reconcile; whichever were seen together collapse. The newest always wins.
	var names []string
	for i := 0; i < 5; i++ {
		c := csrtest.Build(csrtest.WithNodeName(node))
		c.Name = fmt.Sprintf("%s-%d", node, i)
		names = append(names, create(t, client, c).Name)
	}
	last, _ := decision(t, names[len(names)-1])
	if last.Type != certificatesv1.CertificateApproved {
		t.Fatalf("newest duplicate: %s/%s (%s)", last.Type, last.Reason, last.Message)
	}
	for _, n := range names[:len(names)-1] {
		cond, _ := decision(t, n)
		if cond.Type == certificatesv1.CertificateDenied && cond.Reason != approver.ReasonSuperseded {
			t.Errorf("%s denied as %s, want Superseded", n, cond.Reason)
		}
	}
}

func grantCSRCreate(t *testing.T, group string) {
	t.Helper()
	ctx, cancel := testutil.Context(t)
	defer cancel()
	if err := env.AllowCSRCreate(ctx, admin, "it-csr-create-"+group, env.Group(group)); err != nil {
		t.Fatal(err)
	}
}

// metricValue scrapes the controller's /metrics and sums the samples of a
// metric family whose labels include want.
func metricValue(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	ctx, cancel := testutil.Context(t)
	defer cancel()
	v, err := ctl.MetricSum(ctx, name, want)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestDecisionsAreCounted(t *testing.T) {
	before := metricValue(t, "nodecsr_decisions_total", map[string]string{"decision": "Deny", "reason": approver.ReasonSANsNotAllowed, "path": "Bootstrap"})
	boot, _ := bootstrapClient(t)
	csr := create(t, boot, csrtest.Build(csrtest.WithNodeName(uniqueName("m")), csrtest.WithDNSSAN("x.example")))
	expectDecision(t, csr.Name, certificatesv1.CertificateDenied, approver.ReasonSANsNotAllowed)
	after := metricValue(t, "nodecsr_decisions_total", map[string]string{"decision": "Deny", "reason": approver.ReasonSANsNotAllowed, "path": "Bootstrap"})
	if after != before+1 {
		t.Fatalf("nodecsr_decisions_total{Deny,SANsNotAllowed,Bootstrap} went %v → %v, want +1", before, after)
	}
	if metricValue(t, "nodecsr_decision_latency_seconds", map[string]string{"decision": "Deny"}) < 1 {
		t.Error("no decision latency observed")
	}
}

// setPolicy replaces the policy file as a ConfigMap update would and waits
// until the controller runs the new policy.
func setPolicy(t *testing.T, yaml string) {
	t.Helper()
	p, err := config.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	writePolicy(t, yaml)
	waitForPolicy(t, p.Digest)
}

func waitForPolicy(t *testing.T, digest string) {
	t.Helper()
	// testutil.Poll: this also runs in t.Cleanup.
	err := poll(t, func(context.Context) (bool, error) {
		return metricValue(t, "nodecsr_policy_info", map[string]string{"digest": digest}) == 1, nil
	})
	if err != nil {
		t.Fatalf("policy %s not in force: %v", digest, err)
	}
}

// writePolicy replaces the controller's policy file atomically, as the
// kubelet updates a ConfigMap volume.
func writePolicy(t *testing.T, yaml string) {
	t.Helper()
	if err := ctl.WritePolicy([]byte(yaml)); err != nil {
		t.Fatal(err)
	}
}

func TestPolicyReloadTakesEffectWithoutRestart(t *testing.T) {
	t.Cleanup(func() { setPolicy(t, basePolicy) })
	node := uniqueName("reload")
	boot, _ := bootstrapClient(t)

	setPolicy(t, basePolicy+"  # v2\n"+`  bootstrap:
    enabled: false
`)
	csr := create(t, boot, csrtest.Build(csrtest.WithNodeName(node)))
	expectDecision(t, csr.Name, certificatesv1.CertificateDenied, approver.ReasonBootstrapDisabled)

	// A broken file keeps the policy in force, counts an error and says so in
	// a Warning Event on the controller's pod.
	p, err := config.Parse([]byte(basePolicy + "  # v2\n" + "  bootstrap:\n    enabled: false\n"))
	if err != nil {
		t.Fatal(err)
	}
	errorsBefore := metricValue(t, "nodecsr_policy_reloads_total", map[string]string{"result": "error"})
	writePolicy(t, "apiVersion: nodecsr.io/v1alpha1\nkind: Policy\nspec:\n  mode: Sometimes\n")
	err = poll(t, func(context.Context) (bool, error) {
		return metricValue(t, "nodecsr_policy_reloads_total", map[string]string{"result": "error"}) > errorsBefore, nil
	})
	if err != nil {
		t.Fatal("a broken policy file was not reported in nodecsr_policy_reloads_total{result=error}")
	}
	waitForPolicy(t, p.Digest)
	ctx, cancel := testutil.Context(t)
	defer cancel()
	ev, err := env.WaitEvent(ctx, admin, podNS, podName, func(e *eventsv1.Event) bool { return e.Reason == "PolicyReloadFailed" })
	if err != nil || ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Note, "Sometimes") {
		t.Fatalf("no Warning Event naming the problem: %+v %v", ev, err)
	}
	denied := create(t, boot, csrtest.Build(csrtest.WithNodeName(uniqueName("reload"))))
	expectDecision(t, denied.Name, certificatesv1.CertificateDenied, approver.ReasonBootstrapDisabled)
}

func TestDryRunWritesNoCondition(t *testing.T) {
	t.Cleanup(func() { setPolicy(t, basePolicy) })
	setPolicy(t, strings.Replace(basePolicy, "spec:\n", "spec:\n  mode: DryRun\n", 1))
	boot, _ := bootstrapClient(t)
	good := create(t, boot, csrtest.Build(csrtest.WithNodeName(uniqueName("dry"))))
	bad := create(t, boot, csrtest.Build(csrtest.WithNodeName(uniqueName("dry")), csrtest.WithDNSSAN("evil.example")))
	for name, want := range map[string]struct{ action, reason string }{
		good.Name: {"WouldApprove", approver.ReasonBootstrapApproved},
		bad.Name:  {"WouldDeny", approver.ReasonSANsNotAllowed},
	} {
		ev := decisionEvents(t, name, 1)
		if ev[0].Action != want.action || ev[0].Reason != want.reason || !strings.HasPrefix(ev[0].Message, want.action) {
			t.Errorf("%s: event %s/%s %q, want %s/%s", name, ev[0].Action, ev[0].Reason, ev[0].Message, want.action, want.reason)
		}
		got, err := admin.CertificatesV1().CertificateSigningRequests().Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Status.Conditions) != 0 {
			t.Errorf("%s: DryRun wrote conditions %+v", name, got.Status.Conditions)
		}
	}
}

func TestCertificateExpiryMetricFollowsRenewalsAndRestarts(t *testing.T) {
	node := uniqueName("expiry")
	createNode(t, node)
	client := nodeClient(t, node)
	notAfter := func(name string) float64 {
		t.Helper()
		cfg := issuedConfig(t, name)
		return float64(env.ParseCert(t, cfg.CertData).NotAfter.Unix())
	}
	waitForExpiry := func(want float64) {
		t.Helper()
		var got float64
		err := poll(t, func(context.Context) (bool, error) {
			got = metricValue(t, "nodecsr_node_certificate_expiry_timestamp_seconds", map[string]string{"node": node, "signer": "client"})
			return got == want, nil
		})
		if err != nil {
			t.Fatalf("nodecsr_node_certificate_expiry_timestamp_seconds{node=%q} = %v, want %v", node, got, want)
		}
	}

	first := create(t, client, csrtest.Build(csrtest.WithNodeName(node), csrtest.WithExpiration(3600)))
	expectDecision(t, first.Name, certificatesv1.CertificateApproved, approver.ReasonRenewalApproved)
	waitForExpiry(notAfter(first.Name))

	// Creation timestamps have one-second resolution and within a second
	// "newest" goes by name: renew in a later second, as a kubelet does.
	time.Sleep(time.Until(first.CreationTimestamp.Add(1100 * time.Millisecond)))
	second := create(t, client, csrtest.Build(csrtest.WithNodeName(node), csrtest.WithExpiration(7200)))
	expectDecision(t, second.Name, certificatesv1.CertificateApproved, approver.ReasonRenewalApproved)
	renewed := notAfter(second.Name)
	waitForExpiry(renewed)

	// A restarted controller (a new process: nothing carried over) rebuilds
	// the view from the CSRs the API still holds.
	ctx, cancel := testutil.Context(t)
	defer cancel()
	if err := ctl.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if v, err := ctl.MetricSum(ctx, "nodecsr_node_certificate_expiry_timestamp_seconds", map[string]string{"node": node}); err == nil {
		t.Fatalf("the stopped controller still serves /metrics (%v)", v)
	}
	if err := ctl.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitForExpiry(renewed)
}
