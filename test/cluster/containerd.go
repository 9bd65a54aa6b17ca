package cluster

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// A real node's container runtime: Debian's containerd and runc, run by the
// test with a configuration, root, state folder and socket of its own under a
// folder the test owns, so that it never touches (or collides with) a
// system containerd at /run/containerd and /var/lib/containerd.
//
// What containerd and the kubelet leave behind when they stop, they do not
// clean: shims and the pods' processes keep running (shims are daemons, the
// pods are their children), rootfs and /dev/shm mounts stay under the state
// folder, the kubelet's volume mounts under its root folder, and the pods'
// cgroups. Containerd.Stop removes what its containerd left (processes,
// mounts, shim sockets); UnmountUnder, RemoveCgroupsAt, RemoveShimsUnder and
// KillProcessesUnder remove what a node left under a folder and a cgroup,
// also when the test binary that ran it was killed; NodeLeftovers lists what
// remains, for a suite to assert that nothing does.

// ContainerdPackages are the Debian packages that provide ContainerdBinaries.
var ContainerdPackages = []string{"containerd", "runc"}

// ContainerdBinaries are the programs a node's runtime needs on PATH.
var ContainerdBinaries = []string{"containerd", "ctr", "containerd-shim-runc-v2", "runc"}

// MissingContainerdBinaries lists the ContainerdBinaries not found on PATH.
func MissingContainerdBinaries() []string {
	var missing []string
	for _, b := range ContainerdBinaries {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	return missing
}

// shimSocketRoot is where containerd 1.6's shims put their sockets whatever
// the configuration says (runtime/v2/shim.SocketAddress uses the default
// state folder): /run/containerd/s/<sha256(address/namespace/id)>.
const shimSocketRoot = "/run/containerd"

// ContainerdOptions configures a containerd.
type ContainerdOptions struct {
	// Dir holds everything: config.toml, root, state, the runc state, the CNI
	// configuration, the socket and the log. Required, and short enough for a
	// unix socket path (the socket is Dir/containerd.sock). Stop removes
	// it.
	Dir string
	// SandboxImage is the CRI plugin's sandbox_image. No registry is
	// reachable: import it (ImportImage) before the kubelet starts pods.
	SandboxImage string
	// Logf, when set, receives progress lines.
	Logf func(format string, args ...any)
}

// Containerd is a running containerd.
type Containerd struct {
	opts   ContainerdOptions
	socket string
	p      *process

	// hadShimSocketRoot records whether /run/containerd/s (and
	// /run/containerd) existed before this containerd started: if not, the
	// folders its shims created are removed when it stops.
	hadShimSocketRoot, hadShimSocketDir bool

	mu      sync.Mutex
	stopped bool
}

// StartContainerd writes the configuration and starts containerd, and waits
// until it answers on its socket. The CRI plugin is configured for this
// machine: cgroupfs (cgroup v1), restrict_oom_score_adj (the VM withholds
// CAP_SYS_RESOURCE even from root; runc fails with "can't get final child's
// PID from pipe: EOF" otherwise) and a loopback-only CNI network, which
// makes the node NetworkReady and lets hostNetwork pods run.
func StartContainerd(ctx context.Context, opts ContainerdOptions) (_ *Containerd, err error) {
	if opts.Dir == "" {
		return nil, errors.New("containerd: ContainerdOptions.Dir is required")
	}
	if opts.SandboxImage == "" {
		return nil, errors.New("containerd: ContainerdOptions.SandboxImage is required")
	}
	if missing := MissingContainerdBinaries(); len(missing) > 0 {
		return nil, fmt.Errorf("containerd: not on PATH: %s (Debian packages %s)", strings.Join(missing, ", "), strings.Join(ContainerdPackages, " "))
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	opts.Dir = dir
	c := &Containerd{opts: opts, socket: filepath.Join(dir, "containerd.sock")}
	if len(c.socket) > 100 {
		return nil, fmt.Errorf("containerd: socket path %s is too long for a unix socket", c.socket)
	}
	c.hadShimSocketRoot = exists(shimSocketRoot)
	c.hadShimSocketDir = exists(filepath.Join(shimSocketRoot, "s"))
	for _, d := range []string{"root", "state", "runc", "opt", "cni/net.d", "cni/bin"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "cni/net.d/10-loopback.conflist"), []byte(loopbackCNI), 0o600); err != nil {
		return nil, err
	}
	config := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(config, []byte(c.config()), 0o600); err != nil {
		return nil, err
	}
	bin, _ := exec.LookPath("containerd")
	c.p = &process{
		name: "containerd", path: bin, logPath: filepath.Join(dir, "containerd.log"),
		args:       []string{"--config", config},
		startAfter: 100 * time.Millisecond,
	}
	defer func() {
		if err != nil {
			_ = c.Stop()
		}
	}()
	c.logf("starting containerd (%s)", c.socket)
	if err := c.p.start(ctx, time.Minute); err != nil {
		return nil, err
	}
	// Ready when the CRI plugin answers: `ctr version` only proves the
	// socket, so ask for the plugins and look for the CRI one.
	for {
		out, err := c.Ctr(ctx, "plugins", "ls")
		if err == nil && strings.Contains(out, "io.containerd.grpc.v1") && strings.Contains(out, "cri") {
			if line := pluginLine(out, "cri"); line != "" && !strings.Contains(line, "ok") {
				return nil, fmt.Errorf("containerd's CRI plugin did not load: %s\n%s", line, tail(c.p.logPath, 30))
			}
			return c, nil
		}
		if !c.p.running() {
			return nil, fmt.Errorf("containerd exited during start-up\n%s", tail(c.p.logPath, 30))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("containerd did not answer on %s: %w (last: %v)\n%s", c.socket, ctx.Err(), err, tail(c.p.logPath, 30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func pluginLine(out, id string) string {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "io.containerd.grpc.v1" && f[1] == id {
			return line
		}
	}
	return ""
}

// loopbackCNI is the only network: enough for the CRI plugin to report
// NetworkReady; pods use the host's network.
const loopbackCNI = `{
  "cniVersion": "0.4.0",
  "name": "loopback",
  "plugins": [{"type": "loopback"}]
}
`

// config is containerd's config.toml (version 2, containerd 1.6): every path
// under Dir, and off the plugins that would probe the host's storage drivers
// or send traces.
func (c *Containerd) config() string {
	d := c.opts.Dir
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = %[5]q

  # Unused (the CRI plugin runs runc.v2 shims), but the tasks service
  # needs it loaded.
  [plugins."io.containerd.runtime.v1.linux"]
    runtime_root = %[10]q

  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = %[6]q
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    disable_apparmor = true
    systemd_cgroup = false

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          Root = %[7]q
          SystemdCgroup = false

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = %[8]q
      conf_dir = %[9]q
      max_conf_num = 1

    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = ""
`,
		filepath.Join(d, "root"), filepath.Join(d, "state"), c.socket, c.socket+".ttrpc",
		filepath.Join(d, "opt"), c.opts.SandboxImage, filepath.Join(d, "runc"),
		filepath.Join(d, "cni/bin"), filepath.Join(d, "cni/net.d"), filepath.Join(d, "runc-v1"))
}

func (c *Containerd) logf(format string, args ...any) {
	if c.opts.Logf != nil {
		c.opts.Logf(format, args...)
	}
}

// Endpoint is the CRI endpoint for the kubelet's containerRuntimeEndpoint.
func (c *Containerd) Endpoint() string { return "unix://" + c.socket }

// Socket is the path of containerd's socket.
func (c *Containerd) Socket() string { return c.socket }

// Dir is the folder that holds everything of this containerd.
func (c *Containerd) Dir() string { return c.opts.Dir }

// LogPath is containerd's log file.
func (c *Containerd) LogPath() string { return c.p.logPath }

// Ctr runs ctr against this containerd in the k8s.io namespace (the CRI
// plugin's) and returns its combined output.
func (c *Containerd) Ctr(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", c.socket, "--namespace", "k8s.io"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("ctr %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// ImportImage imports a `docker save`-style tarball (what `make image` and
// test/pause write) into the CRI plugin's namespace, unpacked for the
// overlayfs snapshotter, and returns the image references it holds.
func (c *Containerd) ImportImage(ctx context.Context, tarball string) ([]string, error) {
	out, err := c.Ctr(ctx, "images", "import", "--snapshotter", "overlayfs", tarball)
	if err != nil {
		return nil, err
	}
	var refs []string
	for _, line := range strings.Split(out, "\n") {
		// "unpacking <ref> (sha256:...)...done"
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "unpacking "); ok {
			if ref, _, ok := strings.Cut(rest, " "); ok {
				refs = append(refs, ref)
			}
		}
	}
	if len(refs) == 0 {
		return nil, fmt.Errorf("ctr images import %s imported nothing:\n%s", tarball, out)
	}
	c.logf("imported %s: %s", filepath.Base(tarball), strings.Join(refs, ", "))
	return refs, nil
}

// Stop removes everything this containerd started or mounted: it kills the
// processes of every pod it ran and their shims, stops containerd, unmounts
// what is mounted under Dir, removes the shims' sockets (and the folders
// they created under /run/containerd) and removes Dir. Stop the kubelet
// first, or it starts the pods again. It is safe to call more than once.
func (c *Containerd) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	c.stopped = true
	var errs []error
	shims, err := findShims(func(address string) bool { return address == c.socket })
	errs = append(errs, err)
	// The pods' processes first (the shims' children), then the shims:
	// nothing is left to restart anything.
	errs = append(errs, killTrees(shims))
	if c.p != nil {
		errs = append(errs, c.p.stop(10*time.Second))
	}
	errs = append(errs, removeShimSockets(shims))
	if !c.hadShimSocketDir {
		_ = os.Remove(filepath.Join(shimSocketRoot, "s")) // only when empty
	}
	if !c.hadShimSocketRoot {
		_ = os.Remove(shimSocketRoot) // only when empty
	}
	errs = append(errs, UnmountUnder(c.opts.Dir))
	errs = append(errs, os.RemoveAll(c.opts.Dir))
	return errors.Join(errs...)
}

// RemoveShimsUnder kills the shims of every containerd whose socket is
// under dir, with their pods' processes, and removes their sockets, and the
// folders under /run/containerd when that leaves them empty: what a
// containerd run by a test binary that was killed leaves running (the
// shims are daemons; the kernel kills containerd itself with the test).
func RemoveShimsUnder(dir string) error {
	shims, err := findShims(func(address string) bool { return isUnder(address, dir) })
	if err != nil || len(shims) == 0 {
		return err
	}
	err = errors.Join(killTrees(shims), removeShimSockets(shims))
	_ = os.Remove(filepath.Join(shimSocketRoot, "s")) // only when empty
	_ = os.Remove(shimSocketRoot)                     // only when empty
	return err
}

// shim is a containerd shim process.
type shim struct {
	pid                    int
	address, namespace, id string
}

// findShims finds the containerd shims (containerd-shim-runc-v2 processes)
// whose -address (their containerd's socket) matches.
func findShims(match func(address string) bool) ([]shim, error) {
	procs, err := listProcs()
	if err != nil {
		return nil, err
	}
	var out []shim
	for _, p := range procs {
		if !strings.HasPrefix(filepath.Base(p.argv0()), "containerd-shim") {
			continue
		}
		if addr := p.flag("-address"); addr != "" && match(addr) {
			out = append(out, shim{pid: p.pid, address: addr, namespace: p.flag("-namespace"), id: p.flag("-id")})
		}
	}
	return out, nil
}

// removeShimSockets removes the sockets of killed shims (a shim removes its
// own when it exits cleanly).
func removeShimSockets(shims []shim) error {
	var errs []error
	for _, s := range shims {
		sock := filepath.Join(shimSocketRoot, "s", fmt.Sprintf("%x", sha256.Sum256([]byte(filepath.Join(s.address, s.namespace, s.id)))))
		if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killTrees SIGKILLs every descendant of the shims, then the shims, and waits
// until they are gone.
func killTrees(shims []shim) error {
	if len(shims) == 0 {
		return nil
	}
	procs, err := listProcs()
	if err != nil {
		return err
	}
	var roots []int
	for _, s := range shims {
		roots = append(roots, s.pid)
	}
	descendants := descendantsOf(procs, roots)
	for _, pid := range descendants {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range roots {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return waitGone(append(descendants, roots...), 30*time.Second)
}

// waitGone waits until none of pids exists (or is a zombie nobody reaps yet:
// a killed shim's children are reaped by init).
func waitGone(pids []int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var alive []int
		for _, pid := range pids {
			if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
				if state, _ := statField(string(st), 3); state != "Z" {
					alive = append(alive, pid)
				}
			}
		}
		if len(alive) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v survived SIGKILL", alive)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// proc is one entry of /proc.
type proc struct {
	pid, ppid int
	argv      []string
}

func (p proc) argv0() string {
	if len(p.argv) == 0 {
		return ""
	}
	return p.argv[0]
}

// flag is the value of "-name value", "--name value" or "--name=value" in argv.
func (p proc) flag(name string) string {
	bare := strings.TrimLeft(name, "-")
	for i, a := range p.argv {
		if a == "-"+bare || a == "--"+bare {
			if i+1 < len(p.argv) {
				return p.argv[i+1]
			}
			return ""
		}
		for _, prefix := range []string{"-" + bare + "=", "--" + bare + "="} {
			if v, ok := strings.CutPrefix(a, prefix); ok {
				return v
			}
		}
	}
	return ""
}

// mentions reports whether an argument of p is path or lies under it.
func (p proc) mentions(path string) bool {
	for _, a := range p.argv {
		if _, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(a, "-") {
			a = v
		}
		if a == path || strings.HasPrefix(a, path+"/") || strings.HasPrefix(a, "unix://"+path+"/") {
			return true
		}
	}
	return false
}

func listProcs() ([]proc, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // gone
		}
		ppidStr, _ := statField(string(stat), 4)
		ppid, _ := strconv.Atoi(ppidStr)
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		argv := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if len(cmdline) == 0 {
			argv = nil
		}
		out = append(out, proc{pid: pid, ppid: ppid, argv: argv})
	}
	return out, nil
}

// statField is field n (1-based, as in proc(5)) of /proc/<pid>/stat; the
// command (field 2) may hold spaces and parentheses.
func statField(stat string, n int) (string, bool) {
	end := strings.LastIndexByte(stat, ')')
	if end < 0 || n < 3 {
		return "", false
	}
	f := strings.Fields(stat[end+1:])
	if n-3 >= len(f) {
		return "", false
	}
	return f[n-3], true
}

func descendantsOf(procs []proc, roots []int) []int {
	children := map[int][]int{}
	for _, p := range procs {
		children[p.ppid] = append(children[p.ppid], p.pid)
	}
	var out []int
	queue := slices.Clone(roots)
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, child := range children[pid] {
			out = append(out, child)
			queue = append(queue, child)
		}
	}
	return out
}

// mountPoints lists the mount points at or under dir, in mount order.
func mountPoints(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, sc.Err()
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space...).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// UnmountUnder unmounts everything mounted at or under dir (the CRI plugin's
// rootfs and /dev/shm mounts, the kubelet's volumes and its rshared bind
// mount of its root folder), the most recent mount first; a busy mount is
// detached.
func UnmountUnder(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	var errs []error
	// Mounts stacked on one point need one unmount each: repeat until none
	// is left or nothing changes.
	for range 10 {
		mps, err := mountPoints(dir)
		if err != nil {
			return err
		}
		if len(mps) == 0 {
			return nil
		}
		errs = errs[:0]
		for i := len(mps) - 1; i >= 0; i-- {
			if err := syscall.Unmount(mps[i], 0); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
				if err := syscall.Unmount(mps[i], syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
					errs = append(errs, fmt.Errorf("unmount %s: %w", mps[i], err))
				}
			}
		}
	}
	mps, err := mountPoints(dir)
	if err != nil {
		return err
	}
	if len(mps) > 0 {
		return errors.Join(append(errs, fmt.Errorf("still mounted: %s", strings.Join(mps, ", ")))...)
	}
	return nil
}

// cgroupRoots are the mounted cgroup hierarchies (v1 controllers and the v2
// unified one).
func cgroupRoots() ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		// ... mountpoint ... - fstype source options
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, pf := strings.Fields(pre), strings.Fields(post)
		if len(f) >= 5 && len(pf) >= 1 && (pf[0] == "cgroup" || pf[0] == "cgroup2") {
			out = append(out, unescapeMountinfo(f[4]))
		}
	}
	return out, nil
}

// CgroupsAt lists the cgroup folders, in every hierarchy, of the given
// cgroup paths (for example "/kubepods", or a node's own cgroupRoot), with
// everything below them, deepest first.
func CgroupsAt(paths ...string) ([]string, error) {
	roots, err := cgroupRoots()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, root := range roots {
		for _, p := range paths {
			top := filepath.Join(root, filepath.Clean("/"+p))
			if top == root {
				return nil, fmt.Errorf("refusing the root cgroup %q", p)
			}
			if fi, err := os.Stat(top); err != nil || !fi.IsDir() {
				continue
			}
			_ = filepath.WalkDir(top, func(path string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					out = append(out, path)
				}
				return nil
			})
		}
	}
	// Deeper first: a cgroup is removed after its children.
	slices.SortStableFunc(out, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return out, nil
}

// CgroupsNamed lists the cgroup folders, in every hierarchy, at the cgroup
// path parent/prefix* (for example "/" and "kubepods" for the kubelet's pod
// cgroups with the cgroupfs driver, kubepods.slice with systemd), with
// everything below them, deepest first.
func CgroupsNamed(parent, prefix string) ([]string, error) {
	roots, err := cgroupRoots()
	if err != nil {
		return nil, err
	}
	var paths []string
	for _, root := range roots {
		matches, _ := filepath.Glob(filepath.Join(root, parent, prefix+"*"))
		for _, m := range matches {
			if rel, err := filepath.Rel(root, m); err == nil {
				paths = append(paths, "/"+rel)
			}
		}
	}
	slices.Sort(paths)
	return CgroupsAt(slices.Compact(paths)...)
}

// RemoveCgroups kills every process left in the cgroups CgroupsNamed(parent,
// prefix) lists and removes them, deepest first, waiting up to timeout for
// them to empty.
func RemoveCgroups(parent, prefix string, timeout time.Duration) error {
	dirs, err := CgroupsNamed(parent, prefix)
	if err != nil {
		return err
	}
	return removeCgroupDirs(dirs, timeout)
}

// RemoveCgroupsAt is RemoveCgroups for the exact cgroup paths (CgroupsAt).
func RemoveCgroupsAt(timeout time.Duration, paths ...string) error {
	dirs, err := CgroupsAt(paths...)
	if err != nil {
		return err
	}
	return removeCgroupDirs(dirs, timeout)
}

// removeCgroupDirs kills the processes in dirs (cgroup folders, deepest
// first) and removes the folders.
func removeCgroupDirs(dirs []string, timeout time.Duration) error {
	if len(dirs) == 0 {
		return nil
	}
	var pids []int
	for _, d := range dirs {
		data, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				pids = append(pids, pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if err := waitGone(pids, timeout); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		var left []error
		for _, d := range dirs {
			if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
				left = append(left, fmt.Errorf("rmdir %s: %w", d, err))
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.Join(left...)
		}
		// A cgroup whose last process just died can be busy for a moment.
		time.Sleep(100 * time.Millisecond)
	}
}

// NodeLeftovers lists what a node's containerd and kubelet left behind, as
// one line each: a process that mentions one of dirs in its arguments (a
// containerd, shim or kubelet of the node) or that is a descendant of such a
// shim, a mount at or under one of dirs, a cgroup at one of cgroups (see
// CgroupsAt), or one of dirs itself.
func NodeLeftovers(dirs, cgroups []string) ([]string, error) {
	var out []string
	procs, err := listProcs()
	if err != nil {
		return nil, err
	}
	var roots []int
	for _, p := range procs {
		if p.pid == os.Getpid() {
			continue
		}
		for _, d := range dirs {
			if p.mentions(d) {
				out = append(out, fmt.Sprintf("process %d: %s", p.pid, strings.Join(p.argv, " ")))
				roots = append(roots, p.pid)
				break
			}
		}
	}
	for _, pid := range descendantsOf(procs, roots) {
		if !slices.Contains(roots, pid) {
			out = append(out, fmt.Sprintf("process %d: a child of the node's processes", pid))
		}
	}
	for _, d := range dirs {
		mps, err := mountPoints(d)
		if err != nil {
			return nil, err
		}
		for _, mp := range mps {
			out = append(out, "mount "+mp)
		}
		if exists(d) {
			out = append(out, "folder "+d)
		}
	}
	cgs, err := CgroupsAt(cgroups...)
	if err != nil {
		return nil, err
	}
	for _, cg := range cgs {
		out = append(out, "cgroup "+cg)
	}
	return out, nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// CreateCgroup creates the cgroup /name in every hierarchy, for a node's
// kubelet cgroupRoot (the kubelet refuses a cgroup root that does not
// exist): one folder per node keeps its pods' cgroups apart from any other
// kubelet's kubepods on the machine. In the v1 cpuset hierarchy it inherits
// the root's CPUs and memory nodes, without which it could hold no process.
// RemoveCgroupsAt(timeout, "/"+name) removes it with everything below.
func CreateCgroup(name string) error {
	if name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("cgroup name %q must be one path element", name)
	}
	roots, err := cgroupRoots()
	if err != nil {
		return err
	}
	for _, root := range roots {
		dir := filepath.Join(root, name)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("failed to create cgroup %s: %w", dir, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			v, err := os.ReadFile(filepath.Join(root, f))
			if err != nil {
				continue // not the cpuset hierarchy
			}
			if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
				return fmt.Errorf("failed to set %s of %s: %w", f, dir, err)
			}
		}
	}
	return nil
}

// KillProcessesUnder SIGKILLs every process whose arguments name dir or a
// path under it (a node's containerd, its shims through their -address, a
// kubelet through its --root-dir) and every descendant of those (the pods'
// processes), and waits until they are gone. It is how the leftovers of a
// test binary that was killed before its clean-up are removed.
func KillProcessesUnder(dir string) error {
	procs, err := listProcs()
	if err != nil {
		return err
	}
	var roots []int
	for _, p := range procs {
		if p.pid != os.Getpid() && p.mentions(dir) {
			roots = append(roots, p.pid)
		}
	}
	if len(roots) == 0 {
		return nil
	}
	all := append(descendantsOf(procs, roots), roots...)
	for _, pid := range all {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return waitGone(all, 30*time.Second)
}
