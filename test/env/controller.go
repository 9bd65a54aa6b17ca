package env

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/cluster"
)

// ControllerOptions configures LaunchController and StartController.
type ControllerOptions struct {
	// Binary is the nodecsr-controller executable. Required.
	Binary string
	// Dir holds the controller's files: policy, kubeconfig, webhook
	// certificates, log. Required by LaunchController; StartController
	// defaults it to a t.TempDir().
	Dir string
	// Deployment, when set, is the chart's installed Deployment: its first
	// container's args are the controller's, its ServiceAccount the
	// controller's identity, and its "<name>-policy" ConfigMap the policy
	// (read with Admin). Unset, the controller runs with its own defaults
	// as the admin.
	Deployment *appsv1.Deployment
	// Admin reads the policy ConfigMap. Required with a Deployment.
	Admin kubernetes.Interface
	// AdminKubeconfig is a system:masters kubeconfig; with a Deployment the
	// controller gets a copy that impersonates the Deployment's
	// ServiceAccount. Required.
	AdminKubeconfig string
	// Policy, when not nil, is the content of the policy file (--policy).
	// Nil: the Deployment's policy ConfigMap, or without a Deployment no
	// --policy (the default policy).
	Policy []byte
	// WebhookCertPEM and WebhookKeyPEM, when set, are the webhook server's
	// serving pair, and the webhook server listens on 127.0.0.1. Unset, the
	// Deployment's webhook flags (none when the chart's webhook is off) are
	// left alone.
	WebhookCertPEM, WebhookKeyPEM []byte
	// PodName is --pod-name (default: the Deployment's name + "-0", else
	// nodecsr-controller-0).
	PodName string
	// PodNamespace is --pod-namespace (default: the Deployment's namespace,
	// else kube-system).
	PodNamespace string
	// Args add or override --name=value args.
	Args map[string]string
	// Deadline, when positive, bounds the wait for /readyz; otherwise it
	// lasts as long as ctx.
	Deadline time.Duration
}

// Controller is a nodecsr-controller process started by LaunchController or
// StartController.
type Controller struct {
	// WebhookPort, MetricsPort and HealthPort are its ports on 127.0.0.1
	// (WebhookPort is 0 without a serving pair). A restart keeps them.
	WebhookPort, MetricsPort, HealthPort int
	// PolicyPath is the policy file it reads and watches (empty: none).
	PolicyPath string
	// LogPath is its log file; a restart appends to it.
	LogPath string
	// Args are its command-line args.
	Args []string

	binary string
	mu     sync.Mutex
	proc   *process // the latest run; nil before the first
	// stopping is set by Stop: the exit that follows is expected.
	stopping bool
}

// process is one run of the binary.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	err  error         // cmd's exit status, once done is closed
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// StartController runs the real nodecsr-controller binary (LaunchController)
// and waits for its /readyz. It is stopped with SIGTERM when the test ends;
// a non-zero exit fails the test, and a failed test shows its log's tail.
func StartController(ctx context.Context, t testing.TB, opts ControllerOptions) *Controller {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	ctl, err := LaunchController(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := testutil.CleanupContext(t)
		defer cancel()
		if err := ctl.Err(); err != nil {
			t.Error(err)
		}
		if err := ctl.Stop(ctx); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("nodecsr-controller's log (%s), last lines:\n%s", strings.Join(ctl.Args, " "), Tail(ctl.LogPath, 40))
		}
	})
	return ctl
}

