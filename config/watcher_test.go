package config

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	pollInterval = 10 * time.Millisecond
	deadline     = 10 * time.Second
)

// events records the watcher's callbacks.
type events struct {
	mu       sync.Mutex
	policies []*Effective
	errs     []error
}

func (e *events) onChange(p *Effective) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.policies = append(e.policies, p)
}

func (e *events) onError(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.errs = append(e.errs, err)
}

func (e *events) counts() (int, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.policies), len(e.errs)
}

func (e *events) lastErr() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.errs[len(e.errs)-1]
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(pollInterval)
	}
}

// runWatcher starts w.Run and stops it when the test ends.
func runWatcher(t *testing.T, w *Watcher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v", err)
		}
	})
}

func policyText(mode string) string {
	return header + "spec:\n  mode: " + mode + "\n"
}

// settle gives the watcher several polls.
func settle() { time.Sleep(20 * pollInterval) }

func TestWatcherReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, policyText("Enforce"))
	var ev events
	w, err := NewWatcher(path, pollInterval, ev.onChange, ev.onError)
	if err != nil {
		t.Fatal(err)
	}
	if w.Current().Mode != ModeEnforce {
		t.Fatalf("initial mode %q", w.Current().Mode)
	}
	runWatcher(t, w)

	// Unchanged content: nothing happens, even when rewritten.
	writeFile(t, path, policyText("Enforce"))
	settle()
	if c, e := ev.counts(); c != 0 || e != 0 {
		t.Fatalf("unchanged file: %d changes, %d errors", c, e)
	}

	// A good change is picked up.
	writeFile(t, path, policyText("DryRun"))
	eventually(t, "reload", func() bool { return w.Current().Mode == ModeDryRun })
	if c, _ := ev.counts(); c != 1 {
		t.Errorf("%d onChange calls, want 1", c)
	}

	// A bad change keeps the old policy and is reported once.
	old := w.Current()
	writeFile(t, path, policyText("Sometimes"))
	eventually(t, "error", func() bool { _, e := ev.counts(); return e == 1 })
	settle()
	if _, e := ev.counts(); e != 1 {
		t.Errorf("the same bad content was reported %d times", e)
	}
	if w.Current() != old {
		t.Error("a bad file replaced the policy")
	}
	var pe *Error
	if err := ev.lastErr(); !errors.As(err, &pe) || !strings.Contains(err.Error(), path+":4: spec.mode") || !strings.Contains(err.Error(), "keeping digest "+old.Digest) {
		t.Errorf("error %q should name the file, the line and the policy kept", err)
	}

	// Another bad content is reported again.
	writeFile(t, path, policyText("Never"))
	eventually(t, "second error", func() bool { _, e := ev.counts(); return e == 2 })

	// Fixing the file reloads.
	writeFile(t, path, policyText("Enforce"))
	eventually(t, "recovery", func() bool { return w.Current().Mode == ModeEnforce })

	// A missing file is reported once and keeps the policy.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	eventually(t, "missing file error", func() bool { _, e := ev.counts(); return e == 3 })
	settle()
	if _, e := ev.counts(); e != 3 {
		t.Errorf("a missing file was reported %d times", e-2)
	}
	if w.Current().Mode != ModeEnforce {
		t.Error("a missing file changed the policy")
	}
	writeFile(t, path, policyText("DryRun"))
	eventually(t, "file back", func() bool { return w.Current().Mode == ModeDryRun })
}

// A ConfigMap volume: the file is a symlink through ..data to a timestamped
// directory, and an update swaps ..data atomically.
func TestWatcherConfigMapSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	mkVersion := func(name, content string) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name, "policy.yaml"), content)
	}
	swap := func(target string) {
		t.Helper()
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(target, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	mkVersion("..2024_01_01_00_00_00.1", policyText("Enforce"))
	if err := os.Symlink("..2024_01_01_00_00_00.1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "policy.yaml")
	if err := os.Symlink("..data/policy.yaml", path); err != nil {
		t.Fatal(err)
	}

	var ev events
	w, err := NewWatcher(path, pollInterval, ev.onChange, ev.onError)
	if err != nil {
		t.Fatal(err)
	}
	runWatcher(t, w)

	mkVersion("..2024_01_01_00_00_01.2", policyText("DryRun"))
	swap("..2024_01_01_00_00_01.2")
	if err := os.RemoveAll(filepath.Join(dir, "..2024_01_01_00_00_00.1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "reload after the swap", func() bool { return w.Current().Mode == ModeDryRun })

	mkVersion("..2024_01_01_00_00_02.3", "kind: Nonsense\n")
	swap("..2024_01_01_00_00_02.3")
	eventually(t, "error after a bad swap", func() bool { _, e := ev.counts(); return e == 1 })
	if w.Current().Mode != ModeDryRun {
		t.Error("a bad swap changed the policy")
	}
	if c, _ := ev.counts(); c != 1 {
		t.Errorf("%d onChange calls, want 1", c)
	}
}

func TestNewWatcherRejectsABadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, policyText("Sometimes"))
	if _, err := NewWatcher(path, pollInterval, nil, nil); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("error %v should name %s", err, path)
	}
	if _, err := NewWatcher(filepath.Join(t.TempDir(), "missing"), pollInterval, nil, nil); err == nil {
		t.Error("missing file accepted")
	}
}

func TestWatcherNilCallbacks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, policyText("Enforce"))
	w, err := NewWatcher(path, 0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, policyText("Bad"))
	w.Poll()
	writeFile(t, path, policyText("DryRun"))
	w.Poll()
	if w.Current().Mode != ModeDryRun {
		t.Error("Poll did not reload")
	}
}
