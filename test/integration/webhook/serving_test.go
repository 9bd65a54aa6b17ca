package webhook_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/webhook"
)

// createNodeWithAddresses creates a Node reporting addrs (through the status
// subresource, as a kubelet does) and deletes it when the test ends.
func createNodeWithAddresses(t *testing.T, name string, addrs ...corev1.NodeAddress) {
	t.Helper()
	createNode(t, name)
	admin := testCluster.AdminClient()
	n, err := admin.CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = addrs
	if _, err := admin.CoreV1().Nodes().UpdateStatus(t.Context(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func nodeClient(t *testing.T, node string) kubernetes.Interface {
	t.Helper()
	cfg, err := testCluster.NodeConfig(node)
	if err != nil {
		t.Fatal(err)
	}
	return kubernetes.NewForConfigOrDie(cfg)
}

func servingCSR(prefix, node string, sans ...string) *certificatesv1.CertificateSigningRequest {
	return goodCSR(prefix, node, csrtest.Serving(sans...))
}

// TestServingCSRs: with serving on, the real API server sends kubelet
// serving CSRs to the webhooks: a node's good request is admitted, labelled
// and capped; a hopeless one is rejected naming every rule; one for its
// neighbour's IP is rejected naming the neighbour; the approval guard
// covers the serving signer. With serving off, serving CSRs are never sent.
func TestServingCSRs(t *testing.T) {
	const node, neighbour = "it-srv-a", "it-srv-b"
	deleteCSRs(t, node)
	createNodeWithAddresses(t, node, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "10.20.0.1"}, corev1.NodeAddress{Type: corev1.NodeHostName, Address: node})
	createNodeWithAddresses(t, neighbour, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "10.20.0.2"}, corev1.NodeAddress{Type: corev1.NodeHostName, Address: neighbour})
	p := mustPolicy(t, func(s *config.Spec) {
		s.Serving.Enabled = true
		s.Lifetime.MaxExpirationSeconds = 3600
		s.ApprovalGuard.Mode = config.GuardEnforce
	})
	e := startEnv(t, p)
	ctx := t.Context()
	kubelet := nodeClient(t, node)
	csrs := kubelet.CertificatesV1().CertificateSigningRequests()

	// The webhook's Node cache knows the neighbour's address once its
	// request is rejected naming it (a dry run: nothing is stored).
	var last error
	err := testutil.Poll(t, 100*time.Millisecond, func(ctx context.Context) (bool, error) {
		_, last = csrs.Create(ctx, servingCSR("probe", node, node, "10.20.0.2"), dryRun)
		return last != nil && strings.Contains(last.Error(), `is an address of node "`+neighbour+`"`), nil
	})
	if err != nil {
		t.Fatalf("the neighbour was never named: %v", last)
	}
	t.Logf("neighbour's IP: %v", last)
	if !apierrors.IsForbidden(last) || !strings.Contains(last.Error(), "(1) "+approver.ReasonAddressOfOtherNode+": ") {
		t.Errorf("rejection %v", last)
	}

	// A good request: admitted, labelled and capped.
	good := servingCSR("good", node, node, "10.20.0.1")
	good.Spec.ExpirationSeconds = ptr(int32(7200))
	created, err := csrs.Create(ctx, good, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("a good serving CSR was refused: %v", err)
	}
	if created.Labels[webhook.LabelNodeName] != node || created.Spec.ExpirationSeconds == nil || *created.Spec.ExpirationSeconds != 3600 {
		t.Errorf("labels %v, expirationSeconds %v; want labelled and capped to 3600", created.Labels, created.Spec.ExpirationSeconds)
	}

	// A hopeless one: every rule named.
	hopeless := servingCSR("hopeless", node, "*.cluster.local", "10.20.0.1")
	hopeless.Spec.Usages = append(hopeless.Spec.Usages, certificatesv1.UsageClientAuth)
	_, err = csrs.Create(ctx, hopeless, metav1.CreateOptions{})
	if err == nil || !apierrors.IsForbidden(err) {
		t.Fatalf("a hopeless serving CSR: %v", err)
	}
	for _, want := range []string{"this kubelet serving CSR can never be approved", approver.ReasonWildcardDNSName, approver.ReasonInvalidUsages} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the rejection does not name %q: %v", want, err)
		}
	}
	var status apierrors.APIStatus
	if ok := asAPIStatus(err, &status); !ok || len(status.Status().Details.Causes) < 2 {
		t.Errorf("causes %+v", status)
	}

	// The approval guard covers the serving signer.
	grantServingApproval(t, "it-serving-approver", "it-mallory-srv")
	mallory, _ := userClient(t, "it-mallory-srv")
	err = approve(ctx, mallory, created, metav1.UpdateOptions{})
	if err == nil || !strings.Contains(err.Error(), `may not approve kubelet serving certificate requests (signer kubernetes.io/kubelet-serving)`) {
		t.Errorf("mallory's approval of a serving CSR: %v", err)
	}
	if got := counter(t, e.reg, "approval", "denied", "ApproverNotAllowed"); got != 1 {
		t.Errorf("approval guard denials counted %v, want 1", got)
	}

	// Serving off: the configurations do not send serving CSRs, and a
	// handler called anyway lets them through untouched.
	e.stopServer()
	e.unregister()
	off := startEnv(t, mustPolicy(t, func(s *config.Spec) { s.ApprovalGuard.Mode = config.GuardEnforce }))
	got, err := csrs.Create(ctx, servingCSR("off", node, "*.cluster.local"), dryRun)
	if err != nil {
		t.Fatalf("serving off: a serving CSR was refused: %v", err)
	}
	if len(got.Labels) != 0 {
		t.Errorf("serving off: labelled %v", got.Labels)
	}
	if got := counter(t, off.reg, "validate", "allowed", approver.ReasonNotKubeletClientSigner); got != 0 {
		t.Errorf("serving off: the validating webhook was called for a serving CSR (%v)", got)
	}
}

