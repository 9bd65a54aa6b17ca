package requester

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/util/validation"
)

// KeyAlgorithm names a kind of private key nodecsr-request can generate.
type KeyAlgorithm string

// The key algorithms --key-algorithm accepts.
const (
	ECDSAP256 KeyAlgorithm = "ecdsa-p256"
	ECDSAP384 KeyAlgorithm = "ecdsa-p384"
	RSA2048   KeyAlgorithm = "rsa-2048"
	RSA3072   KeyAlgorithm = "rsa-3072"
	RSA4096   KeyAlgorithm = "rsa-4096"
)

// KeyAlgorithms lists every accepted --key-algorithm, the default first.
var KeyAlgorithms = []KeyAlgorithm{ECDSAP256, ECDSAP384, RSA2048, RSA3072, RSA4096}

// Defaults and limits of the flags.
const (
	// DefaultCertDir is where kubelet keeps its client certificate.
	DefaultCertDir = "/var/lib/kubelet/pki"
	// DefaultTimeout bounds one request: creating the CSR and waiting for it.
	DefaultTimeout = 15 * time.Minute
	// MinExpiration is the shortest lifetime the API accepts in spec.expirationSeconds.
	MinExpiration = 10 * time.Minute
	// maxExpiration is the largest value spec.expirationSeconds (int32) holds.
	maxExpiration = time.Duration(math.MaxInt32) * time.Second
)

// Options are the flags of nodecsr-request and its subcommands.
type Options struct {
	// Kubeconfig (--kubeconfig) holds the node's current credentials. It is used
	// when there is no valid certificate in CertDir and its own client
	// certificate, if any, has not expired. Its server and CA are used for
	// every request when it can be read.
	Kubeconfig string
	// BootstrapKubeconfig (--bootstrap-kubeconfig) holds bootstrap credentials
	// (typically a bootstrap token), used when neither the current certificate
	// nor Kubeconfig is usable.
	BootstrapKubeconfig string
	// NodeName (--node-name) is the node the certificate is for; the subject is
	// CN=system:node:<NodeName>, O=system:nodes. Default: the lower-cased hostname.
	NodeName string
	// CertDir (--cert-dir) holds the key and certificate files in kubelet's
	// layout (kubelet-client-current.pem and friends).
	CertDir string
	// KeyAlgorithm (--key-algorithm) is the kind of private key generated for
	// each request: one of KeyAlgorithms.
	KeyAlgorithm string
	// Expiration (--expiration), when non-zero, is the requested certificate
	// lifetime (spec.expirationSeconds). The signer may issue a shorter one.
	Expiration time.Duration
	// Timeout (--timeout) bounds one request: creating the CSR and waiting
	// until it is approved and signed.
	Timeout time.Duration
	// WriteKubeconfig (--write-kubeconfig), when set, is the path of a
	// kubeconfig written after issuance that authenticates with
	// <CertDir>/kubelet-client-current.pem, like kubelet's kubelet.conf.
	WriteKubeconfig string
	// Rotate (--rotate) keeps running and renews the certificate between 70%
	// and 90% of its lifetime until SIGINT or SIGTERM.
	Rotate bool
	// Output (status -o) is the status output format: text or json.
	Output string
	// Verbosity (-v) is the log verbosity; logs go to stderr.
	Verbosity int
}

// NewOptions returns the defaults.
func NewOptions() *Options {
	return &Options{
		CertDir:      DefaultCertDir,
		KeyAlgorithm: string(ECDSAP256),
		Timeout:      DefaultTimeout,
		Output:       "text",
	}
}

func (o *Options) addRequestFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "kubeconfig with the node's current credentials; its server and CA are used when it can be read")
	fs.StringVar(&o.BootstrapKubeconfig, "bootstrap-kubeconfig", o.BootstrapKubeconfig, "kubeconfig with bootstrap credentials, used when there is no valid current certificate and --kubeconfig is not usable")
	fs.StringVar(&o.NodeName, "node-name", o.NodeName, "node name; the certificate is for system:node:<node-name> (default: the lower-cased hostname)")
	o.addCertDirFlag(fs)
	fs.StringVar(&o.KeyAlgorithm, "key-algorithm", o.KeyAlgorithm, "private key to generate: "+joinAlgorithms())
	fs.DurationVar(&o.Expiration, "expiration", o.Expiration, "requested certificate lifetime (spec.expirationSeconds), at least 10m; 0 leaves it to the signer")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "how long one request may take, from creating the CSR until the certificate is issued")
	fs.StringVar(&o.WriteKubeconfig, "write-kubeconfig", o.WriteKubeconfig, "write a kubeconfig here that authenticates with <cert-dir>/kubelet-client-current.pem")
	fs.BoolVar(&o.Rotate, "rotate", o.Rotate, "keep running and renew the certificate at a random point between 70% and 90% of its lifetime")
}

