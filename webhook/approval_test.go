package webhook

import (
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
)

const self = "system:serviceaccount:nodecsr:nodecsr"

func withDecision(csr *certificatesv1.CertificateSigningRequest, t certificatesv1.RequestConditionType, reason string) *certificatesv1.CertificateSigningRequest {
	out := csr.DeepCopy()
	out.Status.Conditions = append(out.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
		Type: t, Status: corev1.ConditionTrue, Reason: reason, Message: "by hand", LastUpdateTime: metav1.Now(),
	})
	return out
}

func TestApprovalGuard(t *testing.T) {
	guard := func(mode config.GuardMode) func(*config.Spec) {
		return func(s *config.Spec) {
			s.ApprovalGuard = config.ApprovalGuard{Mode: mode, AllowedUsers: []string{"alice"}, AllowedGroups: []string{"csr-approvers"}}
		}
	}
	users := map[string]struct {
		user    authenticationv1.UserInfo
		allowed bool
		reason  string
	}{
		"self":          {user: authenticationv1.UserInfo{Username: self, Groups: []string{"system:serviceaccounts"}}, allowed: true, reason: reasonSelf},
		"allowed user":  {user: authenticationv1.UserInfo{Username: "alice"}, allowed: true, reason: reasonAllowedUser},
		"allowed group": {user: authenticationv1.UserInfo{Username: "bob", Groups: []string{"system:authenticated", "csr-approvers"}}, allowed: true, reason: reasonAllowedGroup},
		"someone else":  {user: authenticationv1.UserInfo{Username: "mallory", Groups: []string{"system:authenticated"}}, reason: reasonApproverNotAllow},
		// The default break-glass group is replaced by the explicit list.
		"system:masters when not listed": {user: authenticationv1.UserInfo{Username: "admin", Groups: []string{"system:masters"}}, reason: reasonApproverNotAllow},
	}
	pending := csrtest.Build()
	for _, mode := range []config.GuardMode{config.GuardOff, config.GuardWarn, config.GuardEnforce} {
		for name, u := range users {
			t.Run(string(mode)+"/"+name, func(t *testing.T) {
				events := &fakeEvents{ch: make(chan recordedEvent, 1)}
				hs, reg := testHandlers(t, newPolicy(t, guard(mode)), func(o *Options) { o.Self = self; o.Events = events })
				resp := hs.approval.Handle(t.Context(), approvalRequest(t, pending, withDecision(pending, certificatesv1.CertificateApproved, "Manual"), u.user))

				wantEvent := ""
				switch {
				case mode == config.GuardOff:
					assertAllowed(t, resp.Allowed, resp.Warnings, "")
					if got := count(t, reg, opApproval, resultAllowed, reasonGuardOff); got != 1 {
						t.Errorf("GuardOff count = %d", got)
					}
				case u.allowed:
					assertAllowed(t, resp.Allowed, resp.Warnings, "")
					if got := count(t, reg, opApproval, resultAllowed, u.reason); got != 1 {
						t.Errorf("allowed/%s count = %d", u.reason, got)
					}
				case mode == config.GuardWarn:
					assertAllowed(t, resp.Allowed, resp.Warnings, "nodecsr approval guard (mode Warn): user \""+u.user.Username+"\" may not approve")
					if got := count(t, reg, opApproval, resultWarned, u.reason); got != 1 {
						t.Errorf("warned count = %d", got)
					}
					wantEvent = "Warned"
				default:
					if resp.Allowed {
						t.Fatalf("Enforce admitted an approval by %s", u.user.Username)
					}
					if resp.Result.Code != 403 {
						t.Errorf("code %d, want 403", resp.Result.Code)
					}
					if missing := containsAll(resp.Result.Message, `user "`+u.user.Username+`" may not approve`, `users ["alice"]`, `members of ["csr-approvers"]`); len(missing) > 0 {
						t.Errorf("message lacks %q: %s", missing, resp.Result.Message)
					}
					if got := count(t, reg, opApproval, resultDenied, u.reason); got != 1 {
						t.Errorf("denied count = %d", got)
					}
					wantEvent = "Rejected"
				}
				if wantEvent == "" {
					select {
					case ev := <-events.ch:
						t.Errorf("unexpected Event %+v", ev)
					case <-time.After(20 * time.Millisecond):
					}
					return
				}
				select {
				case ev := <-events.ch:
					if ev.name != pending.Name || ev.eventType != corev1.EventTypeWarning || ev.reason != EventReasonApprovalNotAllowed || ev.action != wantEvent {
						t.Errorf("Event %+v, want a Warning %s/%s on %s", ev, EventReasonApprovalNotAllowed, wantEvent, pending.Name)
					}
				case <-time.After(10 * time.Second):
					t.Error("no Event recorded")
				}
			})
		}
	}
}

