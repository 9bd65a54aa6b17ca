package chart_test

import (
	"context"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"

	"github.com/nodecsr/nodecsr/test/env"
)

// startCertManager runs cert-manager's controllers (for namespace) and its
// cainjector (for the webhook configurations) in-process, as the admin,
// until the test ends. Their errors go to the test log; a controller that
// stops with an error fails the test.
func startCertManager(t *testing.T, namespace string) {
	t.Helper()
	stop, err := env.StartCertManager(context.Background(), tc.AdminKubeconfig(), tc.AdminConfig(), namespace, env.ErrorLogger("cert-manager", t.Logf))
	if err != nil {
		t.Fatal(err)
	}
	// Nothing logs after the test: stop waits for every goroutine.
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
}

// waitCertificateReady waits for the Certificate's Ready condition.
func waitCertificateReady(ctx context.Context, t *testing.T, namespace, name string) *cmapi.Certificate {
	t.Helper()
	cert, err := env.WaitCertificateReady(ctx, kclient, namespace, name, 0)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
