package main

import (
	"context"
	"fmt"
	"time"

	"github.com/nodecsr/nodecsr/inventory"
)

// stormInventory is what the NodeCertificate inventory cost in a storm.
type stormInventory struct {
	On bool `json:"on"`
	// Writes by operation (nodecsr_inventory_writes_total) once every
	// certificate of the storm was issued and written; WriteErrors failed
	// ones (conflicts included).
	Creates     float64 `json:"creates"`
	Status      float64 `json:"statusWrites"`
	Updates     float64 `json:"updates"`
	WriteErrors float64 `json:"writeErrors"`
	// WritesPerDecision is all writes over the storm's decisions.
	WritesPerDecision float64 `json:"writesPerDecision"`
	// WrittenAfter is from the first create until the last certificate was
	// in the inventory (csrsigning, at its 20 QPS, paces it).
	WrittenAfter float64 `json:"writtenAfterSeconds"`
}

// runStorm runs the storm with the inventory (the default) and again, on
// new nodes, without it (--inventory=false), so that the cost of the
// inventory shows in the same run.
func (e *env) runStorm(ctx context.Context, o *options) (*stormResult, error) {
	with, err := e.runStormOnce(ctx, o, "storm", true)
	if err != nil {
		return with, err
	}
	without, err := e.runStormOnce(ctx, o, "storm-noinv", false)
	with.WithoutInventory = without
	if err != nil {
		return with, err
	}
	e.logf("storm: with the inventory %.1f approvals/s, p99 %s, %.2f inventory writes per decision; without %.1f approvals/s, p99 %s",
		approvalsPerSecond(with), secs(with.CreateToDecision.P99), with.Inventory.WritesPerDecision, approvalsPerSecond(without), secs(without.CreateToDecision.P99))
	return with, nil
}

// approvalsPerSecond is the storm's approvals over first create → last decision.
func approvalsPerSecond(s *stormResult) float64 {
	if s == nil || s.AllDecidedAfter == 0 {
		return 0
	}
	return float64(s.Approved) / s.AllDecidedAfter
}

// waitInventory waits until every certificate of the group was issued and
// the controller has nothing left to write, then reads its write counters.
func (e *env) waitInventory(ctx context.Context, c *controller, group string, n int, inv *stormInventory) error {
	start := time.Now()
	// Every storm node is new: its entry is a create and a status write,
	// and the inventory makes at most inventory.DefaultWriteQPS write
	// passes a second (csrsigning's 20 QPS paces the certificates before
	// that). The bound allows twice that, plus csrsigning's time.
	limit := 2*time.Minute + 2*time.Duration(float64(n)/inventory.DefaultWriteQPS*float64(time.Second)) + time.Duration(n)*50*time.Millisecond
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		issued := 0
		var first time.Time
		for _, ct := range e.tracker.group(group) {
			if !ct.Issued.IsZero() {
				issued++
			}
			if first.IsZero() || ct.Created.Before(first) {
				first = ct.Created
			}
		}
		m, err := c.metrics(ctx)
		if err != nil {
			return err
		}
		if issued >= n && m.sum("nodecsr_inventory_pending_nodes") == 0 {
			inv.Creates = m.sum("nodecsr_inventory_writes_total", "operation", "create")
			inv.Status = m.sum("nodecsr_inventory_writes_total", "operation", "status")
			inv.Updates = m.sum("nodecsr_inventory_writes_total", "operation", "update")
			inv.WriteErrors = m.sum("nodecsr_inventory_write_errors_total")
			inv.WritesPerDecision = (inv.Creates + inv.Status + inv.Updates) / float64(n)
			inv.WrittenAfter = time.Since(first).Seconds()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the storm's certificates were not all in the inventory after %s (%d of %d issued): %w", time.Since(start).Round(time.Second), issued, n, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
		if err := c.exitedErr(); err != nil {
			return err
		}
	}
}

// stormInventoryTable compares the storm with and without the inventory.
func stormInventoryTable(s *stormResult, md bool) string {
	w := s.WithoutInventory
	if w == nil {
		return ""
	}
	row := func(name string, f func(*stormResult) string) []string { return []string{name, f(s), f(w)} }
	rows := [][]string{
		row("approvals/s (first create → last decision)", func(r *stormResult) string { return fmt.Sprintf("%.1f", approvalsPerSecond(r)) }),
		row("create→decision p50 / p99", func(r *stormResult) string {
			return secs(r.CreateToDecision.P50) + " / " + secs(r.CreateToDecision.P99)
		}),
		row("last create → last decision (drain)", func(r *stormResult) string { return secs(r.DrainSeconds) }),
		row("API requests per decision (all clients, until the last decision)", func(r *stormResult) string { return fmt.Sprintf("%.2f", r.RequestsPerDecision) }),
		row("CPU of nodecsr-controller (cores)", func(r *stormResult) string { return fmt.Sprintf("%.2f", r.CPU.Contender) }),
		row("inventory writes: create / status / update (errors)", func(r *stormResult) string {
			if !r.Inventory.On {
				return "off"
			}
			i := r.Inventory
			return fmt.Sprintf("%.0f / %.0f / %.0f (%.0f)", i.Creates, i.Status, i.Updates, i.WriteErrors)
		}),
		row("inventory writes per decision", func(r *stormResult) string {
			if !r.Inventory.On {
				return "off"
			}
			return fmt.Sprintf("%.2f", r.Inventory.WritesPerDecision)
		}),
		row("first create → every certificate in the inventory", func(r *stormResult) string {
			if !r.Inventory.On {
				return "off"
			}
			return secs(r.Inventory.WrittenAfter)
		}),
	}
	title := "storm with and without the NodeCertificate inventory (new nodes each: every entry is created)\n"
	if md {
		title = ""
	}
	return title + table(md, []string{"storm", "inventory on", "--inventory=false"}, rows)
}
