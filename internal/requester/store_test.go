package requester

import (
	"bytes"
	"crypto"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestStoreUpdateWritesKubeletLayout(t *testing.T) {
	ca := newTestCA(t)
	dir := filepath.Join(t.TempDir(), "pki")
	s := NewStore(dir, fixedClock("2026-03-04T05:06:07Z"))
	key := mustKey(t, ECDSAP256)
	now := time.Now()
	certPEM := ca.issue(t, key.Public(), "system:node:n1", now.Add(-time.Minute), now.Add(time.Hour))

	pair, err := s.Update(append(certPEM, ca.pem...), key)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(dir, "kubelet-client-2026-03-04-05-06-07.pem")
	if pair.Path != want {
		t.Errorf("pair path = %s, want %s", pair.Path, want)
	}
	fi, err := os.Lstat(want)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", want, fi.Mode().Perm())
	}
	target, err := os.Readlink(s.CurrentPath())
	if err != nil {
		t.Fatalf("current is not a symlink: %v", err)
	}
	if target != want {
		t.Errorf("current -> %s, want %s (absolute, as kubelet writes it)", target, want)
	}
	data, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		types = append(types, b.Type)
	}
	if got := strings.Join(types, ","); got != "CERTIFICATE,CERTIFICATE,EC PRIVATE KEY" {
		t.Errorf("file holds %s, want the chain then the key", got)
	}
	if !pair.KeyMatches() || !pair.ValidAt(now) || len(pair.Certs) != 2 {
		t.Errorf("stored pair does not check out: keyMatches=%v valid=%v certs=%d", pair.KeyMatches(), pair.ValidAt(now), len(pair.Certs))
	}
	assertOnlyFiles(t, dir, "kubelet-client-2026-03-04-05-06-07.pem", CurrentFile)

	// A second update within the same second must not touch the first file.
	key2 := mustKey(t, ECDSAP256)
	pair2, err := s.Update(ca.issue(t, key2.Public(), "system:node:n1", now.Add(-time.Minute), now.Add(time.Hour)), key2)
	if err != nil {
		t.Fatal(err)
	}
	if pair2.Path != filepath.Join(dir, "kubelet-client-2026-03-04-05-06-07-1.pem") {
		t.Errorf("second pair path = %s", pair2.Path)
	}
	if again, _ := os.ReadFile(want); !bytes.Equal(again, data) {
		t.Error("the second update rewrote the first pair's file")
	}
	cur, err := s.Current()
	if err != nil || cur.Path != pair2.Path {
		t.Fatalf("current = %v, %v; want %s", cur, err, pair2.Path)
	}
	assertOnlyFiles(t, dir, "kubelet-client-2026-03-04-05-06-07.pem", "kubelet-client-2026-03-04-05-06-07-1.pem", CurrentFile)
}

func TestStoreUpdateRefusesACertificateForAnotherKey(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	s := NewStore(dir, time.Now)
	now := time.Now()
	certPEM := ca.issue(t, mustKey(t, ECDSAP256).Public(), "system:node:n1", now, now.Add(time.Hour))
	if _, err := s.Update(certPEM, mustKey(t, ECDSAP256)); err == nil {
		t.Fatal("Update accepted a certificate for another key")
	}
	if _, err := s.Update([]byte("not PEM"), mustKey(t, ECDSAP256)); err == nil {
		t.Fatal("Update accepted garbage")
	}
	assertOnlyFiles(t, dir)
}

