package webhook_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/internal/testutil"
	testenv "github.com/nodecsr/nodecsr/test/env"
	"github.com/nodecsr/nodecsr/webhook"
)

var serverAuth = []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageServerAuth}

// hostileCSR is what a stolen bootstrap token would file to take over an
// existing node, with a few extras a kubelet never asks for.
func hostileCSR(prefix, nodeName string) *certificatesv1.CertificateSigningRequest {
	return goodCSR(prefix, nodeName,
		csrtest.WithSubjectAttribute(csrtest.OIDOrganizationalUnit, "ops"),
		csrtest.WithDNSSAN("kubernetes.default.svc"),
		csrtest.WithUsages(serverAuth...))
}

func mustPolicy(t *testing.T, mut func(*config.Spec)) *config.Effective {
	t.Helper()
	p := &config.Policy{APIVersion: config.APIVersion, Kind: config.Kind}
	mut(&p.Spec)
	e, err := config.Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestRejectsHopelessCSR(t *testing.T) {
	const victim = "it-control-plane-1"
	createNode(t, victim)
	e := startEnv(t, config.Default())
	ctx := t.Context()

	// The Node must be in the webhook's cache for the takeover to be seen.
	if err := testutil.Poll(t, 50*time.Millisecond, func(ctx context.Context) (bool, error) {
		_, err := bootstrapClient(t).CertificatesV1().CertificateSigningRequests().Create(ctx, goodCSR("takeover", victim), dryRun)
		return err != nil && strings.Contains(err.Error(), approver.ReasonNodeAlreadyExists), nil
	}); err != nil {
		t.Fatal("a bootstrap request for an existing node was not rejected as a takeover")
	}

	_, err := bootstrapClient(t).CertificatesV1().CertificateSigningRequests().Create(ctx, hostileCSR("hostile", victim), metav1.CreateOptions{})
	if err == nil {
		deleteCSRs(t, victim)
		t.Fatal("the API server admitted a hostile CSR")
	}
	t.Logf("the client saw: %v", err)
	if !apierrors.IsForbidden(err) {
		t.Errorf("want 403 Forbidden, got %v", err)
	}
	want := []string{
		`admission webhook "` + webhook.WebhookNameValidate + `" denied the request`,
		approver.ReasonExtraSubjectAttributes, approver.ReasonSANsNotAllowed, approver.ReasonInvalidUsages, approver.ReasonNodeAlreadyExists,
		`node "` + victim + `" already exists`,
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("the error does not say %q", w)
		}
	}
	var status apierrors.APIStatus
	if !errors.As(err, &status) || status.Status().Details == nil || len(status.Status().Details.Causes) != 4 {
		t.Errorf("want the four violations as status causes, got %+v", status)
	}
	if got := counter(t, e.reg, "validate", "denied", approver.ReasonExtraSubjectAttributes); got < 1 {
		t.Errorf("nodecsr_admission_total{validate,denied,ExtraSubjectAttributes} = %v", got)
	}

	// Another signer's CSR, however odd, is never sent to the webhooks.
	other := forCreate(csrtest.Build(csrtest.WithCN("anything"), csrtest.WithUsages(serverAuth...), csrtest.WithSignerName("example.com/other")), "other")
	if _, err := e.admin.CertificatesV1().CertificateSigningRequests().Create(ctx, other, dryRun); err != nil {
		t.Errorf("another signer's CSR was refused: %v", err)
	}
}

