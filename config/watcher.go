package config

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// DefaultWatchInterval is the poll interval NewWatcher uses for a
// non-positive interval.
const DefaultWatchInterval = 10 * time.Second

// Watcher keeps the policy loaded from a file current. It polls the file's
// content hash, so it follows ConfigMap volume updates (an atomic swap of
// the ..data symlink) without fsnotify. A file that fails to load keeps the
// previous policy in force. Replace the file atomically (write and rename,
// as kubelet does for ConfigMap volumes): a half-written file is reported
// as an error until the next poll sees it whole.
type Watcher struct {
	path     string
	interval time.Duration
	onChange func(*Effective)
	onError  func(error)

	current atomic.Pointer[Effective]

	// Touched only by Run's goroutine.
	goodHash [sha256.Size]byte
	badHash  [sha256.Size]byte
	hasBad   bool
	lastErr  string
}

// NewWatcher loads the policy at path and returns a Watcher holding it. A
// file that fails to load is an error: nodecsr does not start on a bad
// policy. onChange is called from Run with every new policy (not with the
// first); onError with every new problem (the same bad content or the same
// read error is reported once). Either may be nil.
func NewWatcher(path string, interval time.Duration, onChange func(*Effective), onError func(error)) (*Watcher, error) {
	if interval <= 0 {
		interval = DefaultWatchInterval
	}
	data, err := readPolicyFile(path)
	if err != nil {
		return nil, err
	}
	p, err := parseFile(path, data)
	if err != nil {
		return nil, err
	}
	w := &Watcher{path: path, interval: interval, onChange: onChange, onError: onError}
	w.goodHash = sha256.Sum256(data)
	w.current.Store(p)
	return w, nil
}

// Current returns the policy in force. It is never nil and must not be
// modified.
func (w *Watcher) Current() *Effective { return w.current.Load() }

// Run polls the file every interval until ctx is done, then returns nil.
func (w *Watcher) Run(ctx context.Context) error {
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		w.Poll()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Poll checks the file once: an unchanged file does nothing, a changed file
// that loads replaces the policy and calls onChange, one that does not load
// calls onError (once per distinct content or read error). Run calls it;
// it must not be called concurrently with Run.
func (w *Watcher) Poll() {
	data, err := readPolicyFile(w.path)
	if err != nil {
		w.report(err, err.Error())
		return
	}
	sum := sha256.Sum256(data)
	if sum == w.goodHash {
		w.lastErr = ""
		w.hasBad = false
		return
	}
	if w.hasBad && sum == w.badHash {
		return
	}
	p, err := parseFile(w.path, data)
	if err != nil {
		w.badHash, w.hasBad = sum, true
		w.lastErr = ""
		w.report(fmt.Errorf("policy not reloaded, keeping digest %s: %w", w.Current().Digest, err), "")
		return
	}
	w.goodHash = sum
	w.hasBad = false
	w.lastErr = ""
	w.current.Store(p)
	if w.onChange != nil {
		w.onChange(p)
	}
}

// report calls onError unless key equals the last reported read error.
func (w *Watcher) report(err error, key string) {
	if key != "" {
		if key == w.lastErr {
			return
		}
		w.lastErr = key
		w.hasBad = false
	}
	if w.onError != nil {
		w.onError(err)
	}
}

// parseFile parses data read from path, naming the file in errors.
func parseFile(path string, data []byte) (*Effective, error) {
	p, err := Parse(data)
	if err != nil {
		var pe *Error
		if errors.As(err, &pe) {
			pe.File = path
		}
		return nil, err
	}
	return p, nil
}
