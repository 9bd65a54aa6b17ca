package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/nodecsr/nodecsr/cmd/nodecsr-controller/app"
	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/testutil"
)

// TestProfile runs nodecsr-controller in-process (app.RunWithConfig: the
// binary serves no pprof endpoint), once, against a real control plane to
// see where its CPU time and memory go. It writes, into the folder named by
// NODECSR_BENCH_PROFILE:
//
//   - cpu.pprof: a CPU profile of the whole test process while nodecsr
//     starts and approves NODECSR_BENCH_PROFILE_N (default 2000) pending
//     CSRs, with the default policy;
//   - allocs-before.pprof and allocs.pprof: the allocations so far, before
//     nodecsr starts and once it approved them (what the approvals allocated:
//     go tool pprof -sample_index=alloc_space -base allocs-before.pprof allocs.pprof);
//   - heap.pprof: a heap profile after a GC with NODECSR_BENCH_PROFILE_PENDING
//     (default 10000) kubelet client CSRs left pending in nodecsr's cache,
//     after a reload of a policy that leaves them pending.
//
// Skipped unless NODECSR_BENCH_PROFILE is set. The bench's own CSR watch is in
// the same process; its stacks start in the bench's tracker. This is the only
// test that runs nodecsr-controller in-process, and it starts it once.
//
//	NODECSR_BENCH_PROFILE=/tmp/prof go test ./test/bench -run TestProfile -v -timeout 20m
//	go tool pprof -top -nodecount 40 /tmp/prof/cpu.pprof
func TestProfile(t *testing.T) {
	out := os.Getenv("NODECSR_BENCH_PROFILE")
	if out == "" {
		t.Skip("set NODECSR_BENCH_PROFILE to a folder to profile nodecsr-controller in-process")
	}
	n := envInt(t, "NODECSR_BENCH_PROFILE_N", 2000)
	pending := envInt(t, "NODECSR_BENCH_PROFILE_PENDING", 10000)
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := testutil.Context(t)
	defer cancel()
	e, cleanup, err := setupEnv(ctx, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	if err := e.c.StopControllerManager(); err != nil { // no signing: approvals only
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(e.dir, "nodecsr-inprocess.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = logFile.Close() }()
	ctrl.SetLogger(zap.New(zap.WriteTo(logFile), zap.Level(zapcore.InfoLevel)))

	// The default policy, in a file, so that the heap phase can reload
	// another one into the same process.
	policy := filepath.Join(e.dir, "profile-policy.yaml")
	if err := os.WriteFile(policy, []byte(defaultPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	// start runs nodecsr-controller's RunWithConfig with its defaults and
	// that policy file.
	start := func() (stop func()) {
		o := app.NewOptions()
		o.MetricsBindAddress, o.HealthProbeBindAddress, o.PolicyFile = "0", "0", policy
		cfg := e.c.AdminConfig()
		cfg.QPS, cfg.Burst = o.KubeAPIQPS, o.KubeAPIBurst
		ctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- app.RunWithConfig(ctx, o, cfg) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("nodecsr-controller: %v", err)
			}
		}
	}
	metric := func(name string, want map[string]string) float64 {
		t.Helper()
		v, err := testutil.MetricSum(ctrlmetrics.Registry, name, want)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	// CPU: start and approve n pending CSRs.
	const group = "profile-approve"
	ids, err := e.makeIdentities(ctx, "bench-profile", group, n)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.createNodes(ctx, ids, group); err != nil {
		t.Fatal(err)
	}
	if err := e.createCSRs(ctx, ids, 32); err != nil {
		t.Fatal(err)
	}
	writeHeap := func(name string) {
		t.Helper()
		f, err := os.Create(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = f.Close() }()
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			t.Fatal(err)
		}
	}
	writeHeap("allocs-before.pprof")
	cpuFile, err := os.Create(filepath.Join(out, "cpu.pprof"))
	if err != nil {
		t.Fatal(err)
	}
	if err := pprof.StartCPUProfile(cpuFile); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	stop := start()
	defer stop()
	err = e.tracker.waitFor(ctx, group, testutil.Remaining(t), "approvals", func(_, decided int) bool { return decided >= n }, nil)
	elapsed := time.Since(t0)
	pprof.StopCPUProfile()
	_ = cpuFile.Close()
	if err != nil {
		t.Fatal(err)
	}
	writeHeap("allocs.pprof")
	t.Logf("approved %d CSRs in %s (%.0f/s) in-process", n, elapsed, float64(n)/elapsed.Seconds())
	if err := e.cleanupGroup(ctx, group); err != nil {
		t.Fatal(err)
	}

	// Heap: pending CSRs left pending by the policy.
	p, err := config.Parse([]byte(memoryPolicy))
	if err != nil {
		t.Fatal(err)
	}
	if err := testutil.WriteFileAtomically(policy, []byte(memoryPolicy)); err != nil {
		t.Fatal(err)
	}
	if err := testutil.Poll(t, 100*time.Millisecond, func(context.Context) (bool, error) {
		return metric("nodecsr_policy_info", map[string]string{"digest": p.Digest}) == 1, nil
	}); err != nil {
		t.Fatalf("the policy that leaves CSRs pending was not reloaded: %v", err)
	}
	ignored := metric("nodecsr_decisions_total", map[string]string{"decision": "Ignore"})
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if err := e.createPending(ctx, pending); err != nil {
		t.Fatal(err)
	}
	// Wait until nodecsr has examined every one (each is left pending once).
	if err := testutil.Poll(t, 500*time.Millisecond, func(context.Context) (bool, error) {
		return metric("nodecsr_decisions_total", map[string]string{"decision": "Ignore"}) >= ignored+float64(pending), nil
	}); err != nil {
		t.Fatalf("nodecsr did not examine the %d pending CSRs: %v", pending, err)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	t.Logf("heap in use: %.1f MiB with nodecsr running idle, %.1f MiB with %d CSRs pending (%.0f bytes per CSR, including the bench's own watch)",
		float64(before.HeapInuse)/mib, float64(after.HeapInuse)/mib, pending, float64(after.HeapInuse-before.HeapInuse)/float64(pending))
	heapFile, err := os.Create(filepath.Join(out, "heap.pprof"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = heapFile.Close() }()
	if err := pprof.Lookup("heap").WriteTo(heapFile, 0); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "profiles written to %s\n", out)
}

// defaultPolicy is the policy nodecsr runs without a policy file.
const defaultPolicy = "apiVersion: nodecsr.io/v1alpha1\nkind: Policy\n"

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return v
}
