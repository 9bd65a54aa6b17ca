package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nodecsr/nodecsr/test/cluster"
)

// proc is a child process: nodecsr-controller or nodecsr-request.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	started time.Time
	exited  chan struct{}
	err     error // valid once exited is closed

	stopOnce sync.Once
}

// startProc starts path with args, its stdout and stderr appended to logPath.
func startProc(name, path, logPath string, args ...string) (*proc, error) {
	return startProcEnv(name, path, logPath, nil, args...)
}

// startProcEnv is startProc with extra environment variables (NAME=value).
func startProcEnv(name, path, logPath string, env []string, args ...string) (*proc, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("failed to open the log of %s: %w", name, err)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	p.started = time.Now()
	if err := cluster.Spawn(cmd); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("failed to start %s: %w", name, err)
	}
	live.add(p)
	go func() {
		p.err = cmd.Wait()
		_ = logFile.Close()
		live.remove(p)
		close(p.exited)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM to the process group, and SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	p.stopOnce.Do(func() {
		_ = syscall.Kill(-p.pid(), syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(grace):
			_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
			<-p.exited
		}
	})
}

// exitedErr returns an error if the process has exited.
func (p *proc) exitedErr() error {
	select {
	case <-p.exited:
		return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, tailFile(p.logPath, 20))
	default:
		return nil
	}
}

// liveProcs tracks running children so that a signal handler can kill them.
type liveProcs struct {
	mu    sync.Mutex
	procs map[*proc]struct{}
}

var live = &liveProcs{procs: map[*proc]struct{}{}}

func (l *liveProcs) add(p *proc) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.procs[p] = struct{}{}
}

func (l *liveProcs) remove(p *proc) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.procs, p)
}

// killAll SIGKILLs every running child's process group.
func (l *liveProcs) killAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for p := range l.procs {
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	}
}

// controller is a running nodecsr-controller.
type controller struct {
	*proc
	metricsURL string
	healthURL  string
}

// startController runs the nodecsr-controller binary against the cluster
// with its defaults, leader election off, metrics and probes on free
// loopback ports, and the extra args.
func (e *env) startController(name string, extra ...string) (*controller, error) {
	return e.startControllerEnv(name, nil, extra...)
}

// startControllerEnv is startController with extra environment variables.
func (e *env) startControllerEnv(name string, environ []string, extra ...string) (*controller, error) {
	mport, err := cluster.FreePort()
	if err != nil {
		return nil, err
	}
	hport, err := cluster.FreePort()
	if err != nil {
		return nil, err
	}
	args := []string{
		"--kubeconfig=" + e.c.AdminKubeconfig(),
		"--leader-elect=false",
		"--metrics-bind-address=" + cluster.HostPort(mport),
		"--health-probe-bind-address=" + cluster.HostPort(hport),
	}
	args = append(args, extra...)
	p, err := startProcEnv(name, e.controllerBin, filepath.Join(e.dir, name+".log"), environ, args...)
	if err != nil {
		return nil, err
	}
	e.logf("started %s (pid %d): %snodecsr-controller %s", name, p.pid(), strings.Join(append(environ, ""), " "), strings.Join(args[1:], " "))
	return &controller{proc: p, metricsURL: "http://" + cluster.HostPort(mport) + "/metrics", healthURL: "http://" + cluster.HostPort(hport) + "/readyz"}, nil
}

// waitReady polls /readyz until it answers 200.
func (c *controller) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if err := c.exitedErr(); err != nil {
			return err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.healthURL, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s: %w", c.name, c.healthURL, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// metrics scrapes the controller's /metrics.
func (c *controller) metrics(ctx context.Context) (samples, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.metricsURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("failed to scrape %s: %w", c.metricsURL, err)
	}
	defer func() { _ = resp.Body.Close() }()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return nil, fmt.Errorf("failed to read %s: %w", c.metricsURL, err)
	}
	return parseSamples(buf.Bytes()), nil
}

// memInfo is a process's resident memory from /proc/<pid>/status.
type memInfo struct {
	RSS int64 `json:"rssBytes"` // VmRSS
	HWM int64 `json:"hwmBytes"` // VmHWM: peak RSS
}

func readMem(pid int) (memInfo, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memInfo{}, err
	}
	defer func() { _ = f.Close() }()
	var m memInfo
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "VmRSS:":
			m.RSS = kb * 1024
		case "VmHWM:":
			m.HWM = kb * 1024
		}
	}
	return m, sc.Err()
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times (100 on Linux).
const clockTicks = 100

// cpuSeconds is the user+system CPU time a process has used so far.
func cpuSeconds(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may contain spaces: skip past its ')'.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 13 {
		return 0
	}
	// fields[0] is field 3 (state); utime and stime are fields 14 and 15.
	ut, _ := strconv.ParseFloat(fields[11], 64)
	st, _ := strconv.ParseFloat(fields[12], 64)
	return (ut + st) / clockTicks
}

// machineBusy is the CPU time all cores spent not idle, in seconds, from /proc/stat.
func machineBusy() float64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	fields := strings.Fields(line)
	if len(fields) < 8 || fields[0] != "cpu" {
		return 0
	}
	var busy float64
	for i, f := range fields[1:] {
		v, _ := strconv.ParseFloat(f, 64)
		if i == 3 || i == 4 || i == 7 { // idle, iowait, steal
			continue
		}
		if i >= 8 { // guest time is already counted in user
			break
		}
		busy += v
	}
	return busy / clockTicks
}

// tailFile returns the last n lines of a file, for error messages.
func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- last lines of %s ---\n%s", filepath.Base(path), strings.Join(lines, "\n"))
}

// processName is the command name of pid (/proc/<pid>/comm).
func processName(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

var errTimeout = errors.New("timed out")
