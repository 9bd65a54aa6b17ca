package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"
)

// KubeletBinaryEnv names a kubelet binary StartKubelet runs instead of the
// assets' kubelet (for example an older release, to test compatibility).
const KubeletBinaryEnv = "NODECSR_KUBELET_BINARY"

// Files in a kubelet's certificate folder, as the kubelet names them.
const (
	// KubeletClientCurrent is the symlink to the client certificate and key
	// in use (one PEM file holding both).
	KubeletClientCurrent = "kubelet-client-current.pem"
	// KubeletClientPendingKey is the private key of a client certificate
	// request in flight; a kubelet that finds one reuses it.
	KubeletClientPendingKey = "kubelet-client.key.tmp"
	// KubeletServerCurrent is the symlink to the serving certificate and
	// key in use (serverTLSBootstrap), one PEM file holding both.
	KubeletServerCurrent = "kubelet-server-current.pem"
)

// KubeletOptions configures StartKubelet. NodeName is required; everything
// else is optional.
type KubeletOptions struct {
	// NodeName is the node the kubelet runs as (--hostname-override): the
	// name in its certificate requests and its Node object.
	NodeName string
	// Binary is the kubelet executable. Default: $NODECSR_KUBELET_BINARY,
	// else the kubelet in the control plane's assets folder.
	Binary string
	// BootstrapToken, when set, is written as the kubelet's
	// --bootstrap-kubeconfig: with no valid client certificate the kubelet
	// requests one with this token (TLS bootstrap).
	BootstrapToken *BootstrapToken
	// ClientCertPEM and ClientKeyPEM, when set, pre-seed the certificate
	// folder the way the kubelet leaves it: a timestamped
	// kubelet-client-<time>.pem holding both, kubelet-client-current.pem
	// pointing to it, and a --kubeconfig that uses it. See
	// Cluster.IssueKubeletClientCert for certificates past their rotation
	// deadline or expired.
	ClientCertPEM, ClientKeyPEM []byte
	// PendingKeyPEM, when set, is written as kubelet-client.key.tmp, the
	// private key of an interrupted certificate request. The synchronous
	// bootstrap (RotateCertificates off) reuses it (for example an RSA key,
	// which adds key encipherment to the usages); the certificate manager
	// of the rotating path always generates a new ECDSA key.
	PendingKeyPEM []byte
	// RotateCertificates is the kubelet's rotateCertificates: on, the
	// kubelet bootstraps in the background and renews its client
	// certificate as it nears expiry; off, the bootstrap is synchronous and
	// there is no renewal.
	RotateCertificates bool
	// ServerTLSBootstrap is the kubelet's serverTLSBootstrap: on, the
	// kubelet also requests its serving certificate through a CSR (signer
	// kubernetes.io/kubelet-serving) once its Node has addresses, and
	// renews it as it nears expiry (with RotateCertificates).
	ServerTLSBootstrap bool
	// ServingCertPEM and ServingKeyPEM, when set, pre-seed the certificate
	// folder with a serving certificate as the kubelet stores one
	// (kubelet-server-<time>.pem and kubelet-server-current.pem): with
	// ServerTLSBootstrap the kubelet serves it until it renews it.
	ServingCertPEM, ServingKeyPEM []byte
	// NetNS, when set, runs the kubelet inside that network namespace
	// (only the network: nsenter --net) as a node with an address of its
	// own: --node-ip is NetNS.NodeIP(), the kubelet serves on it, its
	// healthz listens on 127.0.0.1 inside, and it reaches the API server
	// through a Forwarder on the namespace's loopback (its kubeconfigs say
	// https://127.0.0.1:<port>, which the API server's certificate names).
	// The caller deletes the namespace after Stop.
	NetNS *NetNS
	// RuntimeEndpoint is the container runtime's CRI endpoint
	// (unix:///path). Empty: a unix socket that accepts connections,
	// completes the HTTP/2 handshake and never answers a call, so the
	// kubelet waits for its runtime (up to runtimeRequestTimeout, which is
	// then an hour) while its certificate manager bootstraps and renews;
	// it never registers its Node, heartbeats or runs pods. With a socket
	// that does not exist the kubelet exits before it sends a CSR.
	RuntimeEndpoint string
	// Config is merged into the KubeletConfiguration StartKubelet writes
	// (maps are merged key by key, every other value replaces the default).
	Config map[string]any
	// Flags add or override command-line flags (name without leading
	// dashes → value), for example {"v": "4"}.
	Flags map[string]string
}

