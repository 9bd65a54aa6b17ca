package testutil

import (
	"context"
	"testing"
	"time"
)

func TestContextEndsBeforeTheTestsDeadline(t *testing.T) {
	ctx, cancel := Context(t)
	defer cancel()
	td, hasDeadline := t.Deadline()
	d, ok := ctx.Deadline()
	if ok != hasDeadline {
		t.Fatalf("context deadline %v (%v), test deadline %v (%v)", d, ok, td, hasDeadline)
	}
	if hasDeadline {
		if !d.Before(td) {
			t.Errorf("the context ends at %v, not before the test's deadline %v", d, td)
		}
		if r := Remaining(t); r <= 0 || r > time.Until(td) {
			t.Errorf("Remaining = %v with %v to the test's deadline", r, time.Until(td))
		}
	}
	t.Cleanup(func() {
		// t.Context() is cancelled by now; Context and Poll still work.
		ctx, cancel := Context(t)
		defer cancel()
		if ctx.Err() != nil {
			t.Errorf("Context in a Cleanup function is done: %v", ctx.Err())
		}
		calls := 0
		if err := Poll(t, time.Millisecond, func(context.Context) (bool, error) { calls++; return calls == 3, nil }); err != nil || calls != 3 {
			t.Errorf("Poll in a Cleanup function: %v after %d calls", err, calls)
		}
	})
}

func TestMainContextEndsBeforeTheBinarysTimeout(t *testing.T) {
	ctx, cancel := MainContext()
	defer cancel()
	d, ok := ctx.Deadline()
	if timeout := testTimeout(); timeout > 0 {
		if !ok || !d.Before(started.Add(timeout)) {
			t.Errorf("MainContext ends at %v (%v), -test.timeout %v from %v", d, ok, timeout, started)
		}
	} else if ok {
		t.Errorf("MainContext has a deadline (%v) without -test.timeout", d)
	}
}
