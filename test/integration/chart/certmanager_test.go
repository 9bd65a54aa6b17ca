package chart_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	"github.com/cert-manager/cert-manager/pkg/controller/cainjector"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	cmutil "github.com/cert-manager/cert-manager/pkg/util"

	// cert-manager's controllers and issuer types register themselves when
	// imported; a missing import fails silently (nothing becomes Ready).
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

// certManagerControllers are the cert-manager controllers the chart's
// chain needs: self-signed Issuer → CA Certificate → CA Issuer → serving
// Certificate.
var certManagerControllers = []string{
	"issuers",
	"certificaterequests-approver",
	"certificaterequests-issuer-selfsigned",
	"certificaterequests-issuer-ca",
	"certificates-trigger",
	"certificates-key-manager",
	"certificates-request-manager",
	"certificates-issuing",
	"certificates-readiness",
}

// startCertManager runs cert-manager's controllers (for namespace) and its
// cainjector (for the webhook configurations) in-process, as the admin,
// until the test ends.
func startCertManager(t *testing.T, namespace string) {
	t.Helper()
	log := logr.New(&errorSink{t: t, name: "cert-manager"})
	ctx, cancel := context.WithCancel(logf.NewContext(context.Background(), log))
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})

	factory, err := controllerpkg.NewContextFactory(ctx, controllerpkg.ContextOptions{
		Kubeconfig:         tc.AdminKubeconfig(),
		KubernetesAPIQPS:   50,
		KubernetesAPIBurst: 100,
		Namespace:          namespace,
		IssuerOptions:      controllerpkg.IssuerOptions{ClusterResourceNamespace: namespace},
		CertificateOptions: controllerpkg.CertificateOptions{
			CertificateRequestMinimumBackoffDuration: time.Hour,
			CertificateRequestMaximumBackoffDuration: 32 * time.Hour,
		},
	})
	if err != nil {
		t.Fatalf("cert-manager context: %v", err)
	}
	var controllers []controllerpkg.Interface
	for _, name := range certManagerControllers {
		constructor, ok := controllerpkg.Known()[name]
		if !ok {
			t.Fatalf("cert-manager controller %q is not registered (missing import?)", name)
		}
		c, err := constructor(factory)
		if err != nil {
			t.Fatalf("cert-manager controller %s: %v", name, err)
		}
		controllers = append(controllers, c)
	}
	// The informer factories start only after every controller asked for its
	// informers.
	cmctx, err := factory.Build("informers")
	if err != nil {
		t.Fatal(err)
	}
	cmctx.KubeSharedInformerFactory.Start(ctx.Done())
	cmctx.SharedInformerFactory.Start(ctx.Done())
	for i, c := range controllers {
		wg.Go(func() {
			if err := c.Run(1, ctx); err != nil && ctx.Err() == nil {
				t.Errorf("cert-manager controller %s: %v", certManagerControllers[i], err)
			}
		})
	}

	// cainjector on a controller-runtime manager.
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, cmapi.AddToScheme, apiextensionsv1.AddToScheme, apiregistrationv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	// Like cert-manager's binaries: the user agent names the field manager
	// of cainjector's apply patches.
	mgr, err := ctrl.NewManager(cmutil.RestConfigWithUserAgent(tc.AdminConfig(), "cainjector"), ctrl.Options{
		Scheme:                 scheme,
		Logger:                 log,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             ctrlconfig.Controller{SkipNameValidation: ptr(true)},
		// As cainjector does: Secrets are read directly, their metadata cached.
		Client: client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}}}},
	})
	if err != nil {
		t.Fatalf("cainjector manager: %v", err)
	}
	if err := cainjector.RegisterAllInjectors(ctx, mgr, cainjector.SetupOptions{
		Namespace:                    namespace,
		EnableCertificatesDataSource: true,
		EnabledReconcilersFor: map[string]bool{
			cainjector.MutatingWebhookConfigurationName:   true,
			cainjector.ValidatingWebhookConfigurationName: true,
		},
	}); err != nil {
		t.Fatalf("cainjector: %v", err)
	}
	wg.Go(func() {
		if err := mgr.Start(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("cainjector: %v", err)
		}
	})
}

// waitCertificateReady waits for the Certificate's Ready condition.
func waitCertificateReady(ctx context.Context, t *testing.T, namespace, name string) *cmapi.Certificate {
	t.Helper()
	cert := &cmapi.Certificate{}
	err := poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
		if err := kclient.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, cert); err != nil {
			return false, err
		}
		for _, c := range cert.Status.Conditions {
			if c.Type == cmapi.CertificateConditionReady && c.Status == "True" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("Certificate %s/%s is not Ready: %v; status %s", namespace, name, err, fmt.Sprint(cert.Status.Conditions))
	}
	return cert
}

// errorSink passes only errors to the test log: cert-manager's controllers
// are chatty, and an error is what explains a Certificate that never
// becomes Ready. Nothing logs after the test: startCertManager's cleanup
// waits for every goroutine.
type errorSink struct {
	t      *testing.T
	name   string
	values []any
}

func (s *errorSink) Init(logr.RuntimeInfo)    {}
func (s *errorSink) Enabled(int) bool         { return false }
func (s *errorSink) Info(int, string, ...any) {}
func (s *errorSink) WithName(n string) logr.LogSink {
	c := *s
	c.name = s.name + "/" + n
	return &c
}

func (s *errorSink) WithValues(kv ...any) logr.LogSink {
	c := *s
	c.values = append(append([]any(nil), s.values...), kv...)
	return &c
}

func (s *errorSink) Error(err error, msg string, kv ...any) {
	s.t.Logf("%s: %s: %v %v", s.name, msg, err, append(append([]any(nil), s.values...), kv...))
}