func TestAdmitsLabelsAnnotatesAndCaps(t *testing.T) {
	const (
		bootNode    = "it-new-node-1"
		renewalNode = "it-node-1"
	)
	createNode(t, renewalNode)
	deleteCSRs(t, bootNode, renewalNode)
	e := startEnv(t, mustPolicy(t, func(s *config.Spec) { s.Lifetime.MaxExpirationSeconds = 3600 }))
	ctx := t.Context()
	csrs := bootstrapClient(t).CertificatesV1().CertificateSigningRequests()

	csr := goodCSR("bootstrap", bootNode, csrtest.WithExpiration(86400))
	sum := spkiSHA256(t, csr.Spec.Request)
	got, err := csrs.Create(ctx, csr, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("a good bootstrap CSR was refused: %v", err)
	}
	stored, err := e.admin.CertificatesV1().CertificateSigningRequests().Get(ctx, got.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkMutated(t, stored, bootNode, sum, ptr[int32](3600))
	if stored.Spec.Username != bootstrapToken.Username() {
		t.Errorf("stored requester %q", stored.Spec.Username)
	}

	// The policy is read on every request: a default lifetime applies to
	// the next one.
	e.policy.Store(mustPolicy(t, func(s *config.Spec) {
		s.Lifetime.MaxExpirationSeconds = 3600
		s.Lifetime.DefaultExpirationSeconds = ptr[int32](1800)
	}))
	csr = goodCSR("bootstrap", bootNode)
	got, err = csrs.Create(ctx, csr, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("a good bootstrap CSR was refused: %v", err)
	}
	checkMutated(t, got, bootNode, spkiSHA256(t, csr.Spec.Request), ptr[int32](1800))

	// A node renewing its own certificate (its Node exists), with an RSA
	// key and key encipherment, as older kubelets ask.
	nodeCfg, err := testCluster.NodeConfig(renewalNode)
	if err != nil {
		t.Fatal(err)
	}
	node := kubernetes.NewForConfigOrDie(nodeCfg).CertificatesV1().CertificateSigningRequests()
	csr = goodCSR("renewal", renewalNode, csrtest.WithKey(csrtest.RSAKey(2048)), csrtest.WithUsages(csrtest.KeyEnciphermentUsages()...))
	// The Node may reach the webhook's cache a moment after it is created.
	err = testutil.Poll(t, 100*time.Millisecond, func(ctx context.Context) (bool, error) {
		got, err = node.Create(ctx, csr, metav1.CreateOptions{})
		if err != nil && strings.Contains(err.Error(), approver.ReasonWaitingForNode) {
			return false, nil
		}
		return true, err
	})
	if err != nil {
		t.Fatalf("a good renewal was refused: %v", err)
	}
	if got.Labels[webhook.LabelNodeName] != renewalNode || got.Annotations[webhook.AnnotationKeyAlgorithm] != "RSA-2048" {
		t.Errorf("renewal: labels %v annotations %v", got.Labels, got.Annotations)
	}
}

func checkMutated(t *testing.T, csr *certificatesv1.CertificateSigningRequest, node, sum string, exp *int32) {
	t.Helper()
	if got := csr.Labels[webhook.LabelNodeName]; got != node {
		t.Errorf("label %s = %q, want %q", webhook.LabelNodeName, got, node)
	}
	if got := csr.Annotations[webhook.AnnotationKeyAlgorithm]; got != "ECDSA-P256" {
		t.Errorf("annotation %s = %q, want ECDSA-P256", webhook.AnnotationKeyAlgorithm, got)
	}
	if got := csr.Annotations[webhook.AnnotationPublicKeySHA256]; got != sum {
		t.Errorf("annotation %s = %q, want %s", webhook.AnnotationPublicKeySHA256, got, sum)
	}
	if csr.Spec.ExpirationSeconds == nil || *csr.Spec.ExpirationSeconds != *exp {
		t.Errorf("expirationSeconds = %v, want %d", csr.Spec.ExpirationSeconds, *exp)
	}
}

func spkiSHA256(t *testing.T, req []byte) string {
	t.Helper()
	cr := testenv.ParseRequest(t, req)
	s := sha256.Sum256(cr.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(s[:])
}

func TestApprovalGuard(t *testing.T) {
	const node = "it-guarded-node"
	deleteCSRs(t, node)
	grantApproval(t, "it-csr-approver", "it-mallory", selfUser)
	enforce := mustPolicy(t, func(s *config.Spec) { s.ApprovalGuard.Mode = config.GuardEnforce })
	e := startEnv(t, enforce)
	ctx := t.Context()
	mallory, malloryWarnings := userClient(t, "it-mallory")
	self, _ := userClient(t, selfUser, "system:serviceaccounts")
	newCSR := func() *certificatesv1.CertificateSigningRequest {
		t.Helper()
		got, err := bootstrapClient(t).CertificatesV1().CertificateSigningRequests().Create(ctx, goodCSR("guarded", node), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}

	// Enforce: mallory, who RBAC allows to approve, is turned away.
	csr := newCSR()
	err := approve(ctx, mallory, csr, metav1.UpdateOptions{})
	if err == nil {
		t.Fatal("the approval guard admitted mallory's approval in Enforce mode")
	}
	t.Logf("mallory saw: %v", err)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `admission webhook "`+webhook.WebhookNameApproval+`" denied the request: user "it-mallory" may not approve`) {
		t.Errorf("unexpected error: %v", err)
	}
	if got, _ := e.admin.CertificatesV1().CertificateSigningRequests().Get(ctx, csr.Name, metav1.GetOptions{}); !approver.IsPending(got) {
		t.Error("the CSR is no longer pending")
	}
	// nodecsr itself may approve it.
	if err := approve(ctx, self, csr, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("nodecsr's own approval was refused: %v", err)
	}
	// So may the break-glass group (system:masters by default).
	if err := approve(ctx, e.admin, newCSR(), metav1.UpdateOptions{}); err != nil {
		t.Fatalf("a system:masters approval was refused: %v", err)
	}
	if got := counter(t, e.reg, "approval", "allowed", "AllowedGroup"); got != 1 {
		t.Errorf("nodecsr_admission_total{approval,allowed,AllowedGroup} = %v, want 1", got)
	}

	// Warn: mallory's approval goes through, with a warning and an Event.
	e.policy.Store(mustPolicy(t, func(s *config.Spec) { s.ApprovalGuard.Mode = config.GuardWarn }))
	csr = newCSR()
	if err := approve(ctx, mallory, csr, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("Warn mode refused mallory's approval: %v", err)
	}
	if !slices.ContainsFunc(malloryWarnings.All(), func(w string) bool {
		return strings.Contains(w, `nodecsr approval guard (mode Warn): user "it-mallory" may not approve`)
	}) {
		t.Errorf("no approval guard warning; warnings: %q", malloryWarnings.All())
	}
	err = testutil.Poll(t, 100*time.Millisecond, func(ctx context.Context) (bool, error) {
		evs, err := e.admin.EventsV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		return slices.ContainsFunc(evs.Items, func(ev eventsv1.Event) bool {
			return ev.Regarding.Name == csr.Name && ev.Reason == webhook.EventReasonApprovalNotAllowed && ev.Action == "Warned"
		}), nil
	})
	if err != nil {
		t.Errorf("no %s Event on %s: %v", webhook.EventReasonApprovalNotAllowed, csr.Name, err)
	}

	// Off: nothing to say.
	e.policy.Store(config.Default())
	before := len(malloryWarnings.All())
	if err := approve(ctx, mallory, newCSR(), metav1.UpdateOptions{}); err != nil {
		t.Fatalf("Off mode refused mallory's approval: %v", err)
	}
	if after := malloryWarnings.All(); len(after) != before {
		t.Errorf("warnings with the guard off: %q", after[before:])
	}
}

// TestCertificateRotation replaces the serving certificate (a new leaf from
// the same CA, swapped into the mounted Secret's directory as the kubelet
// does) while CSRs are being created, and checks that no admission call
// failed and that the new certificate is served.
func TestCertificateRotation(t *testing.T) {
	const node = "it-rotation-node"
	deleteCSRs(t, node)
	e := startEnv(t, config.Default())
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(e.ca.CertPEM)

	var (
		mu       sync.Mutex
		rounds   int
		failures []string
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		failures = append(failures, fmt.Sprintf(format, args...))
	}
	roundsDone := func() int {
		mu.Lock()
		defer mu.Unlock()
		return rounds
	}
	ctx, cancel := context.WithCancel(t.Context())
	boot := bootstrapClient(t).CertificatesV1().CertificateSigningRequests()
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			// A good CSR must come back mutated (the mutating call worked)...
			got, err := boot.Create(ctx, goodCSR("rotation", node), metav1.CreateOptions{})
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				fail("a good CSR was refused: %v", err)
			case got.Labels[webhook.LabelNodeName] != node:
				fail("CSR %s was not mutated: the mutating call failed open", got.Name)
			}
			// ...and a hostile one must be rejected (the validating call worked).
			_, err = boot.Create(ctx, hostileCSR("rotation-hostile", node+"-x"), dryRun)
			switch {
			case ctx.Err() != nil:
				return
			case err == nil:
				fail("a hostile CSR was admitted: the validating call failed open")
			case !strings.Contains(err.Error(), webhook.WebhookNameValidate):
				fail("a hostile CSR failed otherwise: %v", err)
			}
			mu.Lock()
			rounds++
			mu.Unlock()
		}
	}()
	waitRounds := func(n int) {
		t.Helper()
		if err := testutil.Poll(t, 20*time.Millisecond, func(context.Context) (bool, error) {
			return roundsDone() >= n, nil
		}); err != nil {
			t.Fatalf("only %d rounds of CSR creation", roundsDone())
		}
	}

	waitRounds(10)
	failOpenBefore := failOpenCount(t)
	start := roundsDone()
	for i := range 2 {
		// The first certificate is only valid for 127.0.0.1; the new ones
		// for localhost too.
		next, err := e.ca.IssueServing("127.0.0.1", "localhost")
		if err != nil {
			t.Fatal(err)
		}
		if err := e.vol.write(next); err != nil {
			t.Fatal(err)
		}
		want := serialOf(t, next)
		var got string
		err = testutil.Poll(t, 50*time.Millisecond, func(ctx context.Context) (bool, error) {
			got, err = servedSerial(ctx, e.addr(), roots)
			return err == nil && got == want, nil
		})
		if err != nil {
			t.Fatalf("rotation %d: serial %s is not served (last %s)", i+1, want, got)
		}
		t.Logf("rotation %d: serving serial %s after %d rounds", i+1, want, roundsDone()-start)
		if i == 0 {
			// The API server keeps its connections to the webhook open;
			// pointing it at localhost makes it connect anew, and such a
			// connection only succeeds with the new certificate.
			e.setURLHost("localhost")
			time.Sleep(2 * time.Second) // let the API server see the change
		}
		waitRounds(roundsDone() + 20)
	}
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()

	t.Logf("%d rounds of CSR creation across two rotations", rounds-start)
	for _, f := range failures {
		t.Error(f)
	}
	if d := failOpenCount(t) - failOpenBefore; d != 0 {
		t.Errorf("the API server failed open %v times on nodecsr's webhooks during the rotation", d)
	}
}

