package webhook

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/nodecsr/nodecsr/internal/testpki"
)

// secretVolume writes a certificate and key into dir the way the kubelet
// writes a Secret volume: the files live in a timestamped directory,
// ..data is a symlink to it, and tls.crt and tls.key are symlinks through
// ..data. A second call swaps ..data atomically (rename of a new symlink
// over it) and removes the old directory, exactly as the kubelet's atomic
// writer does on a Secret update.
type secretVolume struct {
	dir string
	gen atomic.Int32
}

func (v *secretVolume) write(t testing.TB, kp *testpki.KeyPair) {
	t.Helper()
	n := v.gen.Add(1)
	ts := fmt.Sprintf("..2026_01_01_00_00_%02d.%d", n, os.Getpid())
	if err := os.Mkdir(filepath.Join(v.dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"tls.crt": kp.CertPEM, "tls.key": kp.KeyPEM} {
		if err := os.WriteFile(filepath.Join(v.dir, ts, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old, _ := os.Readlink(filepath.Join(v.dir, "..data"))
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"tls.crt", "tls.key"} {
		link := filepath.Join(v.dir, name)
		if _, err := os.Lstat(link); errors.Is(err, os.ErrNotExist) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(v.dir, old)); err != nil {
			t.Fatal(err)
		}
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

// servedSerial dials addr and returns the serial of the certificate served.
func servedSerial(addr string, roots *x509.CertPool) (string, error) {
	d := &net.Dialer{Timeout: 2 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
	if err != nil {
		return "", err
	}
	defer func() { _ = conn.Close() }()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}

func serialOf(t testing.TB, kp *testpki.KeyPair) string {
	t.Helper()
	c, err := tls.X509KeyPair(kp.CertPEM, kp.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.String()
}

// startServer starts s and stops it when the test ends.
func startServer(t *testing.T, s *Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("server: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the server did not stop")
		}
	})
}

func TestServerTLSAndRotation(t *testing.T) {
	ca, roots, vol := newCertVolume(t)
	port := freePort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	s, err := NewServer(ServerOptions{Host: "127.0.0.1", Port: port, CertDir: vol.dir})
	if err != nil {
		t.Fatal(err)
	}
	ready := s.ReadyCheck()
	startServer(t, s)

	// No certificate yet: not ready, and no handshake succeeds.
	probe, _ := http.NewRequest(http.MethodGet, "/readyz", nil)
	time.Sleep(200 * time.Millisecond)
	if err := ready(probe); err == nil {
		t.Error("ready without a certificate")
	}
	if _, err := servedSerial(addr, roots); err == nil {
		t.Error("a TLS handshake succeeded without a certificate")
	}

	first, err := ca.IssueServing("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	vol.write(t, first)
	waitServed(t, addr, roots, serialOf(t, first))
	if err := wait.PollUntilContextTimeout(t.Context(), 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return ready(probe) == nil, nil
	}); err != nil {
		t.Fatalf("not ready with a certificate: %v", ready(probe))
	}

	// TLS 1.1 is refused; HTTP/2 is not offered.
	if c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, MaxVersion: tls.VersionTLS11}); err == nil { //nolint:gosec // testing that old TLS is refused
		_ = c.Close()
		t.Error("a TLS 1.1 handshake succeeded")
	}
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, NextProtos: []string{"h2", "http/1.1"}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p == "h2" {
		t.Error("HTTP/2 negotiated although it is disabled")
	}
	_ = c.Close()

	// Leaf rotation under the same CA, as cert-manager renews it: the new
	// certificate is served without a restart.
	for range 2 {
		next, err := ca.IssueServing("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		vol.write(t, next)
		waitServed(t, addr, roots, serialOf(t, next))
	}

	// A broken update (key and certificate that do not match) is not
	// loaded: the last good certificate keeps being served.
	good, _ := servedSerial(addr, roots)
	a, _ := ca.IssueServing("127.0.0.1")
	b, _ := ca.IssueServing("127.0.0.1")
	vol.write(t, &testpki.KeyPair{CertPEM: a.CertPEM, KeyPEM: b.KeyPEM})
	time.Sleep(500 * time.Millisecond)
	if got, err := servedSerial(addr, roots); err != nil || got != good {
		t.Errorf("after a mismatched update: serial %s, %v; want the previous %s", got, err, good)
	}
}

func TestServerHTTP2(t *testing.T) {
	roots, dir, kp := servingCertDir(t)
	port := freePort(t)
	s, err := NewServer(ServerOptions{Host: "127.0.0.1", Port: port, CertDir: dir, EnableHTTP2: true})
	if err != nil {
		t.Fatal(err)
	}
	startServer(t, s)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	waitServed(t, addr, roots, serialOf(t, kp))
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, NextProtos: []string{"h2", "http/1.1"}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Errorf("negotiated %q with HTTP/2 enabled, want h2", p)
	}
}

func TestServerOptions(t *testing.T) {
	if _, err := NewServer(ServerOptions{}); err == nil {
		t.Error("no error without a certificate directory")
	}
	if _, err := NewServer(ServerOptions{CertDir: "/x", Port: 70000}); err == nil {
		t.Error("no error for port 70000")
	}
	if _, err := NewServer(ServerOptions{CertDir: "/x", DrainDelay: -time.Second}); err == nil {
		t.Error("no error for a negative drain delay")
	}
}

// newCertVolume returns a test CA, the roots that trust it and an empty
// Secret-like folder.
func newCertVolume(t *testing.T) (*testpki.CA, *x509.CertPool, *secretVolume) {
	t.Helper()
	ca, err := testpki.NewCA("webhook-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM)
	return ca, roots, &secretVolume{dir: t.TempDir()}
}

// servingCertDir writes a serving certificate for 127.0.0.1 into a new
// Secret-like folder and returns the roots that trust it, the folder and
// the key pair.
func servingCertDir(t *testing.T) (*x509.CertPool, string, *testpki.KeyPair) {
	t.Helper()
	ca, roots, vol := newCertVolume(t)
	kp, err := ca.IssueServing("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	vol.write(t, kp)
	return roots, vol.dir, kp
}

// waitServed polls until addr serves the certificate with serial want.
func waitServed(t *testing.T, addr string, roots *x509.CertPool, want string) {
	t.Helper()
	var got string
	var lastErr error
	err := wait.PollUntilContextTimeout(t.Context(), 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		got, lastErr = servedSerial(addr, roots)
		return lastErr == nil && got == want, nil
	})
	if err != nil {
		t.Fatalf("serial %s is not served (last: %s, %v)", want, got, lastErr)
	}
}

// TestServerDrain: once told to stop, the server keeps answering, closes
// every connection after its response and reports not ready; it stops
// listening only when the drain delay is over, even if its context ended
// before.
func TestServerDrain(t *testing.T) {
	roots, dir, kp := servingCertDir(t)
	port := freePort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	s, err := NewServer(ServerOptions{Host: "127.0.0.1", Port: port, CertDir: dir, DrainDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var asked time.Duration
	release := make(chan time.Time)
	s.afterDrain = func(d time.Duration) <-chan time.Time { asked = d; return release }
	s.Register("/hook", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	ready := s.ReadyCheck()

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	waitServed(t, addr, roots, serialOf(t, kp))

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
	defer client.CloseIdleConnections()
	call := func() (*http.Response, error) {
		resp, err := client.Get("https://" + addr + "/hook")
		if err != nil {
			return nil, err
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return resp, fmt.Errorf("status %d", resp.StatusCode)
		}
		return resp, nil
	}
	probe, _ := http.NewRequest(http.MethodGet, "/readyz", nil)
	if err := wait.PollUntilContextCancel(t.Context(), 50*time.Millisecond, true, func(context.Context) (bool, error) {
		return ready(probe) == nil, nil
	}); err != nil {
		t.Fatalf("never ready: %v", ready(probe))
	}
	resp, err := call()
	if err != nil {
		t.Fatal(err)
	}
	if resp.Close {
		t.Error("before the drain, a response closed its connection")
	}

	s.Drain()
	if asked != time.Hour {
		t.Errorf("drain timer for %s, want the DrainDelay (1h)", asked)
	}
	if ready(probe) == nil {
		t.Error("ready while draining")
	}
	// The manager stops the webhook server: it goes on answering until the
	// drain is over.
	cancel()
	for i := range 3 {
		resp, err := call()
		if err != nil {
			t.Fatalf("call %d during the drain: %v", i, err)
		}
		if !resp.Close {
			t.Errorf("call %d during the drain kept its connection open", i)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("the server stopped before its drain was over: %v", err)
	default:
	}

	close(release)
	if err := <-done; err != nil {
		t.Errorf("server: %v", err)
	}
	if _, err := call(); err == nil {
		t.Error("the server still answers after its drain")
	}
	s.Drain() // a second call does nothing
}
