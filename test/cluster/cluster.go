// Package cluster runs a real, local Kubernetes control plane for tests, the
// benchmarks and the demo: etcd, kube-apiserver and kube-controller-manager,
// built from source by hack/build-assets.sh.
//
// The API server is configured the way it matters for kubelet client
// certificates in a real cluster: Node and RBAC authorization, the
// NodeRestriction admission plugin, bootstrap-token authentication, and one
// cluster CA that both signs the kubelet client certificates (through
// kube-controller-manager's csrsigning controller) and is trusted for client
// authentication, so an issued certificate really authenticates as
// system:node:<name>.
//
// Every process is started with Pdeathsig so that nothing survives the test
// binary, even when it panics or is killed.
package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// KubeVersion is the Kubernetes release the harness builds and runs.
const KubeVersion = "v1.37.2"

// KubeletClientSigner is the signer of kubelet client certificates.
const KubeletClientSigner = "kubernetes.io/kube-apiserver-client-kubelet"

// KubeletServingSigner is the signer of kubelet serving certificates
// (serverTLSBootstrap). kube-controller-manager's csrsigning signs it with
// the cluster CA too.
const KubeletServingSigner = "kubernetes.io/kubelet-serving"

// KubeletAPIUser is the user the API server authenticates as to kubelets
// (its --kubelet-client-certificate) with Options.VerifyKubelets; see
// ApplyKubeletAPIRBAC.
const KubeletAPIUser = "nodecsr-test-apiserver-kubelet-client"

// Options configures a control plane. The zero value is a working default.
type Options struct {
	// AssetsDir holds etcd, kube-apiserver and kube-controller-manager. Default:
	// $KUBEBUILDER_ASSETS, else .cache/assets/k8s-<KubeVersion> at the repository root.
	AssetsDir string
	// Dir is the working folder (certificates, data, logs). Default: a new
	// temporary folder, removed by Stop unless NODECSR_KEEP_CLUSTER_DIR is set.
	Dir string
	// NoControllerManager leaves kube-controller-manager out.
	NoControllerManager bool
	// CSRApproving also runs kube-controller-manager's own csrapproving
	// controller (the incumbent approver), for side-by-side comparisons.
	CSRApproving bool
	// GarbageCollector also runs kube-controller-manager's garbagecollector
	// controller (owner references).
	GarbageCollector bool
	// SigningDuration is --cluster-signing-duration (default: the server's, 1 year).
	SigningDuration time.Duration
	// VerifyKubelets makes the API server verify kubelets' serving
	// certificates against the cluster CA, which signs the kubelet-serving
	// CSRs (--kubelet-certificate-authority), authenticate to kubelets as
	// KubeletAPIUser (--kubelet-client-certificate/-key; the kubelet's
	// webhook authorizer needs ApplyKubeletAPIRBAC), and reach a kubelet
	// only at its InternalIP (--kubelet-preferred-address-types): the
	// address of a node in a network namespace of the test (NetNS). Without
	// it the API server keeps its defaults (no verification).
	VerifyKubelets bool
	// APIServerFlags and ControllerManagerFlags add or override flags (name without
	// leading dashes → value).
	APIServerFlags         map[string]string
	ControllerManagerFlags map[string]string
	// Logf, when set, receives progress lines.
	Logf func(format string, args ...any)
}

// Cluster is a running control plane.
type Cluster struct {
	opts    Options
	dir     string
	ownDir  bool
	host    string
	port    int
	clients *CA // trusted for client auth and used by the csrsigning controller
	serving *CA // signs the API server's serving certificate

	admin           *rest.Config
	adminKubeconfig string

	etcd, apiserver, kcm *process

	mu      sync.Mutex
	stopped bool
}

