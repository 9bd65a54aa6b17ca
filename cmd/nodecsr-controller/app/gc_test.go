package app

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/nodecsr/nodecsr/internal/testutil"
)

func TestGCPercentFor(t *testing.T) {
	for _, c := range []struct {
		live, headroom uint64
		want           int
	}{
		{live: 8 << 20, headroom: 32 << 20, want: 400},  // a small heap grows by the headroom
		{live: 32 << 20, headroom: 32 << 20, want: 100}, // as large as the headroom: GOGC=100
		{live: 1 << 30, headroom: 32 << 20, want: 100},  // never below 100
		{live: 10 << 10, headroom: 32 << 20, want: gcMaxPercent},
		{live: 0, headroom: 32 << 20, want: 100}, // unknown before the first collection
	} {
		if got := gcPercentFor(c.live, c.headroom); got != c.want {
			t.Errorf("gcPercentFor(%d, %d) = %d, want %d", c.live, c.headroom, got, c.want)
		}
	}
}

// The tuner sets the GC percentage after collections, from the live heap.
func TestGCTunerFollowsTheLiveHeap(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	read := func(name string) uint64 {
		s := []metrics.Sample{{Name: name}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	// A headroom far above this test's heap gives the maximum; one far
	// below it gives 100.
	for _, c := range []struct {
		headroom uint64
		want     int
	}{{headroom: 1 << 40, want: gcMaxPercent}, {headroom: 1, want: 100}} {
		debug.SetGCPercent(150) // neither
		tuner := &gcTuner{headroom: c.headroom, samples: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
		tuner.arm()
		defer tuner.stopped.Store(true)
		err := testutil.Poll(t, 10*time.Millisecond, func(context.Context) (bool, error) {
			runtime.GC()
			return read("/gc/gogc:percent") == uint64(c.want), nil
		})
		tuner.stopped.Store(true)
		if err != nil {
			t.Fatalf("headroom %d: GC percentage %d after collections, want %d (live heap %d): %v", c.headroom, read("/gc/gogc:percent"), c.want, read("/gc/heap/live:bytes"), err)
		}
	}
}
