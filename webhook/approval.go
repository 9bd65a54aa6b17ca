package webhook

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/text"
)

// Asynchronous Events are bounded: at most this many in flight (more are
// dropped and logged), each with this timeout.
const (
	maxPendingEvents = 32
	eventTimeout     = 10 * time.Second
)

// approvalGuard guards the approval subresource of kubelet client CSRs. An
// update that adds an Approved condition (or changes one) by someone who is
// neither nodecsr itself nor in spec.approvalGuard.allowedUsers or
// allowedGroups is admitted with a warning (Warn) or rejected (Enforce).
//
// Only approvals are guarded. A denial never grants a credential, and
// blocking one could stop an operator from stopping an attack; a kubelet
// whose request was denied files a new one.
type approvalGuard struct {
	policy     func() *config.Effective
	self       string
	events     EventRecorder
	metrics    *metrics
	eventSlots chan struct{}
}

var _ admission.Handler = (*approvalGuard)(nil)

// Handle implements admission.Handler.
func (g *approvalGuard) Handle(ctx context.Context, req admission.Request) (resp admission.Response) {
	defer g.metrics.admitOnPanic(ctx, opApproval, &resp)
	p := g.policy()
	guard := p.Guard
	if guard.Mode == config.GuardOff {
		g.metrics.inc(opApproval, resultAllowed, reasonGuardOff)
		return admission.Allowed("")
	}
	if req.Operation != admissionv1.Update || req.SubResource != "approval" {
		g.metrics.inc(opApproval, resultAllowed, reasonNotApproval)
		return admission.Allowed("")
	}
	csr, resp, ok := g.metrics.kubeletCSR(ctx, opApproval, req.Object, false, p)
	if !ok {
		return resp
	}
	old, err := decodeCSR(req.OldObject)
	if err != nil {
		g.metrics.inc(opApproval, resultError, reasonDecodeError)
		log.FromContext(ctx).Error(err, "Failed to decode the admission request's old object")
		return admission.Errored(http.StatusBadRequest, err)
	}
	if !approves(old, csr) {
		g.metrics.inc(opApproval, resultAllowed, reasonNotApproval)
		return admission.Allowed("")
	}
	if why := allowedApprover(g.self, &guard, req.UserInfo.Username, req.UserInfo.Groups); why != "" {
		g.metrics.inc(opApproval, resultAllowed, why)
		return admission.Allowed("")
	}

	msg := notAllowedMessage(req.UserInfo.Username, csr, &guard)
	l := log.FromContext(ctx).WithValues("csr", csr.Name, "approver", req.UserInfo.Username, "mode", guard.Mode)
	dryRun := req.DryRun != nil && *req.DryRun
	if guard.Mode == config.GuardEnforce {
		g.metrics.inc(opApproval, resultDenied, reasonApproverNotAllow)
		l.Info("Rejected an approval by someone the approval guard does not allow")
		if !dryRun {
			g.record(ctx, csr, "Rejected", "rejected: "+msg)
		}
		return admission.Denied(msg)
	}
	g.metrics.inc(opApproval, resultWarned, reasonApproverNotAllow)
	l.Info("Admitted an approval by someone the approval guard does not allow (mode Warn)")
	if !dryRun {
		g.record(ctx, csr, "Warned", "admitted with a warning: "+msg)
	}
	return admission.Allowed("").WithWarnings("nodecsr approval guard (mode Warn): " + msg)
}

// approves reports whether the update adds a True Approved condition that
// the old object did not have (same type, status, reason and message;
// timestamps are ignored, the API server fills them in).
func approves(old, cur *certificatesv1.CertificateSigningRequest) bool {
	for _, c := range cur.Status.Conditions {
		if c.Type != certificatesv1.CertificateApproved || c.Status != corev1.ConditionTrue {
			continue
		}
		seen := slices.ContainsFunc(old.Status.Conditions, func(o certificatesv1.CertificateSigningRequestCondition) bool {
			return o.Type == c.Type && o.Status == c.Status && o.Reason == c.Reason && o.Message == c.Message
		})
		if !seen {
			return true
		}
	}
	return false
}

// allowedApprover returns why the user may approve (a metric reason), or ""
// when the user may not.
func allowedApprover(self string, g *config.GuardRules, user string, groups []string) string {
	switch {
	case self != "" && user == self:
		return reasonSelf
	case slices.Contains(g.AllowedUsers, user):
		return reasonAllowedUser
	}
	for _, grp := range groups {
		if slices.Contains(g.AllowedGroups, grp) {
			return reasonAllowedGroup
		}
	}
	return ""
}

func notAllowedMessage(user string, csr *certificatesv1.CertificateSigningRequest, g *config.GuardRules) string {
	var b strings.Builder
	b.WriteString("user ")
	b.WriteString(strconv.QuoteToASCII(truncate(user)))
	b.WriteString(" may not approve " + kind(csr) + " certificate requests (signer ")
	b.WriteString(csr.Spec.SignerName)
	b.WriteString("): nodecsr decides them; only nodecsr")
	if len(g.AllowedUsers) > 0 {
		b.WriteString(", users ")
		b.WriteString(list(g.AllowedUsers))
	}
	if len(g.AllowedGroups) > 0 {
		b.WriteString(", members of ")
		b.WriteString(list(g.AllowedGroups))
	}
	b.WriteString(" may approve them by hand (spec.approvalGuard of the nodecsr policy)")
	return b.String()
}

// list quotes at most five items.
func list(items []string) string {
	parts := make([]string, 0, min(len(items), 6))
	for i, s := range items {
		if i == 5 {
			parts = append(parts, "… "+strconv.Itoa(len(items))+" in all")
			break
		}
		parts = append(parts, strconv.QuoteToASCII(truncate(s)))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// truncate bounds a value taken from a request for a message.
func truncate(s string) string { return text.Truncate(s, 64) }

// record writes a Warning Event on the CSR, asynchronously: the admission
// answer does not wait for the API server to store an Event.
func (g *approvalGuard) record(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, action, note string) {
	if g.events == nil {
		return
	}
	l := log.FromContext(ctx)
	select {
	case g.eventSlots <- struct{}{}:
	default:
		l.Info("Dropped an approval guard Event: too many in flight")
		return
	}
	ctx = context.WithoutCancel(ctx)
	go func() {
		defer func() { <-g.eventSlots }()
		ctx, cancel := context.WithTimeout(ctx, eventTimeout)
		defer cancel()
		if err := g.events.Event(ctx, csr, "CertificateSigningRequest", certificatesv1.SchemeGroupVersion.String(),
			corev1.EventTypeWarning, EventReasonApprovalNotAllowed, action, note); err != nil {
			l.Error(err, "Failed to record the approval guard Event")
		}
	}()
}
