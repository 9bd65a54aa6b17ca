package cluster

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// StopControllerManager stops the cluster's kube-controller-manager (csrsigning,
// and csrapproving with Options.CSRApproving); StartControllerManager brings it
// back with the same flags.
func (c *Cluster) StopControllerManager() error {
	if c.kcm == nil {
		return errors.New("the cluster runs no kube-controller-manager")
	}
	return c.kcm.stop(10 * time.Second)
}

// StartControllerManager starts the stopped kube-controller-manager again.
func (c *Cluster) StartControllerManager(ctx context.Context) error {
	if c.isStopped() {
		return errStopped
	}
	if c.kcm == nil {
		return errors.New("the cluster runs no kube-controller-manager")
	}
	return c.kcm.start(ctx, 30*time.Second)
}

// ControllerManager is an extra kube-controller-manager process started by
// StartExtraControllerManager, next to the cluster's own.
type ControllerManager struct {
	p *process
}

// StartExtraControllerManager starts another kube-controller-manager that runs
// only the given controllers (for example csrapproving alone, to measure it
// without csrsigning), with kube-controller-manager's defaults for every flag
// except the kubeconfig (a system:masters identity of its own),
// --leader-elect=false, --secure-port=0 and the given overrides. name
// distinguishes its log file and kubeconfig. The caller stops it; it also dies
// with the calling process.
func (c *Cluster) StartExtraControllerManager(ctx context.Context, name string, controllers []string, flags map[string]string) (*ControllerManager, error) {
	if c.isStopped() {
		return nil, errStopped
	}
	assets, err := FindAssets(c.opts.AssetsDir)
	if err != nil {
		return nil, err
	}
	kp, err := c.clients.IssueClient("system:kube-controller-manager", "system:masters")
	if err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(c.dir, name+".kubeconfig")
	if err := WriteKubeconfig(kubeconfig, c.restConfig(kp)); err != nil {
		return nil, err
	}
	all := map[string]string{
		"kubeconfig":   kubeconfig,
		"controllers":  strings.Join(controllers, ","),
		"leader-elect": "false",
		"secure-port":  "0",
	}
	for k, v := range flags {
		all[k] = v
	}
	p := &process{
		name: name, path: filepath.Join(assets, "kube-controller-manager"),
		logPath: c.logPath(name), args: flagList(all),
		startAfter: 100 * time.Millisecond,
	}
	if err := p.start(ctx, 30*time.Second); err != nil {
		return nil, fmt.Errorf("failed to start %s: %w", name, err)
	}
	return &ControllerManager{p: p}, nil
}

// PID is the process ID, or 0 when it is not running.
func (m *ControllerManager) PID() int {
	m.p.mu.Lock()
	defer m.p.mu.Unlock()
	if m.p.cmd == nil {
		return 0
	}
	return m.p.cmd.Process.Pid
}

// LogPath is the process's log file.
func (m *ControllerManager) LogPath() string { return m.p.logPath }

// Stop stops the process (SIGTERM, then SIGKILL after 10 s). It is safe to
// call more than once.
func (m *ControllerManager) Stop() error { return m.p.stop(10 * time.Second) }
