package env

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nodecsr/nodecsr/webhook"
)

// ServiceAccount is the identity of the ServiceAccount name in namespace ns:
// user and groups as the API server authenticates its token, for
// impersonation.
func ServiceAccount(ns, name string) rest.ImpersonationConfig {
	return rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + ns + ":" + name,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
	}
}

// CABundles returns the caBundle of every webhook in the mutating and the
// validating webhook configuration called name.
func CABundles(ctx context.Context, cs kubernetes.Interface, name string) ([][]byte, error) {
	m, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	v, err := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for _, w := range m.Webhooks {
		out = append(out, w.ClientConfig.CABundle)
	}
	for _, w := range v.Webhooks {
		out = append(out, w.ClientConfig.CABundle)
	}
	return out, nil
}

// WaitCABundles waits until the configurations called name hold exactly
// want webhooks, each with caPEM as its caBundle (cainjector's work), for
// up to timeout if it is positive, else until ctx ends.
func WaitCABundles(ctx context.Context, cs kubernetes.Interface, name string, caPEM []byte, want int, timeout time.Duration) error {
	ctx, cancel := withTimeout(ctx, timeout)
	defer cancel()
	var last [][]byte
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		bundles, err := CABundles(ctx, cs, name)
		if err != nil {
			return false, err
		}
		last = bundles
		for _, b := range bundles {
			if !bytes.Equal(b, caPEM) {
				return false, nil
			}
		}
		return len(bundles) == want, nil
	})
	if err != nil {
		return fmt.Errorf("the CA was not injected into the %d webhooks of %s (%d webhooks seen): %w", want, name, len(last), err)
	}
	return nil
}

// PointWebhooksAt replaces each webhook's Service reference in the
// configurations called name with the URL base+<the Service path>, leaving
// the caBundle alone (it checks that it did): the API server then calls a
// webhook server on this machine (no kube-proxy routes to a Service here).
func PointWebhooksAt(ctx context.Context, cs kubernetes.Interface, name, base string) error {
	before, err := CABundles(ctx, cs, name)
	if err != nil {
		return err
	}
	if err := pointWebhooksAt(ctx, cs, name, base); err != nil {
		return err
	}
	after, err := CABundles(ctx, cs, name)
	if err != nil {
		return err
	}
	if len(after) != len(before) {
		return fmt.Errorf("pointing the webhooks of %s at %s changed their number from %d to %d", name, base, len(before), len(after))
	}
	for i := range after {
		if !bytes.Equal(after[i], before[i]) {
			return fmt.Errorf("pointing the webhooks of %s at %s changed a caBundle", name, base)
		}
	}
	return nil
}

func pointWebhooksAt(ctx context.Context, cs kubernetes.Interface, name, base string) error {
	patch := func(paths []string) ([]byte, error) {
		var ops []map[string]any
		for i, p := range paths {
			ops = append(ops,
				map[string]any{"op": "remove", "path": fmt.Sprintf("/webhooks/%d/clientConfig/service", i)},
				map[string]any{"op": "add", "path": fmt.Sprintf("/webhooks/%d/clientConfig/url", i), "value": base + p},
			)
		}
		return json.Marshal(ops)
	}
	m, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	var mPaths []string
	for _, w := range m.Webhooks {
		if w.ClientConfig.Service == nil || w.ClientConfig.Service.Path == nil {
			return fmt.Errorf("mutating webhook %s has no Service path", w.Name)
		}
		mPaths = append(mPaths, *w.ClientConfig.Service.Path)
	}
	data, err := patch(mPaths)
	if err != nil {
		return err
	}
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Patch(ctx, name, types.JSONPatchType, data, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("failed to point the mutating webhook at %s: %w", base, err)
	}
	v, err := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	var vPaths []string
	for _, w := range v.Webhooks {
		if w.ClientConfig.Service == nil || w.ClientConfig.Service.Path == nil {
			return fmt.Errorf("validating webhook %s has no Service path", w.Name)
		}
		vPaths = append(vPaths, *w.ClientConfig.Service.Path)
	}
	if data, err = patch(vPaths); err != nil {
		return err
	}
	if _, err := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().Patch(ctx, name, types.JSONPatchType, data, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("failed to point the validating webhooks at %s: %w", base, err)
	}
	return nil
}