// LaunchController runs the real nodecsr-controller binary with the
// Deployment's own args, or its defaults without one, overriding only what
// belongs to a pod (kubeconfig, policy file, addresses, pod identity), and
// waits for its /readyz. With a Deployment it runs as the chart's
// ServiceAccount (the admin impersonating it). The caller stops it (Stop);
// it dies with the test binary in any case.
func LaunchController(ctx context.Context, opts ControllerOptions) (*Controller, error) {
	if opts.Binary == "" || opts.Dir == "" || opts.AdminKubeconfig == "" {
		return nil, errors.New("ControllerOptions needs Binary, Dir and AdminKubeconfig")
	}
	ctl := &Controller{binary: opts.Binary, LogPath: filepath.Join(opts.Dir, "nodecsr-controller.log")}
	var err error
	if ctl.MetricsPort, err = cluster.FreePort(); err != nil {
		return nil, err
	}
	if ctl.HealthPort, err = cluster.FreePort(); err != nil {
		return nil, err
	}
	var baseArgs []string
	policy := opts.Policy
	kubeconfig := opts.AdminKubeconfig
	podName, podNamespace := "nodecsr-controller-0", metav1.NamespaceSystem
	if d := opts.Deployment; d != nil {
		baseArgs = d.Spec.Template.Spec.Containers[0].Args
		podName, podNamespace = d.Name+"-0", d.Namespace
		if policy == nil {
			cm, err := opts.Admin.CoreV1().ConfigMaps(d.Namespace).Get(ctx, d.Name+"-policy", metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("failed to read the policy ConfigMap: %w", err)
			}
			policy = []byte(cm.Data["policy.yaml"])
		}
		sa := d.Spec.Template.Spec.ServiceAccountName
		if sa == "" {
			return nil, errors.New("the Deployment names no ServiceAccount")
		}
		kubeconfig = filepath.Join(opts.Dir, "kubeconfig")
		if err := WriteImpersonatingKubeconfig(opts.AdminKubeconfig, kubeconfig, ServiceAccount(d.Namespace, sa)); err != nil {
			return nil, err
		}
	}
	if opts.PodName != "" {
		podName = opts.PodName
	}
	if opts.PodNamespace != "" {
		podNamespace = opts.PodNamespace
	}
	set := map[string]string{
		"kubeconfig":                kubeconfig,
		"metrics-bind-address":      cluster.HostPort(ctl.MetricsPort),
		"health-probe-bind-address": cluster.HostPort(ctl.HealthPort),
		"pod-name":                  podName,
		"pod-namespace":             podNamespace,
	}
	if policy != nil {
		ctl.PolicyPath = filepath.Join(opts.Dir, "policy.yaml")
		if err := os.WriteFile(ctl.PolicyPath, policy, 0o600); err != nil {
			return nil, err
		}
		set["policy"] = ctl.PolicyPath
	}
	if len(opts.WebhookCertPEM) > 0 {
		certDir := filepath.Join(opts.Dir, "webhook-certs")
		if err := os.Mkdir(certDir, 0o700); err != nil {
			return nil, err
		}
		if _, _, err := (&cluster.KeyPair{CertPEM: opts.WebhookCertPEM, KeyPEM: opts.WebhookKeyPEM}).WriteFiles(certDir, "tls"); err != nil {
			return nil, err
		}
		if ctl.WebhookPort, err = cluster.FreePort(); err != nil {
			return nil, err
		}
		set["webhook-cert-dir"] = certDir
		set["webhook-host"] = "127.0.0.1"
		set["webhook-port"] = strconv.Itoa(ctl.WebhookPort)
	}
	for k, v := range opts.Args {
		set[k] = v
	}
	if ctl.Args, err = OverrideArgs(baseArgs, set); err != nil {
		return nil, err
	}
	if opts.Deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.Deadline)
		defer cancel()
	}
	// Without a chart, nothing else installs the inventory's CRD.
	if v, _ := FlagValue(ctl.Args, "inventory"); opts.Deployment == nil && v != "false" {
		cfg, err := clientcmd.BuildConfigFromFlags("", opts.AdminKubeconfig)
		if err != nil {
			return nil, err
		}
		if err := cluster.InstallInventoryCRD(ctx, cfg); err != nil {
			return nil, err
		}
	}
	if err := ctl.Start(ctx); err != nil {
		return nil, err
	}
	return ctl, nil
}