// Start starts etcd, kube-apiserver and (unless disabled) kube-controller-manager
// and waits until the API server is ready.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	assets, err := FindAssets(opts.AssetsDir)
	if err != nil {
		return nil, err
	}
	c = &Cluster{opts: opts, dir: opts.Dir}
	if c.dir == "" {
		if c.dir, err = os.MkdirTemp("", "nodecsr-cluster-"); err != nil {
			return nil, err
		}
		c.ownDir = true
	}
	defer func() {
		if err != nil {
			_ = c.Stop()
		}
	}()
	for _, d := range []string{"pki", "etcd", "logs"} {
		if err := os.MkdirAll(filepath.Join(c.dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	if err := c.writePKI(); err != nil {
		return nil, err
	}

	etcdPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	peerPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	etcdURL := "http://" + HostPort(etcdPort)
	c.etcd = &process{
		name: "etcd", path: filepath.Join(assets, "etcd"), logPath: c.logPath("etcd"),
		args: []string{
			"--data-dir=" + filepath.Join(c.dir, "etcd"),
			"--listen-client-urls=" + etcdURL,
			"--advertise-client-urls=" + etcdURL,
			"--listen-peer-urls=http://" + HostPort(peerPort),
			"--initial-advertise-peer-urls=http://" + HostPort(peerPort),
			"--initial-cluster=default=http://" + HostPort(peerPort),
			"--unsafe-no-fsync=true",
			"--log-level=warn",
		},
		health: etcdURL + "/health",
	}
	c.logf("starting etcd on %s", etcdURL)
	if err := c.etcd.start(ctx, 30*time.Second); err != nil {
		return nil, err
	}

	if c.port, err = FreePort(); err != nil {
		return nil, err
	}
	c.host = "https://" + HostPort(c.port)
	if err := c.configureAPIServer(assets, etcdURL); err != nil {
		return nil, err
	}
	c.logf("starting kube-apiserver on %s", c.host)
	if err := c.apiserver.start(ctx, 60*time.Second); err != nil {
		return nil, err
	}

	if !opts.NoControllerManager {
		if err := c.configureControllerManager(assets); err != nil {
			return nil, err
		}
		c.logf("starting kube-controller-manager (%s)", strings.Join(c.controllers(), ","))
		if err := c.kcm.start(ctx, 30*time.Second); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *Cluster) logf(format string, args ...any) {
	if c.opts.Logf != nil {
		c.opts.Logf(format, args...)
	}
}

func (c *Cluster) logPath(name string) string { return filepath.Join(c.dir, "logs", name+".log") }
func (c *Cluster) pki(name string) string     { return filepath.Join(c.dir, "pki", name) }

func (c *Cluster) writePKI() error {
	var err error
	if c.clients, err = NewCA("nodecsr-test-cluster-ca"); err != nil {
		return err
	}
	if c.serving, err = NewCA("nodecsr-test-serving-ca"); err != nil {
		return err
	}
	files := map[string][]byte{
		"cluster-ca.crt": c.clients.CertPEM, "cluster-ca.key": c.clients.KeyPEM,
		"serving-ca.crt": c.serving.CertPEM,
	}
	serving, err := c.serving.IssueServing("localhost", "127.0.0.1", "kubernetes", "kubernetes.default.svc")
	if err != nil {
		return err
	}
	files["apiserver.crt"], files["apiserver.key"] = serving.CertPEM, serving.KeyPEM
	if c.opts.VerifyKubelets {
		kc, err := c.clients.IssueClient(KubeletAPIUser)
		if err != nil {
			return err
		}
		files["apiserver-kubelet-client.crt"], files["apiserver-kubelet-client.key"] = kc.CertPEM, kc.KeyPEM
	}
	// The service-account signing key pair; the API server reads the public key
	// from the certificate.
	sa, err := NewCA("service-accounts")
	if err != nil {
		return err
	}
	files["sa.crt"], files["sa.key"] = sa.CertPEM, sa.KeyPEM
	for name, data := range files {
		if err := os.WriteFile(c.pki(name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) configureAPIServer(assets, etcdURL string) error {
	flags := map[string]string{
		"advertise-address":                "127.0.0.1",
		"endpoint-reconciler-type":         "none", // a loopback advertise address is refused otherwise
		"bind-address":                     "127.0.0.1",
		"secure-port":                      fmt.Sprint(c.port),
		"tls-cert-file":                    c.pki("apiserver.crt"),
		"tls-private-key-file":             c.pki("apiserver.key"),
		"client-ca-file":                   c.pki("cluster-ca.crt"),
		"etcd-servers":                     etcdURL,
		"cert-dir":                         c.pki(""),
		"service-cluster-ip-range":         "10.0.0.0/24",
		"service-account-issuer":           c.host,
		"service-account-key-file":         c.pki("sa.crt"),
		"service-account-signing-key-file": c.pki("sa.key"),
		"authorization-mode":               "Node,RBAC",
		"enable-admission-plugins":         "NodeRestriction",
		"enable-bootstrap-token-auth":      "true",
		"allow-privileged":                 "true",
		"profiling":                        "false",
	}
	if c.opts.VerifyKubelets {
		flags["kubelet-certificate-authority"] = c.pki("cluster-ca.crt")
		flags["kubelet-client-certificate"] = c.pki("apiserver-kubelet-client.crt")
		flags["kubelet-client-key"] = c.pki("apiserver-kubelet-client.key")
		flags["kubelet-preferred-address-types"] = "InternalIP"
	}
	for k, v := range c.opts.APIServerFlags {
		flags[k] = v
	}

	admin, err := c.clients.IssueClient("nodecsr-test-admin", "system:masters")
	if err != nil {
		return err
	}
	c.admin = c.restConfig(admin)
	c.adminKubeconfig = filepath.Join(c.dir, "admin.kubeconfig")
	if err := WriteKubeconfig(c.adminKubeconfig, c.admin); err != nil {
		return err
	}
	cert, err := tls.X509KeyPair(admin.CertPEM, admin.KeyPEM)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(c.serving.CertPEM)
	c.apiserver = &process{
		name: "kube-apiserver", path: filepath.Join(assets, "kube-apiserver"), logPath: c.logPath("kube-apiserver"),
		args:      flagList(flags),
		health:    c.host + "/readyz",
		healthTLS: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}
	return nil
}

func (c *Cluster) controllers() []string {
	ctrls := []string{"csrsigning"}
	if c.opts.CSRApproving {
		ctrls = append(ctrls, "csrapproving")
	}
	if c.opts.GarbageCollector {
		ctrls = append(ctrls, "garbagecollector")
	}
	return ctrls
}

func (c *Cluster) configureControllerManager(assets string) error {
	// kube-controller-manager runs with a system:masters identity and its own
	// credentials for every controller: the csrsigning controller needs to write
	// CSR status, and csrapproving runs with exactly its default client limits.
	kp, err := c.clients.IssueClient("system:kube-controller-manager", "system:masters")
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(c.dir, "kube-controller-manager.kubeconfig")
	if err := WriteKubeconfig(kubeconfig, c.restConfig(kp)); err != nil {
		return err
	}
	flags := map[string]string{
		"kubeconfig":                      kubeconfig,
		"controllers":                     strings.Join(c.controllers(), ","),
		"leader-elect":                    "false",
		"secure-port":                     "0",
		"use-service-account-credentials": "false",
		"cluster-signing-cert-file":       c.pki("cluster-ca.crt"),
		"cluster-signing-key-file":        c.pki("cluster-ca.key"),
	}
	if c.opts.SigningDuration > 0 {
		flags["cluster-signing-duration"] = c.opts.SigningDuration.String()
	}
	for k, v := range c.opts.ControllerManagerFlags {
		flags[k] = v
	}
	c.kcm = &process{
		name: "kube-controller-manager", path: filepath.Join(assets, "kube-controller-manager"),
		logPath: c.logPath("kube-controller-manager"), args: flagList(flags),
		startAfter: time.Second,
	}
	return nil
}

func flagList(flags map[string]string) []string {
	out := make([]string, 0, len(flags))
	for k, v := range flags {
		out = append(out, "--"+k+"="+v)
	}
	sort.Strings(out)
	return out
}

// Stop stops every process the cluster started (kube-controller-manager, then
// kube-apiserver, then etcd) and removes its folder. It is safe to call more
// than once.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	c.stopped = true
	var errs []error
	for _, p := range []*process{c.kcm, c.apiserver, c.etcd} {
		if p != nil {
			errs = append(errs, p.stop(10*time.Second))
		}
	}
	if c.ownDir && os.Getenv("NODECSR_KEEP_CLUSTER_DIR") == "" {
		errs = append(errs, os.RemoveAll(c.dir))
	}
	return errors.Join(errs...)
}

// RestartAPIServer stops kube-apiserver and starts it again on the same port
// with the same flags, for fault tests.
func (c *Cluster) RestartAPIServer(ctx context.Context, down time.Duration) error {
	if err := c.StopAPIServer(); err != nil {
		return err
	}
	select {
	case <-time.After(down):
	case <-ctx.Done():
	}
	return c.StartAPIServer(ctx)
}

// StopAPIServer stops kube-apiserver; StartAPIServer brings it back.
func (c *Cluster) StopAPIServer() error { return c.apiserver.stop(10 * time.Second) }

// StartAPIServer starts a stopped kube-apiserver again and waits until it is ready.
func (c *Cluster) StartAPIServer(ctx context.Context) error {
	if c.isStopped() {
		return errStopped
	}
	return c.apiserver.start(ctx, 60*time.Second)
}

func (c *Cluster) isStopped() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopped
}

// Running reports which of the cluster's processes are running.
func (c *Cluster) Running() map[string]bool {
	out := map[string]bool{}
	for _, p := range []*process{c.etcd, c.apiserver, c.kcm} {
		if p != nil {
			out[p.name] = p.running()
		}
	}
	return out
}

// Dir is the cluster's working folder; logs are in Dir()/logs.
func (c *Cluster) Dir() string { return c.dir }

// Host is the API server URL.
func (c *Cluster) Host() string { return c.host }

// ServingCAPEM is the CA bundle that verifies the API server.
func (c *Cluster) ServingCAPEM() []byte { return c.serving.CertPEM }

// ClusterCA is the CA that signs kubelet client certificates and that the API
// server trusts for client authentication.
func (c *Cluster) ClusterCA() *CA { return c.clients }

// AdminConfig is a rest.Config for a system:masters user.
func (c *Cluster) AdminConfig() *rest.Config { return rest.CopyConfig(c.admin) }

// AdminKubeconfig is the path of a kubeconfig file for the admin user.
func (c *Cluster) AdminKubeconfig() string { return c.adminKubeconfig }

// AdminClient is a clientset for the admin user.
func (c *Cluster) AdminClient() kubernetes.Interface {
	return kubernetes.NewForConfigOrDie(c.AdminConfig())
}

// UserConfig returns a rest.Config that authenticates with a client
// certificate as the given user and groups.
func (c *Cluster) UserConfig(name string, groups ...string) (*rest.Config, error) {
	kp, err := c.clients.IssueClient(name, groups...)
	if err != nil {
		return nil, err
	}
	return c.restConfig(kp), nil
}

// NodeConfig returns a rest.Config that authenticates as the kubelet of the
// named node (system:node:<name> in system:nodes).
func (c *Cluster) NodeConfig(name string) (*rest.Config, error) {
	return c.UserConfig("system:node:"+name, "system:nodes")
}

// ConfigFromKeyPair returns a rest.Config that authenticates with the given
// certificate and key (for example the ones a CSR produced).
func (c *Cluster) ConfigFromKeyPair(certPEM, keyPEM []byte) *rest.Config {
	return c.restConfig(&KeyPair{CertPEM: certPEM, KeyPEM: keyPEM})
}

func (c *Cluster) restConfig(kp *KeyPair) *rest.Config {
	return &rest.Config{
		Host: c.host,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: c.serving.CertPEM, CertData: kp.CertPEM, KeyData: kp.KeyPEM,
		},
		QPS: 500, Burst: 1000,
	}
}

// anonymousConfig is a rest.Config with the server's CA and no credentials.
func (c *Cluster) anonymousConfig() *rest.Config {
	return &rest.Config{Host: c.host, TLSClientConfig: rest.TLSClientConfig{CAData: c.serving.CertPEM}, QPS: 500, Burst: 1000}
}

// WriteKubeconfig writes cfg (host, CA, client certificate or bearer token) as
// a self-contained kubeconfig file.
func WriteKubeconfig(path string, cfg *rest.Config) error {
	u, err := url.Parse(cfg.Host)
	if err != nil {
		return fmt.Errorf("failed to parse host %q: %w", cfg.Host, err)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["local"] = &clientcmdapi.Cluster{Server: u.String(), CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["user"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken,
	}
	kc.Contexts["local"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "user"}
	kc.CurrentContext = "local"
	return clientcmd.WriteToFile(*kc, path)
}

// PIDs lists the process IDs of the running control-plane processes.
func (c *Cluster) PIDs() []string {
	var out []string
	for _, p := range []*process{c.etcd, c.apiserver, c.kcm} {
		if p == nil {
			continue
		}
		p.mu.Lock()
		if p.cmd != nil {
			out = append(out, fmt.Sprint(p.cmd.Process.Pid))
		}
		p.mu.Unlock()
	}
	return out
}
