package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"

	"github.com/nodecsr/nodecsr/test/cluster"
)

// env is one local control plane and the binaries under test.
type env struct {
	c       *cluster.Cluster
	dir     string // the bench's temporary folder: binaries, logs, kubeconfigs
	admin   kubernetes.Interface
	tracker *tracker
	logf    func(format string, args ...any)

	controllerBin, requesterBin string

	apiserverPID, etcdPID int
	// bgRate is the API server's request rate with no approver running.
	bgRate float64
}

// setupEnv builds nodecsr-controller and nodecsr-request while the control
// plane starts, applies kubeadm's RBAC and starts the CSR watch. The returned
// cleanup stops everything and removes the folder.
func setupEnv(ctx context.Context, logf func(string, ...any)) (e *env, cleanup func(), err error) {
	dir, err := os.MkdirTemp("", "nodecsr-bench-")
	if err != nil {
		return nil, nil, err
	}
	e = &env{dir: dir, logf: logf}
	cleanup = func() {
		live.killAll()
		if e.c != nil {
			if err := e.c.Stop(); err != nil {
				logf("stopping the control plane: %v", err)
			}
		}
		if os.Getenv("NODECSR_KEEP_BENCH_DIR") == "" {
			_ = os.RemoveAll(dir)
		} else {
			logf("kept %s", dir)
		}
	}
	defer func() {
		if err != nil {
			cleanup()
		}
	}()

	var (
		wg       sync.WaitGroup
		buildErr error
	)
	wg.Go(func() { buildErr = e.build(ctx) })
	start := time.Now()
	e.c, err = cluster.Start(ctx, cluster.Options{Logf: logf})
	wg.Wait()
	if err != nil {
		return nil, nil, fmt.Errorf("failed to start the control plane: %w", err)
	}
	if buildErr != nil {
		return nil, nil, buildErr
	}
	logf("control plane up in %s", time.Since(start).Round(100*time.Millisecond))
	cfg := e.c.AdminConfig()
	cfg.QPS, cfg.Burst = -1, 0 // the bench's own client is never the limit
	cfg.UserAgent = "nodecsr-bench"
	cfg.ContentType = runtime.ContentTypeProtobuf // as kube-controller-manager and controller-runtime use
	if e.admin, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, nil, err
	}
	if err := e.c.ApplyKubeadmRBAC(ctx); err != nil {
		return nil, nil, err
	}
	// nodecsr-controller's inventory (on by default) needs its CRD.
	if err := cluster.InstallInventoryCRD(ctx, e.c.AdminConfig()); err != nil {
		return nil, nil, err
	}
	for _, p := range e.c.PIDs() {
		var pid int
		_, _ = fmt.Sscan(p, &pid)
		switch processName(pid) {
		case "kube-apiserver":
			e.apiserverPID = pid
		case "etcd":
			e.etcdPID = pid
		}
	}
	if e.apiserverPID == 0 || e.etcdPID == 0 {
		return nil, nil, errors.New("could not find the pids of kube-apiserver and etcd")
	}
	if e.tracker, err = startTracker(ctx, e.admin); err != nil {
		return nil, nil, err
	}
	return e, cleanup, nil
}

// build builds the binaries under test into the bench folder, as `go build` does for users.
func (e *env) build(ctx context.Context) error {
	root, err := cluster.RepoRoot()
	if err != nil {
		return err
	}
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", e.dir+string(filepath.Separator), "./cmd/nodecsr-controller", "./cmd/nodecsr-request")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/nodecsr-controller ./cmd/nodecsr-request: %w\n%s", err, out)
	}
	e.controllerBin = filepath.Join(e.dir, "nodecsr-controller")
	e.requesterBin = filepath.Join(e.dir, "nodecsr-request")
	e.logf("built nodecsr-controller and nodecsr-request in %s", time.Since(start).Round(100*time.Millisecond))
	return nil
}

// cpuSnapshot is the CPU time used so far by the processes that matter.
type cpuSnapshot struct {
	at                          time.Time
	apiserver, etcd, self, busy float64
	contender                   float64
	contenderPID                int
}

func (e *env) cpu(contenderPID int) cpuSnapshot {
	s := cpuSnapshot{
		at: time.Now(), apiserver: cpuSeconds(e.apiserverPID), etcd: cpuSeconds(e.etcdPID),
		self: cpuSeconds(os.Getpid()), busy: machineBusy(), contenderPID: contenderPID,
	}
	if contenderPID > 0 {
		s.contender = cpuSeconds(contenderPID)
	}
	return s
}

// cpuUse is CPU use over an interval, in cores (CPU seconds per second).
type cpuUse struct {
	APIServer float64 `json:"kubeAPIServerCores"`
	Etcd      float64 `json:"etcdCores"`
	Contender float64 `json:"contenderCores"`
	Bench     float64 `json:"benchCores"`
	// Machine is the whole machine's busy time (every process, also other
	// people's builds), out of Cores.
	Machine float64 `json:"machineCores"`
	Cores   int     `json:"cores"`
}

func cpuBetween(a, b cpuSnapshot, cores int) cpuUse {
	wall := b.at.Sub(a.at).Seconds()
	if wall <= 0 {
		return cpuUse{}
	}
	u := cpuUse{
		APIServer: (b.apiserver - a.apiserver) / wall, Etcd: (b.etcd - a.etcd) / wall,
		Bench: (b.self - a.self) / wall, Machine: (b.busy - a.busy) / wall, Cores: cores,
	}
	switch {
	case b.contenderPID > 0 && b.contenderPID == a.contenderPID:
		u.Contender = (b.contender - a.contender) / wall
	case b.contenderPID > 0 && a.contenderPID == 0:
		// Started during the interval: all its CPU time counts.
		u.Contender = b.contender / wall
	}
	return u
}