// Kubelet is a real kubelet process started by StartKubelet, with its own
// root, certificate and configuration folders.
type Kubelet struct {
	c       *Cluster
	opts    KubeletOptions
	binary  string
	dir     string
	proc    *process
	runtime *stubRuntime
	// apiFwd forwards the kubelet's API server connections out of its
	// network namespace (NetNS); apiURL is the API server as the kubelet
	// reaches it.
	apiFwd   *Forwarder
	apiURL   string
	port     int
	stopOnce sync.Once
	stopErr  error

	// qosRoot is the cgroup under which the kubelet creates its kubepods
	// cgroups ("" when cgroupsPerQOS is off: it creates none).
	qosRoot string
}

// kubeletsMu guards the registries the clean-up and the leftover check use.
var (
	kubeletsMu      sync.Mutex
	kubeletBinaries = map[string]bool{} // resolved paths of every binary started
	kubeletVersions = map[string]string{}
	// kubeletQoS records, per kubelet folder, the cgroups the kubelet may
	// create (cgroupsPerQOS) and those that existed before it started.
	kubeletQoS       = map[string]qosRecord{}
	errKubeletNoRoot = errors.New("the kubelet needs root (cgroups, mounts, its root folder)")
)

// qosCgroupPrefix names the cgroups a kubelet with cgroupsPerQOS creates
// under its cgroupRoot: kubepods (cgroupfs driver) or kubepods.slice
// (systemd driver), with the QoS classes and pods inside.
const qosCgroupPrefix = "kubepods"

// qosRecord is one kubelet's kubepods cgroups: under root, and those that
// were already there when it first started (not its own).
type qosRecord struct {
	root   string
	before map[string]bool
}

// StartKubelet runs a real kubelet for opts.NodeName against the cluster and
// returns once the process has started (it does not wait for a
// certificate). Its folders live under Dir()/kubelets, its log in
// Dir()/logs. Every address and port it listens on is on 127.0.0.1, or, in
// a network namespace (KubeletOptions.NetNS), on the node's address there
// and the namespace's loopback.
//
// With t set, a kubelet that is not root skips the test, and the kubelet is
// stopped and removed (Stop) when the test ends, with the tail of its log
// when the test failed; with t nil the caller calls Stop. The process also
// dies with the test binary (Pdeathsig), like the control plane.
func (c *Cluster) StartKubelet(ctx context.Context, t testing.TB, opts KubeletOptions) (*Kubelet, error) {
	if t != nil {
		t.Helper()
	}
	if os.Geteuid() != 0 {
		if t != nil {
			t.Skip("skipping: the kubelet needs root (cgroups, mounts); run the suite as root")
		}
		return nil, errKubeletNoRoot
	}
	if c.isStopped() {
		return nil, errStopped
	}
	if opts.NodeName == "" {
		return nil, errors.New("KubeletOptions.NodeName is required")
	}
	if (len(opts.ClientCertPEM) == 0) != (len(opts.ClientKeyPEM) == 0) {
		return nil, errors.New("KubeletOptions.ClientCertPEM and ClientKeyPEM go together")
	}
	if (len(opts.ServingCertPEM) == 0) != (len(opts.ServingKeyPEM) == 0) {
		return nil, errors.New("KubeletOptions.ServingCertPEM and ServingKeyPEM go together")
	}
	binary, err := c.kubeletBinary(opts.Binary)
	if err != nil {
		return nil, err
	}
	base := filepath.Join(c.dir, "kubelets")
	if err := os.MkdirAll(base, 0o700); err != nil {
		return nil, fmt.Errorf("failed to create %s: %w", base, err)
	}
	// A short folder name: the runtime socket's path must fit in 108 bytes.
	dir, err := os.MkdirTemp(base, "k")
	if err != nil {
		return nil, fmt.Errorf("failed to create the kubelet's folder: %w", err)
	}
	k := &Kubelet{c: c, opts: opts, binary: binary, dir: dir, apiURL: c.host}
	if err := k.prepare(); err != nil {
		_ = k.Stop()
		return nil, err
	}
	if t != nil {
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("kubelet %s (%s):\n%s", opts.NodeName, k.LogPath(), tail(k.LogPath(), 40))
			}
			if err := k.Stop(); err != nil {
				t.Errorf("failed to stop the kubelet of %s: %v", opts.NodeName, err)
			}
		})
	}
	if err := k.start(ctx); err != nil {
		if t == nil {
			_ = k.Stop()
		}
		return nil, err
	}
	return k, nil
}

