package requester

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStatus(t *testing.T) {
	ca := newTestCA(t)
	now := time.Now()
	h := time.Hour
	tests := map[string]struct {
		setup     func(t *testing.T, dir string)
		wantState CertState
		wantCode  int
		wantText  []string
	}{
		"valid": {
			setup:     func(t *testing.T, dir string) { installCurrent(t, ca, dir, now.Add(-h), now.Add(99*h)) },
			wantState: StateOK, wantCode: 0,
			wantText: []string{"subject:", "CN=system:node:unit,O=system:nodes", "issuer:", "CN=nodecsr-unit-test-ca", "matches the certificate", "ecdsa-p256", "(1.0% of the lifetime elapsed)", "state:            ok"},
		},
		"in the rotation window": {
			setup:     func(t *testing.T, dir string) { installCurrent(t, ca, dir, now.Add(-80*h), now.Add(20*h)) },
			wantState: StateRotationWindow, wantCode: 0,
			wantText: []string{"rotation-window", "80.0% of the lifetime elapsed"},
		},
		"near expiry, past the rotation window": {
			setup:     func(t *testing.T, dir string) { installCurrent(t, ca, dir, now.Add(-95*h), now.Add(5*h)) },
			wantState: StateRotationOverdue, wantCode: 8,
			wantText: []string{"rotation-overdue", "95.0% of the lifetime elapsed"},
		},
		"expired": {
			setup:     func(t *testing.T, dir string) { installCurrent(t, ca, dir, now.Add(-10*h), now.Add(-h)) },
			wantState: StateExpired, wantCode: 7,
			// The test runs a moment after now: the seconds may differ.
			wantText: []string{"state:            expired", "remaining:        -1h0m"},
		},
		"not yet valid": {
			setup:     func(t *testing.T, dir string) { installCurrent(t, ca, dir, now.Add(h), now.Add(10*h)) },
			wantState: StateNotYetValid, wantCode: 7,
		},
		"missing": {
			setup:     func(*testing.T, string) {},
			wantState: StateMissing, wantCode: 6,
			wantText: []string{"kubelet-client-current.pem does not exist"},
		},
		"dangling symlink": {
			setup: func(t *testing.T, dir string) {
				if err := os.Symlink(filepath.Join(dir, "kubelet-client-gone.pem"), filepath.Join(dir, CurrentFile)); err != nil {
					t.Fatal(err)
				}
			},
			wantState: StateMissing, wantCode: 6,
			wantText: []string{"kubelet-client-gone.pem, which does not exist"},
		},
		"key does not match": {
			setup: func(t *testing.T, dir string) {
				key := mustKey(t, ECDSAP256)
				cert := ca.issue(t, key.Public(), "system:node:unit", now.Add(-h), now.Add(99*h))
				writeFile(t, filepath.Join(dir, CurrentFile), append(cert, keyPEM(t, mustKey(t, ECDSAP256))...))
			},
			wantState: StateKeyMismatch, wantCode: 9,
			wantText: []string{"does NOT match the certificate"},
		},
		"no key in the file": {
			setup: func(t *testing.T, dir string) {
				key := mustKey(t, RSA2048)
				writeFile(t, filepath.Join(dir, CurrentFile), ca.issue(t, key.Public(), "system:node:unit", now.Add(-h), now.Add(99*h)))
			},
			wantState: StateKeyMismatch, wantCode: 9,
			wantText: []string{"rsa-2048, does NOT match"},
		},
		"unreadable file": {
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, CurrentFile), []byte("garbage"))
			},
			wantState: StateMissing, wantCode: 6,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, dir)

			var stdout, stderr bytes.Buffer
			code := Execute(t.Context(), []string{"status", "--cert-dir", dir}, &stdout, &stderr)
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d; stdout:\n%s\nstderr:\n%s", code, tc.wantCode, &stdout, &stderr)
			}
			for _, w := range tc.wantText {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("text output lacks %q:\n%s", w, &stdout)
				}
			}
			if (code == 0) != (stderr.Len() == 0) {
				t.Errorf("stderr = %q with exit code %d", &stderr, code)
			}

			stdout.Reset()
			stderr.Reset()
			code = Execute(t.Context(), []string{"status", "--cert-dir", dir, "-o", "json"}, &stdout, &stderr)
			if code != tc.wantCode {
				t.Errorf("json: exit code %d, want %d", code, tc.wantCode)
			}
			var st CertificateStatus
			if err := json.Unmarshal(stdout.Bytes(), &st); err != nil {
				t.Fatalf("json output does not parse: %v\n%s", err, &stdout)
			}
			if st.State != tc.wantState || st.Path != filepath.Join(dir, CurrentFile) {
				t.Errorf("json state %q path %q, want %q", st.State, st.Path, tc.wantState)
			}
			if tc.wantState != StateMissing {
				if st.NotBefore == nil || st.NotAfter == nil || st.RotationWindowStart == nil || st.RotationWindowEnd == nil {
					t.Fatalf("json lacks times: %s", &stdout)
				}
				total := st.NotAfter.Sub(*st.NotBefore)
				if got := st.RotationWindowStart.Sub(*st.NotBefore); got != total/10*7 {
					t.Errorf("rotation window starts %s after notBefore, want 70%% of %s", got, total)
				}
				if got := st.RotationWindowEnd.Sub(*st.NotBefore); got != total/10*9 {
					t.Errorf("rotation window ends %s after notBefore, want 90%% of %s", got, total)
				}
				if st.KeyMatches != (tc.wantState != StateKeyMismatch) {
					t.Errorf("keyMatches = %v", st.KeyMatches)
				}
			}
		})
	}
}