// TestStoreSurvivesInterruptedUpdates builds by hand each state a crash
// between two steps of Update leaves, and checks that reading, recovering and
// the next update handle it.
func TestStoreSurvivesInterruptedUpdates(t *testing.T) {
	ca := newTestCA(t)
	now := time.Now()
	// pairFile writes a complete pair file (as Update's rename leaves it) and returns its path.
	pairFile := func(t *testing.T, dir, name string) string {
		key := mustKey(t, ECDSAP256)
		path := filepath.Join(dir, name)
		writeFile(t, path, append(ca.issue(t, key.Public(), "system:node:n1", now.Add(-time.Minute), now.Add(time.Hour)), keyPEM(t, key)...))
		return path
	}
	tests := map[string]struct {
		setup func(t *testing.T, dir string) (wantCurrent string)
		// wantMissing is the error text Current gives before recovery ("" when it finds a pair).
		wantMissing string
		// wantAfterRecover is the file current points at after Recover ("" for none).
		wantAfterRecover func(dir string) string
	}{
		"crash while writing the pair file (stale temp file)": {
			setup: func(t *testing.T, dir string) string {
				writeFile(t, filepath.Join(dir, ".kubelet-client-2026-01-01-00-00-00.pem.tmp-123"), []byte("-----BEGIN CERT"))
				return ""
			},
			wantMissing:      "does not exist",
			wantAfterRecover: func(string) string { return "" },
		},
		"crash after writing the pair file, before the symlink": {
			setup: func(t *testing.T, dir string) string {
				pairFile(t, dir, "kubelet-client-2026-01-01-00-00-00.pem")
				return ""
			},
			wantMissing:      "does not exist",
			wantAfterRecover: func(string) string { return "" },
		},
		"crash after the temporary symlink, first certificate": {
			setup: func(t *testing.T, dir string) string {
				p := pairFile(t, dir, "kubelet-client-2026-01-01-00-00-00.pem")
				if err := os.Symlink(p, filepath.Join(dir, updatedFile)); err != nil {
					t.Fatal(err)
				}
				return ""
			},
			wantMissing:      "does not exist",
			wantAfterRecover: func(dir string) string { return filepath.Join(dir, "kubelet-client-2026-01-01-00-00-00.pem") },
		},
		"crash after the temporary symlink, renewal": {
			setup: func(t *testing.T, dir string) string {
				old := pairFile(t, dir, "kubelet-client-2026-01-01-00-00-00.pem")
				if err := os.Symlink(old, filepath.Join(dir, CurrentFile)); err != nil {
					t.Fatal(err)
				}
				p := pairFile(t, dir, "kubelet-client-2026-02-01-00-00-00.pem")
				if err := os.Symlink(p, filepath.Join(dir, updatedFile)); err != nil {
					t.Fatal(err)
				}
				return old
			},
			wantAfterRecover: func(dir string) string { return filepath.Join(dir, "kubelet-client-2026-01-01-00-00-00.pem") },
		},
		"symlink to a missing file": {
			setup: func(t *testing.T, dir string) string {
				if err := os.Symlink(filepath.Join(dir, "kubelet-client-gone.pem"), filepath.Join(dir, CurrentFile)); err != nil {
					t.Fatal(err)
				}
				return ""
			},
			wantMissing:      "which does not exist",
			wantAfterRecover: func(string) string { return "" },
		},
		"current is a regular file (written by another tool)": {
			setup: func(t *testing.T, dir string) string {
				return pairFile(t, dir, CurrentFile)
			},
			wantAfterRecover: func(dir string) string { return filepath.Join(dir, CurrentFile) },
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			wantCurrent := tc.setup(t, dir)
			s := NewStore(dir, fixedClock("2026-06-01T00:00:00Z"))

			cur, err := s.Current()
			switch {
			case tc.wantMissing != "":
				if !errors.Is(err, ErrNoCertificate) || !strings.Contains(err.Error(), tc.wantMissing) {
					t.Fatalf("Current() error = %v, want ErrNoCertificate mentioning %q", err, tc.wantMissing)
				}
			case err != nil:
				t.Fatalf("Current(): %v", err)
			case cur.Path != wantCurrent:
				t.Fatalf("Current() = %s, want %s", cur.Path, wantCurrent)
			}

			if err := s.Recover(t.Context()); err != nil {
				t.Fatalf("Recover: %v", err)
			}
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				if strings.Contains(e.Name(), tempMarker) {
					t.Errorf("Recover left the temporary file %s", e.Name())
				}
			}
			cur, err = s.Current()
			if want := tc.wantAfterRecover(dir); want == "" {
				if !errors.Is(err, ErrNoCertificate) {
					t.Errorf("after Recover, Current() = %v, %v; want no certificate", cur, err)
				}
			} else if err != nil || cur.Path != want || !cur.KeyMatches() {
				t.Errorf("after Recover, Current() = %v, %v; want a matching pair from %s", cur, err, want)
			}

			// The next update always ends with a current symlink to the new pair.
			key := mustKey(t, ECDSAP256)
			pair, err := s.Update(ca.issue(t, key.Public(), "system:node:n1", now.Add(-time.Minute), now.Add(time.Hour)), key)
			if err != nil {
				t.Fatalf("Update: %v", err)
			}
			target, err := os.Readlink(s.CurrentPath())
			if err != nil || target != pair.Path {
				t.Errorf("after Update, current -> %q (%v), want %s", target, err, pair.Path)
			}
			if _, err := os.Lstat(filepath.Join(dir, updatedFile)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Update left %s behind: %v", updatedFile, err)
			}
		})
	}
}

