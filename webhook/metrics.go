package webhook

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// Values of the operation label of nodecsr_admission_total.
const (
	opValidate = "validate"
	opMutate   = "mutate"
	opApproval = "approval"
)

// Values of the result label of nodecsr_admission_total.
const (
	resultAllowed = "allowed"
	resultDenied  = "denied"
	resultWarned  = "warned"
	resultPatched = "patched"
	resultError   = "error"
)

// Values of the reason label besides approver reason codes.
const (
	reasonNotCreate        = "NotCreate"
	reasonDecodeError      = "DecodeError"
	reasonPanic            = "Panic"
	reasonPatchError       = "PatchError"
	reasonExpirationCapped = "ExpirationCapped"
	reasonExpirationSet    = "ExpirationDefaulted"
	reasonAnnotated        = "Annotated"
	reasonUnchanged        = "Unchanged"
	reasonGuardOff         = "GuardOff"
	reasonNotApproval      = "NotAnApproval"
	reasonSelf             = "Self"
	reasonAllowedUser      = "AllowedUser"
	reasonAllowedGroup     = "AllowedGroup"
	reasonApproverNotAllow = "ApproverNotAllowed"
)

type metrics struct {
	admissions *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nodecsr_admission_total",
		Help: "Admission requests handled by nodecsr's webhooks, by operation (validate, mutate, approval), " +
			"result (allowed, denied, warned, patched, error) and reason (a reason code, or what was done).",
	}, []string{"operation", "result", "reason"})}
	if reg == nil {
		return m, nil
	}
	if err := reg.Register(m.admissions); err != nil {
		return nil, fmt.Errorf("failed to register nodecsr_admission_total: %w", err)
	}
	return m, nil
}

func (m *metrics) inc(op, result, reason string) {
	m.admissions.WithLabelValues(op, result, reason).Inc()
}

// admitOnPanic, deferred by a handler, turns a panic into an admission:
// like a webhook that is down, a handler that fails must not stop nodes
// from getting certificates (controller-runtime's own recovery would
// answer with an error, which the API server takes as a rejection).
func (m *metrics) admitOnPanic(ctx context.Context, op string, resp *admission.Response) {
	r := recover()
	if r == nil {
		return
	}
	m.inc(op, resultError, reasonPanic)
	log.FromContext(ctx).Error(fmt.Errorf("panic: %v", r), "Recovered from a panic in an admission handler; admitting the request", "operation", op)
	*resp = admission.Allowed("")
}
