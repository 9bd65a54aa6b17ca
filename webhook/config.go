package webhook

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"strconv"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Webhook names in the configurations.
const (
	WebhookNameMutate   = "mutate.csr.nodecsr.io"
	WebhookNameValidate = "validate.csr.nodecsr.io"
	WebhookNameApproval = "approval.csr.nodecsr.io"
)

// DefaultTimeoutSeconds is every webhook's timeoutSeconds. The handlers
// answer in well under a millisecond; a webhook that does not answer within
// this is skipped (failurePolicy Ignore), so it bounds the delay an outage
// adds to a node's request.
const DefaultTimeoutSeconds = 3

// signerMatch sends only kubelet client CSRs to the webhooks, and kubelet
// serving CSRs too with serving. On the approval subresource, object is the
// CSR too.
func signerMatch(serving bool) admissionregistrationv1.MatchCondition {
	if serving {
		return admissionregistrationv1.MatchCondition{
			Name: "kubelet-signers",
			Expression: "object.spec.signerName in [" + strconv.Quote(certificatesv1.KubeAPIServerClientKubeletSignerName) +
				", " + strconv.Quote(certificatesv1.KubeletServingSignerName) + "]",
		}
	}
	return admissionregistrationv1.MatchCondition{
		Name:       "kubelet-client-signer",
		Expression: "object.spec.signerName == " + strconv.Quote(certificatesv1.KubeAPIServerClientKubeletSignerName),
	}
}

// ConfigOptions says where the API server reaches the webhooks. Give
// exactly one of URL and Service.
type ConfigOptions struct {
	// Name is both configurations' metadata.name. Default: nodecsr.
	Name string
	// CABundle is the PEM bundle that verifies the serving certificate.
	// With cert-manager, leave it empty and annotate the objects with
	// cert-manager.io/inject-ca-from.
	CABundle []byte
	// URL is the server's base URL (https://host:port); each webhook's
	// path is appended.
	URL string
	// Service is the Service in front of the server (namespace, name,
	// port); each webhook's path is set on a copy.
	Service *admissionregistrationv1.ServiceReference
	// Self is nodecsr's own username. When set, the approval guard is not
	// even called for nodecsr's own approvals (a match condition), so they
	// never wait for, or depend on, the webhook.
	Self string
	// TimeoutSeconds is every webhook's timeout, 1 to 5. Default: 3.
	TimeoutSeconds int32
	// ApprovalGuardFailurePolicy applies when the approval guard cannot be
	// reached. Default: Ignore, so that a nodecsr outage never blocks the
	// break-glass approvals it exists to allow; Fail makes the guard strict
	// at that price.
	ApprovalGuardFailurePolicy admissionregistrationv1.FailurePolicyType
	// Labels and Annotations are copied onto both objects.
	Labels, Annotations map[string]string
	// Serving sends kubelet serving CSRs (signer kubernetes.io/kubelet-serving)
	// to the webhooks too; set it with the policy's serving.enabled, so
	// that a cluster whose serving CSRs another approver decides never
	// calls nodecsr for them.
	Serving bool
}

// Validate reports what is wrong with the options.
func (o *ConfigOptions) Validate() error {
	var errs []error
	switch {
	case o.URL == "" && o.Service == nil:
		errs = append(errs, errors.New("webhook configuration: a URL or a Service is required"))
	case o.URL != "" && o.Service != nil:
		errs = append(errs, errors.New("webhook configuration: give a URL or a Service, not both"))
	case o.URL != "":
		if u, err := url.Parse(o.URL); err != nil || u.Scheme != "https" || u.Host == "" {
			errs = append(errs, fmt.Errorf("webhook configuration: URL must be https://host[:port], got %q", o.URL))
		}
	}
	if o.TimeoutSeconds < 0 || o.TimeoutSeconds > 5 {
		errs = append(errs, fmt.Errorf("webhook configuration: timeoutSeconds must be between 1 and 5, got %d", o.TimeoutSeconds))
	}
	switch o.ApprovalGuardFailurePolicy {
	case "", admissionregistrationv1.Ignore, admissionregistrationv1.Fail:
	default:
		errs = append(errs, fmt.Errorf("webhook configuration: approval guard failurePolicy must be Ignore or Fail, got %q", o.ApprovalGuardFailurePolicy))
	}
	return errors.Join(errs...)
}

func (o *ConfigOptions) objectMeta() metav1.ObjectMeta {
	name := o.Name
	if name == "" {
		name = "nodecsr"
	}
	return metav1.ObjectMeta{Name: name, Labels: maps.Clone(o.Labels), Annotations: maps.Clone(o.Annotations)}
}

