package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/nodecsr/nodecsr/test/cluster"
)

// report is everything one run measured; -o json prints it.
type report struct {
	Command     string  `json:"command"`
	Date        string  `json:"date"`
	Machine     machine `json:"machine"`
	WallSeconds float64 `json:"wallSeconds"`

	Approve   *approveResult   `json:"approve,omitempty"`
	Storm     *stormResult     `json:"storm,omitempty"`
	Requester *requesterResult `json:"requester,omitempty"`
	Webhook   *webhookResult   `json:"webhook,omitempty"`
	Memory    *memoryResult    `json:"memory,omitempty"`
	APF       *apfResult       `json:"apf,omitempty"`
	// LoadBefore and LoadAfter are /proc/loadavg when the run started and
	// ended: the machine is shared, a loaded one makes a slow run.
	LoadBefore string `json:"loadBefore,omitempty"`
	LoadAfter  string `json:"loadAfter,omitempty"`

	Targets      []target `json:"targets"`
	Errors       []string `json:"errors,omitempty"`
	GoBenchmarks string   `json:"goBenchmarks,omitempty"`
}

type machine struct {
	Cores      int    `json:"cores"`
	CPU        string `json:"cpu"`
	MemoryGiB  int    `json:"memoryGiB"`
	Kernel     string `json:"kernel"`
	GoVersion  string `json:"goVersion"`
	Kubernetes string `json:"kubernetes"`
}

// loadAverage is the first three fields of /proc/loadavg ("" if unreadable).
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func clusterVersion() string { return cluster.KubeVersion }

func describeMachine() machine {
	m := machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), Kubernetes: cluster.KubeVersion}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		m.Kernel = utsString(u.Sysname[:]) + " " + utsString(u.Release[:])
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		_ = f.Close()
	}
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) == nil {
		m.MemoryGiB = int((uint64(si.Totalram)*uint64(si.Unit) + (1<<30 - 1)) >> 30)
	}
	return m
}

func utsString(b []int8) string {
	var sb strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}

// target is one goal from the issue and whether this run met it.
type target struct {
	Name     string `json:"name"`
	Goal     string `json:"goal"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}

func checkTargets(r *report) []target {
	var ts []target
	if a := r.Approve; a != nil {
		ts = append(ts,
			target{Name: "throughput vs kube-controller-manager", Goal: ">= 30x",
				Measured: fmt.Sprintf("%.1fx (%.1f/s vs %.1f/s)", a.NodecsrVsIncumbent, a.Nodecsr.RatePerSecond, a.Incumbent.RatePerSecond),
				Met:      a.NodecsrVsIncumbent >= 30},
			target{Name: "throughput vs bare loop", Goal: ">= 50%",
				Measured: fmt.Sprintf("%.0f%% (%.1f/s vs %.1f/s)", 100*a.NodecsrVsBare, a.Nodecsr.RatePerSecond, a.Bare.RatePerSecond),
				Met:      a.NodecsrVsBare >= 0.5})
		for _, pt := range a.Patterns {
			if strings.HasSuffix(pt.Name, string(patternAsyncEvent)) {
				r := ratio(a.Nodecsr.RatePerSecond, pt.RatePerSecond)
				ts = append(ts, target{Name: "throughput vs the bare loop with nodecsr's request pattern (async Event)", Goal: ">= 90%",
					Measured: fmt.Sprintf("%.0f%% (%.1f/s vs %.1f/s)", 100*r, a.Nodecsr.RatePerSecond, pt.RatePerSecond),
					Met:      r >= 0.9})
			}
		}
	}
	if s := r.Storm; s != nil {
		ts = append(ts, target{Name: fmt.Sprintf("storm of %d: all decided, p99 creation-to-decision", s.N), Goal: "all, < 30 s",
			Measured: fmt.Sprintf("%d/%d decided, p99 %.2f s", s.Decided, s.N, s.CreateToDecision.P99),
			Met:      s.Decided == s.N && s.CreateToDecision.P99 < 30})
	}
	if w := r.Webhook; w != nil && w.Skipped == "" {
		ts = append(ts, target{Name: "CSR create latency with the webhook", Goal: "<= 1.5x without",
			Measured: fmt.Sprintf("%.2fx p50 (%.1f ms vs %.1f ms), %.2fx mean", w.RatioP50, 1000*w.With.P50, 1000*w.Without.P50, w.RatioMean),
			Met:      w.RatioP50 <= 1.5 && w.RatioMean <= 1.5})
	}
	if m := r.Memory; m != nil {
		ts = append(ts, target{Name: fmt.Sprintf("RSS with %d pending", m.PendingN), Goal: "< 64 MiB",
			Measured: fmt.Sprintf("%.1f MiB", float64(m.Pending.RSS)/mib),
			Met:      m.Pending.RSS < 64*mib})
		if m.ForeignN > 0 {
			ts = append(ts, target{Name: fmt.Sprintf("RSS with %d CSRs of another signer", m.ForeignN), Goal: "within 10% of idle",
				Measured: fmt.Sprintf("%+.1f%% (%.1f MiB vs %.1f MiB idle; fresh start: %+.1f%%)", 100*(m.ForeignRatio-1), float64(m.Foreign.RSS)/mib, float64(m.Idle.RSS)/mib, 100*(m.ForeignFreshRatio-1)),
				Met:      m.ForeignRatio <= 1.10 && m.ForeignFreshRatio <= 1.10})
		}
	}
	return ts
}

// goBenchmarks runs the Go benchmarks of approver/ and webhook/ and returns their output.
func goBenchmarks(ctx context.Context, logf func(string, ...any)) string {
	root, err := cluster.RepoRoot()
	if err != nil {
		return err.Error()
	}
	logf("running go test -run '^$' -bench . -benchmem ./approver/ ./webhook/")
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", ".", "-benchmem", "./approver/", "./webhook/")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		logf("WARNING: the Go benchmarks failed (%v); their output goes into the report as it is", err)
		return fmt.Sprintf("%s\n(go test failed: %v)", out, err)
	}
	return string(out)
}
