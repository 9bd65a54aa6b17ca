package testutil

import (
	"context"
	"flag"
	"math"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// started is about when the test binary started: the package is initialised
// before TestMain runs.
var started = time.Now()

// maxMargin caps the time kept back before a deadline.
const maxMargin = 30 * time.Second

// testTimeout is the test binary's -test.timeout (0: none). It parses the
// command line if nobody has yet, as testing.M.Run would.
func testTimeout() time.Duration {
	if !flag.Parsed() {
		flag.Parse()
	}
	f := flag.Lookup("test.timeout")
	if f == nil {
		return 0
	}
	d, ok := f.Value.(flag.Getter).Get().(time.Duration)
	if !ok {
		return 0
	}
	return d
}

// margin is what inner deadlines keep back before the test's own: a tenth
// of -test.timeout, at most 30 s, so that a wait that gives up still leaves
// time to say why and to clean up before the test binary panics.
func margin() time.Duration {
	if t := testTimeout(); t > 0 {
		return min(t/10, maxMargin)
	}
	return maxMargin
}

// Deadline is when t's inner waits should give up: a margin before
// t.Deadline() (a tenth of -test.timeout, at most 30 s). ok is false when
// the test has no deadline (-test.timeout=0): then nothing should give up
// by the clock.
func Deadline(t testing.TB) (deadline time.Time, ok bool) {
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if deadline, ok := d.Deadline(); ok {
			return deadline.Add(-margin()), true
		}
		return time.Time{}, false
	}
	return mainDeadline() // a benchmark: the binary's deadline
}

// Context is t.Context() ending at Deadline(t) when there is one: the
// context for everything a test waits for. t.Context() is cancelled when
// the test ends, before its Cleanup functions run: called from one of them,
// Context is CleanupContext.
func Context(t testing.TB) (context.Context, context.CancelFunc) {
	if t.Context().Err() != nil {
		return CleanupContext(t)
	}
	if d, ok := Deadline(t); ok {
		return context.WithDeadline(t.Context(), d)
	}
	return context.WithCancel(t.Context())
}

// CleanupContext is the context for t's Cleanup functions, which run after
// t.Context() is cancelled: it ends half the margin after Deadline(t), or
// never without a deadline.
func CleanupContext(t testing.TB) (context.Context, context.CancelFunc) {
	if d, ok := Deadline(t); ok {
		return context.WithDeadline(context.Background(), d.Add(margin()/2))
	}
	return context.WithCancel(context.Background())
}

// Remaining is the time until Deadline(t), for APIs that take a duration;
// without a deadline it is practically forever.
func Remaining(t testing.TB) time.Duration {
	if d, ok := Deadline(t); ok {
		return max(time.Until(d), 0)
	}
	return math.MaxInt64
}

// mainDeadline is when the test binary should have given up on its own:
// a margin before its start plus -test.timeout (go test kills it not long
// after). ok is false without a timeout.
func mainDeadline() (time.Time, bool) {
	t := testTimeout()
	if t <= 0 {
		return time.Time{}, false
	}
	return started.Add(t - margin()), true
}

// MainContext is the context for what TestMain does around m.Run (starting a
// control plane, building binaries, starting a controller), where there is no
// testing.T: it ends a margin before the binary's start plus -test.timeout,
// or never with -test.timeout=0.
func MainContext() (context.Context, context.CancelFunc) {
	if d, ok := mainDeadline(); ok {
		return context.WithDeadline(context.Background(), d)
	}
	return context.WithCancel(context.Background())
}

// Poll calls cond every interval, first at once, until it returns true or
// an error, or Context(t) ends: the wait for something a test waits for,
// in the test or in its Cleanup functions.
func Poll(t testing.TB, interval time.Duration, cond func(context.Context) (bool, error)) error {
	ctx, cancel := Context(t)
	defer cancel()
	return wait.PollUntilContextCancel(ctx, interval, true, cond)
}