// kubeletBinary resolves the kubelet binary to run and records it for the
// leftover check.
func (c *Cluster) kubeletBinary(binary string) (string, error) {
	if binary == "" {
		binary = os.Getenv(KubeletBinaryEnv)
	}
	if binary == "" {
		assets, err := FindAssets(c.opts.AssetsDir)
		if err != nil {
			return "", err
		}
		binary = filepath.Join(assets, "kubelet")
	}
	abs, err := filepath.Abs(binary)
	if err != nil {
		return "", fmt.Errorf("failed to resolve kubelet binary %s: %w", binary, err)
	}
	if resolved, err := filepath.EvalSymlinks(abs); err == nil {
		abs = resolved
	}
	if fi, err := os.Stat(abs); err != nil || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("kubelet binary %s is missing or not executable", abs)
	}
	kubeletsMu.Lock()
	kubeletBinaries[abs] = true
	kubeletsMu.Unlock()
	return abs, nil
}

// Folders and files of a kubelet.
func (k *Kubelet) path(name string) string { return filepath.Join(k.dir, name) }

// Dir is the kubelet's own folder: root, certificate folder, kubeconfigs
// and configuration. Stop removes it.
func (k *Kubelet) Dir() string { return k.dir }

// RootDir is the kubelet's --root-dir.
func (k *Kubelet) RootDir() string { return k.path("root") }

// CertDir is the kubelet's --cert-dir.
func (k *Kubelet) CertDir() string { return k.path("pki") }

// KubeconfigPath is the kubelet's --kubeconfig: written by StartKubelet for a
// pre-seeded certificate, else by the kubelet after its bootstrap.
func (k *Kubelet) KubeconfigPath() string { return k.path("kubelet.conf") }

// ConfigPath is the kubelet's --config (KubeletConfiguration).
func (k *Kubelet) ConfigPath() string { return k.path("config.yaml") }

// LogPath is the kubelet's log file (stdout and stderr), kept in the
// cluster's logs folder after Stop; a restarted kubelet appends to it.
func (k *Kubelet) LogPath() string {
	return k.c.logPath("kubelet-" + k.opts.NodeName + "-" + filepath.Base(k.dir))
}

// NodeName is the node the kubelet runs as.
func (k *Kubelet) NodeName() string { return k.opts.NodeName }

// Binary is the kubelet executable.
func (k *Kubelet) Binary() string { return k.binary }

