package app

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"

	"github.com/nodecsr/nodecsr/inventory"
)

// Options configures nodecsr-controller. Every field is a flag.
type Options struct {
	// Kubeconfig is the kubeconfig file; empty means in-cluster configuration.
	Kubeconfig string
	// KubeAPIQPS and KubeAPIBurst bound the client's request rate.
	KubeAPIQPS   float32
	KubeAPIBurst int

	// PolicyFile is the policy YAML; empty means the built-in default policy.
	PolicyFile string
	// PolicyReloadInterval is how often the policy file is checked for changes.
	PolicyReloadInterval time.Duration

	// MaxConcurrentReconciles is the number of CSRs decided in parallel.
	MaxConcurrentReconciles int

	// LeaderElect turns on leader election, for running several replicas.
	LeaderElect bool
	// LeaderElectionNamespace holds the Lease; default: PodNamespace, else kube-system.
	LeaderElectionNamespace string
	// LeaderElectionID is the Lease name.
	LeaderElectionID string
	// LeaseDuration, RenewDeadline and RetryPeriod tune leader election.
	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration

	// MetricsBindAddress serves /metrics ("0" turns it off).
	MetricsBindAddress string
	// HealthProbeBindAddress serves /healthz and /readyz ("0" turns it off).
	HealthProbeBindAddress string
	// PprofBindAddress serves Go's /debug/pprof ("" or "0": off, the default).
	PprofBindAddress string

	// PodName and PodNamespace identify this replica (Events, leader election);
	// the chart sets them from the downward API.
	PodName      string
	PodNamespace string
	// EventsNamespace receives Events about cluster-scoped objects.
	EventsNamespace string

	// WebhookCertDir holds tls.crt and tls.key for the admission webhooks; empty
	// turns the webhooks off.
	WebhookCertDir string
	// WebhookHost and WebhookPort are where the webhook server listens.
	WebhookHost string
	WebhookPort int
	// WebhookEnableHTTP2 offers HTTP/2 on the webhook server (off: CVE-2023-44487).
	WebhookEnableHTTP2 bool
	// WebhookDrainDelay is how long the webhook server keeps answering,
	// closing each connection after its response, once the process is
	// told to stop.
	WebhookDrainDelay time.Duration
	// SelfUsername is nodecsr's own identity, always allowed by the approval
	// guard; default system:serviceaccount:$POD_NAMESPACE:$SERVICE_ACCOUNT_NAME.
	SelfUsername string

	// CertificateExpiryHorizon is how far ahead a node's certificate expiry
	// counts in nodecsr_node_certificates_expiring.
	CertificateExpiryHorizon time.Duration

	// Inventory keeps the NodeCertificate inventory (needs its CRD).
	Inventory bool
	// InventoryInterval is the least time between two writes of one node's
	// NodeCertificate.
	InventoryInterval time.Duration
	// InventoryUnregisteredGrace is how long a NodeCertificate whose name
	// never registered a Node is kept.
	InventoryUnregisteredGrace time.Duration

	// LogFormat is json or text; LogLevel is the zap level (debug, info, error or a number).
	LogFormat string
	LogLevel  string
}

// NewOptions returns the defaults.
func NewOptions() *Options {
	return &Options{
		// A decision costs three requests (SubjectAccessReview, approval,
		// Event); the API server's priority and fairness, not a small client
		// limit, is what protects it (see BENCHMARKS.md).
		KubeAPIQPS:           1000,
		KubeAPIBurst:         2000,
		PolicyReloadInterval: 5 * time.Second,
		// A reconcile mostly waits for two requests in a row (the
		// SubjectAccessReview, then the approval). In three runs of the
		// approve bench, 128 workers did 0-50% more than 64 in the same
		// run, and never less beyond the noise (BENCHMARKS.md, the
		// workers= variants).
		MaxConcurrentReconciles:  128,
		WebhookDrainDelay:        5 * time.Second,
		LeaderElectionID:         "nodecsr-controller",
		LeaseDuration:            15 * time.Second,
		RenewDeadline:            10 * time.Second,
		RetryPeriod:              2 * time.Second,
		MetricsBindAddress:       ":8080",
		HealthProbeBindAddress:   ":8081",
		PodName:                  os.Getenv("POD_NAME"),
		PodNamespace:             os.Getenv("POD_NAMESPACE"),
		EventsNamespace:          "default",
		CertificateExpiryHorizon: 7 * 24 * time.Hour,
		WebhookPort:              9443,
		SelfUsername:             defaultSelfUsername(),
		LogFormat:                "json",
		LogLevel:                 "info",

		// The inventory (inventory/).
		Inventory:                  true,
		InventoryInterval:          inventory.DefaultInterval,
		InventoryUnregisteredGrace: inventory.DefaultUnregisteredGrace,
	}
}

