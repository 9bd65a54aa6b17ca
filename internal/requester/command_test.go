package requester

import (
	"bytes"
	"strings"
	"testing"
)

func TestCommandLine(t *testing.T) {
	tests := map[string]struct {
		args       []string
		wantCode   int
		wantStdout []string
		wantStderr []string
	}{
		"help documents the exit codes": {
			args: []string{"--help"}, wantCode: 0,
			wantStdout: []string{"Exit codes:", "3  the CSR was denied", "--bootstrap-kubeconfig", "--key-algorithm", "--write-kubeconfig", "--rotate", "(default \"/var/lib/kubelet/pki\")", "(default 15m0s)"},
		},
		"status help": {
			args: []string{"status", "--help"}, wantCode: 0,
			wantStdout: []string{"rotation-overdue (8", "-o, --output"},
		},
		"version": {
			args: []string{"version"}, wantCode: 0,
			wantStdout: []string{"nodecsr-request dev (go"},
		},
		"unknown flag": {
			args: []string{"--nope"}, wantCode: 2,
			wantStderr: []string{"error: unknown flag: --nope", "Run 'nodecsr-request --help' for usage."},
		},
		"bad duration": {
			args: []string{"--timeout", "soon"}, wantCode: 2,
			wantStderr: []string{`invalid argument "soon" for "--timeout"`},
		},
		"stray argument": {
			args: []string{"bootstrap"}, wantCode: 2,
			wantStderr: []string{`unexpected argument "bootstrap"`},
		},
		"invalid options": {
			args: []string{"--bootstrap-kubeconfig", "/x", "--key-algorithm", "dsa"}, wantCode: 2,
			wantStderr: []string{`--key-algorithm must be one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, got "dsa"`},
		},
		"bad status output": {
			args: []string{"status", "-o", "yaml"}, wantCode: 2,
			wantStderr: []string{`got "yaml"`},
		},
		"unreadable bootstrap kubeconfig is a configuration error": {
			args:       []string{"--bootstrap-kubeconfig", "/nonexistent/bootstrap.conf", "--node-name", "n1", "--cert-dir", "CERTDIR"},
			wantCode:   2,
			wantStderr: []string{"cannot read --bootstrap-kubeconfig", "/nonexistent/bootstrap.conf"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			args := append([]string(nil), tc.args...)
			for i, a := range args {
				if a == "CERTDIR" {
					args[i] = t.TempDir()
				}
			}
			var stdout, stderr bytes.Buffer
			if code := Execute(t.Context(), args, &stdout, &stderr); code != tc.wantCode {
				t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.wantCode, &stdout, &stderr)
			}
			for _, w := range tc.wantStdout {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, &stdout)
				}
			}
			for _, w := range tc.wantStderr {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, &stderr)
				}
			}
		})
	}
}