// prepare writes the kubelet's folders, credentials and configuration.
func (k *Kubelet) prepare() error {
	for _, d := range []string{k.RootDir(), k.CertDir(), k.path("manifests"), k.path("volume-plugins"), k.path("pod-logs")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("failed to create %s: %w", d, err)
		}
	}
	if err := os.WriteFile(k.path("ca.crt"), k.c.clients.CertPEM, 0o600); err != nil {
		return fmt.Errorf("failed to write the kubelet's client CA: %w", err)
	}
	if ns := k.opts.NetNS; ns != nil {
		u, err := url.Parse(k.c.host)
		if err != nil {
			return fmt.Errorf("failed to parse the API server URL %q: %w", k.c.host, err)
		}
		if k.apiFwd, err = ns.Forward(0, u.Host); err != nil {
			return fmt.Errorf("failed to forward the API server into the kubelet's namespace: %w", err)
		}
		k.apiURL = "https://" + HostPort(k.apiFwd.Port())
	}
	if k.opts.BootstrapToken != nil {
		cfg := k.c.BootstrapConfig(*k.opts.BootstrapToken)
		cfg.Host = k.apiURL
		if err := WriteKubeconfig(k.path("bootstrap-kubelet.conf"), cfg); err != nil {
			return fmt.Errorf("failed to write the bootstrap kubeconfig: %w", err)
		}
	}
	if len(k.opts.ClientCertPEM) > 0 {
		if err := k.SeedClientCert(k.opts.ClientCertPEM, k.opts.ClientKeyPEM); err != nil {
			return err
		}
	}
	if len(k.opts.ServingCertPEM) > 0 {
		if err := k.SeedServingCert(k.opts.ServingCertPEM, k.opts.ServingKeyPEM); err != nil {
			return err
		}
	}
	if len(k.opts.PendingKeyPEM) > 0 {
		if err := os.WriteFile(filepath.Join(k.CertDir(), KubeletClientPendingKey), k.opts.PendingKeyPEM, 0o600); err != nil {
			return fmt.Errorf("failed to write %s: %w", KubeletClientPendingKey, err)
		}
	}
	endpoint := k.opts.RuntimeEndpoint
	if endpoint == "" {
		rt, err := startStubRuntime(k.path("runtime.sock"))
		if err != nil {
			return err
		}
		k.runtime = rt
		endpoint = "unix://" + rt.path
	}
	cfg, err := k.configuration(endpoint)
	if err != nil {
		return err
	}
	if qos, _ := cfg["cgroupsPerQOS"].(bool); qos || cfg["cgroupsPerQOS"] == nil {
		k.qosRoot = "/"
		if root, _ := cfg["cgroupRoot"].(string); root != "" {
			k.qosRoot = root
		}
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("failed to encode the KubeletConfiguration: %w", err)
	}
	if err := os.WriteFile(k.ConfigPath(), data, 0o600); err != nil {
		return fmt.Errorf("failed to write the KubeletConfiguration: %w", err)
	}

	flags := map[string]string{
		"config":            k.ConfigPath(),
		"kubeconfig":        k.KubeconfigPath(),
		"cert-dir":          k.CertDir(),
		"root-dir":          k.RootDir(),
		"hostname-override": k.opts.NodeName,
		"v":                 "2",
	}
	if k.opts.BootstrapToken != nil {
		flags["bootstrap-kubeconfig"] = k.path("bootstrap-kubelet.conf")
	}
	if k.opts.NetNS != nil {
		flags["node-ip"] = k.opts.NetNS.NodeIP().String()
	}
	maps.Copy(flags, k.opts.Flags)
	path, args := k.binary, flagList(flags)
	if ns := k.opts.NetNS; ns != nil {
		// nsenter execs the kubelet: same process, its own arguments.
		cmd := ns.Command(context.Background(), path, args...)
		path, args = cmd.Path, cmd.Args[1:]
	}
	k.proc = &process{
		name: "kubelet " + k.opts.NodeName, path: path, logPath: k.LogPath(),
		args: args,
		// The kubelet refuses a bad flag or configuration within
		// milliseconds; a kubelet still up after this has started.
		startAfter: 300 * time.Millisecond,
	}
	return nil
}

// configuration is the KubeletConfiguration: cgroup v1 and swap tolerated,
// webhook authentication and authorization, everything on 127.0.0.1 (in a
// network namespace: the kubelet's server on the node's address), every
// path under the kubelet's folder, and, without a real runtime, no QoS
// cgroups and no node-allocatable enforcement.
func (k *Kubelet) configuration(endpoint string) (map[string]any, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	k.port = port
	address := "127.0.0.1"
	if k.opts.NetNS != nil {
		address = k.opts.NetNS.NodeIP().String()
	}
	healthz, err := FreePort()
	if err != nil {
		return nil, err
	}
	cfg := map[string]any{
		"apiVersion":               "kubelet.config.k8s.io/v1beta1",
		"kind":                     "KubeletConfiguration",
		"failCgroupV1":             false,
		"cgroupDriver":             "cgroupfs",
		"failSwapOn":               false,
		"rotateCertificates":       k.opts.RotateCertificates,
		"serverTLSBootstrap":       k.opts.ServerTLSBootstrap,
		"containerRuntimeEndpoint": endpoint,
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": true},
			"x509":      map[string]any{"clientCAFile": k.path("ca.crt")},
		},
		"authorization":      map[string]any{"mode": "Webhook"},
		"address":            address,
		"port":               port,
		"readOnlyPort":       0,
		"healthzBindAddress": "127.0.0.1",
		"healthzPort":        healthz,
		"resolvConf":         "",
		"staticPodPath":      k.path("manifests"),
		"volumePluginDir":    k.path("volume-plugins"),
		"podLogsDir":         k.path("pod-logs"),
	}
	if k.opts.RuntimeEndpoint == "" {
		cfg["cgroupsPerQOS"] = false
		cfg["enforceNodeAllocatable"] = []any{}
		// The stub runtime never answers: the kubelet waits this long
		// for it before giving up.
		cfg["runtimeRequestTimeout"] = "1h"
	}
	mergeConfig(cfg, k.opts.Config)
	if p, ok := cfg["port"].(int); ok {
		k.port = p
	}
	return cfg, nil
}

