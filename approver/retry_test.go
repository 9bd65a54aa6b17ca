package approver

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// A CSR whose reconcile keeps failing is retried at least once a minute, so
// that nodecsr_fact_errors_total keeps rising while the fact is unavailable
// (the NodecsrFactErrors alert); the backoff still starts small.
func TestFailingReconcileIsRetriedAtLeastOnceAMinute(t *testing.T) {
	l := retryLimiter()
	req := reconcile.Request{NamespacedName: types.NamespacedName{Name: "csr-a"}}
	if first := l.When(req); first > time.Second {
		t.Fatalf("first retry after %s", first)
	}
	var last time.Duration
	for range 100 {
		last = l.When(req)
	}
	if last > maxErrorRetry || last < maxErrorRetry/2 {
		t.Fatalf("retry after 100 failures in %s, want the cap %s", last, maxErrorRetry)
	}
}