// AddFlags binds the options to flags.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Path to a kubeconfig file; empty uses the in-cluster configuration.")
	fs.Float32Var(&o.KubeAPIQPS, "kube-api-qps", o.KubeAPIQPS, "Queries per second to the API server, per resource type (controller-runtime keeps one client limiter per type).")
	fs.IntVar(&o.KubeAPIBurst, "kube-api-burst", o.KubeAPIBurst, "Burst of queries to the API server, per resource type.")
	fs.StringVar(&o.PolicyFile, "policy", o.PolicyFile, "Path to the policy file (apiVersion nodecsr.io/v1alpha1, kind Policy); empty uses the default policy.")
	fs.DurationVar(&o.PolicyReloadInterval, "policy-reload-interval", o.PolicyReloadInterval, "How often the policy file is checked for changes.")
	fs.IntVar(&o.MaxConcurrentReconciles, "max-concurrent-reconciles", o.MaxConcurrentReconciles, "CSRs decided in parallel.")
	fs.BoolVar(&o.LeaderElect, "leader-elect", o.LeaderElect, "Elect a leader with a Lease so that several replicas can run.")
	fs.StringVar(&o.LeaderElectionNamespace, "leader-election-namespace", o.LeaderElectionNamespace, "Namespace of the leader-election Lease; default: the pod's namespace, else kube-system.")
	fs.StringVar(&o.LeaderElectionID, "leader-election-id", o.LeaderElectionID, "Name of the leader-election Lease.")
	fs.DurationVar(&o.LeaseDuration, "leader-election-lease-duration", o.LeaseDuration, "How long a leader's Lease is valid without renewal.")
	fs.DurationVar(&o.RenewDeadline, "leader-election-renew-deadline", o.RenewDeadline, "How long the leader retries renewing before it gives up leadership.")
	fs.DurationVar(&o.RetryPeriod, "leader-election-retry-period", o.RetryPeriod, "How often candidates try to acquire or renew the Lease.")
	fs.StringVar(&o.MetricsBindAddress, "metrics-bind-address", o.MetricsBindAddress, "Address of the /metrics endpoint; 0 turns it off.")
	fs.StringVar(&o.HealthProbeBindAddress, "health-probe-bind-address", o.HealthProbeBindAddress, "Address of /healthz and /readyz; 0 turns them off.")
	fs.StringVar(&o.PprofBindAddress, "pprof-bind-address", o.PprofBindAddress, "Address of Go's /debug/pprof profiles (for example 127.0.0.1:6060); empty or 0 turns them off.")
	fs.StringVar(&o.PodName, "pod-name", o.PodName, "Name of this pod (default $POD_NAME); Events about nodecsr itself refer to it, and it holds the leader-election Lease.")
	fs.StringVar(&o.PodNamespace, "pod-namespace", o.PodNamespace, "Namespace of this pod (default $POD_NAMESPACE).")
	fs.StringVar(&o.EventsNamespace, "events-namespace", o.EventsNamespace, "Namespace for Events about CSRs (cluster-scoped objects).")
	fs.StringVar(&o.WebhookCertDir, "webhook-cert-dir", o.WebhookCertDir, "Folder with tls.crt and tls.key for the admission webhooks (a mounted cert-manager Secret); empty turns the webhooks off.")
	fs.StringVar(&o.WebhookHost, "webhook-host", o.WebhookHost, "Address the webhook server listens on; empty means all.")
	fs.IntVar(&o.WebhookPort, "webhook-port", o.WebhookPort, "Port of the webhook server.")
	fs.DurationVar(&o.WebhookDrainDelay, "webhook-drain-delay", o.WebhookDrainDelay, "How long the webhook server keeps answering after SIGTERM, closing each connection after its response, so that the API server moves to another replica before this one stops listening (0: stop at once).")
	fs.BoolVar(&o.WebhookEnableHTTP2, "webhook-enable-http2", o.WebhookEnableHTTP2, "Offer HTTP/2 on the webhook server (off by default: CVE-2023-44487).")
	fs.StringVar(&o.SelfUsername, "self-username", o.SelfUsername, "nodecsr's own username, always allowed by the approval guard (default system:serviceaccount:$POD_NAMESPACE:$SERVICE_ACCOUNT_NAME, else asked from the API server with a SelfSubjectReview).")
	fs.DurationVar(&o.CertificateExpiryHorizon, "certificate-expiry-horizon", o.CertificateExpiryHorizon, "Nodes whose newest kubelet client (or serving) certificate expires within this are counted in nodecsr_node_certificates_expiring.")
	fs.BoolVar(&o.Inventory, "inventory", o.Inventory, "Keep the NodeCertificate inventory (kubectl get nodecertificates) and rebuild the expiry metrics from it; needs the nodecertificates.nodecsr.io CRD.")
	fs.DurationVar(&o.InventoryInterval, "inventory-interval", o.InventoryInterval, "Least time between two writes of one node's NodeCertificate: a renewal storm costs at most one write per node per interval.")
	fs.DurationVar(&o.InventoryUnregisteredGrace, "inventory-unregistered-grace", o.InventoryUnregisteredGrace, "How long a NodeCertificate whose name never registered a Node is kept after its newest certificate was seen.")
	fs.StringVar(&o.LogFormat, "log-format", o.LogFormat, "Log format: json or text.")
	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "Log level: debug, info, error, or a verbosity number.")
}

