package inventory

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the inventory's Prometheus metrics. docs/metrics.md describes
// them.
type Metrics struct {
	// Writes counts successful writes by operation (create, update, status,
	// delete); WriteErrors failed ones (conflicts included: they are retried).
	Writes      *prometheus.CounterVec
	WriteErrors *prometheus.CounterVec
	// Pending is the number of nodes with an observed certificate not yet
	// written (coalescing, or the API server is unreachable).
	Pending prometheus.Gauge
	// Overdue is 1 for each node whose client certificate is past its
	// rotation window while the node heartbeats (leader only).
	Overdue *prometheus.GaugeVec
}

// Write operations, the operation label of Writes and WriteErrors.
const (
	opCreate = "create"
	opUpdate = "update"
	opStatus = "status"
	opDelete = "delete"
)

// NewMetrics creates the inventory's metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		Writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodecsr_inventory_writes_total",
			Help: "Writes to NodeCertificate objects, by operation (create, update: the owner reference, status, delete: a name that never registered a Node).",
		}, []string{"operation"}),
		WriteErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodecsr_inventory_write_errors_total",
			Help: "Failed writes to NodeCertificate objects, by operation (conflicts included); the node is retried and its certificates stay in memory until written.",
		}, []string{"operation"}),
		Pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodecsr_inventory_pending_nodes",
			Help: "Nodes with an issued certificate seen but not yet written to their NodeCertificate.",
		}),
		Overdue: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "nodecsr_node_certificate_rotation_overdue",
			Help: "1 for a node whose newest kubelet client certificate is past its rotation window (90% of its lifetime) while its Lease is renewed: its rotation is broken. Exported by the leader.",
		}, []string{"node"}),
	}
	for _, c := range []prometheus.Collector{m.Writes, m.WriteErrors, m.Pending, m.Overdue} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, op := range []string{opCreate, opUpdate, opStatus, opDelete} {
		m.Writes.WithLabelValues(op)
		m.WriteErrors.WithLabelValues(op)
	}
	return m, nil
}
