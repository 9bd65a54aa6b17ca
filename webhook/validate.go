package webhook

import (
	"context"
	"strconv"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/config"
)

// factTimeout bounds the fact gathering: the Node from the cache (it
// answers in microseconds once synced; before that a lookup would wait for
// the sync) and, for a bootstrap request whose Node exists, one Lease read.
// On a timeout the facts are left to the approver.
const factTimeout = 500 * time.Millisecond

// validator rejects, on CREATE, a kubelet client CSR that could never be
// approved: one that approver.Decide denies with the facts known cheaply
// (the CSR itself, the requester, whether the Node exists in the cache and,
// for a bootstrap request whose Node exists, its Lease heartbeat). Facts it
// does not gather (SubjectAccessReview, pending CSRs) and the rate limit are
// left to the approver, so a CSR that could still be approved is always
// admitted.
type validator struct {
	policy  func() *config.Effective
	facts   approver.FactGatherer
	metrics *metrics
}

var _ admission.Handler = (*validator)(nil)

// Handle implements admission.Handler.
func (v *validator) Handle(ctx context.Context, req admission.Request) (resp admission.Response) {
	defer v.metrics.admitOnPanic(ctx, opValidate, &resp)
	if req.Operation != admissionv1.Create {
		v.metrics.inc(opValidate, resultAllowed, reasonNotCreate)
		return admission.Allowed("")
	}
	p := v.policy()
	csr, resp, ok := v.metrics.kubeletCSR(ctx, opValidate, req.Object, false, p)
	if !ok {
		return resp
	}
	asStored(csr, &req.UserInfo)
	r := approver.Inspect(p, csr)
	d := approver.Decide(p, r, approver.Facts{})
	if d.Needs != 0 && v.facts != nil {
		d = approver.Decide(p, r, v.gather(ctx, r, d.Needs))
	}

	switch {
	case len(d.Violations) == 0:
		// Nothing known now rules the CSR out (typically FactsIncomplete:
		// the approver gathers the rest).
		v.metrics.inc(opValidate, resultAllowed, d.Reason)
		return admission.Allowed("")
	case p.Mode == config.ModeDryRun:
		v.metrics.inc(opValidate, resultWarned, d.Reason)
		return admission.Allowed("").WithWarnings(warnings("nodecsr (policy mode DryRun) would reject this CSR: ", &d)...)
	case d.Verdict != approver.Deny:
		// onViolation: LeavePending. Rejecting would be harsher than the
		// approver's own answer (no CSR left to review or approve by hand),
		// so the CSR is admitted and the requester told why it will wait.
		v.metrics.inc(opValidate, resultWarned, d.Reason)
		return admission.Allowed("").WithWarnings(warnings("nodecsr will leave this CSR pending (onViolation: LeavePending): ", &d)...)
	}
	v.metrics.inc(opValidate, resultDenied, d.Reason)
	log.FromContext(ctx).Info("Rejected a "+kind(csr)+" CSR that can never be approved",
		"reason", d.Reason, "violations", len(d.Violations), "requester", csr.Spec.Username, "policy", d.PolicyDigest)
	return denied(kind(csr), &d)
}

// gather collects the cache-only facts; on failure (the cache is not
// synced yet) none, leaving the rules that need them to the approver.
func (v *validator) gather(ctx context.Context, r *approver.Request, need approver.Fact) approver.Facts {
	ctx, cancel := context.WithTimeout(ctx, factTimeout)
	defer cancel()
	facts, err := v.facts.Gather(ctx, r, need)
	if err != nil {
		log.FromContext(ctx).V(1).Info("Cache lookup failed; leaving the facts to the approver", "node", r.NodeName, "error", err.Error())
		return approver.Facts{}
	}
	return facts
}

// denied is a 403 Forbidden admission response whose message names every
// violated rule, reason code and message each, and whose status causes list
// them one by one.
func denied(kind string, d *approver.Decision) admission.Response {
	var b strings.Builder
	n := len(d.Violations)
	b.WriteString("this " + kind + " CSR can never be approved: it breaks ")
	b.WriteString(strconv.Itoa(n))
	if n == 1 {
		b.WriteString(" rule of nodecsr policy ")
	} else {
		b.WriteString(" rules of nodecsr policy ")
	}
	b.WriteString(d.PolicyDigest)
	causes := make([]metav1.StatusCause, 0, n)
	for _, v := range d.Violations {
		if len(causes) == 0 {
			b.WriteString(": (1) ")
		} else {
			b.WriteString("; (")
			b.WriteString(strconv.Itoa(len(causes) + 1))
			b.WriteString(") ")
		}
		b.WriteString(v.Reason)
		b.WriteString(": ")
		b.WriteString(v.Message)
		causes = append(causes, metav1.StatusCause{Type: metav1.CauseType(v.Reason), Message: v.Message, Field: v.Field})
	}
	resp := admission.Denied(b.String())
	resp.Result.Details = &metav1.StatusDetails{
		Group: "certificates.k8s.io", Kind: "certificatesigningrequests", Causes: causes,
	}
	return resp
}

// warnings turns each violation into one admission warning.
func warnings(prefix string, d *approver.Decision) []string {
	out := make([]string, 0, len(d.Violations))
	for _, v := range d.Violations {
		out = append(out, prefix+v.Reason+": "+v.Message)
	}
	return out
}
