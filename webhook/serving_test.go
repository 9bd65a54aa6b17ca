package webhook

import (
	"context"
	"net/http"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
)

func servingOn(s *config.Spec) { s.Serving.Enabled = true }

// fakeAddresses is an AddressLookup over fixed Nodes.
type fakeAddresses map[string][]corev1.NodeAddress

func (f fakeAddresses) NodeAddresses(_ context.Context, name string) (*approver.NodeAddresses, error) {
	addrs, ok := f[name]
	if !ok {
		return &approver.NodeAddresses{}, nil
	}
	return approver.NodeAddressesOf(addrs), nil
}

func (f fakeAddresses) NodesWithAddress(_ context.Context, key string) ([]string, error) {
	var out []string
	for name, addrs := range f {
		for _, a := range addrs {
			if approver.NodeAddressKey(a.Address) == key {
				out = append(out, name)
				break
			}
		}
	}
	return out, nil
}

var servingCluster = fakeAddresses{
	"worker-1": {{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}, {Type: corev1.NodeHostName, Address: "worker-1"}},
	"worker-2": {{Type: corev1.NodeInternalIP, Address: "10.0.0.2"}, {Type: corev1.NodeHostName, Address: "worker-2"}},
}

func servingGatherer() approver.FactGatherer {
	return &approver.Gatherer{Nodes: nodes("worker-1", "worker-2"), Addresses: servingCluster, Clock: clock.RealClock{}}
}

// The validating webhook judges serving CSRs when serving is on: it rejects
// the hopeless ones naming every rule, with the Node facts from its cache
// (another node's address included), and admits what the approver may still
// approve.
func TestValidateServing(t *testing.T) {
	cases := map[string]struct {
		opts    []csrtest.Option
		policy  func(*config.Spec)
		want    []string
		allowed bool
		reason  string
	}{
		"stock kubelet":  {opts: []csrtest.Option{csrtest.Serving("worker-1", "10.0.0.1")}, policy: servingOn, allowed: true, reason: approver.ReasonFactsIncomplete},
		"serving off":    {opts: []csrtest.Option{csrtest.Serving("worker-1", "*.evil")}, allowed: true, reason: approver.ReasonNotKubeletClientSigner},
		"unknown node":   {opts: []csrtest.Option{csrtest.WithNodeName("late"), csrtest.Serving("late", "10.0.0.9")}, policy: servingOn, allowed: true, reason: approver.ReasonWaitingForNode},
		"neighbour's IP": {opts: []csrtest.Option{csrtest.Serving("worker-1", "10.0.0.2")}, policy: servingOn, want: []string{approver.ReasonAddressOfOtherNode, approver.ReasonIPNotNodeAddress}},
		"hostile": {
			opts: []csrtest.Option{csrtest.Serving("*.cluster.local", "10.0.0.1"), csrtest.WithURISAN("spiffe://x/y"),
				csrtest.WithUsages(certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth, certificatesv1.UsageClientAuth)},
			policy: servingOn,
			want:   []string{approver.ReasonSANTypeNotAllowed, approver.ReasonWildcardDNSName, approver.ReasonInvalidUsages, approver.ReasonDNSNameNotNodeAddress},
		},
		"bootstrapper": {opts: []csrtest.Option{csrtest.Serving("worker-1"), csrtest.Bootstrap(csrtest.DefaultTokenID)}, policy: servingOn, want: []string{approver.ReasonServingByBootstrapper}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			hs, reg := testHandlers(t, newPolicy(t, tc.policy), func(o *Options) { o.Facts = servingGatherer() })
			csr := csrtest.Build(tc.opts...)
			resp := hs.validate.Handle(t.Context(), createRequest(t, csr, userOf(csr)))
			if resp.Allowed != tc.allowed {
				t.Fatalf("allowed %v, want %v: %+v", resp.Allowed, tc.allowed, resp.Result)
			}
			if tc.allowed {
				if got := count(t, reg, opValidate, resultAllowed, tc.reason); got != 1 {
					t.Errorf("admitted with reason %s counted %d times", tc.reason, got)
				}
				return
			}
			if resp.Result.Code != http.StatusForbidden || !strings.Contains(resp.Result.Message, "this kubelet serving CSR can never be approved") {
				t.Errorf("result %+v", resp.Result)
			}
			if missing := containsAll(resp.Result.Message, tc.want...); len(missing) > 0 {
				t.Errorf("message %q does not name %v", resp.Result.Message, missing)
			}
			if !strings.Contains(resp.Result.Message, "(1) "+tc.want[0]+": ") {
				t.Errorf("the first violation is not %s: %s", tc.want[0], resp.Result.Message)
			}
			if len(resp.Result.Details.Causes) != len(tc.want) {
				t.Errorf("causes %+v, want %d", resp.Result.Details.Causes, len(tc.want))
			}
		})
	}
	// The neighbour is named at creation.
	hs, _ := testHandlers(t, newPolicy(t, servingOn), func(o *Options) { o.Facts = servingGatherer() })
	csr := csrtest.Build(csrtest.Serving("10.0.0.2"))
	if resp := hs.validate.Handle(t.Context(), createRequest(t, csr, userOf(csr))); resp.Allowed || !strings.Contains(resp.Result.Message, `node "worker-2"`) {
		t.Errorf("neighbour not named: %+v", resp.Result)
	}
}

