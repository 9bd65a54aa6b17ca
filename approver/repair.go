package approver

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// repairWindow is how far back a new leader looks for decisions whose Event
// may be missing: a leader that dies between writing a decision and its
// Event (still queued in its Event writer, or being retried through an
// outage) leaves such a CSR, and only in its last moments.
const repairWindow = 2 * time.Minute

// repairWorkers write the repaired Events in parallel: the pass tries every
// decision of the window (most find their Event there), and the newest
// decisions, the likeliest to miss their Event, go first.
const repairWorkers = 8

// repairDecisionEvents records the decision Event of every CSR that nodecsr
// decided within repairWindow and whose Event is missing. Decision Events
// have names derived from the CSR, so the ones that exist are found, not
// doubled. It runs once, when this replica becomes the leader; an Event it
// fails to write goes to the Event writer, which retries it.
func (r *Reconciler) repairDecisionEvents(ctx context.Context) error {
	var list certificatesv1.CertificateSigningRequestList
	if err := r.Client.List(ctx, &list); err != nil {
		return err
	}
	ours := AllReasons()
	since := r.Clock.Now().Add(-repairWindow)
	type candidate struct {
		csr *certificatesv1.CertificateSigningRequest
		at  time.Time
		e   *decisionEvent
	}
	var todo []candidate
	for i := range list.Items {
		csr := &list.Items[i]
		if !r.ours(csr.Spec.SignerName) {
			continue // with serving, the cache holds other signers' CSRs
		}
		for _, c := range csr.Status.Conditions {
			if c.Type != certificatesv1.CertificateApproved && c.Type != certificatesv1.CertificateDenied {
				continue
			}
			if !slices.Contains(ours, c.Reason) || c.LastUpdateTime.Time.Before(since) {
				continue
			}
			todo = append(todo, candidate{csr: csr, at: c.LastUpdateTime.Time, e: newDecisionEvent(csr, c.Type, c.Reason, c.Message)})
			break // one decision, one Event
		}
	}
	slices.SortFunc(todo, func(a, b candidate) int { return b.at.Compare(a.at) })

	l := log.FromContext(ctx)
	var repaired atomic.Int32
	next := make(chan candidate)
	var wg sync.WaitGroup
	for range min(repairWorkers, len(todo)) {
		wg.Go(func() {
			for c := range next {
				created, err := r.recordDecision(ctx, c.e)
				switch {
				case err != nil && ctx.Err() != nil:
					// Stopping: the next leader repairs it.
				case err != nil:
					l.Error(err, "Failed to repair a decision Event; it will be retried", "csr", c.csr.Name)
					r.events().enqueue(ctx, c.e)
				case created:
					repaired.Add(1)
					l.Info("Recorded a decision Event a previous leader did not", "csr", c.csr.Name, "reason", c.e.reason, "decidedAt", c.at)
				}
			}
		})
	}
feed:
	for _, c := range todo {
		select {
		case next <- c:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if n := repaired.Load(); n > 0 || len(todo) > 0 {
		l.Info("Repaired the decision Events of recent decisions", "checked", len(todo), "recorded", n, "window", repairWindow)
	}
	return nil
}
