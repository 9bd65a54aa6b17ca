package cluster

import (
	"context"
	"fmt"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"
)

// DefaultBootstrapGroup is the extra group kubeadm gives node bootstrap tokens.
const DefaultBootstrapGroup = "system:bootstrappers:kubeadm:default-node-token"

// BootstrapToken is a bootstrap token stored as a real
// bootstrap.kubernetes.io/token Secret in kube-system.
type BootstrapToken struct {
	ID     string
	Secret string
}

// Token is the bearer token, "<id>.<secret>".
func (t BootstrapToken) Token() string { return bootstraputil.TokenFromIDAndSecret(t.ID, t.Secret) }

// Username is the user the API server authenticates the token as.
func (t BootstrapToken) Username() string { return bootstrapapi.BootstrapUserPrefix + t.ID }

// CreateBootstrapToken creates a new random bootstrap token valid for ttl (24h
// when zero), usable for authentication, in the kubeadm default node group.
func (c *Cluster) CreateBootstrapToken(ctx context.Context, ttl time.Duration) (BootstrapToken, error) {
	if ttl == 0 {
		ttl = 24 * time.Hour
	}
	raw, err := bootstraputil.GenerateBootstrapToken()
	if err != nil {
		return BootstrapToken{}, err
	}
	parts := bootstraputil.BootstrapTokenRegexp.FindStringSubmatch(raw)
	tok := BootstrapToken{ID: parts[1], Secret: parts[2]}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: bootstraputil.BootstrapTokenSecretName(tok.ID), Namespace: metav1.NamespaceSystem},
		Type:       bootstrapapi.SecretTypeBootstrapToken,
		StringData: map[string]string{
			bootstrapapi.BootstrapTokenIDKey:               tok.ID,
			bootstrapapi.BootstrapTokenSecretKey:           tok.Secret,
			bootstrapapi.BootstrapTokenExpirationKey:       time.Now().Add(ttl).UTC().Format(time.RFC3339),
			bootstrapapi.BootstrapTokenUsageAuthentication: "true",
			bootstrapapi.BootstrapTokenUsageSigningKey:     "true",
			bootstrapapi.BootstrapTokenExtraGroupsKey:      DefaultBootstrapGroup,
		},
	}
	client := c.AdminClient()
	// Both waits end with ctx, the caller's deadline; none of their own.
	// kube-system is created by the API server shortly after it reports ready.
	err = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, secret, metav1.CreateOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		return BootstrapToken{}, fmt.Errorf("failed to create bootstrap token secret: %w", err)
	}
	// The API server's token authenticator reads Secrets through an informer:
	// wait until it knows the new token.
	tokClient := kubernetes.NewForConfigOrDie(c.BootstrapConfig(tok))
	err = wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := tokClient.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		return err == nil, nil
	})
	if err != nil {
		return BootstrapToken{}, fmt.Errorf("bootstrap token %s does not authenticate: %w", tok.ID, err)
	}
	return tok, nil
}

// BootstrapConfig returns a rest.Config that authenticates with the bootstrap token.
func (c *Cluster) BootstrapConfig(tok BootstrapToken) *rest.Config {
	cfg := c.anonymousConfig()
	cfg.BearerToken = tok.Token()
	return cfg
}

// ApplyKubeadmRBAC creates the bindings kubeadm creates for the kubelet TLS
// bootstrap: bootstrap tokens may create CSRs (system:node-bootstrapper) and
// request node client certificates (nodeclient); nodes may renew their own
// (selfnodeclient). It is idempotent.
func (c *Cluster) ApplyKubeadmRBAC(ctx context.Context) error {
	group := func(name string) []rbacv1.Subject {
		return []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: name}}
	}
	bindings := []rbacv1.ClusterRoleBinding{
		{
			ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:kubelet-bootstrap"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:node-bootstrapper"},
			Subjects:   group(DefaultBootstrapGroup),
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:node-autoapprove-bootstrap"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:certificates.k8s.io:certificatesigningrequests:nodeclient"},
			Subjects:   group(DefaultBootstrapGroup),
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:node-autoapprove-certificate-rotation"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"},
			Subjects:   group("system:nodes"),
		},
	}
	client := c.AdminClient()
	for i := range bindings {
		_, err := client.RbacV1().ClusterRoleBindings().Create(ctx, &bindings[i], metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("failed to create ClusterRoleBinding %s: %w", bindings[i].Name, err)
		}
	}
	return nil
}

// ApplyKubeletAPIRBAC lets the API server's own user for kubelets
// (KubeletAPIUser, Options.VerifyKubelets) use every kubelet API, as kubeadm
// does for its apiserver-kubelet-client: system:kubelet-api-admin (nodes/proxy,
// nodes/log, nodes/stats, nodes/metrics, nodes/spec and so on), which the
// kubelet's webhook authorizer checks with a SubjectAccessReview. It is
// idempotent.
func (c *Cluster) ApplyKubeletAPIRBAC(ctx context.Context) error {
	b := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "nodecsr-test:apiserver-kubelet-api-admin"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:kubelet-api-admin"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: KubeletAPIUser}},
	}
	_, err := c.AdminClient().RbacV1().ClusterRoleBindings().Create(ctx, b, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("failed to create ClusterRoleBinding %s: %w", b.Name, err)
	}
	return nil
}
