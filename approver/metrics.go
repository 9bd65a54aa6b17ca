package approver

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	certificatesv1 "k8s.io/api/certificates/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Metrics are the approver's Prometheus metrics. docs/metrics.md describes them.
type Metrics struct {
	Decisions        *prometheus.CounterVec
	DecisionLatency  *prometheus.HistogramVec
	DecidedElsewhere prometheus.Counter
	WriteConflicts   prometheus.Counter
	EventErrors      prometheus.Counter
	FactErrors       *prometheus.CounterVec
	// EventQueueDepth and EventsAbandoned are the decision Event writer's.
	EventQueueDepth prometheus.Gauge
	EventsAbandoned *prometheus.CounterVec
}

// NewMetrics creates the approver's metrics and registers them with reg.
// pending, when set, backs nodecsr_pending_csrs (read from the cache at
// scrape time): a series for client CSRs and, with serving (serving CSRs
// are decided), one for serving CSRs.
func NewMetrics(reg prometheus.Registerer, pending client.Reader, serving bool) *Metrics {
	m := &Metrics{
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodecsr_decisions_total",
			Help: "Decisions on kubelet CSRs, by decision (Approve, Deny, Ignore, WouldApprove, WouldDeny), reason code, path (Renewal, Bootstrap, Serving or empty) and signer (client, serving).",
		}, []string{"decision", "reason", "path", "signer"}),
		DecisionLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "nodecsr_decision_latency_seconds",
			Help:    "Time from a CSR's creation to nodecsr's written decision, by decision and signer (client, serving); creation timestamps have one-second resolution.",
			Buckets: []float64{0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600},
		}, []string{"decision", "signer"}),
		DecidedElsewhere: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodecsr_decided_elsewhere_total",
			Help: "CSRs that someone else approved or denied before nodecsr's decision was written; nodecsr left them alone.",
		}),
		WriteConflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodecsr_approval_conflicts_total",
			Help: "Approval-subresource writes that hit a conflict and were retried.",
		}),
		EventErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodecsr_event_errors_total",
			Help: "Decision Events whose write failed (each counted once; the write is retried until it succeeds).",
		}),
		EventQueueDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodecsr_event_queue_depth",
			Help: "Decision Events handed to the Event writer and not yet written (queued, being written or waiting for a retry).",
		}),
		EventsAbandoned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodecsr_events_abandoned_total",
			Help: "Decision Events the Event writer gave up on, by reason (Shutdown: unwritten after the shutdown drain, left to the next leader's repair pass; Invalid: rejected by the API server).",
		}, []string{"reason"}),
		FactErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodecsr_fact_errors_total",
			Help: "Failures to gather a cluster fact (SubjectAccessReview, node lookup, pending CSRs); the CSR is retried.",
		}, []string{"fact"}),
	}
	collectors := []prometheus.Collector{m.Decisions, m.DecisionLatency, m.DecidedElsewhere, m.WriteConflicts, m.EventErrors, m.FactErrors, m.EventQueueDepth, m.EventsAbandoned}
	if pending != nil {
		collectors = append(collectors, pendingCollector{reader: pending, signers: signersFor(serving), desc: prometheus.NewDesc(
			"nodecsr_pending_csrs", "Kubelet CSRs without a decision or certificate, from nodecsr's cache, by signer (client, and serving when enabled at startup).", []string{"signer"}, nil)})
	}
	reg.MustRegister(collectors...)
	return m
}

// signersFor is the signers nodecsr decides: client CSRs, and serving CSRs
// with serving.
func signersFor(serving bool) Signer {
	if serving {
		return signersKubelet
	}
	return SignerClient
}

// pendingCollector counts pending CSRs in the cache when scraped, by signer.
type pendingCollector struct {
	reader  client.Reader
	signers Signer
	desc    *prometheus.Desc
}

func (c pendingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c pendingCollector) Collect(ch chan<- prometheus.Metric) {
	var list certificatesv1.CertificateSigningRequestList
	if err := c.reader.List(context.Background(), &list, client.UnsafeDisableDeepCopy); err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	counts := map[Signer]int{}
	for i := range list.Items {
		// With serving the cache holds other signers' CSRs too.
		if s := SignerOf(list.Items[i].Spec.SignerName); s&c.signers != 0 && IsPending(&list.Items[i]) {
			counts[s]++
		}
	}
	for _, s := range []Signer{SignerClient, SignerServing} {
		if s&c.signers != 0 {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[s]), s.String())
		}
	}
}
