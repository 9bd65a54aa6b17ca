package approver

import (
	"context"
	"slices"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
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
