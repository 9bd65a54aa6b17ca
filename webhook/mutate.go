package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
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
	csr, err := decodeCSR(req.Object)
	if err != nil {
		m.metrics.inc(opMutate, resultError, reasonDecodeError)
		log.FromContext(ctx).Error(err, "Failed to decode the admission request; admitting it unchanged")
		return admission.Allowed("")
	}
	if csr.Spec.SignerName != approver.KubeletClientSigner {
		m.metrics.inc(opMutate, resultAllowed, approver.ReasonNotKubeletClientSigner)
		return admission.Allowed("")
	}
	asStored(csr, &req.UserInfo)
	p := m.policy()
	// Only what the request itself says is needed here: no decision.
	d := approver.Inspect(p, csr)

	var ps patchSet
	ps.setEntries("/metadata/labels", csr.Labels, entry{LabelNodeName, nodeLabelValue(d.NodeName)})
	ps.setEntries("/metadata/annotations", csr.Annotations,
		entry{AnnotationKeyAlgorithm, d.KeyAlgorithm}, entry{AnnotationPublicKeySHA256, d.PublicKeySHA256})
	reason := reasonAnnotated

	var warning string
	if exp, changed, why := expiration(p, csr.Spec.ExpirationSeconds); changed {
		if p.Mode == config.ModeDryRun {
			warning = fmt.Sprintf("nodecsr (policy mode DryRun) would %s", why)
		} else {
			op := "replace"
			reason = reasonExpirationCapped
			if csr.Spec.ExpirationSeconds == nil {
				op, reason = "add", reasonExpirationSet
			}
			ps.ops = append(ps.ops, patchOp{Op: op, Path: "/spec/expirationSeconds", Value: exp})
		}
	}

	resp = admission.Allowed("")
	if warning != "" {
		resp = resp.WithWarnings(warning)
	}
	if len(ps.ops) == 0 {
		m.metrics.inc(opMutate, resultAllowed, reasonUnchanged)
		return resp
	}
	patch, err := json.Marshal(ps.ops)
	if err != nil {
		m.metrics.inc(opMutate, resultError, reasonPatchError)
		log.FromContext(ctx).Error(err, "Failed to encode the patch; admitting the CSR unchanged")
		return resp
	}
	pt := admissionv1.PatchTypeJSONPatch
	resp.Patch, resp.PatchType = patch, &pt
	m.metrics.inc(opMutate, resultPatched, reason)
	return resp
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

// patchOp is one JSON patch (RFC 6902) operation.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

type entry struct{ key, value string }

// patchSet collects JSON patch operations.
type patchSet struct{ ops []patchOp }

// setEntries makes the string map at path (metadata.labels or
// metadata.annotations, currently m) hold each entry's value, or not hold
// the key when the value is empty. Keys nodecsr owns are thus never left
// with a client-supplied value.
func (ps *patchSet) setEntries(path string, m map[string]string, entries ...entry) {
	var add map[string]string // when the map does not exist yet
	for _, e := range entries {
		cur, present := m[e.key]
		switch {
		case e.value == "" && present:
			ps.ops = append(ps.ops, patchOp{Op: "remove", Path: path + "/" + escapeJSONPointer(e.key)})
		case e.value == "" || (present && cur == e.value):
		case m == nil:
			if add == nil {
				add = make(map[string]string, len(entries))
			}
			add[e.key] = e.value
		default:
			// "add" on an existing member replaces it.
			ps.ops = append(ps.ops, patchOp{Op: "add", Path: path + "/" + escapeJSONPointer(e.key), Value: e.value})
		}
	}
	if add != nil {
		ps.ops = append(ps.ops, patchOp{Op: "add", Path: path, Value: add})
	}
}

var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

// escapeJSONPointer escapes a map key for a JSON pointer (RFC 6901):
// nodecsr.io/node-name becomes nodecsr.io~1node-name.
func escapeJSONPointer(key string) string { return pointerEscaper.Replace(key) }
