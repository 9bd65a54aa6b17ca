package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Children are started from one goroutine locked to its OS thread for the life
// of the process, with Pdeathsig set: Linux kills a child when the thread that
// forked it exits, so a test binary that panics, times out or is killed never
// leaves etcd or kube-apiserver behind. (Pdeathsig follows the forking thread,
// not the process, hence the dedicated thread.)
var (
	spawnOnce sync.Once
	spawnReqs chan spawnReq
)

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread lives as long as the process
			for r := range spawnReqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	r := spawnReq{cmd: cmd, done: make(chan error, 1)}
	spawnReqs <- r
	return <-r.done
}

// process is one control-plane server.
type process struct {
	name    string
	path    string
	args    []string
	logPath string

	// health, when set, is polled until it answers 200.
	health     string
	healthTLS  *tls.Config
	startAfter time.Duration // with no health URL: how long it must stay up to count as started

	mu      sync.Mutex
	cmd     *exec.Cmd
	logFile *os.File
	exited  chan struct{}
	waitErr *error // valid once exited is closed
}

func (p *process) start(ctx context.Context, timeout time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s is already running", p.name)
	}
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("failed to open log for %s: %w", p.name, err)
	}
	cmd := exec.Command(p.path, p.args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := spawn(cmd); err != nil {
		_ = logFile.Close()
		return fmt.Errorf("failed to start %s: %w", p.name, err)
	}
	p.cmd, p.logFile, p.exited = cmd, logFile, make(chan struct{})
	exited := p.exited
	waitErr := new(error)
	go func() {
		*waitErr = cmd.Wait() // read only after exited is closed
		close(exited)
	}()
	p.waitErr = waitErr

	if err := p.waitReady(ctx, timeout, exited); err != nil {
		p.killLocked()
		return fmt.Errorf("%w\n%s", err, tail(p.logPath, 30))
	}
	return nil
}

func (p *process) waitReady(ctx context.Context, timeout time.Duration, exited chan struct{}) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	if p.health == "" {
		select {
		case <-time.After(p.startAfter):
			return nil
		case <-exited:
			return fmt.Errorf("%s exited during start-up: %v", p.name, *p.waitErr)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: p.healthTLS}}
	defer client.CloseIdleConnections()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := client.Get(p.health)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-tick.C:
		case <-exited:
			return fmt.Errorf("%s exited during start-up: %v", p.name, *p.waitErr)
		case <-deadline.C:
			return fmt.Errorf("%s did not become healthy at %s within %s", p.name, p.health, timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs the process group.
func (p *process) stop(grace time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return nil
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	}
	p.cleanupLocked()
	return nil
}

func (p *process) killLocked() {
	if p.cmd == nil {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
	p.cleanupLocked()
}

func (p *process) cleanupLocked() {
	_ = p.logFile.Close()
	p.cmd, p.logFile = nil, nil
}

func (p *process) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// tail returns the last n lines of a log file, for error messages.
func tail(path string, n int) string {
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

// FreePort asks the kernel for a free loopback port.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// HostPort is 127.0.0.1:port.
func HostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

var errStopped = errors.New("cluster is stopped")

// Spawn starts cmd like the control-plane processes: in its own process group
// and killed by the kernel if this process dies, so that nothing a test, the
// benchmarks or the demo start outlives them. The caller waits for it.
func Spawn(cmd *exec.Cmd) error { return spawn(cmd) }
