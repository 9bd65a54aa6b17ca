package requester

import (
	"testing"
	"time"
)

func TestRotationDeadline(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	year := nb.AddDate(1, 0, 0)
	tests := map[string]struct {
		notBefore, notAfter time.Time
		jitter              float64
		want                time.Time
	}{
		"no jitter is 70%":           {nb, nb.Add(100 * time.Hour), 0, nb.Add(70 * time.Hour)},
		"full jitter is 90%":         {nb, nb.Add(100 * time.Hour), 1, nb.Add(90 * time.Hour)},
		"half jitter is 80%":         {nb, nb.Add(100 * time.Hour), 0.5, nb.Add(80 * time.Hour)},
		"quarter jitter is 75%":      {nb, nb.Add(100 * time.Hour), 0.25, nb.Add(75 * time.Hour)},
		"negative jitter is clamped": {nb, nb.Add(100 * time.Hour), -3, nb.Add(70 * time.Hour)},
		"large jitter is clamped":    {nb, nb.Add(100 * time.Hour), 7, nb.Add(90 * time.Hour)},
		"one year, 70%":              {nb, year, 0, nb.Add(time.Duration(float64(year.Sub(nb)) * 0.7))},
		"ten minutes, 90%":           {nb, nb.Add(10 * time.Minute), 1, nb.Add(9 * time.Minute)},
		"no lifetime":                {nb, nb, 0.5, nb},
		"reversed validity":          {nb, nb.Add(-time.Hour), 0.5, nb},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := RotationDeadline(tc.notBefore, tc.notAfter, tc.jitter)
			if d := got.Sub(tc.want); d < -time.Millisecond || d > time.Millisecond {
				t.Errorf("RotationDeadline = %s, want %s", got, tc.want)
			}
		})
	}
	start, end := RotationWindow(nb, nb.Add(10*time.Hour))
	if !start.Equal(nb.Add(7*time.Hour)) || !end.Equal(nb.Add(9*time.Hour)) {
		t.Errorf("RotationWindow = %s..%s, want 7h..9h after notBefore", start, end)
	}
}

func TestBackoff(t *testing.T) {
	tests := map[string]struct {
		failures int
		jitter   float64
		want     time.Duration
	}{
		"no failure":                {0, 0, 0},
		"first failure":             {1, 0, 2 * time.Second},
		"second failure":            {2, 0, 4 * time.Second},
		"third failure":             {3, 0, 8 * time.Second},
		"eighth failure":            {8, 0, 256 * time.Second},
		"ninth failure hits cap":    {9, 0, 5 * time.Minute},
		"many failures stay capped": {1000, 0, 5 * time.Minute},
		"full jitter shortens 10%":  {1, 1, 1800 * time.Millisecond},
		"jitter at the cap":         {50, 1, 270 * time.Second},
		"jitter is clamped":         {1, 5, 1800 * time.Millisecond},
		"negative count":            {-1, 0, 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := Backoff(tc.failures, tc.jitter); got != tc.want {
				t.Errorf("Backoff(%d, %v) = %s, want %s", tc.failures, tc.jitter, got, tc.want)
			}
		})
	}
	// Never decreasing with more failures (for the same jitter).
	for n := 1; n < 64; n++ {
		if Backoff(n+1, 0.5) < Backoff(n, 0.5) {
			t.Fatalf("Backoff(%d) < Backoff(%d)", n+1, n)
		}
	}
}
