package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log"
	ctrlwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
)

// Defaults of ServerOptions.
const (
	DefaultPort     = 9443
	DefaultCertName = "tls.crt"
	DefaultKeyName  = "tls.key"
)

// certRetryInterval is how often a missing or invalid certificate is read
// again before the first one loads.
const certRetryInterval = time.Second

// ServerOptions configures the webhook server.
type ServerOptions struct {
	// Host is the address to listen on; "" listens on every address.
	Host string
	// Port is the port to listen on. Default: 9443.
	Port int
	// CertDir holds the serving certificate and key, as a Secret of type
	// kubernetes.io/tls is mounted (tls.crt, tls.key, possibly symlinks into
	// a ..data directory that the kubelet swaps atomically). Required.
	CertDir string
	// CertName and KeyName are the file names in CertDir.
	// Default: tls.crt and tls.key.
	CertName, KeyName string
	// EnableHTTP2 offers HTTP/2 through ALPN. Off by default: HTTP/2 stream
	// resets can exhaust a server (CVE-2023-44487, CVE-2023-39325), and the
	// API server talks HTTP/1.1 to webhooks just as well.
	EnableHTTP2 bool
	// DrainDelay is how long the server keeps answering once it is told
	// to stop (Drain, or the end of Start's context, whichever is first):
	// every response in that time carries "Connection: close" and
	// ReadyCheck fails, so the API server's kept-alive connections are
	// closed after their current request and its next call opens a new
	// connection, which the Service sends to a replica that is not
	// stopping. Without it, a call that the API server sent on an idle
	// connection just as the server closed it fails with EOF (and, with
	// failurePolicy Ignore, is admitted unchecked). 0: stop at once.
	DrainDelay time.Duration
}

// Validate reports what is wrong with the options.
func (o *ServerOptions) Validate() error {
	if o.CertDir == "" {
		return errors.New("webhook server: a certificate directory is required")
	}
	if o.DrainDelay < 0 {
		return fmt.Errorf("webhook server: drain delay must not be negative, got %s", o.DrainDelay)
	}
	if o.Port < 0 || o.Port > 65535 {
		return fmt.Errorf("webhook server: port must be between 1 and 65535, got %d", o.Port)
	}
	return nil
}

// Server is controller-runtime's webhook server with nodecsr's TLS: TLS 1.2
// or later, HTTP/1.1 unless HTTP/2 is enabled, and the certificate read
// from CertDir and reloaded when it changes (fsnotify events, and a poll
// every 10 seconds as a fallback), so a rotated certificate is served
// without a restart. Until a valid certificate has been read, TLS
// handshakes fail and ReadyCheck reports not ready.
//
// Pass it as ctrl.Options.WebhookServer; the manager starts it.
type Server struct {
	ctrlwebhook.Server

	certPath, keyPath string
	watcher           atomic.Pointer[certwatcher.CertWatcher]

	drainDelay time.Duration
	drainOnce  sync.Once
	// drained is closed DrainDelay after Drain was first called.
	drained  chan struct{}
	draining atomic.Bool
	// afterDrain returns a channel that fires after d (time.After; a test
	// replaces it).
	afterDrain func(d time.Duration) <-chan time.Time
}

var _ ctrlwebhook.Server = (*Server)(nil)

// NewServer returns a webhook server for o. It does not read the
// certificate yet: Start does, and retries until it is there.
func NewServer(o ServerOptions) (*Server, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Port == 0 {
		o.Port = DefaultPort
	}
	if o.CertName == "" {
		o.CertName = DefaultCertName
	}
	if o.KeyName == "" {
		o.KeyName = DefaultKeyName
	}
	s := &Server{
		certPath: filepath.Join(o.CertDir, o.CertName),
		keyPath:  filepath.Join(o.CertDir, o.KeyName),

		drainDelay: o.DrainDelay,
		drained:    make(chan struct{}),
		afterDrain: time.After,
	}
	http2 := o.EnableHTTP2
	s.Server = ctrlwebhook.NewServer(ctrlwebhook.Options{
		Host:    o.Host,
		Port:    o.Port,
		CertDir: o.CertDir,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) {
			c.MinVersion = tls.VersionTLS12
			c.GetCertificate = s.getCertificate
			if !http2 {
				c.NextProtos = []string{"http/1.1"}
			}
		}},
	})
	return s, nil
}

// Start loads the certificate, watches it, and serves until ctx is done
// and the drain (DrainDelay after Drain, which the end of ctx calls if
// nothing did before) is over. It returns once both the server and the
// certificate watch have stopped.
func (s *Server) Start(ctx context.Context) error {
	serving, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	go func() {
		select {
		case <-ctx.Done():
			s.Drain()
		case <-serving.Done():
			return
		}
		select {
		case <-s.drained:
		case <-serving.Done():
		}
		stop()
	}()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		s.watchCertificate(serving)
	}()
	err := s.Server.Start(serving)
	stop()
	<-watched
	return err
}

// Drain starts the drain: from now on every response closes its
// connection and ReadyCheck fails; DrainDelay later, Start stops serving.
// The process calls it as soon as it is told to stop (SIGTERM), before the
// manager stops the controllers, so that the drain overlaps their stop.
// Calling it again does nothing.
func (s *Server) Drain() {
	s.drainOnce.Do(func() {
		s.draining.Store(true)
		wait := s.afterDrain(s.drainDelay)
		go func() {
			<-wait
			close(s.drained)
		}()
	})
}

// Register registers hook at path, closing the connection after each
// response while the server drains.
func (s *Server) Register(path string, hook http.Handler) {
	s.Server.Register(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() {
			w.Header().Set("Connection", "close")
		}
		hook.ServeHTTP(w, r)
	}))
}

// ReadyCheck reports ready once a certificate is loaded and the server
// accepts TLS connections. The caller may combine it with a cache-sync check.
func (s *Server) ReadyCheck() healthz.Checker {
	started := s.StartedChecker()
	return func(req *http.Request) error {
		if s.draining.Load() {
			return errors.New("the webhook server is draining: it is stopping")
		}
		if s.watcher.Load() == nil {
			return fmt.Errorf("no serving certificate loaded from %s yet", s.certPath)
		}
		return started(req)
	}
}

func (s *Server) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	w := s.watcher.Load()
	if w == nil {
		return nil, fmt.Errorf("no serving certificate loaded from %s yet", s.certPath)
	}
	return w.GetCertificate(hello)
}

// watchCertificate reads the certificate until it loads, then watches it
// until ctx is done.
func (s *Server) watchCertificate(ctx context.Context) {
	l := log.FromContext(ctx).WithName("webhook-certificate").WithValues("cert", s.certPath, "key", s.keyPath)
	var w *certwatcher.CertWatcher
	lastErr := ""
	for {
		var err error
		if w, err = certwatcher.New(s.certPath, s.keyPath); err == nil {
			break
		}
		if err.Error() != lastErr {
			lastErr = err.Error()
			l.Info("Waiting for a valid serving certificate", "error", lastErr)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(certRetryInterval):
		}
	}
	s.watcher.Store(w)
	l.Info("Loaded the serving certificate")
	if err := w.Start(ctx); err != nil && ctx.Err() == nil {
		// fsnotify could not watch the files: poll instead.
		l.Error(err, "Cannot watch the serving certificate; polling it every 10s")
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := w.ReadCertificate(); err != nil {
					l.Error(err, "Failed to read the serving certificate; still serving the previous one")
				}
			}
		}
	}
}
