package main

import (
	"math"
	"slices"
	"time"
)

// latency summarises a set of durations, in seconds.
type latency struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50Seconds"`
	P90  float64 `json:"p90Seconds"`
	P99  float64 `json:"p99Seconds"`
	Max  float64 `json:"maxSeconds"`
	Mean float64 `json:"meanSeconds"`
}

func summarize(ds []time.Duration) latency {
	if len(ds) == 0 {
		return latency{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return latency{
		N:    len(s),
		P50:  quantile(s, 0.50),
		P90:  quantile(s, 0.90),
		P99:  quantile(s, 0.99),
		Max:  s[len(s)-1].Seconds(),
		Mean: (sum / time.Duration(len(s))).Seconds(),
	}
}

// quantile is the nearest-rank quantile of sorted durations.
func quantile(sorted []time.Duration, q float64) float64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i].Seconds()
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

const mib = 1 << 20