// mergeConfig merges over into dst: maps key by key, other values replaced.
func mergeConfig(dst, over map[string]any) {
	for key, v := range over {
		if om, ok := v.(map[string]any); ok {
			if dm, ok := dst[key].(map[string]any); ok {
				mergeConfig(dm, om)
				continue
			}
		}
		dst[key] = v
	}
}

// start starts the kubelet process. The first start records the kubepods
// cgroups already there, which are not the kubelet's to remove.
func (k *Kubelet) start(ctx context.Context) error {
	if k.qosRoot != "" {
		kubeletsMu.Lock()
		if _, ok := kubeletQoS[k.dir]; !ok {
			before := map[string]bool{}
			cgs, _ := CgroupsNamed(k.qosRoot, qosCgroupPrefix)
			for _, cg := range cgs {
				before[cg] = true
			}
			kubeletQoS[k.dir] = qosRecord{root: k.qosRoot, before: before}
		}
		kubeletsMu.Unlock()
	}
	if err := k.proc.start(ctx, 30*time.Second); err != nil {
		return fmt.Errorf("failed to start the kubelet of %s: %w", k.opts.NodeName, err)
	}
	return nil
}

// StopProcess stops the kubelet process (SIGTERM, then SIGKILL of its
// process group) and unmounts what it left mounted under its root folder,
// keeping its folders, so that Restart brings the same node back. It is safe
// to call when the process has already exited.
func (k *Kubelet) StopProcess() error {
	if k.proc == nil {
		return nil
	}
	// Kubelets before v1.36 wait for the stub runtime outside their
	// signal context: they ignore SIGTERM and are killed after the grace.
	err := k.proc.stop(5 * time.Second)
	return errors.Join(err, UnmountUnder(k.dir))
}

// Restart stops the kubelet and starts it again with the same folders,
// configuration and flags, as a node reboot would.
func (k *Kubelet) Restart(ctx context.Context) error {
	if err := k.StopProcess(); err != nil {
		return err
	}
	return k.start(ctx)
}

// Stop stops the kubelet and removes everything it created: its process
// group, mounts under its folder, its kubepods cgroups (see removeQoS), its
// runtime socket and its folders. The log stays with the cluster's logs. It
// is safe to call more than once.
func (k *Kubelet) Stop() error {
	k.stopOnce.Do(func() {
		errs := []error{k.StopProcess()}
		if k.runtime != nil {
			k.runtime.close()
		}
		if k.apiFwd != nil {
			errs = append(errs, k.apiFwd.Close())
		}
		errs = append(errs, k.removeQoS())
		errs = append(errs, os.RemoveAll(k.dir))
		k.stopErr = errors.Join(errs...)
	})
	return k.stopErr
}

// Running reports whether the kubelet process is running. Without a
// runtime the kubelet gives up after runtimeRequestTimeout.
func (k *Kubelet) Running() bool { return k.proc != nil && k.proc.running() }

// PID is the kubelet's process ID, or 0 when it is not running.
func (k *Kubelet) PID() int {
	if k.proc == nil {
		return 0
	}
	k.proc.mu.Lock()
	defer k.proc.mu.Unlock()
	if k.proc.cmd == nil {
		return 0
	}
	return k.proc.cmd.Process.Pid
}

// Log returns the kubelet's log so far.
func (k *Kubelet) Log() string {
	data, _ := os.ReadFile(k.LogPath())
	return string(data)
}

// Version is the kubelet's release as `kubelet --version` prints it
// ("Kubernetes v1.37.2"), without the "Kubernetes " prefix.
func (k *Kubelet) Version() (string, error) { return KubeletVersion(k.binary) }