// The mutating webhook labels serving CSRs and caps their lifetime like
// client CSRs, only when serving is on.
func TestMutateServing(t *testing.T) {
	capped := func(s *config.Spec) { servingOn(s); s.Lifetime.MaxExpirationSeconds = 3600 }
	csr := csrtest.Build(csrtest.Serving("worker-1"), csrtest.WithExpiration(7200))

	hs, reg := testHandlers(t, newPolicy(t, capped), nil)
	req := createRequest(t, csr, userOf(csr))
	resp := hs.mutate.Handle(t.Context(), req)
	if !resp.Allowed || len(resp.Patches) == 0 {
		t.Fatalf("not patched: %+v", resp)
	}
	patched := applyPatch(t, req.Object.Raw, mustJSON(t, resp.Patches))
	if patched.Labels[LabelNodeName] != "worker-1" || patched.Spec.ExpirationSeconds == nil || *patched.Spec.ExpirationSeconds != 3600 {
		t.Errorf("labels %v, expiration %v", patched.Labels, patched.Spec.ExpirationSeconds)
	}
	if got := count(t, reg, opMutate, resultPatched, reasonExpirationCapped); got != 1 {
		t.Errorf("capped counted %d", got)
	}

	hs, _ = testHandlers(t, newPolicy(t, func(s *config.Spec) { s.Lifetime.MaxExpirationSeconds = 3600 }), nil)
	if resp := hs.mutate.Handle(t.Context(), createRequest(t, csr, userOf(csr))); !resp.Allowed || len(resp.Patches) != 0 {
		t.Errorf("a serving CSR was patched with serving off: %+v", resp.Patches)
	}
}

// The approval guard covers the serving signer while serving is on, and
// leaves serving approvals alone (another approver's) while it is off.
func TestApprovalGuardServing(t *testing.T) {
	enforce := func(s *config.Spec) { s.ApprovalGuard.Mode = config.GuardEnforce }
	mallory := authenticationv1.UserInfo{Username: "mallory", Groups: []string{"system:authenticated"}}
	pending := csrtest.Build(csrtest.Serving("worker-1"))
	approved := withDecision(pending, certificatesv1.CertificateApproved, "Manual")

	hs, _ := testHandlers(t, newPolicy(t, func(s *config.Spec) { enforce(s); servingOn(s) }), func(o *Options) { o.Self = self })
	resp := hs.approval.Handle(t.Context(), approvalRequest(t, pending, approved, mallory))
	if resp.Allowed || !strings.Contains(resp.Result.Message, "may not approve kubelet serving certificate requests (signer kubernetes.io/kubelet-serving)") {
		t.Errorf("serving on: %+v", resp.Result)
	}
	self := authenticationv1.UserInfo{Username: self}
	if resp := hs.approval.Handle(t.Context(), approvalRequest(t, pending, approved, self)); !resp.Allowed {
		t.Errorf("nodecsr's own approval refused: %+v", resp.Result)
	}

	hs, reg := testHandlers(t, newPolicy(t, enforce), nil)
	if resp := hs.approval.Handle(t.Context(), approvalRequest(t, pending, approved, mallory)); !resp.Allowed {
		t.Errorf("serving off: refused %+v", resp.Result)
	}
	if got := count(t, reg, opApproval, resultAllowed, approver.ReasonNotKubeletClientSigner); got != 1 {
		t.Errorf("not-ours counted %d", got)
	}
}

func TestConfigurationServing(t *testing.T) {
	opts := ConfigOptions{URL: "https://127.0.0.1:9443", Self: self, Serving: true}
	m, err := MutatingWebhookConfiguration(opts)
	if err != nil {
		t.Fatal(err)
	}
	v, err := ValidatingWebhookConfiguration(opts)
	if err != nil {
		t.Fatal(err)
	}
	want := `object.spec.signerName in ["kubernetes.io/kube-apiserver-client-kubelet", "kubernetes.io/kubelet-serving"]`
	conds := [][]string{}
	for _, c := range m.Webhooks[0].MatchConditions {
		conds = append(conds, []string{c.Name, c.Expression})
	}
	for _, w := range v.Webhooks {
		if w.MatchConditions[0].Expression != want || w.MatchConditions[0].Name != "kubelet-signers" {
			t.Errorf("%s: match %+v", w.Name, w.MatchConditions)
		}
	}
	if len(conds) != 1 || conds[0][1] != want {
		t.Errorf("mutating match %v", conds)
	}
	opts.Serving = false
	m, _ = MutatingWebhookConfiguration(opts)
	if got := m.Webhooks[0].MatchConditions[0].Expression; strings.Contains(got, "kubelet-serving") {
		t.Errorf("serving off matches %s", got)
	}
}
