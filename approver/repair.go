package approver

import (
	"context"
	"slices"
	"sync"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// repairWindow is how far back a new leader looks for decisions whose Event
// may be missing: a leader that dies between writing a decision and its
// Event leaves such a CSR, and only in its last moments.
const repairWindow = 2 * time.Minute

// repairDecisionEvents records the decision Event of every CSR that nodecsr
// decided within repairWindow and whose Event is missing. Decision Events
// have names derived from the CSR, so the ones that exist are found, not
// doubled. It runs once, when this replica becomes the leader.
func (r *Reconciler) repairDecisionEvents(ctx context.Context) error {
	var list certificatesv1.CertificateSigningRequestList
	if err := r.Client.List(ctx, &list); err != nil {
		return err
	}
	ours := AllReasons()
	since := r.Clock.Now().Add(-repairWindow)
	repaired := 0
	for i := range list.Items {
		csr := &list.Items[i]
		for _, c := range csr.Status.Conditions {
			if c.Type != certificatesv1.CertificateApproved && c.Type != certificatesv1.CertificateDenied {
				continue
			}
			if !slices.Contains(ours, c.Reason) || c.LastUpdateTime.Time.Before(since) {
				continue
			}
			eventType, action := "Normal", "Approved"
			if c.Type == certificatesv1.CertificateDenied {
				eventType, action = "Warning", "Denied"
			}
			created, err := r.Events.Record(ctx, csr, decisionEventKey, "CertificateSigningRequest", certificatesv1.SchemeGroupVersion.String(), eventType, c.Reason, action, c.Message)
			if err != nil {
				r.Metrics.EventErrors.Inc()
				log.FromContext(ctx).Error(err, "Failed to repair a decision Event", "csr", csr.Name)
				continue
			}
			if created {
				repaired++
			}
		}
	}
	if repaired > 0 {
		log.FromContext(ctx).Info("Recorded decision Events a previous leader did not", "count", repaired)
	}
	return nil
}

// missedEventRetry is how often decision Events that could not be written
// (the API server was away) are tried again.
const missedEventRetry = 2 * time.Second

// maxMissedEvents bounds the retry set; beyond it the oldest failures are
// only counted (nodecsr_event_errors_total) and logged.
const maxMissedEvents = 50_000

type missedEvent struct {
	csr      *certificatesv1.CertificateSigningRequest
	condType certificatesv1.RequestConditionType
	reason   string
	message  string
}

// missedEvents holds decision Events that failed to be written.
type missedEvents struct {
	mu    sync.Mutex
	items map[types.UID]missedEvent
}

func (m *missedEvents) add(e missedEvent) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.items == nil {
		m.items = map[types.UID]missedEvent{}
	}
	if len(m.items) < maxMissedEvents {
		m.items[e.csr.UID] = e
	}
}

func (m *missedEvents) snapshot() []missedEvent {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]missedEvent, 0, len(m.items))
	for _, e := range m.items {
		out = append(out, e)
	}
	return out
}

func (m *missedEvents) done(uid types.UID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.items, uid)
}

// retryMissedEvents writes the decision Events that failed, every interval,
// until ctx is done. Their names are derived from the CSR, so an Event that
// was in fact written is found, not doubled.
func (r *Reconciler) retryMissedEvents(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.retryMissedEventsOnce(ctx)
	}
}

func (r *Reconciler) retryMissedEventsOnce(ctx context.Context) {
	for _, e := range r.missed.snapshot() {
		if err := r.recordDecision(ctx, e.csr, e.condType, e.reason, e.message); err != nil {
			return // the API server is still away; try again later
		}
		r.missed.done(e.csr.UID)
		log.FromContext(ctx).Info("Recorded a decision Event that had failed", "csr", e.csr.Name, "reason", e.reason)
	}
}
