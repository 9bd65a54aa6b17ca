package chart_test

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"

	certificatesv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/test/env"
)

// TestCertManagerIssuesTheWebhookCertificate installs the chart, runs
// cert-manager's own controllers and cainjector so that the chart's
// Certificates are issued and the CA is injected into the webhook
// configurations, then runs nodecsr-controller with that certificate and
// shows the API server calling nodecsr's webhooks over TLS, trusting the
// injected CA.
//
// The Service cannot route to a process on this machine (no kubelet, no
// kube-proxy), so the serving certificate gets 127.0.0.1 as an extra IP SAN
// (webhook.certificate.extraIPAddresses) and, after cainjector has
// injected the CA, the webhook configurations' clientConfig is patched from
// the Service to https://127.0.0.1:<port>, keeping the injected caBundle.
func TestCertManagerIssuesTheWebhookCertificate(t *testing.T) {
	ctx, cancel := testutil.Context(t)
	defer cancel()
	ns := uniqueName("tls")
	createNamespace(t, ns, nil)
	fullname := ns + "-nodecsr"
	install(t, ns, ns, readValues(t, "webhook: {certificate: {extraIPAddresses: [127.0.0.1]}}"), nil)
	startCertManager(t, ns)

	waitCertificateReady(ctx, t, ns, fullname+"-ca")
	serving := waitCertificateReady(ctx, t, ns, fullname+"-serving")
	secret, err := admin.CoreV1().Secrets(ns).Get(ctx, serving.Spec.SecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the serving certificate's Secret: %v", err)
	}
	caPEM, certPEM, keyPEM := secret.Data["ca.crt"], secret.Data["tls.crt"], secret.Data["tls.key"]
	if len(caPEM) == 0 || len(certPEM) == 0 || len(keyPEM) == 0 {
		t.Fatalf("Secret %s lacks ca.crt, tls.crt or tls.key: %v", secret.Name, keysOf(secret.Data))
	}
	leaf := verifyServingCert(t, certPEM, caPEM, []string{fullname + "." + ns + ".svc", fullname + "." + ns + ".svc.cluster.local"})
	t.Logf("cert-manager issued %s for %v %v, signed by %s", secret.Name, leaf.DNSNames, leaf.IPAddresses, leaf.Issuer.CommonName)

	// cainjector puts the CA into every webhook of both configurations.
	if err := env.WaitCABundles(ctx, admin, fullname, caPEM, 3, 0); err != nil {
		t.Fatalf("cainjector did not inject %s's CA into the webhook configurations: %v", serving.Name, err)
	}

	// nodecsr-controller serves the webhooks on loopback with the issued
	// certificate, as the chart's ServiceAccount.
	r := runInstalledController(t, ns, fullname, env.ControllerOptions{WebhookCertPEM: certPEM, WebhookKeyPEM: keyPEM})
	base := "https://" + cluster.HostPort(r.ctl.WebhookPort)
	if err := env.PointWebhooksAt(ctx, admin, fullname, base); err != nil {
		t.Fatal(err)
	}

	bootstrap, _ := env.BootstrapClient(t, tc)
	csrs := bootstrap.CertificatesV1().CertificateSigningRequests()
	cleanupCSR := func(name string) {
		t.Cleanup(func() {
			_ = admin.CertificatesV1().CertificateSigningRequests().Delete(context.Background(), name, metav1.DeleteOptions{})
		})
	}

	// The validating webhook rejects a CSR with a SAN at creation. Until the
	// webhook server has loaded its certificate and listens, the API server
	// cannot reach it and admits the CSR (failurePolicy Ignore); those are
	// removed and the request is repeated.
	var rejection error
	attempts := 0
	if err := waitUntil(ctx, func(ctx context.Context) (bool, error) {
		attempts++
		bad := csrtest.Build(csrtest.WithName(uniqueName("tls-bad")), csrtest.WithNodeName(uniqueName("tls-node")), csrtest.WithDNSSAN("evil.example.com"))
		_, err := csrs.Create(ctx, bad, metav1.CreateOptions{})
		if err == nil {
			cleanupCSR(bad.Name)
			return false, nil
		}
		rejection = err
		return true, nil
	}); err != nil {
		t.Fatalf("the API server never called nodecsr's validating webhook at %s: %v", base, err)
	}
	want := `admission webhook "validate.csr.nodecsr.io" denied the request: this kubelet client CSR can never be approved: it breaks 1 rule of nodecsr policy`
	if !apierrors.IsForbidden(rejection) || !strings.Contains(rejection.Error(), want) || !strings.Contains(rejection.Error(), "SANsNotAllowed") {
		t.Fatalf("creating a CSR with a SAN failed with %v; want a 403 with %q and SANsNotAllowed", rejection, want)
	}
	t.Logf("after %d attempt(s) the API server rejected the CSR through nodecsr's webhook over TLS: %v", attempts, rejection)

	// The mutating webhook labels a CSR that may be approved.
	node := uniqueName("tls-worker")
	good := csrtest.Build(csrtest.WithName(uniqueName("tls-good")), csrtest.WithNodeName(node))
	created, err := csrs.Create(ctx, good, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("a valid bootstrap CSR was refused: %v", err)
	}
	cleanupCSR(good.Name)
	if created.Labels["nodecsr.io/node-name"] != node || created.Annotations["nodecsr.io/key-algorithm"] == "" {
		t.Errorf("the mutating webhook did not label the CSR: labels %v, annotations %v", created.Labels, created.Annotations)
	}
	decided := waitDecided(ctx, t, good.Name)
	if condition(decided, certificatesv1.CertificateApproved) == nil {
		t.Errorf("the valid CSR was not approved: %+v", decided.Status.Conditions)
	}
	r.checkNothingForbidden(t)
}

// verifyServingCert checks that certPEM is a server certificate for names
// and 127.0.0.1 that chains to caPEM.
func verifyServingCert(t *testing.T, certPEM, caPEM []byte, names []string) *x509.Certificate {
	t.Helper()
	leaf := env.ParseCert(t, certPEM)
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	for _, name := range append(names, "127.0.0.1") {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("the serving certificate does not verify for %s: %v", name, err)
		}
	}
	return leaf
}

func keysOf(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