// KubeletVersion runs `binary --version` once per binary and returns the
// release it prints, without the "Kubernetes " prefix.
func KubeletVersion(binary string) (string, error) {
	kubeletsMu.Lock()
	v, ok := kubeletVersions[binary]
	kubeletsMu.Unlock()
	if ok {
		return v, nil
	}
	out, err := exec.Command(binary, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("failed to run %s --version: %w", binary, err)
	}
	v = strings.TrimPrefix(strings.TrimSpace(string(out)), "Kubernetes ")
	kubeletsMu.Lock()
	kubeletVersions[binary] = v
	kubeletsMu.Unlock()
	return v, nil
}

// CurrentClientCert reads the certificate kubelet-client-current.pem points
// to (os.ErrNotExist before the kubelet has one).
func (k *Kubelet) CurrentClientCert() (*x509.Certificate, error) {
	return k.currentCert(KubeletClientCurrent)
}

// CurrentServingCert reads the certificate kubelet-server-current.pem points
// to (os.ErrNotExist before the kubelet has one): with ServerTLSBootstrap,
// the one it serves.
func (k *Kubelet) CurrentServingCert() (*x509.Certificate, error) {
	return k.currentCert(KubeletServerCurrent)
}

func (k *Kubelet) currentCert(name string) (*x509.Certificate, error) {
	data, err := os.ReadFile(filepath.Join(k.CertDir(), name))
	if err != nil {
		return nil, err
	}
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, fmt.Errorf("no certificate in %s", name)
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

// Port is the port of the kubelet's server (on 127.0.0.1, or on
// NetNS.NodeIP() in a network namespace).
func (k *Kubelet) Port() int { return k.port }

// APIServerURL is the API server as the kubelet reaches it: Cluster.Host(),
// or the Forwarder on its namespace's loopback.
func (k *Kubelet) APIServerURL() string { return k.apiURL }

// ClientConfig is a rest.Config that authenticates with the kubelet's
// current client certificate and key, as the kubelet does.
func (k *Kubelet) ClientConfig() (*rest.Config, error) {
	data, err := os.ReadFile(filepath.Join(k.CertDir(), KubeletClientCurrent))
	if err != nil {
		return nil, fmt.Errorf("failed to read the kubelet's client certificate: %w", err)
	}
	return k.c.ConfigFromKeyPair(data, data), nil
}

// SeedClientCert writes certPEM and keyPEM into the certificate folder as
// the kubelet stores a client certificate (kubelet-client-<time>.pem and the
// kubelet-client-current.pem symlink) and points --kubeconfig at it. On a
// stopped kubelet it stands for a certificate the node had before; Restart
// then starts the kubelet with it.
func (k *Kubelet) SeedClientCert(certPEM, keyPEM []byte) error {
	current, err := k.seedPair("kubelet-client", KubeletClientCurrent, certPEM, keyPEM)
	if err != nil {
		return err
	}
	// The kubeconfig the kubelet writes after a bootstrap: it names the
	// current pair by path.
	kc := clientcmdapi.NewConfig()
	kc.Clusters["default-cluster"] = &clientcmdapi.Cluster{Server: k.apiURL, CertificateAuthorityData: k.c.serving.CertPEM}
	kc.AuthInfos["default-auth"] = &clientcmdapi.AuthInfo{ClientCertificate: current, ClientKey: current}
	kc.Contexts["default-context"] = &clientcmdapi.Context{Cluster: "default-cluster", AuthInfo: "default-auth"}
	kc.CurrentContext = "default-context"
	if err := clientcmd.WriteToFile(*kc, k.KubeconfigPath()); err != nil {
		return fmt.Errorf("failed to write the kubelet's kubeconfig: %w", err)
	}
	return nil
}

// SeedServingCert writes certPEM and keyPEM into the certificate folder as
// the kubelet stores a serving certificate it obtained through a CSR
// (kubelet-server-<time>.pem and the kubelet-server-current.pem symlink).
// With ServerTLSBootstrap the kubelet serves it, and renews it at its
// rotation deadline (or at once when its names no longer match the Node's
// addresses).
func (k *Kubelet) SeedServingCert(certPEM, keyPEM []byte) error {
	_, err := k.seedPair("kubelet-server", KubeletServerCurrent, certPEM, keyPEM)
	return err
}

// seedPair writes a certificate and its key as the kubelet's certificate
// store does: <prefix>-<notBefore>.pem holding both, and the current
// symlink pointing to it, which it returns.
func (k *Kubelet) seedPair(prefix, currentName string, certPEM, keyPEM []byte) (string, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return "", fmt.Errorf("the certificate seeded as %s holds no PEM certificate", currentName)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", fmt.Errorf("failed to parse the certificate seeded as %s: %w", currentName, err)
	}
	name := prefix + "-" + cert.NotBefore.UTC().Format("2006-01-02-15-04-05") + ".pem"
	pair := append(append(slices.Clone(certPEM), '\n'), keyPEM...)
	if err := os.WriteFile(filepath.Join(k.CertDir(), name), pair, 0o600); err != nil {
		return "", fmt.Errorf("failed to write %s: %w", name, err)
	}
	current := filepath.Join(k.CertDir(), currentName)
	tmp := current + ".seed"
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.Join(k.CertDir(), name), tmp); err != nil {
		return "", fmt.Errorf("failed to link %s: %w", currentName, err)
	}
	if err := os.Rename(tmp, current); err != nil {
		return "", fmt.Errorf("failed to link %s: %w", currentName, err)
	}
	return current, nil
}