func (o *ConfigOptions) clientConfig(path string) admissionregistrationv1.WebhookClientConfig {
	cc := admissionregistrationv1.WebhookClientConfig{CABundle: append([]byte(nil), o.CABundle...)}
	if o.Service != nil {
		svc := *o.Service
		svc.Path = &path
		cc.Service = &svc
	} else {
		u := strings.TrimRight(o.URL, "/") + path
		cc.URL = &u
	}
	return cc
}

func (o *ConfigOptions) timeout() *int32 {
	t := o.TimeoutSeconds
	if t == 0 {
		t = DefaultTimeoutSeconds
	}
	return &t
}

func createRule(resource string, op admissionregistrationv1.OperationType) []admissionregistrationv1.RuleWithOperations {
	scope := admissionregistrationv1.ClusterScope
	return []admissionregistrationv1.RuleWithOperations{{
		Operations: []admissionregistrationv1.OperationType{op},
		Rule: admissionregistrationv1.Rule{
			APIGroups:   []string{certificatesv1.GroupName},
			APIVersions: []string{"v1"},
			Resources:   []string{resource},
			Scope:       &scope,
		},
	}}
}

// MutatingWebhookConfiguration returns the configuration of the mutating
// webhook: CREATE of kubelet client CSRs, failurePolicy Ignore (a webhook
// that is down must never stop nodes from getting certificates; the
// approver is the security boundary), no side effects, never reinvoked.
func MutatingWebhookConfiguration(o ConfigOptions) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	ignore := admissionregistrationv1.Ignore
	none := admissionregistrationv1.SideEffectClassNone
	never := admissionregistrationv1.NeverReinvocationPolicy
	equivalent := admissionregistrationv1.Equivalent
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: admissionregistrationv1.SchemeGroupVersion.String(), Kind: "MutatingWebhookConfiguration"},
		ObjectMeta: o.objectMeta(),
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    WebhookNameMutate,
			ClientConfig:            o.clientConfig(PathMutate),
			Rules:                   createRule("certificatesigningrequests", admissionregistrationv1.Create),
			FailurePolicy:           &ignore,
			MatchPolicy:             &equivalent,
			SideEffects:             &none,
			TimeoutSeconds:          o.timeout(),
			AdmissionReviewVersions: []string{"v1"},
			ReinvocationPolicy:      &never,
			MatchConditions:         []admissionregistrationv1.MatchCondition{signerMatch(o.Serving)},
		}},
	}, nil
}

// ValidatingWebhookConfiguration returns the configuration of the
// validating webhook (CREATE of kubelet client CSRs, failurePolicy Ignore,
// no side effects) and of the approval guard (UPDATE of their approval
// subresource, ApprovalGuardFailurePolicy; side effects NoneOnDryRun, since
// it may record an Event, which it skips for dry-run requests).
func ValidatingWebhookConfiguration(o ConfigOptions) (*admissionregistrationv1.ValidatingWebhookConfiguration, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	ignore := admissionregistrationv1.Ignore
	guardPolicy := o.ApprovalGuardFailurePolicy
	if guardPolicy == "" {
		guardPolicy = admissionregistrationv1.Ignore
	}
	none := admissionregistrationv1.SideEffectClassNone
	noneOnDryRun := admissionregistrationv1.SideEffectClassNoneOnDryRun
	equivalent := admissionregistrationv1.Equivalent
	guardMatch := []admissionregistrationv1.MatchCondition{signerMatch(o.Serving)}
	if o.Self != "" {
		guardMatch = append(guardMatch, admissionregistrationv1.MatchCondition{
			Name:       "not-nodecsr",
			Expression: "request.userInfo.username != " + strconv.Quote(o.Self),
		})
	}
	return &admissionregistrationv1.ValidatingWebhookConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: admissionregistrationv1.SchemeGroupVersion.String(), Kind: "ValidatingWebhookConfiguration"},
		ObjectMeta: o.objectMeta(),
		Webhooks: []admissionregistrationv1.ValidatingWebhook{
			{
				Name:                    WebhookNameValidate,
				ClientConfig:            o.clientConfig(PathValidate),
				Rules:                   createRule("certificatesigningrequests", admissionregistrationv1.Create),
				FailurePolicy:           &ignore,
				MatchPolicy:             &equivalent,
				SideEffects:             &none,
				TimeoutSeconds:          o.timeout(),
				AdmissionReviewVersions: []string{"v1"},
				MatchConditions:         []admissionregistrationv1.MatchCondition{signerMatch(o.Serving)},
			},
			{
				Name:                    WebhookNameApproval,
				ClientConfig:            o.clientConfig(PathApproval),
				Rules:                   createRule("certificatesigningrequests/approval", admissionregistrationv1.Update),
				FailurePolicy:           &guardPolicy,
				MatchPolicy:             &equivalent,
				SideEffects:             &noneOnDryRun,
				TimeoutSeconds:          o.timeout(),
				AdmissionReviewVersions: []string{"v1"},
				MatchConditions:         guardMatch,
			},
		},
	}, nil
}
