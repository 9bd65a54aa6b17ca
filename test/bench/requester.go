package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecsr/nodecsr/internal/requester"
	"github.com/nodecsr/nodecsr/test/cluster"
)

// requesterResult is nodecsr-request's bootstrap path end to end: from
// starting the binary to the certificate on disk, with nodecsr-controller
// (defaults) approving and csrsigning signing.
type requesterResult struct {
	Runs     int `json:"runs"`
	Failures int `json:"failures"`
	// FirstRunSeconds is a first, uncounted run right after nodecsr-controller
	// started (its clients for SubjectAccessReviews and Events are set up lazily).
	FirstRunSeconds float64 `json:"firstRunSeconds"`
	// Total: from starting nodecsr-request to its exit with the certificate written.
	Total latency `json:"total"`
	// StartToCreated: from the start to the CSR first seen through the watch
	// (process start-up, key generation, the create call).
	StartToCreated latency `json:"startToCreated"`
	// CreatedToApproved: the CSR seen to the Approved condition seen (nodecsr).
	CreatedToApproved latency `json:"createdToApproved"`
	// ApprovedToIssued: Approved seen to the certificate seen (csrsigning).
	ApprovedToIssued latency `json:"approvedToIssued"`
	// IssuedToExit: the certificate seen to the process exit (the requester's
	// watch, writing the files).
	IssuedToExit latency `json:"issuedToExit"`
}

func (e *env) runRequester(ctx context.Context, o *options) (*requesterResult, error) {
	if err := e.ensureSigning(ctx); err != nil {
		return nil, err
	}
	c, err := e.startController("nodecsr-requester")
	if err != nil {
		return nil, err
	}
	defer c.stop(10 * time.Second)
	if err := c.waitReady(ctx, time.Minute); err != nil {
		return nil, err
	}
	res := &requesterResult{Runs: o.requesterRuns}
	var total, toCreated, toApproved, toIssued, toExit []time.Duration
	var names []string
	defer func() {
		for _, name := range names {
			_ = e.admin.CertificatesV1().CertificateSigningRequests().Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{})
		}
	}()
	for i := range o.requesterRuns + 1 {
		warmup := i == 0
		// A token of its own per run: one requester's bootstrap rate limit
		// (default 60/min, burst 20) is not what is measured here.
		tok, err := e.c.CreateBootstrapToken(ctx, time.Hour)
		if err != nil {
			return nil, err
		}
		dir := filepath.Join(e.dir, fmt.Sprintf("requester-%02d", i))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		boot := filepath.Join(dir, "bootstrap-kubelet.conf")
		if err := cluster.WriteKubeconfig(boot, e.c.BootstrapConfig(tok)); err != nil {
			return nil, err
		}
		node := fmt.Sprintf("bench-req-%02d-%d", i, time.Now().UnixNano()%100000)
		certDir := filepath.Join(dir, "pki")
		p, err := startProc("nodecsr-request", e.requesterBin, filepath.Join(dir, "nodecsr-request.log"),
			"--bootstrap-kubeconfig", boot, "--node-name", node, "--cert-dir", certDir, "--timeout", "2m")
		if err != nil {
			return nil, err
		}
		select {
		case <-p.exited:
		case <-ctx.Done():
			p.stop(time.Second)
			return nil, ctx.Err()
		}
		exit := time.Now()
		if _, err := os.Stat(filepath.Join(certDir, requester.CurrentFile)); p.err != nil || err != nil {
			res.Failures++
			e.logf("requester run %d failed: %v %v\n%s", i, p.err, err, tailFile(p.logPath, 20))
			continue
		}
		name, ct, ok := e.tracker.byUsername(tok.Username())
		if warmup {
			res.FirstRunSeconds = exit.Sub(p.started).Seconds()
			if ok {
				names = append(names, name)
			}
			continue
		}
		total = append(total, exit.Sub(p.started))
		if !ok || ct.Decided.IsZero() || ct.Issued.IsZero() {
			// The watch is a little behind the requester's own.
			time.Sleep(200 * time.Millisecond)
			name, ct, ok = e.tracker.byUsername(tok.Username())
		}
		if ok {
			names = append(names, name)
			toCreated = append(toCreated, ct.Seen.Sub(p.started))
			if !ct.Decided.IsZero() {
				toApproved = append(toApproved, ct.Decided.Sub(ct.Seen))
			}
			if !ct.Issued.IsZero() && !ct.Decided.IsZero() {
				toIssued = append(toIssued, ct.Issued.Sub(ct.Decided))
				toExit = append(toExit, exit.Sub(ct.Issued))
			}
		}
	}
	res.Total, res.StartToCreated = summarize(total), summarize(toCreated)
	res.CreatedToApproved, res.ApprovedToIssued, res.IssuedToExit = summarize(toApproved), summarize(toIssued), summarize(toExit)
	if res.Failures > 0 {
		return res, fmt.Errorf("%d of %d runs of nodecsr-request failed", res.Failures, res.Runs)
	}
	return res, nil
}