// IssueKubeletClientCert issues a kubelet client certificate for node
// (CN=system:node:<node>, O=system:nodes, ECDSA P-256) signed by the cluster
// CA, valid from notBefore to notAfter, for pre-seeding a kubelet's
// certificate folder. The kubelet renews at a random point between 70 % and
// 90 % of the lifetime: a notBefore well in the past and a notAfter a little
// ahead (say -23h and +1h) give a certificate past its rotation deadline, a
// notAfter in the past an expired one.
func (c *Cluster) IssueKubeletClientCert(node string, notBefore, notAfter time.Time) (*KeyPair, error) {
	return issueKubeletCert(c.clients, node, x509.ExtKeyUsageClientAuth, nil, notBefore, notAfter)
}

// IssueKubeletServingCert issues a kubelet serving certificate for node
// (CN=system:node:<node>, O=system:nodes, server auth, ECDSA P-256) for the
// given IP addresses and DNS names, signed by ca (the cluster's, or another
// CA to stand for a certificate the API server must not trust), valid from
// notBefore to notAfter, for KubeletOptions.ServingCertPEM.
func IssueKubeletServingCert(ca *CA, node string, hosts []string, notBefore, notAfter time.Time) (*KeyPair, error) {
	if len(hosts) == 0 {
		return nil, errors.New("a serving certificate needs at least one IP address or DNS name")
	}
	return issueKubeletCert(ca, node, x509.ExtKeyUsageServerAuth, hosts, notBefore, notAfter)
}