func (o *Options) addCertDirFlag(fs *pflag.FlagSet) {
	fs.StringVar(&o.CertDir, "cert-dir", o.CertDir, "directory of the key and certificate files (kubelet's layout)")
}

func (o *Options) addStatusFlags(fs *pflag.FlagSet) {
	o.addCertDirFlag(fs)
	fs.StringVarP(&o.Output, "output", "o", o.Output, "output format: text or json")
}

// Validate checks the flags of the request command and reports every wrong
// flag at once, each by name.
func (o *Options) Validate() error {
	var errs []error
	if o.Kubeconfig == "" && o.BootstrapKubeconfig == "" {
		errs = append(errs, errors.New("one of --kubeconfig or --bootstrap-kubeconfig is required"))
	}
	switch o.NodeName {
	case "":
		errs = append(errs, errors.New("--node-name is required (the hostname could not be read)"))
	default:
		if msgs := validation.IsDNS1123Subdomain(o.NodeName); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("--node-name must be a lower-case RFC 1123 subdomain (a-z, 0-9, '-' and '.', at most 253 characters), got %q", o.NodeName))
		}
	}
	errs = append(errs, o.validateCertDir())
	if !slices.Contains(KeyAlgorithms, KeyAlgorithm(o.KeyAlgorithm)) {
		errs = append(errs, fmt.Errorf("--key-algorithm must be one of %s, got %q", joinAlgorithms(), o.KeyAlgorithm))
	}
	if o.Expiration != 0 && (o.Expiration < MinExpiration || o.Expiration > maxExpiration) {
		errs = append(errs, fmt.Errorf("--expiration must be 0 or between %s and %s, got %s", MinExpiration, maxExpiration, o.Expiration))
	}
	if o.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("--timeout must be > 0, got %s", o.Timeout))
	}
	if o.WriteKubeconfig != "" && strings.HasSuffix(o.WriteKubeconfig, string(filepath.Separator)) {
		errs = append(errs, fmt.Errorf("--write-kubeconfig must be a file path, got %q", o.WriteKubeconfig))
	}
	errs = append(errs, o.validateVerbosity())
	return joinUsage(errs)
}

// validateStatus checks the flags of the status command.
func (o *Options) validateStatus() error {
	var errs []error
	errs = append(errs, o.validateCertDir())
	if o.Output != "text" && o.Output != "json" {
		errs = append(errs, fmt.Errorf("-o/--output must be one of text, json, got %q", o.Output))
	}
	errs = append(errs, o.validateVerbosity())
	return joinUsage(errs)
}

func (o *Options) validateCertDir() error {
	if o.CertDir == "" {
		return errors.New("--cert-dir must not be empty")
	}
	return nil
}

func (o *Options) validateVerbosity() error {
	if o.Verbosity < 0 {
		return fmt.Errorf("-v must be >= 0, got %d", o.Verbosity)
	}
	return nil
}

// Complete fills in what the flags leave to the environment, before
// Validate: the node name defaults to the lower-cased hostname, and the cert
// directory is made absolute (the kubeconfig written by --write-kubeconfig
// names the certificate by an absolute path, as kubelet's does).
func (o *Options) Complete() {
	if o.NodeName == "" {
		if host, err := os.Hostname(); err == nil {
			o.NodeName = strings.ToLower(strings.TrimSpace(host))
		}
	}
	if o.CertDir != "" {
		if dir, err := filepath.Abs(o.CertDir); err == nil {
			o.CertDir = dir
		}
	}
}

func joinUsage(errs []error) error {
	if err := errors.Join(errs...); err != nil {
		return &UsageError{Err: err}
	}
	return nil
}

func joinAlgorithms() string {
	names := make([]string, len(KeyAlgorithms))
	for i, a := range KeyAlgorithms {
		names[i] = string(a)
	}
	return strings.Join(names, ", ")
}