// Start starts the process (again, after Stop: a restarted pod, with the
// same args, ports and policy file) and waits until its /readyz answers or
// ctx ends. A process that does not become ready is killed.
func (c *Controller) Start(ctx context.Context) error {
	c.mu.Lock()
	if c.proc != nil && !c.proc.exited() {
		c.mu.Unlock()
		return errors.New("nodecsr-controller is running")
	}
	logFile, err := os.OpenFile(c.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	p := &process{cmd: exec.Command(c.binary, c.Args...), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := cluster.Spawn(p.cmd); err != nil {
		c.mu.Unlock()
		_ = logFile.Close()
		return err
	}
	c.proc, c.stopping = p, false
	c.mu.Unlock()
	go func() {
		p.err = p.cmd.Wait()
		_ = logFile.Close()
		close(p.done)
	}()

	ready := "http://" + cluster.HostPort(c.HealthPort) + "/readyz"
	err = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		if p.exited() {
			return false, fmt.Errorf("nodecsr-controller exited: %v", p.err)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, ready, nil)
		if err != nil {
			return false, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, nil
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("nodecsr-controller (%s) did not become ready: %w; last lines of its log:\n%s", strings.Join(c.Args, " "), err, Tail(c.LogPath, 40))
	}
	return nil
}

// Stop sends SIGTERM and waits for the process to exit; if ctx ends first,
// it is killed. SIGTERM stops nodecsr-controller gracefully, with exit
// status 0: anything else is an error. Stopping a stopped process does
// nothing.
func (c *Controller) Stop(ctx context.Context) error {
	c.mu.Lock()
	p := c.proc
	c.stopping = true
	c.mu.Unlock()
	if p == nil || p.exited() {
		// Not started, stopped already, or exited by itself (Err's business).
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-ctx.Done():
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("nodecsr-controller did not stop after SIGTERM: %w", ctx.Err())
	}
	if p.err != nil {
		return fmt.Errorf("nodecsr-controller exited with %v after SIGTERM", p.err)
	}
	return nil
}

// Poll polls cond every 50 ms until it is done or the test's deadline nears
// (testutil.Poll); a controller that has exited by itself ends it at once.
func (c *Controller) Poll(t testing.TB, cond func(context.Context) (bool, error)) error {
	t.Helper()
	return testutil.Poll(t, 50*time.Millisecond, func(ctx context.Context) (bool, error) {
		if err := c.Err(); err != nil {
			return false, err
		}
		return cond(ctx)
	})
}

// Err is not nil once the process has exited without being stopped.
func (c *Controller) Err() error {
	c.mu.Lock()
	p, stopping := c.proc, c.stopping
	c.mu.Unlock()
	if p == nil || stopping || !p.exited() {
		return nil
	}
	return fmt.Errorf("nodecsr-controller exited by itself (%v); last lines of its log:\n%s", p.err, Tail(c.LogPath, 40))
}

// WritePolicy replaces the controller's policy file atomically (write and
// rename, as the kubelet updates a ConfigMap volume); the controller reloads
// it at its next poll (--policy-reload-interval).
func (c *Controller) WritePolicy(data []byte) error {
	if c.PolicyPath == "" {
		return errors.New("nodecsr-controller runs without a policy file")
	}
	return testutil.WriteFileAtomically(c.PolicyPath, data)
}

// MetricsURL is the address of its /metrics.
func (c *Controller) MetricsURL() string {
	return "http://" + cluster.HostPort(c.MetricsPort) + "/metrics"
}

// MetricSum scrapes the controller's /metrics and sums the series of name
// whose labels include every label in want, as testutil.MetricSum does for
// a registry: counter and gauge values, histogram sample counts; a metric
// not exported yet sums to 0. A process that is not running cannot be
// scraped: that is an error.
func (c *Controller) MetricSum(ctx context.Context, name string, want map[string]string) (float64, error) {
	g, err := testutil.Scrape(ctx, c.MetricsURL())
	if err != nil {
		return 0, err
	}
	return testutil.MetricSum(g, name, want)
}

// Metric scrapes the controller's /metrics and returns the value of the
// sample name{labels} (labels as Prometheus prints them, sorted by name,
// e.g. `result="success"`; empty for none). A sample not exported yet is 0.
func (c *Controller) Metric(ctx context.Context, name, labels string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.MetricsURL(), nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("failed to scrape nodecsr-controller's metrics: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("failed to scrape nodecsr-controller's metrics: %s", resp.Status)
	}
	want := name
	if labels != "" {
		want += "{" + labels + "}"
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, want+" "); ok {
			f, err := strconv.ParseFloat(strings.Fields(v)[0], 64)
			if err != nil {
				return 0, fmt.Errorf("failed to parse %q: %w", line, err)
			}
			return f, nil
		}
	}
	return 0, sc.Err()
}

// WriteImpersonatingKubeconfig writes the kubeconfig at adminKubeconfig to
// path with every user impersonating id, so a process using it has exactly
// id's permissions.
func WriteImpersonatingKubeconfig(adminKubeconfig, path string, id rest.ImpersonationConfig) error {
	kc, err := clientcmd.LoadFromFile(adminKubeconfig)
	if err != nil {
		return fmt.Errorf("failed to load %s: %w", adminKubeconfig, err)
	}
	for _, ai := range kc.AuthInfos {
		ai.Impersonate = id.UserName
		ai.ImpersonateGroups = id.Groups
	}
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("failed to write %s: %w", path, err)
	}
	return nil
}

// OverrideArgs replaces the --name=value args named in set and adds the rest
// of set, sorted by name. The chart writes every flag as --name=value;
// anything else is an error.
func OverrideArgs(args []string, set map[string]string) ([]string, error) {
	var out []string
	for _, a := range args {
		name, _, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !ok {
			return nil, fmt.Errorf("arg %q is not --name=value", a)
		}
		if _, replaced := set[name]; !replaced {
			out = append(out, a)
		}
	}
	names := make([]string, 0, len(set))
	for name := range set {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		out = append(out, "--"+name+"="+set[name])
	}
	return out, nil
}

// FlagValue is the value of --name=value in args.
func FlagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// Tail returns the last n lines of the file at path (empty when it cannot
// be read).
func Tail(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