func issueKubeletCert(ca *CA, node string, usage x509.ExtKeyUsage, hosts []string, notBefore, notAfter time.Time) (*KeyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("failed to generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("failed to draw a serial number: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("failed to issue a certificate for %s: %w", node, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("failed to marshal key: %w", err)
	}
	return &KeyPair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// KubeletLeftovers lists what the cluster's kubelets left behind: see
// KubeletLeftovers (the package function) with Dir()/kubelets.
func (c *Cluster) KubeletLeftovers() ([]string, error) {
	return KubeletLeftovers(filepath.Join(c.dir, "kubelets"))
}

// KubeletLeftovers lists what kubelets started under dir left behind: live
// processes whose executable is a kubelet binary StartKubelet ran and whose
// arguments or working folder name dir, mounts at or under dir, and
// kubelet cgroups (kubepods, kubelet, …) created since the first kubelet
// started. Empty means clean.
func KubeletLeftovers(dir string) ([]string, error) {
	var out []string
	kubeletsMu.Lock()
	binaries := maps.Clone(kubeletBinaries)
	qos := maps.Clone(kubeletQoS)
	kubeletsMu.Unlock()

	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("failed to list processes: %w", err)
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", p.Name(), "exe"))
		if err != nil {
			continue // gone, or a kernel thread
		}
		if !binaries[strings.TrimSuffix(exe, " (deleted)")] {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		cwd, _ := os.Readlink(filepath.Join("/proc", p.Name(), "cwd"))
		args := strings.ReplaceAll(string(cmdline), "\x00", " ")
		if strings.Contains(args, dir) || isUnder(cwd, dir) {
			out = append(out, fmt.Sprintf("process %d: %s", pid, args))
		}
	}

	mounts, err := mountPoints(dir)
	if err != nil {
		return nil, fmt.Errorf("failed to read mounts: %w", err)
	}
	for _, m := range mounts {
		out = append(out, "mount "+m)
	}
	seen := map[string]bool{}
	for kdir, rec := range qos {
		if !isUnder(kdir, dir) {
			continue
		}
		cgs, err := CgroupsNamed(rec.root, qosCgroupPrefix)
		if err != nil {
			return nil, fmt.Errorf("failed to list cgroups: %w", err)
		}
		for _, cg := range cgs {
			if !rec.before[cg] && !seen[cg] {
				seen[cg] = true
				out = append(out, "cgroup "+cg)
			}
		}
	}
	return out, nil
}

// isUnder reports whether path is dir or inside it.
func isUnder(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}

// removeQoS removes the kubepods cgroups the kubelet created under its
// cgroupRoot (with any process left in them), unless they were there before
// it started. Under the root cgroup, which other kubelets on the machine
// share, they are removed only when no kubelet process runs at all.
func (k *Kubelet) removeQoS() error {
	kubeletsMu.Lock()
	rec, ok := kubeletQoS[k.dir]
	kubeletsMu.Unlock()
	if !ok {
		return nil
	}
	cgs, err := CgroupsNamed(rec.root, qosCgroupPrefix)
	if err != nil || len(cgs) == 0 {
		return err
	}
	for _, cg := range cgs {
		if rec.before[cg] {
			return nil // not this kubelet's
		}
	}
	if rec.root == "/" && anyKubeletRunning() {
		return nil
	}
	return RemoveCgroups(rec.root, qosCgroupPrefix, 30*time.Second)
}

// anyKubeletRunning reports whether a process whose executable is named
// kubelet runs on the machine.
func anyKubeletRunning() bool {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", p.Name(), "exe"))
		if err != nil {
			continue
		}
		exe = strings.TrimSuffix(exe, " (deleted)")
		base := filepath.Base(exe)
		kubeletsMu.Lock()
		ours := kubeletBinaries[exe]
		kubeletsMu.Unlock()
		if ours || base == "kubelet" || strings.HasPrefix(base, "kubelet-") && !strings.HasSuffix(base, ".test") {
			return true
		}
	}
	return false
}

// stubRuntime is a unix socket that stands in for a container runtime: it
// accepts connections, sends the HTTP/2 server preface (an empty SETTINGS
// frame) and acknowledges the client's, so gRPC considers the connection
// ready, and then never answers a call. The kubelet's first CRI call
// (Version) therefore waits for runtimeRequestTimeout instead of failing
// after the five-second connection timeout that a silent socket gives,
// while the kubelet's certificate manager works.
type stubRuntime struct {
	path string
	l    net.Listener
	mu   sync.Mutex
	conn []net.Conn
	done chan struct{}
}

// http2Settings and http2SettingsAck are an empty SETTINGS frame and a
// SETTINGS acknowledgement (RFC 9113, section 6.5).
var (
	http2Settings    = []byte{0, 0, 0, 0x4, 0, 0, 0, 0, 0}
	http2SettingsAck = []byte{0, 0, 0, 0x4, 0x1, 0, 0, 0, 0}
)

func startStubRuntime(path string) (*stubRuntime, error) {
	if len(path) > 107 {
		return nil, fmt.Errorf("the stub runtime socket path %s is too long for a unix socket", path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("failed to listen on the stub runtime socket %s: %w", path, err)
	}
	s := &stubRuntime{path: path, l: l, done: make(chan struct{})}
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			select {
			case <-s.done:
				s.mu.Unlock()
				_ = conn.Close()
				return
			default:
			}
			s.conn = append(s.conn, conn)
			s.mu.Unlock()
			go func() {
				_, _ = conn.Write(http2Settings)
				_, _ = conn.Write(http2SettingsAck)
				_, _ = io.Copy(io.Discard, conn)
			}()
		}
	}()
	return s, nil
}

func (s *stubRuntime) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
		return
	default:
	}
	close(s.done)
	_ = s.l.Close()
	for _, c := range s.conn {
		_ = c.Close()
	}
}