// Validate reports every wrong flag at once, naming the flag.
func (o *Options) Validate() error {
	var errs []error
	if o.KubeAPIQPS <= 0 {
		errs = append(errs, fmt.Errorf("--kube-api-qps must be > 0, got %v", o.KubeAPIQPS))
	}
	if o.KubeAPIBurst < 1 {
		errs = append(errs, fmt.Errorf("--kube-api-burst must be >= 1, got %d", o.KubeAPIBurst))
	}
	if o.MaxConcurrentReconciles < 1 {
		errs = append(errs, fmt.Errorf("--max-concurrent-reconciles must be >= 1, got %d", o.MaxConcurrentReconciles))
	}
	if o.PolicyReloadInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("--policy-reload-interval must be >= 100ms, got %s", o.PolicyReloadInterval))
	}
	if o.LeaderElect {
		if o.LeaderElectionID == "" {
			errs = append(errs, errors.New("--leader-election-id must not be empty with --leader-elect"))
		}
		if o.RenewDeadline >= o.LeaseDuration {
			errs = append(errs, fmt.Errorf("--leader-election-renew-deadline (%s) must be shorter than --leader-election-lease-duration (%s)", o.RenewDeadline, o.LeaseDuration))
		}
		if o.RetryPeriod <= 0 || o.RetryPeriod >= o.RenewDeadline {
			errs = append(errs, fmt.Errorf("--leader-election-retry-period (%s) must be > 0 and shorter than --leader-election-renew-deadline (%s)", o.RetryPeriod, o.RenewDeadline))
		}
	}
	switch o.LogFormat {
	case "json", "text":
	default:
		errs = append(errs, fmt.Errorf("--log-format must be json or text, got %q", o.LogFormat))
	}
	if o.WebhookDrainDelay < 0 {
		errs = append(errs, fmt.Errorf("--webhook-drain-delay must not be negative, got %s", o.WebhookDrainDelay))
	}
	if o.WebhookCertDir != "" && (o.WebhookPort < 1 || o.WebhookPort > 65535) {
		errs = append(errs, fmt.Errorf("--webhook-port must be between 1 and 65535, got %d", o.WebhookPort))
	}
	if o.CertificateExpiryHorizon <= 0 {
		errs = append(errs, fmt.Errorf("--certificate-expiry-horizon must be > 0, got %s", o.CertificateExpiryHorizon))
	}
	if o.Inventory {
		if o.InventoryInterval < 100*time.Millisecond {
			errs = append(errs, fmt.Errorf("--inventory-interval must be >= 100ms, got %s", o.InventoryInterval))
		}
		if o.InventoryUnregisteredGrace < time.Second {
			errs = append(errs, fmt.Errorf("--inventory-unregistered-grace must be >= 1s, got %s", o.InventoryUnregisteredGrace))
		}
	}
	if o.EventsNamespace == "" {
		errs = append(errs, errors.New("--events-namespace must not be empty"))
	}
	return errors.Join(errs...)
}

func (o *Options) leaderElectionNamespace() string {
	switch {
	case o.LeaderElectionNamespace != "":
		return o.LeaderElectionNamespace
	case o.PodNamespace != "":
		return o.PodNamespace
	default:
		return "kube-system"
	}
}

func (o *Options) instance() string {
	if o.PodName != "" {
		return o.PodName
	}
	host, err := os.Hostname()
	if err != nil {
		return "nodecsr-controller"
	}
	return host
}

func defaultSelfUsername() string {
	ns, sa := os.Getenv("POD_NAMESPACE"), os.Getenv("SERVICE_ACCOUNT_NAME")
	if ns == "" || sa == "" {
		return ""
	}
	return serviceaccount.MakeUsername(ns, sa)
}
