package webhook

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/config"
)

// kubeletCSR is the opening every handler shares: decode obj and keep it
// only when it is a kubelet client CSR, or a kubelet serving CSR while the
// policy p enables serving. Otherwise ok is false and resp is the answer:
// allowed for another signer; for an object that does not decode, allowed
// (failOpen, the mutating webhook) or a 400.
func (m *metrics) kubeletCSR(ctx context.Context, op string, obj runtime.RawExtension, failOpen bool, p *config.Effective) (csr *certificatesv1.CertificateSigningRequest, resp admission.Response, ok bool) {
	csr, err := decodeCSR(obj)
	switch {
	case err != nil && failOpen:
		m.inc(op, resultError, reasonDecodeError)
		log.FromContext(ctx).Error(err, "Failed to decode the admission request; admitting it unchanged")
		return nil, admission.Allowed(""), false
	case err != nil:
		m.inc(op, resultError, reasonDecodeError)
		log.FromContext(ctx).Error(err, "Failed to decode the admission request")
		return nil, admission.Errored(http.StatusBadRequest, err), false
	case !decides(p, csr.Spec.SignerName):
		m.inc(op, resultAllowed, approver.ReasonNotKubeletClientSigner)
		return nil, admission.Allowed(""), false
	}
	return csr, admission.Response{}, true
}

// decides reports whether nodecsr decides CSRs of signer under policy p.
func decides(p *config.Effective, signer string) bool {
	switch approver.SignerOf(signer) {
	case approver.SignerClient:
		return true
	case approver.SignerServing:
		return p.Serving.Enabled
	}
	return false
}

// kind names the kind of CSR for messages.
func kind(csr *certificatesv1.CertificateSigningRequest) string {
	if approver.SignerOf(csr.Spec.SignerName) == approver.SignerServing {
		return "kubelet serving"
	}
	return "kubelet client"
}

// decodeCSR decodes a CertificateSigningRequest from an admission request's
// object. It uses the API machinery's case-sensitive JSON decoder directly
// (no scheme, no conversion): the API server sends certificates.k8s.io/v1,
// the only version it serves.
func decodeCSR(obj runtime.RawExtension) (*certificatesv1.CertificateSigningRequest, error) {
	if len(obj.Raw) == 0 {
		return nil, errors.New("the admission request carries no object")
	}
	csr := &certificatesv1.CertificateSigningRequest{}
	if err := json.Unmarshal(obj.Raw, csr); err != nil {
		return nil, fmt.Errorf("failed to decode the CertificateSigningRequest: %w", err)
	}
	if csr.APIVersion != "" && csr.APIVersion != certificatesv1.SchemeGroupVersion.String() {
		return nil, fmt.Errorf("unexpected apiVersion %.64q, want %s", csr.APIVersion, certificatesv1.SchemeGroupVersion)
	}
	return csr, nil
}

// asStored turns a CSR being created into the CSR the API server will store:
// on CREATE it replaces spec.username, uid, groups and extra with the
// requester's identity and clears the status (the registry's
// PrepareForCreate). Mutating admission runs before that, validating
// admission after, so both see the same requester this way.
func asStored(csr *certificatesv1.CertificateSigningRequest, user *authenticationv1.UserInfo) {
	csr.Spec.Username = user.Username
	csr.Spec.UID = user.UID
	csr.Spec.Groups = user.Groups
	csr.Spec.Extra = nil
	if len(user.Extra) > 0 {
		csr.Spec.Extra = make(map[string]certificatesv1.ExtraValue, len(user.Extra))
		for k, v := range user.Extra {
			csr.Spec.Extra[k] = certificatesv1.ExtraValue(v)
		}
	}
	csr.Status = certificatesv1.CertificateSigningRequestStatus{}
}