func TestPendingKeyIsWrittenFirstAndReused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new-dir")
	s := NewStore(dir, time.Now)
	ctx := t.Context()

	key, reused, err := s.PendingKey(ctx, ECDSAP256, nil)
	if err != nil || reused {
		t.Fatalf("first PendingKey = reused %v, %v", reused, err)
	}
	fi, err := os.Stat(s.PendingKeyPath())
	if err != nil {
		t.Fatalf("the pending key was not written: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("pending key mode %v, want 0600", fi.Mode().Perm())
	}
	if s.PendingKeyPath() != filepath.Join(dir, "kubelet-client.key.tmp") {
		t.Errorf("pending key at %s", s.PendingKeyPath())
	}

	again, reused, err := s.PendingKey(ctx, ECDSAP256, nil)
	if err != nil || !reused || !publicEqual(again, key) {
		t.Fatalf("second PendingKey: reused=%v err=%v same=%v", reused, err, publicEqual(again, key))
	}

	other, reused, err := s.PendingKey(ctx, ECDSAP384, nil)
	if err != nil || reused || publicEqual(other, key) || AlgorithmOf(other.Public()) != ECDSAP384 {
		t.Fatalf("PendingKey with another algorithm reused the old key: reused=%v err=%v", reused, err)
	}

	// A key that already backs the current certificate is used up.
	fresh, reused, err := s.PendingKey(ctx, ECDSAP384, other.Public())
	if err != nil || reused || publicEqual(fresh, other) {
		t.Fatalf("PendingKey reused the current certificate's key: reused=%v err=%v", reused, err)
	}

	writeFile(t, s.PendingKeyPath(), []byte("garbage"))
	k, reused, err := s.PendingKey(ctx, RSA2048, nil)
	if err != nil || reused || AlgorithmOf(k.Public()) != RSA2048 {
		t.Fatalf("PendingKey over garbage: reused=%v err=%v", reused, err)
	}

	if err := s.DiscardPendingKey(); err != nil {
		t.Fatal(err)
	}
	if err := s.DiscardPendingKey(); err != nil {
		t.Fatalf("discarding twice: %v", err)
	}
	if _, err := os.Stat(s.PendingKeyPath()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("pending key still there: %v", err)
	}
	assertOnlyFiles(t, dir)
}

func publicEqual(a, b interface{ Public() crypto.PublicKey }) bool {
	pa, ok := a.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pa.Equal(b.Public())
}

func assertOnlyFiles(t *testing.T, dir string, want ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if strings.Join(got, " ") != strings.Join(sorted(want), " ") {
		t.Errorf("files in %s = %v, want %v", dir, got, sorted(want))
	}
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	slices.Sort(out)
	return out
}
