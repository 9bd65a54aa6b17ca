package webhook

import (
	"bytes"
	"context"
	"crypto/elliptic"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
)

var serverAuth = []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageServerAuth}

func TestValidateRejectsEveryKindOfViolation(t *testing.T) {
	boot := csrtest.Bootstrap(csrtest.DefaultTokenID)
	noRecovery := func(s *config.Spec) { s.Bootstrap.Recovery.Enabled = ptr(false) }
	tests := map[string]struct {
		opts   []csrtest.Option
		policy func(*config.Spec)
		nodes  approver.NodeLookup
		// facts replaces the Nodes-only gatherer built from nodes.
		facts   approver.FactGatherer
		want    []string // reason codes, every one must be named
		allowed bool
		// reason is the metric reason of an admitted CSR ("" = not checked).
		reason string
	}{
		"request too large":      {opts: []csrtest.Option{csrtest.WithRequest(bytes.Repeat([]byte("A"), 20000))}, want: []string{approver.ReasonRequestTooLarge}},
		"not PEM":                {opts: []csrtest.Option{csrtest.NotPEM()}, want: []string{approver.ReasonMalformedRequest}},
		"trailing garbage":       {opts: []csrtest.Option{csrtest.TrailingGarbage()}, want: []string{approver.ReasonMalformedRequest}},
		"Ed25519 key":            {opts: []csrtest.Option{csrtest.WithKey(csrtest.Ed25519Key())}, want: []string{approver.ReasonKeyAlgorithmNotAllowed}},
		"P-521 key":              {opts: []csrtest.Option{csrtest.WithKey(csrtest.ECDSAKey(elliptic.P521()))}, want: []string{approver.ReasonKeyCurveNotAllowed}},
		"RSA-1024 key":           {opts: []csrtest.Option{csrtest.WithKey(csrtest.RSAKey(1024))}, want: []string{approver.ReasonKeySizeNotAllowed}},
		"corrupt signature":      {opts: []csrtest.Option{csrtest.CorruptSignature()}, want: []string{approver.ReasonInvalidSignature}},
		"CN is not a node":       {opts: []csrtest.Option{csrtest.WithCN("alice"), boot}, want: []string{approver.ReasonInvalidCommonName}},
		"invalid node name":      {opts: []csrtest.Option{csrtest.WithNodeName("Bad_Name"), boot}, want: []string{approver.ReasonInvalidNodeName}},
		"node asks for another":  {opts: []csrtest.Option{csrtest.WithNodeName("worker-2"), csrtest.WithUsername("system:node:worker-1")}, want: []string{approver.ReasonRequesterMismatch}},
		"unrecognized requester": {opts: []csrtest.Option{csrtest.WithUsername("alice"), csrtest.WithGroups("system:authenticated")}, want: []string{approver.ReasonUnrecognizedRequester}},
		"bootstrap disabled": {
			opts: []csrtest.Option{boot}, policy: func(s *config.Spec) { s.Bootstrap.Enabled = ptr(false) },
			want: []string{approver.ReasonBootstrapDisabled},
		},
		"no organization":   {opts: []csrtest.Option{csrtest.WithOrg()}, want: []string{approver.ReasonInvalidOrganization}},
		"OU in the subject": {opts: []csrtest.Option{csrtest.WithSubjectAttribute(csrtest.OIDOrganizationalUnit, "ops")}, want: []string{approver.ReasonExtraSubjectAttributes}},
		"DNS SAN":           {opts: []csrtest.Option{csrtest.WithDNSSAN("worker-1.example.com")}, want: []string{approver.ReasonSANsNotAllowed}},
		"challenge password attribute": {
			opts: []csrtest.Option{csrtest.WithAttribute(csrtest.OIDChallengePassword, "secret")},
			want: []string{approver.ReasonUnexpectedExtensions},
		},
		"server auth usage": {opts: []csrtest.Option{csrtest.WithUsages(serverAuth...)}, want: []string{approver.ReasonInvalidUsages}},
		"key encipherment with ECDSA when it requires RSA": {
			opts:   []csrtest.Option{csrtest.WithUsages(csrtest.KeyEnciphermentUsages()...)},
			policy: func(s *config.Spec) { s.Keys.KeyEnciphermentRequiresRSA = true },
			want:   []string{approver.ReasonKeyEnciphermentRequiresRSA},
		},
		"lifetime too long": {
			opts:   []csrtest.Option{csrtest.WithExpiration(7200)},
			policy: func(s *config.Spec) { s.Lifetime.MaxExpirationSeconds = 3600 },
			want:   []string{approver.ReasonLifetimeTooLong},
		},
		"denied node name": {
			opts: []csrtest.Option{csrtest.WithNodeName("control-plane-1"), boot}, nodes: nodes(),
			policy: func(s *config.Spec) { s.NodeNames.Denied = []string{"control-plane-.*"} },
			want:   []string{approver.ReasonNodeNameDenied},
		},
		"node name not allowed": {
			opts: []csrtest.Option{csrtest.WithNodeName("db-1"), boot}, nodes: nodes(),
			policy: func(s *config.Spec) { s.NodeNames.Allowed = []string{"worker-.*"} },
			want:   []string{approver.ReasonNodeNameNotAllowed},
		},
		"token not bound": {
			opts:   []csrtest.Option{boot},
			policy: func(s *config.Spec) { s.Bootstrap.RequireTokenBinding = true },
			want:   []string{approver.ReasonTokenNotBound},
		},
		"token bound to other names": {
			opts: []csrtest.Option{boot},
			policy: func(s *config.Spec) {
				s.Bootstrap.TokenBindings = []config.TokenBinding{{TokenID: csrtest.DefaultTokenID, NodeNames: []string{"edge-.*"}}}
			},
			want: []string{approver.ReasonTokenNotBoundToName},
		},
		"bootstrap for an existing node (takeover, recovery off)": {
			opts: []csrtest.Option{csrtest.WithNodeName("control-plane-1"), boot}, nodes: nodes("control-plane-1"),
			policy: noRecovery,
			want:   []string{approver.ReasonNodeAlreadyExists},
		},
		"bootstrap for an existing node that is alive (heartbeat known)": {
			opts:  []csrtest.Option{csrtest.WithNodeName("control-plane-1"), boot},
			facts: &approver.Gatherer{Nodes: nodes("control-plane-1"), Heartbeats: fakeHeartbeats{at: time.Now()}, Clock: clock.RealClock{}},
			want:  []string{approver.ReasonNodeAlreadyExists},
		},
		// With recovery on (the default) an existing Node's name may be a
		// node coming back: without the heartbeat (no source, or its read
		// failed) the webhook leaves the decision to the approver.
		"bootstrap for an existing node (recovery on, heartbeat unknown)": {
			opts: []csrtest.Option{csrtest.WithNodeName("control-plane-1"), boot}, nodes: nodes("control-plane-1"),
			allowed: true, reason: approver.ReasonFactsIncomplete,
		},
		"bootstrap for an existing node (heartbeat read fails)": {
			opts:    []csrtest.Option{csrtest.WithNodeName("control-plane-1"), boot},
			facts:   &approver.Gatherer{Nodes: nodes("control-plane-1"), Heartbeats: fakeHeartbeats{err: errLookup}, Clock: clock.RealClock{}},
			allowed: true, reason: approver.ReasonFactsIncomplete,
		},
		"bootstrap for an existing node that is gone (heartbeat known)": {
			opts:    []csrtest.Option{csrtest.WithNodeName("control-plane-1"), boot},
			facts:   &approver.Gatherer{Nodes: nodes("control-plane-1"), Heartbeats: fakeHeartbeats{at: time.Now().Add(-time.Hour)}, Clock: clock.RealClock{}},
			allowed: true, reason: approver.ReasonFactsIncomplete,
		},
		// A renewal before its Node exists waits (WaitingForNode, verdict
		// Ignore): it is not a violation, so it is admitted.
		"renewal for a node that does not exist yet": {
			nodes:   nodes("worker-2"),
			allowed: true, reason: approver.ReasonWaitingForNode,
		},
		"many violations at once": {
			opts: []csrtest.Option{
				csrtest.WithNodeName("control-plane-1"), boot,
				csrtest.WithSubjectAttribute(csrtest.OIDOrganizationalUnit, "ops"),
				csrtest.WithDNSSAN("evil.example.com"), csrtest.WithIPSAN("10.0.0.1"),
				csrtest.WithUsages(serverAuth...), csrtest.WithExpiration(7200),
			},
			nodes:  nodes("control-plane-1"),
			policy: func(s *config.Spec) { s.Lifetime.MaxExpirationSeconds = 3600; noRecovery(s) },
			want: []string{
				approver.ReasonExtraSubjectAttributes, approver.ReasonSANsNotAllowed, approver.ReasonInvalidUsages,
				approver.ReasonLifetimeTooLong, approver.ReasonNodeAlreadyExists,
			},
		},

		"good renewal (node exists)":           {nodes: nodes(csrtest.DefaultNodeName), allowed: true, reason: approver.ReasonFactsIncomplete},
		"good renewal (no node lookup)":        {allowed: true, reason: approver.ReasonFactsIncomplete},
		"good renewal (node lookup fails)":     {nodes: fakeNodes{err: errLookup}, allowed: true, reason: approver.ReasonFactsIncomplete},
		"good bootstrap for a new node":        {opts: []csrtest.Option{boot}, nodes: nodes(), allowed: true, reason: approver.ReasonFactsIncomplete},
		"good bootstrap with key encipherment": {opts: []csrtest.Option{boot, csrtest.WithUsages(csrtest.KeyEnciphermentUsages()...)}, allowed: true},
		"good RSA-2048 renewal":                {opts: []csrtest.Option{csrtest.WithKey(csrtest.RSAKey(2048))}, allowed: true},
		"good bootstrap by a bootstrap user": {
			opts:    []csrtest.Option{csrtest.WithUsername("kubelet"), csrtest.WithGroups("system:authenticated")},
			policy:  func(s *config.Spec) { s.Bootstrap.Users = []string{"kubelet"} },
			nodes:   nodes(),
			allowed: true, reason: approver.ReasonFactsIncomplete,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := newPolicy(t, tc.policy)
			facts := tc.facts
			if facts == nil {
				facts = gatherer(tc.nodes)
			}
			hs, reg := testHandlers(t, p, func(o *Options) { o.Facts = facts })
			csr := csrtest.Build(tc.opts...)
			resp := hs.validate.Handle(t.Context(), createRequest(t, csr, userOf(csr)))
			if tc.allowed {
				if !resp.Allowed {
					t.Fatalf("denied a good CSR: %s", resp.Result.Message)
				}
				if len(resp.Warnings) > 0 || resp.Patch != nil {
					t.Errorf("unexpected warnings %q or patch %s", resp.Warnings, resp.Patch)
				}
				if tc.reason != "" {
					if got := count(t, reg, opValidate, resultAllowed, tc.reason); got != 1 {
						t.Errorf("nodecsr_admission_total{validate,allowed,%s} = %d, want 1", tc.reason, got)
					}
				}
				return
			}
			if resp.Allowed {
				t.Fatalf("admitted a CSR that breaks %v", tc.want)
			}
			t.Logf("message: %s", resp.Result.Message)
			if resp.Result.Code != http.StatusForbidden || resp.Result.Reason != metav1.StatusReasonForbidden {
				t.Errorf("status %d %q, want 403 Forbidden", resp.Result.Code, resp.Result.Reason)
			}
			if missing := containsAll(resp.Result.Message, tc.want...); len(missing) > 0 {
				t.Errorf("message does not name %v:\n%s", missing, resp.Result.Message)
			}
			// Every violation Decide finds, with the facts the validator
			// gathers, is named with its message, and is one cause on the
			// field its rule judges.
			csrStored := csr.DeepCopy()
			asStored(csrStored, ptr(userOf(csr)))
			r := approver.Inspect(p, csrStored)
			d := approver.Decide(p, r, approver.Facts{})
			if d.Needs != 0 && facts != nil {
				d = approver.Decide(p, r, hs.validate.gather(t.Context(), r, d.Needs))
			}
			if len(d.Violations) != len(resp.Result.Details.Causes) {
				t.Fatalf("%d causes for %d violations", len(resp.Result.Details.Causes), len(d.Violations))
			}
			for i, v := range d.Violations {
				if !strings.Contains(resp.Result.Message, v.Reason+": "+v.Message) {
					t.Errorf("message lacks %s (%s):\n%s", v.Reason, v.Message, resp.Result.Message)
				}
				c := resp.Result.Details.Causes[i]
				if string(c.Type) != v.Reason || c.Message != v.Message || c.Field != v.Field || c.Field == "" {
					t.Errorf("cause %d = %+v, want %s on %q: %s", i, c, v.Reason, v.Field, v.Message)
				}
				if want, ok := causeField[v.Reason]; ok && c.Field != want {
					t.Errorf("cause %s on field %q, want %q", v.Reason, c.Field, want)
				}
			}
			var causes []string
			for _, c := range resp.Result.Details.Causes {
				causes = append(causes, string(c.Type))
			}
			for _, r := range tc.want {
				if !slices.Contains(causes, r) {
					t.Errorf("causes %v lack %s", causes, r)
				}
			}
			if got := count(t, reg, opValidate, resultDenied, d.Reason); got != 1 {
				t.Errorf("nodecsr_admission_total{validate,denied,%s} = %d, want 1", d.Reason, got)
			}
		})
	}
}