func assertAllowed(t *testing.T, allowed bool, warnings []string, wantWarning string) {
	t.Helper()
	if !allowed {
		t.Fatal("rejected")
	}
	switch {
	case wantWarning == "" && len(warnings) > 0:
		t.Errorf("unexpected warnings %q", warnings)
	case wantWarning != "" && (len(warnings) != 1 || !strings.HasPrefix(warnings[0], wantWarning)):
		t.Errorf("warnings %q, want one starting %q", warnings, wantWarning)
	}
}

func TestApprovalGuardOnlyGuardsNewApprovals(t *testing.T) {
	p := newPolicy(t, func(s *config.Spec) { s.ApprovalGuard.Mode = config.GuardEnforce })
	hs, reg := testHandlers(t, p, nil)
	mallory := authenticationv1.UserInfo{Username: "mallory"}
	pending := csrtest.Build()
	approved := withDecision(pending, certificatesv1.CertificateApproved, "Manual")

	tests := map[string]struct {
		old, cur *certificatesv1.CertificateSigningRequest
		mutate   func(*certificatesv1.CertificateSigningRequest)
		allowed  bool
		reason   string
	}{
		"a denial":                      {old: pending, cur: withDecision(pending, certificatesv1.CertificateDenied, "Manual"), allowed: true, reason: reasonNotApproval},
		"an approval re-sent unchanged": {old: approved, cur: approved, allowed: true, reason: reasonNotApproval},
		"an approval re-sent without a timestamp": {old: approved, cur: approved, mutate: func(c *certificatesv1.CertificateSigningRequest) {
			c.Status.Conditions[0].LastUpdateTime = metav1.Time{}
		}, allowed: true, reason: reasonNotApproval},
		"an approval with a changed message": {old: approved, cur: approved, mutate: func(c *certificatesv1.CertificateSigningRequest) {
			c.Status.Conditions[0].Message = "changed"
		}, reason: reasonApproverNotAllow},
		"an approval": {old: pending, cur: approved, reason: reasonApproverNotAllow},
		"another signer's approval": {
			old: csrtest.Build(csrtest.WithSignerName("example.com/x")), cur: withDecision(csrtest.Build(csrtest.WithSignerName("example.com/x")), certificatesv1.CertificateApproved, "M"),
			allowed: true, reason: "NotKubeletClientSigner",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cur := tc.cur.DeepCopy()
			if tc.mutate != nil {
				tc.mutate(cur)
			}
			before := count(t, reg, opApproval, map[bool]string{true: resultAllowed, false: resultDenied}[tc.allowed], tc.reason)
			resp := hs.approval.Handle(t.Context(), approvalRequest(t, tc.old, cur, mallory))
			if resp.Allowed != tc.allowed {
				t.Fatalf("allowed = %v, want %v (%v)", resp.Allowed, tc.allowed, resp.Result)
			}
			after := count(t, reg, opApproval, map[bool]string{true: resultAllowed, false: resultDenied}[tc.allowed], tc.reason)
			if after != before+1 {
				t.Errorf("metric reason %s not counted", tc.reason)
			}
		})
	}

	// Not the approval subresource.
	req := approvalRequest(t, pending, approved, mallory)
	req.SubResource = "status"
	if resp := hs.approval.Handle(t.Context(), req); !resp.Allowed {
		t.Errorf("a status update was rejected: %v", resp.Result)
	}
	// A dry-run rejection records no Event.
	events := &fakeEvents{ch: make(chan recordedEvent, 1)}
	hs.approval.events = events
	req = approvalRequest(t, pending, approved, mallory)
	req.DryRun = ptr(true)
	if resp := hs.approval.Handle(t.Context(), req); resp.Allowed {
		t.Error("a dry-run approval by mallory was admitted")
	}
	select {
	case ev := <-events.ch:
		t.Errorf("Event recorded for a dry run: %+v", ev)
	case <-time.After(20 * time.Millisecond):
	}
}
