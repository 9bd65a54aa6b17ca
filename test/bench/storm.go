package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// stormResult is a renewal storm: N nodes each filing a CSR, at a steady
// rate, while nodecsr-controller (defaults) and csrsigning run.
type stormResult struct {
	N               int     `json:"n"`
	Senders         int     `json:"senders"`
	TargetSeconds   float64 `json:"targetArrivalSeconds"`
	ArrivalSeconds  float64 `json:"arrivalSeconds"` // first create call to last create returned
	ArrivalsPerSec  float64 `json:"arrivalsPerSecond"`
	Decided         int     `json:"decided"`
	Approved        int     `json:"approved"`
	Denied          int     `json:"denied"`
	Issued          int     `json:"issued"`            // signed by csrsigning when the last decision was seen
	AllDecidedAfter float64 `json:"allDecidedSeconds"` // first create to last decision
	DrainSeconds    float64 `json:"drainSeconds"`      // last create returned to last decision
	// CreateToDecision: client-side create (before the call) to the decision seen through a watch.
	CreateToDecision latency `json:"createToDecision"`
	// CreateCall is the latency of the create calls (each from its node's own new TLS connection).
	CreateCall          latency      `json:"createCall"`
	ControllerPeakRSS   int64        `json:"controllerPeakRSSBytes"` // VmHWM
	ControllerRSS       int64        `json:"controllerRSSBytes"`     // VmRSS at the end
	CPU                 cpuUse       `json:"cpu"`
	APIRequests         requestDelta `json:"apiRequests"`
	RequestsPerDecision float64      `json:"requestsPerDecision"`
	// The inventory (storm_inventory.go): on in this run or not, and the
	// same storm with it off.
	Inventory        stormInventory `json:"inventory"`
	WithoutInventory *stormResult   `json:"withoutInventory,omitempty"`
}

// runStormOnce is one storm of the group's nodes, with the inventory on or off.
func (e *env) runStormOnce(ctx context.Context, o *options, group string, inventory bool) (*stormResult, error) {
	n := o.stormN
	res := &stormResult{N: n, Senders: o.stormSenders, TargetSeconds: o.stormDuration.Seconds(), Inventory: stormInventory{On: inventory}}
	if err := e.ensureSigning(ctx); err != nil {
		return nil, err
	}
	t := time.Now()
	ids, err := e.makeIdentities(ctx, "bench-"+group, group, n)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := e.cleanupGroup(context.WithoutCancel(ctx), group); err != nil {
			e.logf("cleanup of %s: %v", group, err)
		}
	}()
	if err := e.createNodes(ctx, ids, group); err != nil {
		return nil, err
	}
	e.logf("storm: %d node identities and Nodes ready in %s", n, time.Since(t).Round(100*time.Millisecond))

	c, err := e.startController("nodecsr-"+group, "--inventory="+strconv.FormatBool(inventory))
	if err != nil {
		return nil, err
	}
	defer c.stop(10 * time.Second)
	if err := c.waitReady(ctx, time.Minute); err != nil {
		return nil, err
	}
	before, err := apiServerMetrics(ctx, e.admin)
	if err != nil {
		return nil, err
	}
	cpu0 := e.cpu(c.pid())

	// A pacer hands out CSR i at start + i*interval; senders create them.
	interval := o.stormDuration / time.Duration(n)
	work := make(chan int)
	calls := make([]time.Duration, n)
	var (
		wg         sync.WaitGroup
		mu         sync.Mutex
		lastReturn time.Time
		sendErr    error
	)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range o.stormSenders {
		wg.Go(func() {
			for i := range work {
				t := time.Now()
				err := ids[i].create(sctx, e.tracker)
				done := time.Now()
				calls[i] = done.Sub(t)
				mu.Lock()
				if err != nil && sendErr == nil {
					sendErr = err
					cancel()
				}
				if done.After(lastReturn) {
					lastReturn = done
				}
				mu.Unlock()
			}
		})
	}
	start := time.Now()
	e.logf("storm: %d CSRs over %s from %d senders", n, o.stormDuration, o.stormSenders)
pace:
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			select {
			case <-time.After(d):
			case <-sctx.Done():
				break pace
			}
		}
		select {
		case work <- i:
		case <-sctx.Done():
			break pace
		}
	}
	close(work)
	wg.Wait()
	if sendErr != nil {
		return nil, sendErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res.ArrivalSeconds = lastReturn.Sub(start).Seconds()
	res.ArrivalsPerSec = float64(n) / res.ArrivalSeconds
	e.logf("storm: all %d created in %.1f s; waiting for decisions", n, res.ArrivalSeconds)

	waitErr := e.tracker.waitFor(ctx, group, 5*time.Minute, "waiting for the storm's decisions",
		func(_, decided int) bool { return decided >= n }, c.exitedErr)
	if mem, err := readMem(c.pid()); err == nil {
		res.ControllerPeakRSS, res.ControllerRSS = mem.HWM, mem.RSS
	}
	cpu1 := e.cpu(c.pid())
	after, err := apiServerMetrics(ctx, e.admin)
	if err != nil {
		return nil, err
	}
	res.CPU = cpuBetween(cpu0, cpu1, numCPU())
	res.APIRequests = diffRequests(before, after)
	// The inventory's writes follow the signing, after the window above.
	if waitErr == nil && inventory {
		waitErr = e.waitInventory(ctx, c, group, n, &res.Inventory)
	}

	var last time.Time
	var c2d []time.Duration
	for _, ct := range e.tracker.group(group) {
		if !ct.Issued.IsZero() {
			res.Issued++
		}
		if ct.Decided.IsZero() {
			continue
		}
		res.Decided++
		if ct.Approved {
			res.Approved++
		} else {
			res.Denied++
		}
		if ct.Decided.After(last) {
			last = ct.Decided
		}
		c2d = append(c2d, ct.Decided.Sub(ct.Created))
	}
	res.CreateToDecision, res.CreateCall = summarize(c2d), summarize(calls)
	if !last.IsZero() {
		res.AllDecidedAfter = last.Sub(start).Seconds()
		res.DrainSeconds = last.Sub(lastReturn).Seconds()
	}
	if res.Decided > 0 {
		res.RequestsPerDecision = (res.APIRequests.Total - e.bgRate*cpu1.at.Sub(cpu0.at).Seconds()) / float64(res.Decided)
	}
	if waitErr != nil {
		return res, waitErr
	}
	if res.Denied > 0 {
		return res, fmt.Errorf("%d of %d storm CSRs were denied; every one should be approved", res.Denied, n)
	}
	return res, nil
}

// ensureSigning makes sure kube-controller-manager's csrsigning runs.
func (e *env) ensureSigning(ctx context.Context) error {
	if e.c.Running()["kube-controller-manager"] {
		return nil
	}
	return e.c.StartControllerManager(ctx)
}
