package app

import (
	"context"

	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/inventory"
)

// setupInventory wires the NodeCertificate inventory (--inventory): every
// replica reads it into the expiry metrics, the leader writes it.
func setupInventory(ctx context.Context, o *Options, mgr manager.Manager, events *approver.EventRecorder, expiry *approver.ExpiryTracker) error {
	m, err := inventory.NewMetrics(ctrlmetrics.Registry)
	if err != nil {
		return err
	}
	inv := &inventory.Controller{
		Client:            mgr.GetClient(),
		APIReader:         mgr.GetAPIReader(),
		Heartbeats:        approver.LeaseHeartbeats{Leases: mgr.GetAPIReader(), Nodes: mgr.GetCache()},
		Events:            events,
		Expiry:            expiry,
		Metrics:           m,
		Interval:          o.InventoryInterval,
		UnregisteredGrace: o.InventoryUnregisteredGrace,
	}
	return inv.SetupWithManager(ctx, mgr)
}
