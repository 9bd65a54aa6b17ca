package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/config"
)

// mutator labels and annotates a kubelet client CSR on CREATE and caps or
// defaults its spec.expirationSeconds. It never fails a request: whatever
// goes wrong, the CSR is admitted unchanged (or with what could be
// computed) and the validating webhook and the approver have their say.
type mutator struct {
	policy  func() *config.Effective
	metrics *metrics
}

var _ admission.Handler = (*mutator)(nil)

// Handle implements admission.Handler.
func (m *mutator) Handle(ctx context.Context, req admission.Request) (resp admission.Response) {
	defer m.metrics.admitOnPanic(ctx, opMutate, &resp)
	if req.Operation != admissionv1.Create {
		m.metrics.inc(opMutate, resultAllowed, reasonNotCreate)
		return admission.Allowed("")
	}
	p := m.policy()
	orig, resp, ok := m.metrics.kubeletCSR(ctx, opMutate, req.Object, true, p)
	if !ok {
		return resp
	}
	stored := orig.DeepCopy()
	asStored(stored, &req.UserInfo)
	// Only what the request itself says is needed here: no decision.
	r := approver.Inspect(p, stored)

	mutated := orig.DeepCopy()
	setEntry(&mutated.Labels, LabelNodeName, nodeLabelValue(r.NodeName))
	setEntry(&mutated.Annotations, AnnotationKeyAlgorithm, r.KeyAlgorithm)
	setEntry(&mutated.Annotations, AnnotationPublicKeySHA256, r.PublicKeySHA256)
	reason := reasonAnnotated

	var warning string
	if exp, changed, why := expiration(p, orig.Spec.ExpirationSeconds); changed {
		if p.Mode == config.ModeDryRun {
			warning = fmt.Sprintf("nodecsr (policy mode DryRun) would %s", why)
		} else {
			reason = reasonExpirationCapped
			if orig.Spec.ExpirationSeconds == nil {
				reason = reasonExpirationSet
			}
			mutated.Spec.ExpirationSeconds = &exp
		}
	}

	resp = admission.Allowed("")
	if equality.Semantic.DeepEqual(orig, mutated) {
		m.metrics.inc(opMutate, resultAllowed, reasonUnchanged)
		return resp.WithWarnings(optional(warning)...)
	}
	raw, err := json.Marshal(mutated)
	if err != nil {
		m.metrics.inc(opMutate, resultError, reasonPatchError)
		log.FromContext(ctx).Error(err, "Failed to encode the patched CSR; admitting it unchanged")
		return resp.WithWarnings(optional(warning)...)
	}
	resp = admission.PatchResponseFromRaw(req.Object.Raw, raw)
	if resp.Result != nil && resp.Result.Code != http.StatusOK {
		m.metrics.inc(opMutate, resultError, reasonPatchError)
		log.FromContext(ctx).Error(errors.New(resp.Result.Message), "Failed to compute the patch; admitting the CSR unchanged")
		return admission.Allowed("").WithWarnings(optional(warning)...)
	}
	m.metrics.inc(opMutate, resultPatched, reason)
	return resp.WithWarnings(optional(warning)...)
}

// optional is w as a list of warnings, empty when w is.
func optional(w string) []string {
	if w == "" {
		return nil
	}
	return []string{w}
}

// setEntry makes the map hold key=value, or not hold key when value is
// empty: keys nodecsr owns are never left with a client-supplied value.
func setEntry(m *map[string]string, key, value string) {
	switch {
	case value == "":
		delete(*m, key)
	case *m == nil:
		*m = map[string]string{key: value}
	default:
		(*m)[key] = value
	}
}

// expiration returns the expirationSeconds the policy wants, whether it
// differs from the requested one, and what the change is, in words.
func expiration(p *config.Effective, requested *int32) (int32, bool, string) {
	lt := p.Lifetime
	switch {
	case requested == nil && lt.DefaultExpirationSeconds > 0:
		d := lt.DefaultExpirationSeconds
		return d, true, "set spec.expirationSeconds to lifetime.defaultExpirationSeconds (" + strconv.Itoa(int(d)) + ")"
	case requested != nil && lt.MaxExpirationSeconds > 0 && *requested > lt.MaxExpirationSeconds:
		return lt.MaxExpirationSeconds, true, fmt.Sprintf("cap spec.expirationSeconds from %d to lifetime.maxExpirationSeconds (%d)", *requested, lt.MaxExpirationSeconds)
	}
	return 0, false, ""
}

// nodeLabelValue is the node name when it can be a label value (node names
// may be up to 253 characters, label values only 63), else "".
func nodeLabelValue(name string) string {
	if name == "" || len(validation.IsValidLabelValue(name)) > 0 {
		return ""
	}
	return name
}