// causeField is the CSR field each reason's rule judges.
var causeField = map[string]string{
	approver.ReasonRequestTooLarge:            "spec.request",
	approver.ReasonMalformedRequest:           "spec.request",
	approver.ReasonKeyAlgorithmNotAllowed:     "spec.request",
	approver.ReasonKeyCurveNotAllowed:         "spec.request",
	approver.ReasonKeySizeNotAllowed:          "spec.request",
	approver.ReasonInvalidSignature:           "spec.request",
	approver.ReasonInvalidCommonName:          "spec.request",
	approver.ReasonInvalidNodeName:            "spec.request",
	approver.ReasonRequesterMismatch:          "spec.username",
	approver.ReasonUnrecognizedRequester:      "spec.username",
	approver.ReasonBootstrapDisabled:          "spec.username",
	approver.ReasonInvalidOrganization:        "spec.request",
	approver.ReasonExtraSubjectAttributes:     "spec.request",
	approver.ReasonSANsNotAllowed:             "spec.request",
	approver.ReasonUnexpectedExtensions:       "spec.request",
	approver.ReasonInvalidUsages:              "spec.usages",
	approver.ReasonKeyEnciphermentRequiresRSA: "spec.usages",
	approver.ReasonLifetimeTooLong:            "spec.expirationSeconds",
	approver.ReasonNodeNameDenied:             "spec.request",
	approver.ReasonNodeNameNotAllowed:         "spec.request",
	approver.ReasonTokenNotBound:              "spec.username",
	approver.ReasonTokenNotBoundToName:        "spec.username",
	approver.ReasonNodeAlreadyExists:          "spec.request",
}

