package requester

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestOptionsValidate(t *testing.T) {
	valid := func() *Options {
		o := NewOptions()
		o.BootstrapKubeconfig = "/etc/kubernetes/bootstrap-kubelet.conf"
		o.NodeName = "worker-1"
		return o
	}
	tests := map[string]struct {
		mutate func(*Options)
		want   []string // substrings of the error; none means valid
	}{
		"defaults with a bootstrap kubeconfig": {mutate: func(*Options) {}},
		"only --kubeconfig":                    {mutate: func(o *Options) { o.BootstrapKubeconfig, o.Kubeconfig = "", "/k" }},
		"every key algorithm": {mutate: func(o *Options) {
			for _, a := range KeyAlgorithms {
				o.KeyAlgorithm = string(a)
			}
		}},
		"minimum expiration": {mutate: func(o *Options) { o.Expiration = 10 * time.Minute }},
		"no kubeconfig at all": {
			mutate: func(o *Options) { o.BootstrapKubeconfig = "" },
			want:   []string{"one of --kubeconfig or --bootstrap-kubeconfig is required"},
		},
		"unknown key algorithm": {
			mutate: func(o *Options) { o.KeyAlgorithm = "x" },
			want:   []string{`--key-algorithm must be one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, got "x"`},
		},
		"expiration below the API minimum": {
			mutate: func(o *Options) { o.Expiration = 9 * time.Minute },
			want:   []string{"--expiration must be 0 or between 10m0s and", "got 9m0s"},
		},
		"negative expiration": {
			mutate: func(o *Options) { o.Expiration = -time.Hour },
			want:   []string{"--expiration must be"},
		},
		"zero timeout": {
			mutate: func(o *Options) { o.Timeout = 0 },
			want:   []string{"--timeout must be > 0, got 0s"},
		},
		"upper-case node name": {
			mutate: func(o *Options) { o.NodeName = "Worker-1" },
			want:   []string{`--node-name must be a lower-case RFC 1123 subdomain`, `got "Worker-1"`},
		},
		"empty node name": {
			mutate: func(o *Options) { o.NodeName = "" },
			want:   []string{"--node-name is required"},
		},
		"empty cert dir": {
			mutate: func(o *Options) { o.CertDir = "" },
			want:   []string{"--cert-dir must not be empty"},
		},
		"kubeconfig path is a folder": {
			mutate: func(o *Options) { o.WriteKubeconfig = "/etc/kubernetes/" },
			want:   []string{"--write-kubeconfig must be a file path"},
		},
		"negative verbosity": {
			mutate: func(o *Options) { o.Verbosity = -1 },
			want:   []string{"-v must be >= 0, got -1"},
		},
		"every error at once": {
			mutate: func(o *Options) { o.KeyAlgorithm, o.Timeout, o.CertDir = "dsa", -time.Second, "" },
			want:   []string{"--key-algorithm", "--timeout", "--cert-dir"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			o := valid()
			tc.mutate(o)
			err := o.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			var usage *UsageError
			if !errors.As(err, &usage) {
				t.Fatalf("Validate() = %v, want a UsageError", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestOptionsValidateStatus(t *testing.T) {
	o := NewOptions()
	if err := o.validateStatus(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	o.Output = "yaml"
	if err := o.validateStatus(); err == nil || !strings.Contains(err.Error(), `-o/--output must be one of text, json, got "yaml"`) {
		t.Fatalf("validateStatus() = %v", err)
	}
}

func TestOptionsComplete(t *testing.T) {
	o := NewOptions()
	o.CertDir = "relative/pki"
	o.Complete()
	if !strings.HasPrefix(o.CertDir, "/") || !strings.HasSuffix(o.CertDir, "/relative/pki") {
		t.Errorf("CertDir = %q, want it made absolute", o.CertDir)
	}
	if o.NodeName == "" || strings.ToLower(o.NodeName) != o.NodeName {
		t.Errorf("NodeName = %q, want the lower-cased hostname", o.NodeName)
	}
	o.NodeName = "given"
	o.Complete()
	if o.NodeName != "given" {
		t.Errorf("Complete overrode --node-name: %q", o.NodeName)
	}
}