// Condition returns the CSR's condition of type typ with status True, or nil.
func Condition(csr *certificatesv1.CertificateSigningRequest, typ certificatesv1.RequestConditionType) *certificatesv1.CertificateSigningRequestCondition {
	for i := range csr.Status.Conditions {
		if csr.Status.Conditions[i].Type == typ && csr.Status.Conditions[i].Status == corev1.ConditionTrue {
			return &csr.Status.Conditions[i]
		}
	}
	return nil
}

// Decision is the CSR's Approved or Denied condition, or nil while it is
// pending.
func Decision(csr *certificatesv1.CertificateSigningRequest) *certificatesv1.CertificateSigningRequestCondition {
	if c := Condition(csr, certificatesv1.CertificateApproved); c != nil {
		return c
	}
	return Condition(csr, certificatesv1.CertificateDenied)
}

// Decisions are all the Approved and Denied conditions of the CSR, whatever
// their status.
func Decisions(csr *certificatesv1.CertificateSigningRequest) []certificatesv1.CertificateSigningRequestCondition {
	var out []certificatesv1.CertificateSigningRequestCondition
	for _, c := range csr.Status.Conditions {
		if c.Type == certificatesv1.CertificateApproved || c.Type == certificatesv1.CertificateDenied {
			out = append(out, c)
		}
	}
	return out
}

// HasApproved reports whether the CSR has an Approved condition, whatever
// its status.
func HasApproved(csr *certificatesv1.CertificateSigningRequest) bool {
	for _, c := range csr.Status.Conditions {
		if c.Type == certificatesv1.CertificateApproved {
			return true
		}
	}
	return false
}

// WaitDecided waits until the CSR called name has an Approved or Denied
// condition, for up to timeout if it is positive, else until ctx ends, and
// returns it.
func WaitDecided(ctx context.Context, cs kubernetes.Interface, name string, timeout time.Duration) (*certificatesv1.CertificateSigningRequest, error) {
	ctx, cancel := withTimeout(ctx, timeout)
	defer cancel()
	var csr *certificatesv1.CertificateSigningRequest
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		var err error
		csr, err = cs.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return Decision(csr) != nil, nil
	})
	if err != nil {
		var conds []certificatesv1.CertificateSigningRequestCondition
		if csr != nil {
			conds = csr.Status.Conditions
		}
		return csr, fmt.Errorf("CSR %s was not decided: %w (conditions %+v)", name, err, conds)
	}
	return csr, nil
}

// CreateWebhookConfigurations creates nodecsr's mutating and validating
// webhook configurations as webhook.MutatingWebhookConfiguration and
// webhook.ValidatingWebhookConfiguration build them from opts, with co (for
// example a dry run).
func CreateWebhookConfigurations(ctx context.Context, cs kubernetes.Interface, opts webhook.ConfigOptions, co metav1.CreateOptions) error {
	mwc, err := webhook.MutatingWebhookConfiguration(opts)
	if err != nil {
		return err
	}
	vwc, err := webhook.ValidatingWebhookConfiguration(opts)
	if err != nil {
		return err
	}
	ar := cs.AdmissionregistrationV1()
	if _, err := ar.MutatingWebhookConfigurations().Create(ctx, mwc, co); err != nil {
		return fmt.Errorf("the API server refused the MutatingWebhookConfiguration: %w", err)
	}
	if _, err := ar.ValidatingWebhookConfigurations().Create(ctx, vwc, co); err != nil {
		return fmt.Errorf("the API server refused the ValidatingWebhookConfiguration: %w", err)
	}
	return nil
}

// DeleteWebhookConfigurations deletes the validating and the mutating
// webhook configuration called name; one that is not there is no error.
func DeleteWebhookConfigurations(ctx context.Context, cs kubernetes.Interface, name string) error {
	ar := cs.AdmissionregistrationV1()
	var errs []error
	if err := ar.ValidatingWebhookConfigurations().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("failed to delete ValidatingWebhookConfiguration %s: %w", name, err))
	}
	if err := ar.MutatingWebhookConfigurations().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("failed to delete MutatingWebhookConfiguration %s: %w", name, err))
	}
	return errors.Join(errs...)
}

// withTimeout bounds ctx by timeout when it is positive.
func withTimeout(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if timeout > 0 {
		return context.WithTimeout(ctx, timeout)
	}
	return context.WithCancel(ctx)
}