// The requester is the one the API server authenticated, not whatever the
// client wrote into spec.username.
func TestValidateTakesTheRequesterFromUserInfo(t *testing.T) {
	hs, _ := testHandlers(t, config.Default(), nil)
	csr := csrtest.Build() // spec says system:node:worker-1
	resp := hs.validate.Handle(t.Context(), createRequest(t, csr, authenticationv1.UserInfo{Username: "alice", Groups: []string{"system:authenticated"}}))
	if resp.Allowed || !strings.Contains(resp.Result.Message, approver.ReasonUnrecognizedRequester) {
		t.Fatalf("want UnrecognizedRequester for alice, got allowed=%v %v", resp.Allowed, resp.Result)
	}
	// And a status the client sent (pre-approved) is ignored, as the API
	// server clears it.
	csr = csrtest.Build(csrtest.WithCondition(certificatesv1.CertificateApproved), csrtest.WithUsages(serverAuth...))
	resp = hs.validate.Handle(t.Context(), createRequest(t, csr, userOf(csr)))
	if resp.Allowed {
		t.Fatal("a client-supplied Approved condition made the CSR look already decided")
	}
}

func TestValidateModes(t *testing.T) {
	bad := []csrtest.Option{csrtest.WithUsages(serverAuth...), csrtest.WithDNSSAN("x.example.com")}
	tests := map[string]struct {
		policy     func(*config.Spec)
		wantPrefix string
	}{
		"DryRun":       {policy: func(s *config.Spec) { s.Mode = config.ModeDryRun }, wantPrefix: "nodecsr (policy mode DryRun) would reject this CSR: "},
		"LeavePending": {policy: func(s *config.Spec) { s.OnViolation = config.ViolationLeavePending }, wantPrefix: "nodecsr will leave this CSR pending"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			hs, reg := testHandlers(t, newPolicy(t, tc.policy), nil)
			csr := csrtest.Build(bad...)
			resp := hs.validate.Handle(t.Context(), createRequest(t, csr, userOf(csr)))
			if !resp.Allowed {
				t.Fatalf("rejected in %s: %s", name, resp.Result.Message)
			}
			if len(resp.Warnings) != 2 {
				t.Fatalf("warnings %q, want one per violation (2)", resp.Warnings)
			}
			joined := strings.Join(resp.Warnings, "\n")
			if missing := containsAll(joined, tc.wantPrefix, approver.ReasonSANsNotAllowed, approver.ReasonInvalidUsages); len(missing) > 0 {
				t.Errorf("warnings lack %v:\n%s", missing, joined)
			}
			if got := count(t, reg, opValidate, resultWarned, approver.ReasonSANsNotAllowed); got != 1 {
				t.Errorf("warned count = %d, want 1", got)
			}
		})
	}
}

