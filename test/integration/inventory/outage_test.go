package inventory_test

import (
	"context"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	nodecsrv1alpha1 "github.com/nodecsr/nodecsr/api/v1alpha1"
	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/env"
)

// TestWritesSurviveAnAPIServerOutage: a certificate the controller holds
// (coalesced, waiting for its node's interval) while kube-apiserver is down
// is written when it comes back. The suite's controller is replaced for the
// test by one with a longer interval, so that the certificate is still held
// when kube-apiserver stops.
func TestWritesSurviveAnAPIServerOutage(t *testing.T) {
	const longInterval = 8 * time.Second
	ctx, cancel := testutil.Context(t)
	defer cancel()
	if err := ctl.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := testutil.CleanupContext(t)
		defer cancel()
		if !tc.Running()["kube-apiserver"] {
			if err := tc.StartAPIServer(ctx); err != nil {
				t.Error(err)
			}
		}
		if err := ctl.Start(ctx); err != nil {
			t.Error(err)
		}
	})
	c := env.StartController(ctx, t, env.ControllerOptions{
		Binary: binary, AdminKubeconfig: tc.AdminKubeconfig(),
		PodName: "nodecsr-inventory-outage", PodNamespace: "kube-system",
		Args: map[string]string{"inventory-interval": longInterval.String()},
	})
	scrape := func(name string, labels map[string]string) float64 {
		t.Helper()
		v, err := c.MetricSum(ctx, name, labels)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	node := env.UniqueName("outage")
	env.CreateNode(t, admin, node)
	nodeClient := env.NodeClient(t, tc, node)
	first := issued(t, create(t, nodeClient, csrtest.Build(csrtest.WithNodeName(node))).Name)
	entry(t, node, "the first certificate", hasClient(t, first))

	// A renewal within the interval is held in memory. If it was written
	// before kube-apiserver stopped (the machine was slow), try again.
	for {
		time.Sleep(1100 * time.Millisecond) // a later NotBefore second
		second := issued(t, create(t, nodeClient, csrtest.Build(csrtest.WithNodeName(node))).Name)
		if err := tc.StopAPIServer(); err != nil {
			t.Fatal(err)
		}
		if scrape("nodecsr_inventory_pending_nodes", nil) == 0 {
			t.Logf("the renewal was written before kube-apiserver stopped; again")
			if err := tc.StartAPIServer(ctx); err != nil {
				t.Fatal(err)
			}
			entry(t, node, "the renewal", hasClient(t, second))
			continue
		}
		// The held write fails while kube-apiserver is down...
		errorsBefore := scrape("nodecsr_inventory_write_errors_total", nil)
		err := testutil.Poll(t, 100*time.Millisecond, func(context.Context) (bool, error) {
			if err := c.Err(); err != nil {
				return false, err
			}
			v, err := c.MetricSum(ctx, "nodecsr_inventory_write_errors_total", nil)
			return v > errorsBefore, err
		})
		if err != nil {
			t.Fatalf("no failed inventory write while kube-apiserver was down: %v", err)
		}
		// ...and succeeds when it is back.
		if err := tc.StartAPIServer(ctx); err != nil {
			t.Fatal(err)
		}
		nc := &nodecsrv1alpha1.NodeCertificate{}
		err = testutil.Poll(t, 100*time.Millisecond, func(ctx context.Context) (bool, error) {
			if err := c.Err(); err != nil {
				return false, err
			}
			if err := kclient.Get(ctx, client.ObjectKey{Name: node}, nc); err != nil {
				return false, nil // kube-apiserver warming up
			}
			return hasClient(t, second)(nc), nil
		})
		if err != nil {
			t.Fatalf("the renewal held through the outage was not written: %v; entry %+v", err, nc.Status.Client)
		}
		// Nothing is left in memory (the gauge follows the write; a relist
		// after the outage may hold a node briefly until it is compared).
		err = testutil.Poll(t, 100*time.Millisecond, func(context.Context) (bool, error) {
			v, err := c.MetricSum(ctx, "nodecsr_inventory_pending_nodes", nil)
			return v == 0, err
		})
		if err != nil {
			t.Errorf("nodecsr_inventory_pending_nodes stays above 0 after the write: %v", err)
		}
		return
	}
}
