// Package env sets up what nodecsr's chart needs around a test control plane
// (test/cluster): cert-manager's CRDs, controllers and cainjector run
// in-process, the chart installed with Helm's own SDK, and the webhook
// configurations pointed at a nodecsr-controller listening on loopback. The
// chart integration suite and the end-to-end suite share it; everything takes
// its clients, paths and loggers as parameters.
package env

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

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

// CertManagerVersion is the cert-manager module version go.mod requires; its
// CRDs are read from that module in the module cache.
const CertManagerVersion = "v1.21.2"

// certManagerControllers are the cert-manager controllers the chart's chain
// needs: self-signed Issuer → CA Certificate → CA Issuer → serving
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

// CertManagerCRDDir is deploy/crds of the cert-manager module in the module
// cache ($GOMODCACHE, else `go env GOMODCACHE`).
func CertManagerCRDDir() (string, error) {
	modcache := os.Getenv("GOMODCACHE")
	if modcache == "" {
		out, err := exec.Command("go", "env", "GOMODCACHE").Output()
		if err != nil {
			return "", fmt.Errorf("go env GOMODCACHE: %w", err)
		}
		modcache = strings.TrimSpace(string(out))
	}
	dir := filepath.Join(modcache, "github.com", "cert-manager", "cert-manager@"+CertManagerVersion, "deploy", "crds")
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("cert-manager's CRDs are not in the module cache (run go mod download github.com/cert-manager/cert-manager): %w", err)
	}
	return dir, nil
}

// InstallCertManagerCRDs creates the cert-manager.io CRDs (the ACME ones are
// not needed) with c, whose scheme must hold apiextensions/v1, and waits
// until they are Established (or ctx ends). Call it early: the API server delays the first
// create of a custom resource that comes within seconds of its CRD becoming
// Established.
func InstallCertManagerCRDs(ctx context.Context, c client.Client) error {
	dir, err := CertManagerCRDDir()
	if err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(dir, "cert-manager.io_*.yaml"))
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("no cert-manager.io CRDs in %s", dir)
	}
	sort.Strings(files)
	var names []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.UnmarshalStrict(bytes.TrimPrefix(data, []byte("---\n")), crd); err != nil {
			return fmt.Errorf("failed to decode %s: %w", f, err)
		}
		if err := c.Create(ctx, crd); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("failed to create CRD %s: %w", crd.Name, err)
		}
		names = append(names, crd.Name)
	}
	return wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		for _, name := range names {
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := c.Get(ctx, client.ObjectKey{Name: name}, crd); err != nil {
				return false, err
			}
			established := false
			for _, cond := range crd.Status.Conditions {
				if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
					established = true
				}
			}
			if !established {
				return false, nil
			}
		}
		return true, nil
	})
}

// StartCertManager runs cert-manager's controllers (for namespace, through
// the kubeconfig file, which cert-manager's context factory requires) and its
// cainjector (for the webhook configurations, through cfg) in-process, until
// stop is called. stop waits for every goroutine and returns the errors the
// controllers or cainjector stopped with; log receives their logs.
func StartCertManager(ctx context.Context, kubeconfig string, cfg *rest.Config, namespace string, log logr.Logger) (stop func() error, err error) {
	ctx, cancel := context.WithCancel(logf.NewContext(ctx, log))
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		runErrs []error
	)
	stop = func() error {
		cancel()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return errors.Join(runErrs...)
	}
	record := func(what string, err error) {
		if err != nil && ctx.Err() == nil {
			mu.Lock()
			runErrs = append(runErrs, fmt.Errorf("%s: %w", what, err))
			mu.Unlock()
		}
	}
	fail := func(err error) (func() error, error) {
		_ = stop()
		return nil, err
	}

	factory, err := controllerpkg.NewContextFactory(ctx, controllerpkg.ContextOptions{
		Kubeconfig:         kubeconfig,
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
		return fail(fmt.Errorf("cert-manager context: %w", err))
	}
	var controllers []controllerpkg.Interface
	for _, name := range certManagerControllers {
		constructor, ok := controllerpkg.Known()[name]
		if !ok {
			return fail(fmt.Errorf("cert-manager controller %q is not registered (missing import?)", name))
		}
		c, err := constructor(factory)
		if err != nil {
			return fail(fmt.Errorf("cert-manager controller %s: %w", name, err))
		}
		controllers = append(controllers, c)
	}
	// The informer factories start only after every controller asked for its
	// informers.
	cmctx, err := factory.Build("informers")
	if err != nil {
		return fail(err)
	}
	cmctx.KubeSharedInformerFactory.Start(ctx.Done())
	cmctx.SharedInformerFactory.Start(ctx.Done())
	for i, c := range controllers {
		wg.Go(func() { record("cert-manager controller "+certManagerControllers[i], c.Run(1, ctx)) })
	}

	// cainjector on a controller-runtime manager.
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, cmapi.AddToScheme, apiextensionsv1.AddToScheme, apiregistrationv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return fail(err)
		}
	}
	// Like cert-manager's binaries: the user agent names the field manager
	// of cainjector's apply patches.
	mgr, err := ctrl.NewManager(cmutil.RestConfigWithUserAgent(rest.CopyConfig(cfg), "cainjector"), ctrl.Options{
		Scheme:                 scheme,
		Logger:                 log,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             ctrlconfig.Controller{SkipNameValidation: ptr.To(true)},
		// As cainjector does: Secrets are read directly, their metadata cached.
		Client: client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}}}},
	})
	if err != nil {
		return fail(fmt.Errorf("cainjector manager: %w", err))
	}
	if err := cainjector.RegisterAllInjectors(ctx, mgr, cainjector.SetupOptions{
		Namespace:                    namespace,
		EnableCertificatesDataSource: true,
		EnabledReconcilersFor: map[string]bool{
			cainjector.MutatingWebhookConfigurationName:   true,
			cainjector.ValidatingWebhookConfigurationName: true,
		},
	}); err != nil {
		return fail(fmt.Errorf("cainjector: %w", err))
	}
	wg.Go(func() { record("cainjector", mgr.Start(ctx)) })
	return stop, nil
}

// WaitCertificateReady waits for the Certificate's Ready condition, for up
// to timeout if it is positive, else until ctx ends, and returns the
// Certificate. c's scheme must hold cert-manager's types.
func WaitCertificateReady(ctx context.Context, c client.Client, namespace, name string, timeout time.Duration) (*cmapi.Certificate, error) {
	ctx, cancel := withTimeout(ctx, timeout)
	defer cancel()
	cert := &cmapi.Certificate{}
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, cert); err != nil {
			return false, err
		}
		for _, cond := range cert.Status.Conditions {
			if cond.Type == cmapi.CertificateConditionReady && cond.Status == "True" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("certificate %s/%s is not Ready: %w; status %s", namespace, name, err, fmt.Sprint(cert.Status.Conditions))
	}
	return cert, nil
}

// ErrorLogger is a logr.Logger that passes only errors to logf (for example
// testing.T.Logf), prefixed with name: cert-manager's controllers are chatty,
// and an error is what explains a Certificate that never becomes Ready.
func ErrorLogger(name string, logf func(format string, args ...any)) logr.Logger {
	return logr.New(&errorSink{logf: logf, name: name})
}

type errorSink struct {
	logf   func(string, ...any)
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
	s.logf("%s: %s: %v %v", s.name, msg, err, append(append([]any(nil), s.values...), kv...))
}