func TestValidateLeavesOtherRequestsAlone(t *testing.T) {
	hs, reg := testHandlers(t, config.Default(), nil)
	// Another signer, however broken, is not ours.
	csr := csrtest.Build(csrtest.WithSignerName("example.com/other"), csrtest.NotPEM(), csrtest.WithUsages(serverAuth...))
	resp := hs.validate.Handle(t.Context(), createRequest(t, csr, userOf(csr)))
	if !resp.Allowed || len(resp.Warnings) > 0 {
		t.Fatalf("another signer's CSR: allowed=%v warnings=%q", resp.Allowed, resp.Warnings)
	}
	if got := count(t, reg, opValidate, resultAllowed, approver.ReasonNotKubeletClientSigner); got != 1 {
		t.Errorf("count = %d, want 1", got)
	}
	// Not a CREATE.
	req := createRequest(t, csrtest.Build(csrtest.NotPEM()), authenticationv1.UserInfo{})
	req.Operation = admissionv1.Update
	if resp := hs.validate.Handle(t.Context(), req); !resp.Allowed {
		t.Fatalf("an UPDATE was rejected: %v", resp.Result)
	}
}

func TestHandlersSurviveGarbage(t *testing.T) {
	hs, _ := testHandlers(t, config.Default(), func(o *Options) { o.Self = "system:serviceaccount:nodecsr:nodecsr" })
	guardOn := newPolicy(t, func(s *config.Spec) { s.ApprovalGuard.Mode = config.GuardEnforce })
	hs.approval.policy = constPolicy(guardOn)
	huge := append(append([]byte(`{"apiVersion":"certificates.k8s.io/v1","kind":"CertificateSigningRequest","spec":{"signerName":"kubernetes.io/kube-apiserver-client-kubelet","request":"`),
		bytes.Repeat([]byte("QUFB"), 1<<20)...), []byte(`"}}`)...)
	objects := map[string][]byte{
		"empty":              nil,
		"not JSON":           []byte("\x00\xff{{{"),
		"JSON array":         []byte(`[1,2,3]`),
		"wrong types":        []byte(`{"spec":{"request":12,"usages":"x","expirationSeconds":"soon"}}`),
		"bad base64":         []byte(`{"spec":{"signerName":"kubernetes.io/kube-apiserver-client-kubelet","request":"!!!"}}`),
		"other apiVersion":   []byte(`{"apiVersion":"v1","kind":"Pod"}`),
		"deeply nested":      append(bytes.Repeat([]byte(`{"a":`), 100000), bytes.Repeat([]byte(`}`), 100000)...),
		"huge request bytes": huge,
		"null metadata":      []byte(`{"metadata":null,"spec":{"signerName":"kubernetes.io/kube-apiserver-client-kubelet"}}`),
	}
	for name, raw := range objects {
		t.Run(name, func(t *testing.T) {
			req := admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
				UID: "x", Operation: admissionv1.Create, Resource: csrResource, Object: runtime.RawExtension{Raw: raw},
			}}
			v := hs.validate.Handle(t.Context(), req)
			if v.Allowed && v.Result != nil && v.Result.Code >= 400 {
				t.Errorf("validate: allowed with an error code %d", v.Result.Code)
			}
			m := hs.mutate.Handle(t.Context(), req)
			if !m.Allowed {
				t.Errorf("mutate failed the request: %v", m.Result)
			}
			req.Operation, req.SubResource, req.OldObject = admissionv1.Update, "approval", runtime.RawExtension{Raw: raw}
			_ = hs.approval.Handle(t.Context(), req) // must not panic
		})
	}
	// A decode error is a clean 400 from the validator.
	resp := hs.validate.Handle(t.Context(), admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: []byte("nope")},
	}})
	if resp.Allowed || resp.Result.Code != http.StatusBadRequest {
		t.Errorf("garbage: allowed=%v code=%d, want a 400 error", resp.Allowed, resp.Result.Code)
	}
}

func ptr[T any](v T) *T { return &v }

type panickingNodes struct{}

func (panickingNodes) NodeExists(context.Context, string) (bool, error) { panic("boom") }

// A failing handler admits, as a webhook that is down would: the approver
// is the boundary.
func TestValidatePanicAdmits(t *testing.T) {
	hs, reg := testHandlers(t, config.Default(), func(o *Options) { o.Facts = gatherer(panickingNodes{}) })
	csr := csrtest.Build(csrtest.WithUsages(serverAuth...))
	resp := hs.validate.Handle(t.Context(), createRequest(t, csr, userOf(csr)))
	if !resp.Allowed {
		t.Fatalf("a panic rejected the request: %v", resp.Result)
	}
	if got := count(t, reg, opValidate, resultError, reasonPanic); got != 1 {
		t.Errorf("panic count = %d, want 1", got)
	}
}

// Options without a policy are refused: there is no fallback policy.
func TestOptionsRequireAPolicy(t *testing.T) {
	if _, err := newHandlers(Options{}); err == nil || !strings.Contains(err.Error(), "Policy is required") {
		t.Errorf("newHandlers without a Policy: %v", err)
	}
}
