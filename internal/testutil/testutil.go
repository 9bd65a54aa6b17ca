// Package testutil holds small helpers the unit and integration tests share:
// reading a metric from a Prometheus gatherer or another process's /metrics,
// collecting the API server's warnings, inner deadlines derived from the
// test's own, and files replaced atomically.
package testutil

import (
	"fmt"
	"os"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// MetricSum sums the series of the metric name whose labels include every
// label in want: counter and gauge values, histogram sample counts. A metric
// that is not there sums to 0.
func MetricSum(g prometheus.Gatherer, name string, want map[string]string) (float64, error) {
	families, err := g.Gather()
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			labels := make(map[string]string, len(m.GetLabel()))
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Histogram != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			case m.Untyped != nil:
				sum += m.GetUntyped().GetValue()
			}
		}
	}
	return sum, nil
}

// Warnings collects the warnings the API server sends (a rest.WarningHandler).
type Warnings struct {
	mu   sync.Mutex
	list []string
}

// HandleWarningHeader implements rest.WarningHandler.
func (w *Warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

// All returns the warnings seen so far.
func (w *Warnings) All() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.list...)
}

// WriteFileAtomically replaces the file at path with data (mode 0600) by
// writing path.tmp and renaming it over path, as the kubelet updates a
// ConfigMap volume: a reader sees the old content or the new, never part.
func WriteFileAtomically(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("failed to write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("failed to replace %s: %w", path, err)
	}
	return nil
}
