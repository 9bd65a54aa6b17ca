// Package webhook holds nodecsr's admission webhooks for kubelet client
// CertificateSigningRequests (signer kubernetes.io/kube-apiserver-client-kubelet):
//
//   - the mutating webhook (PathMutate, on CREATE) labels a CSR with the node
//     name it claims, annotates its key algorithm and public-key hash, and caps
//     or defaults spec.expirationSeconds from the policy's lifetime;
//   - the validating webhook (PathValidate, on CREATE) rejects a CSR that
//     could never be approved, naming every rule it breaks;
//   - the approval guard (PathApproval, on UPDATE of the approval
//     subresource) warns about or rejects an approval by someone the policy
//     does not allow to approve kubelet client CSRs by hand.
//
// Every decision about a CSR comes from approver.Inspect and approver.Decide,
// the single source of truth; this package only gathers what can be known
// without API calls (a cache-only approver.FactGatherer) and translates the
// Decision into an admission response. The approver stays the
// security boundary: the webhooks fail open (docs/webhook.md).
//
// Wiring: NewServer builds the TLS server (pass it as ctrl.Options.WebhookServer),
// Register registers the handlers on the manager, MutatingWebhookConfiguration
// and ValidatingWebhookConfiguration build the objects the chart mirrors.
package webhook

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/config"
)

// Paths the handlers are served at.
const (
	PathMutate   = "/mutate-csr"
	PathValidate = "/validate-csr"
	PathApproval = "/validate-csr-approval"
)

// Labels and annotations the mutating webhook sets. They are informational:
// the approver never reads them, and any client-supplied value under these
// keys is replaced or removed.
const (
	// LabelNodeName is the node name claimed by the CSR's common name; set
	// only when it is a valid node name that fits a label value.
	LabelNodeName = "nodecsr.io/node-name"
	// AnnotationKeyAlgorithm describes the public key: ECDSA-P256, RSA-2048, ...
	AnnotationKeyAlgorithm = "nodecsr.io/key-algorithm"
	// AnnotationPublicKeySHA256 is the hex SHA-256 of the DER SubjectPublicKeyInfo.
	AnnotationPublicKeySHA256 = "nodecsr.io/public-key-sha256"
)

// Event reasons recorded on a CSR by the approval guard.
const (
	// EventReasonApprovalNotAllowed: someone not allowed by
	// spec.approvalGuard approved a kubelet client CSR (Warn: admitted;
	// Enforce: rejected).
	EventReasonApprovalNotAllowed = "ApprovalNotAllowed"
)

// EventRecorder records one Event about an object. *approver.EventRecorder
// implements it.
type EventRecorder interface {
	Event(ctx context.Context, obj client.Object, kind, apiVersion, eventType, reason, action, note string) error
}

// Options configures the handlers.
type Options struct {
	// Policy returns the policy in force; it is called once per request, so
	// a hot-reloaded policy applies to the next request. Required.
	Policy func() *config.Effective
	// Facts gathers what the validating webhook can know cheaply: the Node
	// from an informer cache and, only for a bootstrap request whose Node
	// exists, its Lease (one read), all bounded by a short timeout so that
	// the webhook answers in time. No SubjectAccessReview and no pending
	// CSRs. Nil: no fact is gathered, and the rules that need one are left
	// to the approver.
	Facts approver.FactGatherer
	// Self is nodecsr's own username (its ServiceAccount,
	// system:serviceaccount:<namespace>:<name>); the approval guard always
	// allows it.
	Self string
	// Events, when set, receives a Warning Event on a CSR whose approval the
	// guard warned about or rejected. Written asynchronously.
	Events EventRecorder
	// Registry receives nodecsr_admission_total. Nil: no metrics.
	Registry prometheus.Registerer
}

// Validate reports what is wrong with the options.
func (o *Options) Validate() error {
	if o.Policy == nil {
		return errors.New("webhook options: Policy is required")
	}
	return nil
}

// Register registers the three handlers on mgr's webhook server at
// PathMutate, PathValidate and PathApproval.
func Register(mgr ctrl.Manager, opts Options) error {
	hs, err := newHandlers(opts)
	if err != nil {
		return err
	}
	srv := mgr.GetWebhookServer()
	srv.Register(PathMutate, &admission.Webhook{Handler: hs.mutate})
	srv.Register(PathValidate, &admission.Webhook{Handler: hs.validate})
	srv.Register(PathApproval, &admission.Webhook{Handler: hs.approval})
	return nil
}

type handlers struct {
	mutate   *mutator
	validate *validator
	approval *approvalGuard
}

func newHandlers(opts Options) (*handlers, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(opts.Registry)
	if err != nil {
		return nil, err
	}
	return &handlers{
		mutate:   &mutator{policy: opts.Policy, metrics: m},
		validate: &validator{policy: opts.Policy, facts: opts.Facts, metrics: m},
		approval: &approvalGuard{policy: opts.Policy, self: opts.Self, events: opts.Events, metrics: m, eventSlots: make(chan struct{}, maxPendingEvents)},
	}, nil
}