// TestFailOpenWhenServerIsDown: with the webhook server stopped and its
// configurations still registered, CSRs are created (failurePolicy Ignore),
// and approvals go through (the guard fails open too). The approver, not the
// webhook, is the security boundary.
func TestFailOpenWhenServerIsDown(t *testing.T) {
	const node = "it-failopen-node"
	deleteCSRs(t, node)
	grantApproval(t, "it-csr-approver-failopen", "it-mallory-2")
	e := startEnv(t, mustPolicy(t, func(s *config.Spec) { s.ApprovalGuard.Mode = config.GuardEnforce }))
	ctx := t.Context()
	e.stopServer()
	before := failOpenCount(t)

	boot := bootstrapClient(t).CertificatesV1().CertificateSigningRequests()
	got, err := boot.Create(ctx, goodCSR("failopen", node), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("with the webhook down, a CSR was refused: %v", err)
	}
	if _, ok := got.Labels[webhook.LabelNodeName]; ok {
		t.Error("mutated although the webhook server is down?")
	}
	if _, err := boot.Create(ctx, hostileCSR("failopen-hostile", node+"-x"), dryRun); err != nil {
		t.Errorf("with the webhook down, a hostile CSR was refused by someone: %v", err)
	}
	mallory, _ := userClient(t, "it-mallory-2")
	if err := approve(ctx, mallory, got, metav1.UpdateOptions{}); err != nil {
		t.Errorf("with the webhook down, an approval was refused: %v", err)
	}
	if d := failOpenCount(t) - before; d < 3 {
		t.Errorf("the API server reports %v fail-open calls, want at least 3", d)
	}
}

// TestConfigurationsAreAccepted has the API server validate (dry run) the
// configurations in their other shape: a Service reference, a Fail guard,
// the longest timeout.
func TestConfigurationsAreAccepted(t *testing.T) {
	port := int32(443)
	opts := webhook.ConfigOptions{
		Name:                       "nodecsr-it-service",
		CABundle:                   []byte("not checked by the API server"),
		Service:                    &admissionregistrationv1.ServiceReference{Namespace: "nodecsr-system", Name: "nodecsr-webhook", Port: &port},
		Self:                       `system:serviceaccount:odd"name\\`,
		TimeoutSeconds:             5,
		ApprovalGuardFailurePolicy: admissionregistrationv1.Fail,
	}
	if err := testenv.CreateWebhookConfigurations(t.Context(), testCluster.AdminClient(), opts, dryRun); err != nil {
		t.Error(err)
	}
}

func ptr[T any](v T) *T { return &v }
