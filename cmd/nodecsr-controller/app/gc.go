package app

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"

	"github.com/go-logr/logr"
)

// The Go runtime collects garbage when the heap has grown by GOGC percent
// (default 100) of the live heap. nodecsr's live heap is small (about 10 MiB
// with a thousand CSRs cached) while each decision allocates some 100 KiB,
// nearly all of it client-go decoding the API server's answers and watch
// events; at GOGC=100 it collected every hundred decisions or so, and those
// collections were a third of its CPU time, time the API server it shares a
// node with (and the whole machine, in the benchmarks) does not get.
//
// So, unless GOGC is set, nodecsr-controller lets the heap grow by at least
// gcMinHeadroom before a collection: it sets the GC percentage after every
// collection to max(100, 100 × gcMinHeadroom / live heap). A small heap
// (the common case) is collected a few times less often for at most
// gcMinHeadroom more memory; a heap over gcMinHeadroom is collected as at
// GOGC=100. GOMEMLIMIT (the chart sets it from the memory limit) still
// bounds the whole: the runtime collects harder as it nears the limit.
const (
	gcMinHeadroom = 32 << 20
	gcMaxPercent  = 2000
)

// gcPercentFor is the GC percentage that lets a heap of live bytes grow by
// at least headroom (100 at least, gcMaxPercent at most; 100 while the live
// heap is unknown, before the first collection).
func gcPercentFor(live, headroom uint64) int {
	if live == 0 {
		return 100
	}
	p := headroom * 100 / live
	return int(min(max(p, 100), gcMaxPercent))
}

var gcTunerOnce sync.Once

// startGCTuner starts adjusting the GC percentage after each collection,
// once per process, unless the environment sets GOGC.
func startGCTuner(log logr.Logger) {
	gcTunerOnce.Do(func() {
		if v, ok := os.LookupEnv("GOGC"); ok {
			log.Info("GOGC is set: the Go runtime's GC percentage is left as it says", "GOGC", v)
			return
		}
		t := &gcTuner{headroom: gcMinHeadroom, samples: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
		t.adjust() // if a collection already measured the live heap
		t.arm()
		log.Info("Letting the heap grow by at least gcMinHeadroom between collections (set GOGC to choose otherwise)", "gcMinHeadroomBytes", gcMinHeadroom)
	})
}

type gcTuner struct {
	headroom uint64
	samples  []metrics.Sample
	percent  int
	stopped  atomic.Bool // tests stop a tuner; the process's runs for good
}

// sentinel is garbage from the moment it is made: its finalizer runs after
// the next collection, and makes the next one.
type sentinel struct{ _ *byte }

func (t *gcTuner) arm() {
	runtime.SetFinalizer(&sentinel{}, func(*sentinel) {
		if t.stopped.Load() {
			return
		}
		t.adjust()
		t.arm()
	})
}

// adjust sets the GC percentage for the live heap the last collection left.
func (t *gcTuner) adjust() {
	metrics.Read(t.samples)
	if t.samples[0].Value.Kind() != metrics.KindUint64 || t.samples[0].Value.Uint64() == 0 {
		return // no collection yet
	}
	p := gcPercentFor(t.samples[0].Value.Uint64(), t.headroom)
	// Small changes are not worth a call (it takes the heap lock).
	if t.percent == 0 || p < t.percent*9/10 || p > t.percent*11/10 {
		debug.SetGCPercent(p)
		t.percent = p
	}
}
