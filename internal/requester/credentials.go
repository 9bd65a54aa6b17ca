package requester

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/transport"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/klog/v2"

	"github.com/nodecsr/nodecsr/internal/version"
)

// CredentialSource says which credentials a request authenticates with.
type CredentialSource string

// The credential sources, in the order they are tried.
const (
	// FromCurrentCertificate: the valid certificate in the cert directory (renewal).
	FromCurrentCertificate CredentialSource = "current-certificate"
	// FromKubeconfig: the credentials in --kubeconfig.
	FromKubeconfig CredentialSource = "kubeconfig"
	// FromBootstrapKubeconfig: the credentials in --bootstrap-kubeconfig (bootstrap).
	FromBootstrapKubeconfig CredentialSource = "bootstrap-kubeconfig"
)

// credentials are what one request authenticates with.
type credentials struct {
	// Source says where Config's credentials come from.
	Source CredentialSource
	// Config talks to the API server.
	Config *rest.Config
	// Server is the kubeconfig whose server and CA Config uses; they are
	// what --write-kubeconfig writes.
	Server *rest.Config
}

// chooseCredentials picks the credentials like kubelet: the current
// certificate when it is valid, else --kubeconfig when it can be read and its
// client certificate (if any) has not expired, else --bootstrap-kubeconfig.
// Server and CA come from the kubeconfig whose credentials are used; with the
// current certificate, from --kubeconfig when it can be read, else from
// --bootstrap-kubeconfig.
func chooseCredentials(ctx context.Context, o *Options, current *Pair, now time.Time) (*credentials, error) {
	logger := klog.FromContext(ctx)
	var kc, boot *rest.Config
	var kcErr, bootErr error
	if o.Kubeconfig != "" {
		if kc, kcErr = loadKubeconfig(o.Kubeconfig); kcErr != nil {
			kcErr = fmt.Errorf("cannot read --kubeconfig: %w", kcErr)
			logger.V(1).Info("Cannot use --kubeconfig", "path", o.Kubeconfig, "err", kcErr)
		}
	}
	if o.BootstrapKubeconfig != "" {
		if boot, bootErr = loadKubeconfig(o.BootstrapKubeconfig); bootErr != nil {
			bootErr = fmt.Errorf("cannot read --bootstrap-kubeconfig: %w", bootErr)
			logger.V(1).Info("Cannot use --bootstrap-kubeconfig", "path", o.BootstrapKubeconfig, "err", bootErr)
		}
	}
	server := kc
	if server == nil {
		server = boot
	}
	if server == nil {
		return nil, &UsageError{Err: errors.Join(kcErr, bootErr)}
	}

	if current != nil && current.ValidAt(now) {
		cfg := rest.AnonymousClientConfig(server)
		cfg.CertData, cfg.KeyData = current.CertPEM, current.KeyPEM
		return withUserAgent(&credentials{Source: FromCurrentCertificate, Config: cfg, Server: server}), nil
	}
	if kc != nil {
		reason := kubeconfigUnusable(kc, now)
		if reason == "" {
			return withUserAgent(&credentials{Source: FromKubeconfig, Config: rest.CopyConfig(kc), Server: kc}), nil
		}
		logger.Info("Not using --kubeconfig", "path", o.Kubeconfig, "reason", reason)
		kcErr = fmt.Errorf("--kubeconfig %s: %s", o.Kubeconfig, reason)
	}
	if boot != nil {
		return withUserAgent(&credentials{Source: FromBootstrapKubeconfig, Config: rest.CopyConfig(boot), Server: boot}), nil
	}
	return nil, &UsageError{Err: fmt.Errorf("no usable credentials: no valid certificate in %s; %w", o.CertDir, errors.Join(kcErr, bootErr, missingBootstrap(o)))}
}

func missingBootstrap(o *Options) error {
	if o.BootstrapKubeconfig == "" {
		return errors.New("--bootstrap-kubeconfig is not set")
	}
	return nil
}

func withUserAgent(c *credentials) *credentials {
	c.Config.UserAgent = "nodecsr-request/" + version.Version
	return c
}

// loadKubeconfig reads a kubeconfig file the way kubelet does (relative paths
// in it are resolved against its folder).
func loadKubeconfig(path string) (*rest.Config, error) {
	rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: path}
	loaded, err := rules.Load()
	if err != nil {
		return nil, err
	}
	cfg, err := clientcmd.NewNonInteractiveClientConfig(*loaded, loaded.CurrentContext, &clientcmd.ConfigOverrides{}, rules).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("invalid kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

// kubeconfigUnusable says why a kubeconfig's credentials cannot be used, ""
// when they can: its client certificate files must be readable and every
// certificate unexpired; without a client certificate it must carry some
// other credential (kubelet itself requires a certificate here; a token is
// accepted so that --kubeconfig can also name bootstrap credentials).
func kubeconfigUnusable(cfg *rest.Config, now time.Time) string {
	tc, err := cfg.TransportConfig()
	if err != nil {
		return err.Error()
	}
	// Loads certificate and key files into the config's data fields.
	if _, err := transport.TLSConfigFor(tc); err != nil {
		return err.Error()
	}
	if len(tc.TLS.CertData) == 0 {
		if cfg.BearerToken != "" || cfg.BearerTokenFile != "" || cfg.ExecProvider != nil || cfg.AuthProvider != nil || cfg.Username != "" {
			return ""
		}
		return "it has no credentials"
	}
	certs, err := certutil.ParseCertsPEM(tc.TLS.CertData)
	if err != nil {
		return "its client certificate cannot be parsed: " + err.Error()
	}
	for _, c := range certs {
		if now.After(c.NotAfter) {
			return fmt.Sprintf("its client certificate expired at %s", c.NotAfter.UTC().Format(time.RFC3339))
		}
		if now.Before(c.NotBefore) {
			return fmt.Sprintf("its client certificate is not valid before %s", c.NotBefore.UTC().Format(time.RFC3339))
		}
	}
	return ""
}

// writeKubeconfig writes, atomically and 0600, a kubeconfig like kubelet's
// kubelet.conf: the server and CA of server, and the client certificate and
// key both read from pemPath.
func writeKubeconfig(path string, server *rest.Config, pemPath string) error {
	cluster := &clientcmdapi.Cluster{
		Server:                server.Host,
		TLSServerName:         server.ServerName,
		InsecureSkipTLSVerify: server.Insecure,
	}
	if server.CAFile != "" {
		cluster.CertificateAuthority = server.CAFile
	} else {
		cluster.CertificateAuthorityData = server.CAData
	}
	cfg := clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"default-cluster": cluster},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"default-auth": {ClientCertificate: pemPath, ClientKey: pemPath}},
		Contexts:       map[string]*clientcmdapi.Context{"default-context": {Cluster: "default-cluster", AuthInfo: "default-auth", Namespace: "default"}},
		CurrentContext: "default-context",
	}
	data, err := clientcmd.Write(cfg)
	if err != nil {
		return fmt.Errorf("failed to encode kubeconfig: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("failed to create the folder of %s: %w", path, err)
	}
	if err := writeFileAtomic(path, data, 0o600); err != nil {
		return fmt.Errorf("failed to write kubeconfig: %w", err)
	}
	return nil
}
