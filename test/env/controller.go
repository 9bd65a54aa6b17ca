package env

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nodecsr/nodecsr/test/cluster"
)

// ControllerOptions configures StartController.
type ControllerOptions struct {
	// Binary is the nodecsr-controller executable. Required.
	Binary string
	// Deployment is the chart's installed Deployment: its first container's
	// args are the controller's, its ServiceAccount the controller's
	// identity, and its "<name>-policy" ConfigMap the policy. Required.
	Deployment *appsv1.Deployment
	// Admin reads the policy ConfigMap. Required.
	Admin kubernetes.Interface
	// AdminKubeconfig is a system:masters kubeconfig; the controller gets a
	// copy that impersonates the Deployment's ServiceAccount. Required.
	AdminKubeconfig string
	// WebhookCertPEM and WebhookKeyPEM, when set, are the webhook server's
	// serving pair, and the webhook server listens on 127.0.0.1. Unset, the
	// Deployment's webhook flags (none when the chart's webhook is off) are
	// left alone.
	WebhookCertPEM, WebhookKeyPEM []byte
	// PodName is --pod-name (default: the Deployment's name + "-0").
	PodName string
	// Args add or override --name=value args.
	Args map[string]string
	// Deadline bounds the wait for /readyz (default: 2 minutes).
	Deadline time.Duration
}

// Controller is a running nodecsr-controller started by StartController.
type Controller struct {
	// WebhookPort, MetricsPort and HealthPort are its ports on 127.0.0.1
	// (WebhookPort is 0 without a serving pair).
	WebhookPort, MetricsPort, HealthPort int
	// PolicyPath is the policy file it reads and watches.
	PolicyPath string
	// LogPath is its log file.
	LogPath string
	// Args are its command-line args.
	Args []string
}

// StartController runs the real nodecsr-controller binary with the
// Deployment's own args, overriding only what belongs to a pod (kubeconfig,
// policy file, addresses, pod identity), as the chart's ServiceAccount (the
// admin impersonating it), and waits for its /readyz. It is stopped with
// SIGTERM when the test ends; a non-zero exit fails the test.
func StartController(ctx context.Context, t testing.TB, opts ControllerOptions) *Controller {
	t.Helper()
	d := opts.Deployment
	work := t.TempDir()
	cm, err := opts.Admin.CoreV1().ConfigMaps(d.Namespace).Get(ctx, d.Name+"-policy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctl := &Controller{PolicyPath: filepath.Join(work, "policy.yaml"), LogPath: filepath.Join(work, "nodecsr-controller.log")}
	if err := os.WriteFile(ctl.PolicyPath, []byte(cm.Data["policy.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	sa := d.Spec.Template.Spec.ServiceAccountName
	if sa == "" {
		t.Fatal("the Deployment names no ServiceAccount")
	}
	kubeconfig := filepath.Join(work, "kubeconfig")
	if err := WriteImpersonatingKubeconfig(opts.AdminKubeconfig, kubeconfig, ServiceAccount(d.Namespace, sa)); err != nil {
		t.Fatal(err)
	}
	if ctl.MetricsPort, err = cluster.FreePort(); err != nil {
		t.Fatal(err)
	}
	if ctl.HealthPort, err = cluster.FreePort(); err != nil {
		t.Fatal(err)
	}
	podName := opts.PodName
	if podName == "" {
		podName = d.Name + "-0"
	}
	set := map[string]string{
		"kubeconfig":                kubeconfig,
		"policy":                    ctl.PolicyPath,
		"metrics-bind-address":      cluster.HostPort(ctl.MetricsPort),
		"health-probe-bind-address": cluster.HostPort(ctl.HealthPort),
		"pod-name":                  podName,
		"pod-namespace":             d.Namespace,
	}
	if len(opts.WebhookCertPEM) > 0 {
		certDir := filepath.Join(work, "webhook-certs")
		if err := os.Mkdir(certDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if _, _, err := (&cluster.KeyPair{CertPEM: opts.WebhookCertPEM, KeyPEM: opts.WebhookKeyPEM}).WriteFiles(certDir, "tls"); err != nil {
			t.Fatal(err)
		}
		if ctl.WebhookPort, err = cluster.FreePort(); err != nil {
			t.Fatal(err)
		}
		set["webhook-cert-dir"] = certDir
		set["webhook-host"] = "127.0.0.1"
		set["webhook-port"] = strconv.Itoa(ctl.WebhookPort)
	}
	for k, v := range opts.Args {
		set[k] = v
	}
	if ctl.Args, err = OverrideArgs(d.Spec.Template.Spec.Containers[0].Args, set); err != nil {
		t.Fatal(err)
	}

	logFile, err := os.Create(ctl.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(opts.Binary, ctl.Args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cluster.Spawn(cmd); err != nil {
		_ = logFile.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	var exitErr error
	go func() {
		exitErr = cmd.Wait()
		_ = logFile.Close()
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
			// SIGTERM stops nodecsr-controller gracefully: exit status 0.
			if exitErr != nil {
				t.Errorf("nodecsr-controller exited with %v", exitErr)
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Error("nodecsr-controller did not stop within 30s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("nodecsr-controller's log (%s), last lines:\n%s", strings.Join(ctl.Args, " "), Tail(ctl.LogPath, 40))
		}
	})

	deadline := opts.Deadline
	if deadline <= 0 {
		deadline = 2 * time.Minute
	}
	ready := "http://" + cluster.HostPort(ctl.HealthPort) + "/readyz"
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, deadline, true, func(ctx context.Context) (bool, error) {
		select {
		case <-done:
			return false, fmt.Errorf("nodecsr-controller exited: %v", exitErr)
		default:
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
	}); err != nil {
		t.Fatalf("nodecsr-controller did not become ready: %v", err)
	}
	return ctl
}

// WritePolicy replaces the controller's policy file atomically (write and
// rename, as the kubelet updates a ConfigMap volume); the controller reloads
// it at its next poll (--policy-reload-interval).
func (c *Controller) WritePolicy(data []byte) error {
	tmp := c.PolicyPath + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("failed to write the policy: %w", err)
	}
	if err := os.Rename(tmp, c.PolicyPath); err != nil {
		return fmt.Errorf("failed to replace the policy: %w", err)
	}
	return nil
}

// Metric scrapes the controller's /metrics and returns the value of the
// sample name{labels} (labels as Prometheus prints them, sorted by name,
// e.g. `result="success"`; empty for none). A sample not exported yet is 0.
func (c *Controller) Metric(ctx context.Context, name, labels string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+cluster.HostPort(c.MetricsPort)+"/metrics", nil)
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
