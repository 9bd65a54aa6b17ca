package requester

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// kubeconfigFile writes a kubeconfig for server with the given auth and returns its path.
func kubeconfigFile(t *testing.T, dir, name, server string, caPEM []byte, auth *clientcmdapi.AuthInfo) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["u"] = auth
	cfg.Contexts["x"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	cfg.CurrentContext = "x"
	path := filepath.Join(dir, name)
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestChooseCredentials(t *testing.T) {
	ca := newTestCA(t)
	now := time.Now()
	h := time.Hour
	certAuth := func(notBefore, notAfter time.Time) *clientcmdapi.AuthInfo {
		key := mustKey(t, ECDSAP256)
		return &clientcmdapi.AuthInfo{ClientCertificateData: ca.issue(t, key.Public(), "system:node:n1", notBefore, notAfter), ClientKeyData: keyPEM(t, key)}
	}
	tokenAuth := &clientcmdapi.AuthInfo{Token: "abcdef.0123456789abcdef"}

	tests := map[string]struct {
		current    func(t *testing.T, dir string) *Pair
		kubeconfig func(t *testing.T, dir string) string
		bootstrap  func(t *testing.T, dir string) string
		wantSource CredentialSource
		wantServer string
		wantUsage  bool
	}{
		"valid current certificate renews, server from --kubeconfig": {
			current: func(t *testing.T, dir string) *Pair { return installCurrent(t, ca, dir, now.Add(-h), now.Add(h)) },
			kubeconfig: func(t *testing.T, dir string) string {
				return kubeconfigFile(t, dir, "kc", "https://kc:6443", ca.pem, certAuth(now.Add(-h), now.Add(h)))
			},
			bootstrap: func(t *testing.T, dir string) string {
				return kubeconfigFile(t, dir, "boot", "https://boot:6443", ca.pem, tokenAuth)
			},
			wantSource: FromCurrentCertificate, wantServer: "https://kc:6443",
		},
		"valid current certificate with only a bootstrap kubeconfig": {
			current: func(t *testing.T, dir string) *Pair { return installCurrent(t, ca, dir, now.Add(-h), now.Add(h)) },
			bootstrap: func(t *testing.T, dir string) string {
				return kubeconfigFile(t, dir, "boot", "https://boot:6443", ca.pem, tokenAuth)
			},
			wantSource: FromCurrentCertificate, wantServer: "https://boot:6443",
		},
		"expired current certificate, valid --kubeconfig": {
			current: func(t *testing.T, dir string) *Pair { return installCurrent(t, ca, dir, now.Add(-2*h), now.Add(-h)) },
			kubeconfig: func(t *testing.T, dir string) string {
				return kubeconfigFile(t, dir, "kc", "https://kc:6443", ca.pem, certAuth(now.Add(-h), now.Add(h)))
			},
			bootstrap: func(t *testing.T, dir string) string {
				return kubeconfigFile(t, dir, "boot", "https://boot:6443", ca.pem, tokenAuth)
			},
			wantSource: FromKubeconfig, wantServer: "https://kc:6443",
		},
		"expired --kubeconfig falls back to bootstrap": {
			kubeconfig: func(t *testing.T, dir string) string {
				return kubeconfigFile(t, dir, "kc", "https://kc:6443", ca.pem, certAuth(now.Add(-2*h), now.Add(-h)))
			},
			bootstrap: func(t *testing.T, dir string) string {
				return kubeconfigFile(t, dir, "boot", "https://boot:6443", ca.pem, tokenAuth)
			},
			wantSource: FromBootstrapKubeconfig, wantServer: "https://boot:6443",
		},
		"--kubeconfig naming a missing certificate file falls back to bootstrap": {
			kubeconfig: func(t *testing.T, dir string) string {
				pem := filepath.Join(dir, CurrentFile)
				return kubeconfigFile(t, dir, "kc", "https://kc:6443", ca.pem, &clientcmdapi.AuthInfo{ClientCertificate: pem, ClientKey: pem})
			},
			bootstrap: func(t *testing.T, dir string) string {
				return kubeconfigFile(t, dir, "boot", "https://boot:6443", ca.pem, tokenAuth)
			},
			wantSource: FromBootstrapKubeconfig, wantServer: "https://boot:6443",
		},
		"missing --kubeconfig file, bootstrap": {
			kubeconfig: func(t *testing.T, dir string) string { return filepath.Join(dir, "nope") },
			bootstrap: func(t *testing.T, dir string) string {
				return kubeconfigFile(t, dir, "boot", "https://boot:6443", ca.pem, tokenAuth)
			},
			wantSource: FromBootstrapKubeconfig, wantServer: "https://boot:6443",
		},
		"--kubeconfig without credentials is not usable": {
			kubeconfig: func(t *testing.T, dir string) string {
				return kubeconfigFile(t, dir, "kc", "https://kc:6443", ca.pem, &clientcmdapi.AuthInfo{})
			},
			wantUsage: true,
		},
		"expired --kubeconfig and no bootstrap": {
			kubeconfig: func(t *testing.T, dir string) string {
				return kubeconfigFile(t, dir, "kc", "https://kc:6443", ca.pem, certAuth(now.Add(-2*h), now.Add(-h)))
			},
			wantUsage: true,
		},
		"nothing readable": {
			kubeconfig: func(t *testing.T, dir string) string { return filepath.Join(dir, "nope") },
			bootstrap:  func(t *testing.T, dir string) string { return filepath.Join(dir, "nope-either") },
			wantUsage:  true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			o := NewOptions()
			o.CertDir = dir
			var current *Pair
			if tc.current != nil {
				current = tc.current(t, dir)
			}
			if tc.kubeconfig != nil {
				o.Kubeconfig = tc.kubeconfig(t, dir)
			}
			if tc.bootstrap != nil {
				o.BootstrapKubeconfig = tc.bootstrap(t, dir)
			}
			creds, err := chooseCredentials(t.Context(), o, current, now)
			if tc.wantUsage {
				var usage *UsageError
				if !errors.As(err, &usage) {
					t.Fatalf("chooseCredentials = %v, %v; want a UsageError", creds, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if creds.Source != tc.wantSource || creds.Config.Host != tc.wantServer || creds.Server.Host != tc.wantServer {
				t.Errorf("chose %s at %s (server %s), want %s at %s", creds.Source, creds.Config.Host, creds.Server.Host, tc.wantSource, tc.wantServer)
			}
			if string(creds.Config.CAData) != string(ca.pem) {
				t.Error("the CA does not come from the kubeconfig")
			}
			if creds.Source == FromCurrentCertificate {
				if string(creds.Config.CertData) != string(current.CertPEM) || creds.Config.BearerToken != "" {
					t.Error("renewal does not authenticate with the current certificate alone")
				}
			}
		})
	}
}

func TestWriteKubeconfigIsLikeKubeletConf(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "etc", "kubelet.conf")
	pemPath := filepath.Join(dir, CurrentFile)
	server := &rest.Config{Host: "https://10.0.0.1:6443", TLSClientConfig: rest.TLSClientConfig{CAData: []byte("CA"), ServerName: "kubernetes"}}
	if err := writeKubeconfig(path, server, pemPath); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	cluster, auth := cfg.Clusters[ctx.Cluster], cfg.AuthInfos[ctx.AuthInfo]
	if cluster.Server != server.Host || string(cluster.CertificateAuthorityData) != "CA" || cluster.TLSServerName != "kubernetes" {
		t.Errorf("cluster = %+v", cluster)
	}
	if auth.ClientCertificate != pemPath || auth.ClientKey != pemPath || len(auth.ClientCertificateData) != 0 {
		t.Errorf("auth = %+v, want client-certificate and client-key %s", auth, pemPath)
	}

	// A CA file stays a file reference.
	server.CAData, server.CAFile = nil, "/etc/kubernetes/pki/ca.crt"
	if err := writeKubeconfig(path, server, pemPath); err != nil {
		t.Fatal(err)
	}
	cfg, err = clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Clusters["default-cluster"].CertificateAuthority; got != "/etc/kubernetes/pki/ca.crt" {
		t.Errorf("certificate-authority = %q", got)
	}
}
