// Package app wires nodecsr-controller: flags → options → manager.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"go.uber.org/zap/zapcore"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	ctrlwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"

	nodecsrv1alpha1 "github.com/nodecsr/nodecsr/api/v1alpha1"
	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/version"
	"github.com/nodecsr/nodecsr/webhook"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// usageError marks errors in how the program was called.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// Main runs the command line and returns the process exit code.
func Main(args []string) int {
	cmd := NewCommand(os.Stdout, os.Stderr)
	cmd.SetArgs(args)
	// SIGTERM and SIGINT cancel the context: in-flight decisions finish and
	// the leader Lease is released, so the next leader starts at once.
	err := cmd.ExecuteContext(ctrl.SetupSignalHandler())
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, new(usageError)):
		fmt.Fprintln(os.Stderr, "Error:", err)
		return exitUsage
	default:
		fmt.Fprintln(os.Stderr, "Error:", err)
		return exitError
	}
}

// NewCommand builds the command tree: the controller itself, explain and version.
func NewCommand(stdout, stderr io.Writer) *cobra.Command {
	o := NewOptions()
	cmd := &cobra.Command{
		Use:   "nodecsr-controller",
		Short: "Decides kubelet client certificate requests and serves nodecsr's admission webhooks",
		Long: `nodecsr-controller approves or denies CertificateSigningRequests for the signer
kubernetes.io/kube-apiserver-client-kubelet (and, when the policy's serving.enabled is true,
kubernetes.io/kubelet-serving) according to a policy file, records every
decision as a condition reason, an Event, a log line and a metric, and serves the
admission webhooks that reject hopeless requests at creation.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return usageError{err}
			}
			return Run(cmd.Context(), o)
		},
	}
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	o.AddFlags(cmd.Flags())
	cmd.AddCommand(newExplainCommand(stdout), &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(stdout, version.Version) },
	})
	return cmd
}

func newLogger(o *Options) (logr.Logger, error) {
	level := zapcore.InfoLevel
	if n, err := strconv.Atoi(o.LogLevel); err == nil {
		level = zapcore.Level(-n)
	} else if err := level.UnmarshalText([]byte(o.LogLevel)); err != nil {
		return logr.Logger{}, usageError{fmt.Errorf("--log-level: %w", err)}
	}
	return zap.New(zap.UseFlagOptions(&zap.Options{Development: o.LogFormat == "text", Level: level})), nil
}

func restConfig(o *Options) (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("failed to load the client configuration (--kubeconfig %q): %w", o.Kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = o.KubeAPIQPS, o.KubeAPIBurst
	cfg.UserAgent = "nodecsr-controller/" + version.Version
	return cfg, nil
}

// Run runs the controller until ctx is done.
func Run(ctx context.Context, o *Options) error {
	logger, err := newLogger(o)
	if err != nil {
		return err
	}
	ctrl.SetLogger(logger)
	cfg, err := restConfig(o)
	if err != nil {
		return err
	}
	return RunWithConfig(ctx, o, cfg)
}

// RunWithConfig runs the controller against cfg until ctx is done. Tests call
// it to run nodecsr-controller in-process.
func RunWithConfig(ctx context.Context, o *Options, cfg *rest.Config) error {
	log := ctrl.Log.WithName("nodecsr")
	startGCTuner(log)
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := nodecsrv1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	m := newPolicyMetrics(ctrlmetrics.Registry)

	// The policy is loaded before anything starts: a bad file refuses to start.
	// The watcher calls back only from its Run, which the manager starts
	// after everything below is set.
	var (
		mgr    manager.Manager
		r      *approver.Reconciler
		events *approver.EventRecorder
		policy func() *config.Effective
	)
	var watcher *config.Watcher
	var err error
	// serving is whether the caches are set up for serving CSRs; it is
	// decided by the policy at startup (see onChange).
	var serving bool
	if o.PolicyFile == "" {
		p := config.Default()
		policy = func() *config.Effective { return p }
		log.Info("Using the default policy", "digest", p.Digest)
	} else {
		self := o.selfReference()
		onChange := func(p *config.Effective) {
			m.reloads.WithLabelValues("success").Inc()
			m.setPolicy(p.Digest)
			log.Info("Reloaded the policy", "file", o.PolicyFile, "digest", p.Digest)
			servingChanged(ctx, log, events, self, serving, p)
			select {
			case <-mgr.Elected():
				go r.PolicyChanged(ctx)
			default: // not the leader: nothing is queued here
			}
		}
		onError := func(err error) {
			m.reloads.WithLabelValues("error").Inc()
			log.Error(err, "Kept the previous policy: the policy file is invalid", "file", o.PolicyFile, "digest", policy().Digest)
			if self == nil {
				return
			}
			note := fmt.Sprintf("kept policy %s: %v", policy().Digest, err)
			if err := events.Event(ctx, self, "Pod", "v1", corev1.EventTypeWarning, "PolicyReloadFailed", "ReloadPolicy", note); err != nil {
				log.Error(err, "Failed to record the policy reload Event")
			}
		}
		w, err := config.NewWatcher(o.PolicyFile, o.PolicyReloadInterval, onChange, onError)
		if err != nil {
			return fmt.Errorf("refusing to start: %w", err)
		}
		watcher, policy = w, w.Current
		log.Info("Loaded the policy", "file", o.PolicyFile, "digest", w.Current().Digest)
	}
	m.setPolicy(policy().Digest)
	serving = policy().Serving.Enabled
	if serving {
		log.Info("Serving certificates are on: deciding kubelet serving CSRs too", "signer", approver.KubeletServingSigner)
	}

	var webhookServer *webhook.Server
	if o.WebhookCertDir != "" {
		webhookServer, err = webhook.NewServer(webhook.ServerOptions{
			Host: o.WebhookHost, Port: o.WebhookPort, CertDir: o.WebhookCertDir, EnableHTTP2: o.WebhookEnableHTTP2,
			DrainDelay: o.WebhookDrainDelay,
		})
		if err != nil {
			return err
		}
		// The drain starts when the process is told to stop, not when the
		// manager gets to the webhooks (after the controllers), so that
		// the two overlap.
		go func() {
			<-ctx.Done()
			webhookServer.Drain()
		}()
	}
	// The Lease holder is the Pod's name, so `kubectl get lease` tells which
	// replica leads (controller-runtime's default is hostname_uuid).
	lock, err := o.leaseLock(cfg)
	if err != nil {
		return err
	}
	mgr, err = ctrl.NewManager(cfg, ctrl.Options{
		LeaderElectionResourceLockInterface: lock,
		WebhookServer:                       webhookServerOrNil(webhookServer),
		Scheme:                              scheme,
		Cache:                               approver.CacheOptions(serving),
		Metrics:                             metricsserver.Options{BindAddress: o.MetricsBindAddress},
		HealthProbeBindAddress:              o.HealthProbeBindAddress,
		PprofBindAddress:                    o.PprofBindAddress,
		LeaderElection:                      o.LeaderElect,
		LeaderElectionID:                    o.LeaderElectionID,
		LeaderElectionNamespace:             o.leaderElectionNamespace(),
		LeaderElectionReleaseOnCancel:       true,
		LeaseDuration:                       &o.LeaseDuration,
		RenewDeadline:                       &o.RenewDeadline,
		RetryPeriod:                         &o.RetryPeriod,
		Logger:                              log,
	})
	if err != nil {
		return fmt.Errorf("failed to create the manager: %w", err)
	}
	events = &approver.EventRecorder{Client: mgr.GetClient(), Instance: o.instance(), Namespace: o.EventsNamespace}
	r = &approver.Reconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Policy:    policy,
		Facts: &approver.Gatherer{
			Authorizer: approver.SARAuthorizer{Client: mgr.GetClient()},
			Nodes:      approver.CachedNodes{Reader: mgr.GetCache(), Serving: serving},
			Heartbeats: approver.LeaseHeartbeats{Leases: mgr.GetAPIReader(), Nodes: mgr.GetCache(), Serving: serving},
			Pending:    approver.IndexedPending{Reader: mgr.GetClient()},
			Clock:      clock.RealClock{},
		},
		Events:  events,
		Metrics: approver.NewMetrics(ctrlmetrics.Registry, mgr.GetCache(), serving),
		Expiry:  &approver.ExpiryTracker{Horizon: o.CertificateExpiryHorizon, Serving: serving},
		Serving: serving,
	}
	if serving {
		g := r.Facts.(*approver.Gatherer)
		g.Addresses = approver.CachedNodeAddresses{Reader: mgr.GetCache()}
		g.Resolver = net.DefaultResolver
	}
	if err := ctrlmetrics.Registry.Register(r.Expiry); err != nil {
		return fmt.Errorf("failed to register the expiry metrics: %w", err)
	}
	if err := r.SetupWithManager(ctx, mgr, o.MaxConcurrentReconciles); err != nil {
		return err
	}
	if o.Inventory {
		if err := setupInventory(ctx, o, mgr, events, r.Expiry); err != nil {
			return err
		}
	}
	// Every replica caches Nodes (the webhook reads them); start it now
	// rather than on the first lookup.
	if _, err := mgr.GetCache().GetInformer(ctx, approver.NodeObject(serving)); err != nil {
		return fmt.Errorf("failed to set up the Node cache: %w", err)
	}
	if webhookServer != nil {
		if o.SelfUsername == "" {
			// Ask the API server who we are, so the approval guard lets
			// nodecsr's own approvals through.
			if o.SelfUsername, err = whoAmI(ctx, cfg); err != nil {
				return err
			}
		}
		err := webhook.Register(mgr, webhook.Options{
			Policy: policy, Self: o.SelfUsername,
			// The Node from the cache; the Lease (only for a bootstrap
			// request whose Node exists) with one bounded read.
			Facts:  webhookFacts(mgr, serving),
			Events: events, Registry: ctrlmetrics.Registry,
		})
		if err != nil {
			return err
		}
		if err := mgr.AddReadyzCheck("webhook-certificate", webhookServer.ReadyCheck()); err != nil {
			return err
		}
		log.Info("Serving admission webhooks", "port", o.WebhookPort, "certDir", o.WebhookCertDir, "self", o.SelfUsername)
	} else {
		log.Info("Admission webhooks are off (no --webhook-cert-dir)")
	}
	if watcher != nil {
		if err := mgr.Add(manager.RunnableFunc(watcher.Run)); err != nil {
			return err
		}
	}

	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("caches", func(req *http.Request) error {
		ctx, cancel := context.WithTimeout(req.Context(), time.Second)
		defer cancel()
		if !mgr.GetCache().WaitForCacheSync(ctx) {
			return errors.New("caches have not synced")
		}
		return nil
	}); err != nil {
		return err
	}
	log.Info("Starting nodecsr-controller", "version", version.Version, "workers", o.MaxConcurrentReconciles, "leaderElection", o.LeaderElect)
	return mgr.Start(ctx)
}

// webhookFacts are the facts the validating webhook gathers: the Node
// from the cache; the Lease (only for a bootstrap request whose Node
// exists) with one bounded read; with serving, the Node addresses and
// neighbours from the cache (never DNS: that is left to the approver).
func webhookFacts(mgr manager.Manager, serving bool) *approver.Gatherer {
	g := &approver.Gatherer{
		Nodes:      approver.CachedNodes{Reader: mgr.GetCache(), Serving: serving},
		Heartbeats: approver.LeaseHeartbeats{Leases: mgr.GetAPIReader(), Nodes: mgr.GetCache(), Serving: serving},
		Clock:      clock.RealClock{},
	}
	if serving {
		g.Addresses = approver.CachedNodeAddresses{Reader: mgr.GetCache()}
	}
	return g
}

// EventReasonServingNeedsRestart is the Warning Event on nodecsr's Pod when
// a reload turns serving.enabled on: the caches that serving needs are set
// up at startup.
const EventReasonServingNeedsRestart = "ServingNeedsRestart"

// servingChanged reports a reload that flips serving.enabled against the
// caches set up at startup. Turning it on needs a restart (the CSR cache is
// restricted to the client signer and Nodes are cached without their
// addresses), so it is logged as an error and recorded as a Warning Event on
// the Pod; turning it off takes effect at once (serving CSRs are left
// alone), which is logged.
func servingChanged(ctx context.Context, log logr.Logger, events *approver.EventRecorder, self client.Object, atStart bool, p *config.Effective) {
	switch {
	case p.Serving.Enabled == atStart:
	case p.Serving.Enabled:
		err := errors.New("serving.enabled was turned on by a reload; restart nodecsr-controller to decide kubelet serving CSRs")
		log.Error(err, "Serving certificates stay undecided until nodecsr-controller restarts", "digest", p.Digest)
		if self == nil || events == nil {
			return
		}
		note := fmt.Sprintf("policy %s enables serving certificates, which needs a restart of nodecsr-controller; until then kubelet serving CSRs are not decided", p.Digest)
		if err := events.Event(ctx, self, "Pod", "v1", corev1.EventTypeWarning, EventReasonServingNeedsRestart, "ReloadPolicy", note); err != nil {
			log.Error(err, "Failed to record the serving restart Event")
		}
	default:
		log.Info("serving.enabled was turned off by a reload: kubelet serving CSRs are left alone from now on; the caches keep watching them until the next restart", "digest", p.Digest)
	}
}

// leaseLock is the leader-election Lease held as --pod-name; nil (the
// manager's default lock) without a pod name or without leader election.
func (o *Options) leaseLock(cfg *rest.Config) (resourcelock.Interface, error) {
	if !o.LeaderElect || o.PodName == "" {
		return nil, nil
	}
	cfg = rest.AddUserAgent(rest.CopyConfig(cfg), "leader-election")
	// One hung request must not outlast the renew deadline.
	cfg.Timeout = max(o.RenewDeadline/2, time.Second)
	coordination, err := coordinationv1client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("failed to create the leader-election client: %w", err)
	}
	return &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: o.leaderElectionNamespace(), Name: o.LeaderElectionID},
		Client:     coordination,
		LockConfig: resourcelock.ResourceLockConfig{Identity: o.PodName},
	}, nil
}

// selfReference is this pod, for Events about nodecsr itself.
func (o *Options) selfReference() client.Object {
	if o.PodName == "" || o.PodNamespace == "" {
		return nil
	}
	return &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Name: o.PodName, Namespace: o.PodNamespace}}
}

type policyMetrics struct {
	reloads *prometheus.CounterVec
	info    *prometheus.GaugeVec
}

func newPolicyMetrics(reg prometheus.Registerer) *policyMetrics {
	m := &policyMetrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodecsr_policy_reloads_total",
			Help: "Policy file reloads by result (success, error); on error the previous policy stays in force.",
		}, []string{"result"}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "nodecsr_policy_info",
			Help: "The policy in force: 1 for its digest.",
		}, []string{"digest"}),
	}
	reg.MustRegister(m.reloads, m.info)
	// Both series exist from the start, so that the first failed reload is an
	// increase an alert sees (increase() ignores a series' first sample).
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("error")
	return m
}

func (m *policyMetrics) setPolicy(digest string) {
	m.info.Reset()
	m.info.WithLabelValues(digest).Set(1)
}

func whoAmI(ctx context.Context, cfg *rest.Config) (string, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	review, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("failed to learn nodecsr's own username (set --self-username): %w", err)
	}
	return review.Status.UserInfo.Username, nil
}

// webhookServerOrNil avoids a typed nil in the manager's interface field.
func webhookServerOrNil(s *webhook.Server) ctrlwebhook.Server {
	if s == nil {
		return nil
	}
	return s
}