func asAPIStatus(err error, out *apierrors.APIStatus) bool {
	s, ok := err.(apierrors.APIStatus)
	if ok {
		*out = s
	}
	return ok
}

// grantServingApproval lets users approve kubelet serving CSRs (RBAC), so
// that only the approval guard can turn them away.
func grantServingApproval(t *testing.T, name string, users ...string) {
	t.Helper()
	admin := testCluster.AdminClient()
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{certificatesv1.GroupName}, Resources: []string{"certificatesigningrequests"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{certificatesv1.GroupName}, Resources: []string{"certificatesigningrequests/approval"}, Verbs: []string{"update"}},
			{APIGroups: []string{certificatesv1.GroupName}, Resources: []string{"signers"}, Verbs: []string{"approve"}, ResourceNames: []string{certificatesv1.KubeletServingSignerName}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
	}
	for _, u := range users {
		binding.Subjects = append(binding.Subjects, rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: u})
	}
	if _, err := admin.RbacV1().ClusterRoles().Create(t.Context(), role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(t.Context(), binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := testutil.CleanupContext(t)
		defer cancel()
		_ = admin.RbacV1().ClusterRoleBindings().Delete(ctx, name, metav1.DeleteOptions{})
		_ = admin.RbacV1().ClusterRoles().Delete(ctx, name, metav1.DeleteOptions{})
	})
	// RBAC reaches the authorizer through an informer: wait until it lets
	// the first user approve.
	err := testutil.Poll(t, 100*time.Millisecond, func(ctx context.Context) (bool, error) {
		allowed, err := canApproveServing(ctx, users[0])
		return err == nil && allowed, nil
	})
	if err != nil {
		t.Fatalf("RBAC for %s never took effect: %v", users[0], err)
	}
}

func sarFor(user string) *authorizationv1.SubjectAccessReview {
	return &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: user,
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Group: certificatesv1.GroupName, Resource: "signers", Verb: "approve", Name: certificatesv1.KubeletServingSignerName,
		},
	}}
}

func canApproveServing(ctx context.Context, user string) (bool, error) {
	review, err := testCluster.AdminClient().AuthorizationV1().SubjectAccessReviews().Create(ctx, sarFor(user), metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("SubjectAccessReview: %w", err)
	}
	return review.Status.Allowed, nil
}
