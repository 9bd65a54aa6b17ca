// Package node_test runs nodecsr-controller the way a cluster runs it: from
// the image `make image` builds, as a Pod made from the chart's own pod spec,
// under a REAL kubelet (v1.37.2) with a REAL container runtime (Debian's
// containerd and runc), and shows that Pod approving the client-certificate
// renewal of the very node it runs on, and the serving certificates of a
// kubelet whose node has an address of its own in a network namespace the
// suite creates (the API server reaches that kubelet there and verifies its
// certificate).
//
// It is opt-in (`make e2e-node`, or NODECSR_E2E_NODE=1): it needs root, and
// installs containerd and runc (and iproute2) with apt when they are
// missing. Everything it starts lives under one temporary folder, one
// cgroup and at most one network namespace of its own; it removes all of it
// when it ends, also when it fails or is interrupted, and checks that no
// process, mount, cgroup, namespace or network interface is left.
package node_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/internal/testpki"
	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/test/env"
	"github.com/nodecsr/nodecsr/webhook"
)

const (
	// enableEnv opts in: "1" runs the suite, skipping (one line) when this
	// machine cannot (not root; containerd missing and apt unable to
	// install it); "required" turns those skips into failures (CI).
	enableEnv = "NODECSR_E2E_NODE"
	// imageEnv names the image tarball to run (make e2e-node passes the one
	// `make image` just wrote); unset, bin/nodecsr-controller-image.tar,
	// else the suite builds one with hack/image.
	imageEnv = "NODECSR_IMAGE_TARBALL"

	nodeName  = "nodecsr-e2e-node"
	namespace = "nodecsr"
	// release is the Helm release; it holds the chart's name, so it is
	// also the chart's full name of every object.
	release  = "nodecsr"
	fullname = release
	// webhookSecret is the chart's webhook.tls.secretName: the serving
	// certificate the suite issues in place of cert-manager.
	webhookSecret = "nodecsr-webhook-tls"
	// nodeDirPrefix names the suite's folders in os.TempDir(); a folder
	// whose owner process is gone is what a killed run left behind.
	nodeDirPrefix = "nodecsr-node-"
	ownerFile     = "owner"
	// hostFile records the host folders as they were before the run.
	hostFile = "host-before.json"
)

// hostPaths are the host folders a kubelet or containerd would use with
// their default configuration. The suite points both elsewhere; the leftover
// check shows that it created nothing in them.
var hostPaths = []string{
	"/run/containerd", "/var/lib/containerd", "/opt/containerd", "/etc/cni", "/opt/cni",
	"/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/etc/kubernetes", "/var/run/netns",
}

func TestMain(m *testing.M) {
	// The suite reads the inventory through a controller-runtime client:
	// its errors only (without a logger it prints a stack trace instead).
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	start := time.Now()
	code := m.Run()
	fmt.Fprintf(os.Stderr, "e2e-node suite wall time: %s\n", time.Since(start).Round(100*time.Millisecond))
	os.Exit(code)
}

// TestNodecsrPodApprovesItsNodesRenewal: a node joins (with a client
// certificate issued before nodecsr was installed), the chart is installed
// and its pod runs on that node; the node's certificate then nears expiry,
// its kubelet asks for a new one, and the pod approves it (RenewalApproved),
// kube-controller-manager signs it and the kubelet uses it.
func TestNodecsrPodApprovesItsNodesRenewal(t *testing.T) {
	requireNode(t)
	ctx, cancel := testContext(t)
	defer cancel()

	tn := startNode(ctx, t, nodeOptions{})
	c, admin, k := tn.c, tn.admin, tn.kubelet

	pod := installAndRunPod(ctx, t, tn, nil)
	t.Logf("pod %s/%s runs %s:%s on %s and is Ready", pod.Namespace, pod.Name, tn.repo, tn.tag, nodeName)
	assertConfined(t, tn.cgroup, &pod.Spec)

	// The node's certificate nears its expiry (past the 70–90 % rotation
	// deadline): the kubelet, restarted with it, asks for a new one at once.
	now := time.Now()
	old, err := c.IssueKubeletClientCert(nodeName, now.Add(-23*time.Hour), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if err := k.StopProcess(); err != nil {
		t.Fatal(err)
	}
	if err := k.SeedClientCert(old.CertPEM, old.KeyPEM); err != nil {
		t.Fatal(err)
	}
	oldCert := env.ParseCert(t, old.CertPEM)
	if err := k.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	renewed := waitRenewed(ctx, t, k, oldCert, c.ClusterCA().Cert)

	csr := renewalCSR(ctx, t, admin)
	assertDecidedByPod(ctx, t, admin, csr, pod, tn.dir)
	assertIdentity(ctx, t, k)
	t.Logf("renewed: %s's certificate %x (until %s) replaced by %x (until %s) through CSR %s",
		nodeName, oldCert.SerialNumber, oldCert.NotAfter.Format(time.RFC3339), renewed.SerialNumber, renewed.NotAfter.Format(time.RFC3339), csr.Name)

	// The pod stops as a kubelet stops it: SIGTERM, then a clean exit.
	stopPod(ctx, t, admin, pod)

	// Everything goes, then nothing may be left.
	tn.finish(t)
}

// nodeOptions changes what startNode sets up.
type nodeOptions struct {
	// apiServerFlags, when set, returns kube-apiserver flags to add; it may
	// write the files they name into dir, the node's folder.
	apiServerFlags func(dir string) (map[string]string, error)
	// netns gives the node an address of its own: the kubelet runs in a
	// network namespace of the test's (cluster.CreateNetNS), and the API
	// server reaches it at that address and verifies its serving
	// certificate against the cluster CA (cluster.Options.VerifyKubelets).
	netns bool
	// signingDuration is kube-controller-manager's
	// --cluster-signing-duration (0: its default).
	signingDuration time.Duration
	// kubelet, when set, changes the kubelet's options before it starts;
	// ns is the node's namespace (nil without netns).
	kubelet func(ns *cluster.NetNS, o *cluster.KubeletOptions) error
}

// testNode is a running node: the control plane, containerd with the
// sandbox image and nodecsr-controller's image imported, and a Ready
// kubelet whose pods live in the node's own cgroup.
type testNode struct {
	*node
	c     *cluster.Cluster
	admin kubernetes.Interface
	// repo and tag name nodecsr-controller's image in containerd.
	repo, tag string
	// hostBefore and kubepodsBefore are the host as it was before, for
	// the leftover check.
	hostBefore     map[string][]string
	kubepodsBefore []string
}

// startNode sets up a node: a control plane, containerd, the sandbox and
// nodecsr-controller images, and a kubelet for nodeName that joined (with
// a client certificate issued before nodecsr was installed) and is Ready.
// Every part is removed when the test ends (the node's clean-ups), also
// when it fails.
func startNode(ctx context.Context, t *testing.T, opts nodeOptions) *testNode {
	t.Helper()
	sweepStale(t)
	before := snapshot(hostPaths)
	kubepodsBefore, err := cluster.CgroupsNamed("/", "kubepods")
	if err != nil {
		t.Fatal(err)
	}
	n := newNode(t, before)
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	// Images first: the sandbox image and nodecsr-controller's, both built
	// here, since no registry is reachable.
	pauseTar, pauseRef := filepath.Join(n.dir, "pause-image.tar"), "nodecsr.invalid/pause:e2e"
	goRun(ctx, t, filepath.Join(root, "test"), "./pause", "--output", pauseTar, "--ref", pauseRef)
	imageTar := imageTarball(ctx, t, root, n.dir)

	copts := cluster.Options{Dir: filepath.Join(n.dir, "cluster"), Logf: t.Logf, SigningDuration: opts.signingDuration, VerifyKubelets: opts.netns}
	if opts.apiServerFlags != nil {
		if copts.APIServerFlags, err = opts.apiServerFlags(n.dir); err != nil {
			t.Fatal(err)
		}
	}
	c, err := cluster.Start(ctx, copts)
	if err != nil {
		t.Fatal(err)
	}
	n.cleanup("stop the control plane", c.Stop)
	admin := c.AdminClient()
	if err := c.ApplyKubeadmRBAC(ctx); err != nil {
		t.Fatal(err)
	}
	if opts.netns {
		if err := c.ApplyKubeletAPIRBAC(ctx); err != nil {
			t.Fatal(err)
		}
	}

	ctrd, err := cluster.StartContainerd(ctx, cluster.ContainerdOptions{Dir: filepath.Join(n.dir, "containerd"), SandboxImage: pauseRef, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	n.cleanup("stop containerd, its shims and pods", ctrd.Stop)
	n.ctrd = ctrd
	if _, err := ctrd.ImportImage(ctx, pauseTar); err != nil {
		t.Fatal(err)
	}
	refs, err := ctrd.ImportImage(ctx, imageTar)
	if err != nil {
		t.Fatal(err)
	}
	repo, tag := splitRef(t, refs[0])

	// The node joined before nodecsr was installed: its certificate is
	// fresh, far from its rotation deadline.
	now := time.Now()
	first, err := c.IssueKubeletClientCert(nodeName, now.Add(-time.Minute), now.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if err := cluster.CreateCgroup(n.cgroup); err != nil {
		t.Fatal(err)
	}
	if opts.netns {
		ns, err := cluster.CreateNetNS(ctx, n.dir)
		if err != nil {
			t.Fatal(err)
		}
		n.cleanup("delete the network namespace and its veth pair", ns.Delete)
		n.netns = ns
		t.Logf("network namespace %s: %s %s (root namespace) ⇄ %s %s (the node's)", ns.Path(), ns.HostLink(), ns.HostIP(), ns.NodeLink(), ns.NodeIP())
	}
	kopts := cluster.KubeletOptions{
		NodeName:           nodeName,
		ClientCertPEM:      first.CertPEM,
		ClientKeyPEM:       first.KeyPEM,
		RotateCertificates: true,
		RuntimeEndpoint:    ctrd.Endpoint(),
		NetNS:              n.netns,
		Config: map[string]any{
			// The node's pods live in a cgroup of the suite's own, not in
			// a kubepods shared with any other kubelet on the machine.
			"cgroupRoot": "/" + n.cgroup,
		},
	}
	if opts.kubelet != nil {
		if err := opts.kubelet(n.netns, &kopts); err != nil {
			t.Fatal(err)
		}
	}
	k, err := c.StartKubelet(ctx, nil, kopts)
	if err != nil {
		t.Fatal(err)
	}
	n.cleanup("stop the kubelet", k.Stop)
	n.kubelet = k
	waitNodeReady(ctx, t, admin)
	return &testNode{node: n, c: c, admin: admin, repo: repo, tag: tag, hostBefore: before, kubepodsBefore: kubepodsBefore}
}

// finish removes everything of the node, then checks that nothing is left.
func (tn *testNode) finish(t *testing.T) {
	t.Helper()
	if err := tn.runCleanups(t.Logf); err != nil {
		t.Error(err)
	}
	assertNoLeftovers(t, tn.node, tn.hostBefore, tn.kubepodsBefore)
}

// requireNode skips (or, with NODECSR_E2E_NODE=required, fails) unless this
// machine can run a node, installing containerd and runc with apt when they
// are missing.
func requireNode(t *testing.T) {
	t.Helper()
	mode := os.Getenv(enableEnv)
	if mode == "" {
		t.Skipf("opt-in: run `make e2e-node` or set %s=1 (needs root; installs Debian's containerd and runc when missing)", enableEnv)
	}
	cannot := func(format string, args ...any) {
		t.Helper()
		if mode == "required" {
			t.Fatalf("%s=required, but: "+format, append([]any{enableEnv}, args...)...)
		}
		t.Skipf("skipping: "+format, args...)
	}
	if runtime.GOOS != "linux" {
		cannot("a node needs Linux, this is %s", runtime.GOOS)
	}
	if os.Geteuid() != 0 {
		cannot("a node needs root (containerd, runc and the kubelet mount, create cgroups and run containers); run as root")
	}
	// containerd and runc for the node's runtime; ip and nsenter for a
	// node in a network namespace.
	missing := cluster.MissingContainerdBinaries()
	var packages []string
	if len(missing) > 0 {
		packages = append(packages, cluster.ContainerdPackages...)
	}
	if m := cluster.MissingNetNSBinaries(); len(m) > 0 {
		missing = append(missing, m...)
		packages = append(packages, cluster.NetNSPackages...)
	}
	if len(missing) == 0 {
		return
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		cannot("%s not installed, and no apt-get to install Debian's %s", strings.Join(missing, ", "), strings.Join(packages, " "))
	}
	apt := func(args ...string) error {
		start := time.Now()
		cmd := exec.Command("apt-get", append([]string{"-q", "-o", "DPkg::Lock::Timeout=300"}, args...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get %s: %v: %s", strings.Join(args, " "), err, lastLine(string(out)))
		}
		t.Logf("apt-get %s (%s)", strings.Join(args, " "), time.Since(start).Round(100*time.Millisecond))
		return nil
	}
	t.Logf("%s missing: installing Debian's %s", strings.Join(missing, ", "), strings.Join(packages, " "))
	if err := apt("update"); err != nil {
		cannot("%v", err)
	}
	if err := apt(append([]string{"install", "-y", "--no-install-recommends"}, packages...)...); err != nil {
		cannot("%v", err)
	}
	if missing := append(cluster.MissingContainerdBinaries(), cluster.MissingNetNSBinaries()...); len(missing) > 0 {
		t.Fatalf("apt-get installed %s, yet %s is not on PATH", strings.Join(packages, " "), strings.Join(missing, ", "))
	}
}

// testContext ends before the test binary's deadline with room to clean up:
// a test that runs out of time fails and removes its node instead of being
// killed by `go test -timeout` with pods still running.
func testContext(t *testing.T) (context.Context, context.CancelFunc) {
	deadline, ok := t.Deadline()
	if !ok {
		return context.WithCancel(context.Background())
	}
	margin := time.Until(deadline) / 10
	margin = min(max(margin, 30*time.Second), 2*time.Minute)
	return context.WithDeadline(context.Background(), deadline.Add(-margin))
}

// node is the suite's node: its folder (containerd's and the control
// plane's, with the kubelet's inside), its cgroup, and the clean-ups that
// remove them, run once, last registered first, by t.Cleanup or on SIGINT
// or SIGTERM.
type node struct {
	dir     string
	cgroup  string
	ctrd    *cluster.Containerd
	kubelet *cluster.Kubelet
	// netns is the kubelet's network namespace (nodeOptions.netns).
	netns *cluster.NetNS

	mu       sync.Mutex
	cleanups []cleanupStep
	done     bool
}

type cleanupStep struct {
	name string
	fn   func() error
}

func newNode(t *testing.T, hostBefore map[string][]string) *node {
	t.Helper()
	dir, err := os.MkdirTemp("", nodeDirPrefix)
	if err != nil {
		t.Fatal(err)
	}
	n := &node{dir: dir, cgroup: filepath.Base(dir)}
	// What a later run needs to remove this one's leftovers if it is killed.
	hostJSON, err := json.Marshal(hostBefore)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, hostFile), hostJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(ownerID(os.Getpid())), 0o600); err != nil {
		t.Fatal(err)
	}
	n.cleanup("remove the node's cgroup and folder", func() error {
		return removeNodeDir(dir, hostBefore) // the steps above left nothing, unless one failed
	})
	t.Cleanup(func() {
		if t.Failed() {
			n.dumpLogs(t)
		}
		if err := n.runCleanups(t.Logf); err != nil {
			t.Error(err)
		}
	})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	stop := make(chan struct{})
	go func() {
		select {
		case s := <-sigs:
			fmt.Fprintf(os.Stderr, "received %v: removing the test node\n", s)
			if err := n.runCleanups(func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
			os.Exit(1)
		case <-stop:
		}
	}()
	t.Cleanup(func() { signal.Stop(sigs); close(stop) })
	return n
}

func (n *node) cleanup(name string, fn func() error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cleanups = append(n.cleanups, cleanupStep{name: name, fn: fn})
}

// runCleanups runs every clean-up once, last registered first; each runs
// even when one before it failed.
func (n *node) runCleanups(logf func(string, ...any)) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done {
		return nil
	}
	n.done = true
	var errs []error
	for i := len(n.cleanups) - 1; i >= 0; i-- {
		s := n.cleanups[i]
		start := time.Now()
		if err := s.fn(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.name, err))
		}
		logf("cleanup: %s (%s)", s.name, time.Since(start).Round(time.Millisecond))
	}
	return errors.Join(errs...)
}

func (n *node) dumpLogs(t *testing.T) {
	if n.kubelet != nil {
		t.Logf("kubelet log, last lines:\n%s", tailString(n.kubelet.Log(), 60))
	}
	if n.ctrd != nil {
		data, _ := os.ReadFile(n.ctrd.LogPath())
		t.Logf("containerd log, last lines:\n%s", tailString(string(data), 40))
	}
	logs, _ := filepath.Glob(filepath.Join(n.dir, "cluster", "kubelets", "*", "*", namespace+"_*", "*", "*.log"))
	for _, l := range logs {
		data, _ := os.ReadFile(l)
		t.Logf("%s, last lines:\n%s", l, tailString(string(data), 40))
	}
}

// ownerID identifies a process across PID reuse: its PID and start time.
func ownerID(pid int) string {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 20 {
		return ""
	}
	return strconv.Itoa(pid) + " " + f[19] // starttime, field 22
}

// sweepStale removes what an earlier run left when it was killed before its
// clean-up (SIGKILL, or `go test -timeout` expiring): its pods' processes,
// shims, mounts, cgroup and folder. A folder whose owner still runs belongs
// to a concurrent run and is left alone.
func sweepStale(t *testing.T) {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), nodeDirPrefix+"*"))
	for _, dir := range dirs {
		data, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // not a node folder, or one being created
		}
		owner := strings.TrimSpace(string(data))
		pid, _, _ := strings.Cut(owner, " ")
		if p, err := strconv.Atoi(pid); err == nil && ownerID(p) == owner {
			continue
		}
		t.Logf("removing the leftovers of an earlier run in %s", dir)
		var hostBefore map[string][]string
		if data, err := os.ReadFile(filepath.Join(dir, hostFile)); err == nil {
			_ = json.Unmarshal(data, &hostBefore)
		}
		if err := removeNodeDir(dir, hostBefore); err != nil {
			t.Fatalf("could not remove the leftovers of an earlier run in %s: %v", dir, err)
		}
	}
}

// removeNodeDir removes everything of the node in dir: its containerd's
// shims with the pods' processes and their sockets, any other process that
// names dir (containerd, the kubelet) with its children, the node's network
// namespace and veth pair, the node's cgroup, every mount under dir, the
// kubelet's files outside dir that did not exist before (hostBefore; nil:
// none is removed), and dir.
func removeNodeDir(dir string, hostBefore map[string][]string) error {
	return errors.Join(
		cluster.RemoveShimsUnder(dir),
		cluster.KillProcessesUnder(dir),
		cluster.RemoveNetNSIn(dir),
		cluster.RemoveCgroupsAt(time.Minute, "/"+filepath.Base(dir)),
		cluster.UnmountUnder(dir),
		removeLogSymlinks(dir),
		removeKubeletHostFiles(hostBefore),
		os.RemoveAll(dir),
	)
}

// removeLogSymlinks removes the kubelet's /var/log/containers links to logs
// under dir (the kubelet keeps them there whatever its podLogsDir), and the
// folder when that leaves it empty.
func removeLogSymlinks(dir string) error {
	const links = "/var/log/containers"
	entries, err := os.ReadDir(links)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(links, e.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, dir+"/") {
			errs = append(errs, os.Remove(p))
		}
	}
	return errors.Join(errs...)
}

// kubeletHostFiles are what a kubelet creates outside its --root-dir
// whatever its configuration, deepest first: the device manager's socket
// (pluginapi.KubeletSocket) and its folders, and the folder of the
// /var/log/containers links.
var kubeletHostFiles = []string{
	"/var/lib/kubelet/device-plugins/kubelet.sock", "/var/lib/kubelet/device-plugins", "/var/lib/kubelet",
	"/var/log/containers",
}

// removeKubeletHostFiles removes the kubeletHostFiles under the host folders
// that did not exist before (hostBefore, from snapshot): a socket only when
// no live process listens on it (another kubelet on the machine), a folder
// only when it is empty.
func removeKubeletHostFiles(hostBefore map[string][]string) error {
	var errs []error
	for _, p := range kubeletHostFiles {
		absent := false
		for top, entries := range hostBefore {
			if (p == top || strings.HasPrefix(p, top+"/")) && slices.Equal(entries, []string{"<absent>"}) {
				absent = true
			}
		}
		fi, err := os.Lstat(p)
		if !absent || err != nil {
			continue
		}
		if fi.Mode()&os.ModeSocket != 0 {
			bound, err := socketBound(p)
			if err != nil || bound {
				errs = append(errs, err)
				continue
			}
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// socketBound reports whether a live unix socket is bound to path.
func socketBound(path string) (bool, error) {
	data, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 8 && f[len(f)-1] == path {
			return true, nil
		}
	}
	return false, nil
}

// goRun runs `go run pkg args...` in the repository root.
func goRun(ctx context.Context, t *testing.T, root, pkg string, args ...string) {
	t.Helper()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", append([]string{"run", pkg}, args...)...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go run %s: %v\n%s", pkg, err, out)
	}
	t.Logf("go run %s: %s(%s)", pkg, out, time.Since(start).Round(100*time.Millisecond))
}

// imageTarball is nodecsr-controller's image: $NODECSR_IMAGE_TARBALL, else
// the one `make image` wrote to bin/, else one built now with hack/image
// (what `make image` runs) into dir.
func imageTarball(ctx context.Context, t *testing.T, root, dir string) string {
	t.Helper()
	if p := os.Getenv(imageEnv); p != "" {
		return p
	}
	p := filepath.Join(root, "bin", "nodecsr-controller-image.tar")
	if fi, err := os.Stat(p); err == nil {
		t.Logf("using %s from `make image` of %s (set %s to use another)", p, fi.ModTime().Format(time.RFC3339), imageEnv)
		return p
	}
	p = filepath.Join(dir, "nodecsr-controller-image.tar")
	goRun(ctx, t, root, "./hack/image", "--output", p)
	return p
}

// splitRef splits repository:tag.
func splitRef(t *testing.T, ref string) (string, string) {
	t.Helper()
	i := strings.LastIndexByte(ref, ':')
	if i < 0 || strings.Contains(ref[i:], "/") {
		t.Fatalf("image reference %q has no tag", ref)
	}
	return ref[:i], ref[i+1:]
}

func waitNodeReady(ctx context.Context, t *testing.T, admin kubernetes.Interface) {
	t.Helper()
	var last string
	err := wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		n, err := admin.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			last = "not registered"
			return false, nil
		}
		if err != nil {
			return false, err
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				last = fmt.Sprintf("Ready=%s %s: %s", c.Status, c.Reason, c.Message)
				return c.Status == corev1.ConditionTrue, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("node %s did not become Ready: %v (last: %s)", nodeName, err, last)
	}
	t.Logf("node %s is Ready", nodeName)
}

// installAndRunPod installs the chart with Helm's SDK (values merged over
// chartValues) and runs its Deployment's pod template as a Pod on the node
// (there is no scheduler and no Deployment controller), changed only where
// this machine needs it, and waits until it is Ready.
func installAndRunPod(ctx context.Context, t *testing.T, tn *testNode, values map[string]any) *corev1.Pod {
	t.Helper()
	c, admin := tn.c, tn.admin
	caPEM := prepareNamespace(ctx, t, c, admin)

	// hostNetwork: every port is a port of the machine; take free ones.
	ports := make([]int, 3)
	for i := range ports {
		p, err := cluster.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = p
	}
	metricsPort, probePort, webhookPort := ports[0], ports[1], ports[2]

	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := env.LoadChart(root)
	if err != nil {
		t.Fatal(err)
	}
	vals := chartValues(tn.repo, tn.tag, caPEM, metricsPort, probePort, webhookPort)
	vals["replicaCount"] = 1
	mergeValues(vals, values)
	if tn.netns != nil {
		// The pod shares the root namespace's network (containerd runs
		// there); the kubelet, in its namespace, probes it at 127.0.0.1
		// there, forwarded to the pod's port.
		if _, err := tn.netns.Forward(probePort, cluster.HostPort(probePort)); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := env.HelmInstall(ctx, c.AdminKubeconfig(), ch, release, namespace, vals, nil); err != nil {
		t.Fatal(err)
	}
	d, err := admin.AppsV1().Deployments(namespace).Get(ctx, fullname, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the chart's Deployment: %v", err)
	}
	// No kube-proxy routes the webhook Service here: the API server calls
	// the pod at 127.0.0.1 (host network), with the chart's caBundle.
	if err := env.PointWebhooksAt(ctx, admin, fullname, "https://127.0.0.1:"+strconv.Itoa(webhookPort)); err != nil {
		t.Fatal(err)
	}

	apiURL, err := url.Parse(c.Host())
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: fullname + "-e2e-0", Namespace: namespace,
			Labels: d.Spec.Template.Labels, Annotations: d.Spec.Template.Annotations,
		},
		Spec: *d.Spec.Template.Spec.DeepCopy(),
	}
	adaptPodSpec(&pod.Spec, apiURL)
	assertChartPodSpec(t, &pod.Spec, fullname)
	created, err := admin.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	var last *corev1.Pod
	err = wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		p, err := admin.CoreV1().Pods(namespace).Get(ctx, created.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		last = p
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			return false, fmt.Errorf("pod ended: %s", p.Status.Phase)
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("pod %s did not become Ready: %v\n%s", created.Name, err, podSummary(last))
	}
	return last
}

// prepareNamespace creates the release namespace with what the controllers
// this harness does not run would have put there, and the webhook's
// serving certificate in place of cert-manager; it returns the CA bundle
// that verifies that certificate.
func prepareNamespace(ctx context.Context, t *testing.T, c *cluster.Cluster, admin kubernetes.Interface) (caPEM []byte) {
	t.Helper()
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// What kube-controller-manager's root-ca-cert-publisher would publish:
	// the CA that verifies the API server, for the pod's projected
	// service-account volume. (The token comes from the TokenRequest API
	// through the kubelet; no controller is involved.)
	if _, err := admin.CoreV1().ConfigMaps(namespace).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt"},
		Data:       map[string]string{"ca.crt": string(c.ServingCAPEM())},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The webhook's serving certificate, in place of cert-manager: a
	// kubernetes.io/tls Secret and its CA bundle, as the chart takes them
	// without cert-manager. The API server calls it at 127.0.0.1, or by
	// the Service's name.
	ca, err := testpki.NewCA("nodecsr-e2e-node-webhook-ca")
	if err != nil {
		t.Fatal(err)
	}
	serving, err := ca.IssueServing("127.0.0.1", fullname+"."+namespace+".svc", fullname+"."+namespace+".svc.cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Secrets(namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: webhookSecret},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: serving.CertPEM, corev1.TLSPrivateKeyKey: serving.KeyPEM, "ca.crt": ca.CertPEM},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return ca.CertPEM
}

// mergeValues merges over into dst: maps key by key, other values replaced.
func mergeValues(dst, over map[string]any) {
	for k, v := range over {
		if om, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				mergeValues(dm, om)
				continue
			}
		}
		dst[k] = v
	}
}

// chartValues are the chart's values on this node: the image imported into
// containerd (never pulled), the given ports, and the webhook with the
// serving Secret prepareNamespace created.
func chartValues(repo, tag string, caPEM []byte, metricsPort, probePort, webhookPort int) map[string]any {
	return map[string]any{
		// The image is on the node already; nothing is ever pulled.
		"image":       map[string]any{"repository": repo, "tag": tag, "pullPolicy": "Never"},
		"metrics":     map[string]any{"port": metricsPort},
		"healthProbe": map[string]any{"port": probePort},
		"webhook": map[string]any{
			"enabled":     true,
			"port":        webhookPort,
			"certManager": map[string]any{"enabled": false},
			"tls":         map[string]any{"secretName": webhookSecret, "caBundle": base64.StdEncoding.EncodeToString(caPEM)},
		},
	}
}

// adaptPodSpec changes the chart's pod spec only where this node needs it:
// the pod goes to nodeName (what the scheduler would do), shares the host's
// network (the node has only loopback), reaches the API server at its
// loopback address (api), where the in-cluster configuration would
// otherwise take the kubernetes Service's address, and is probed at
// 127.0.0.1.
func adaptPodSpec(spec *corev1.PodSpec, api *url.URL) {
	spec.NodeName = nodeName
	spec.HostNetwork = true
	for i := range spec.Containers {
		ctr := &spec.Containers[i]
		ctr.Env = append(ctr.Env,
			corev1.EnvVar{Name: "KUBERNETES_SERVICE_HOST", Value: api.Hostname()},
			corev1.EnvVar{Name: "KUBERNETES_SERVICE_PORT", Value: api.Port()},
		)
		// A host-network pod's IP is the node's address, which is not
		// loopback: the kubelet probes the pod at 127.0.0.1 instead.
		for _, p := range []*corev1.Probe{ctr.LivenessProbe, ctr.ReadinessProbe, ctr.StartupProbe} {
			if p != nil && p.HTTPGet != nil {
				p.HTTPGet.Host = "127.0.0.1"
			}
		}
	}
}

// assertChartPodSpec checks that the Pod keeps what the chart's pod spec
// says about security and configuration.
func assertChartPodSpec(t *testing.T, spec *corev1.PodSpec, fullname string) {
	t.Helper()
	if len(spec.Containers) != 1 {
		t.Fatalf("the chart's pod has %d containers, want 1", len(spec.Containers))
	}
	ctr := spec.Containers[0]
	sc := ctr.SecurityContext
	switch {
	case sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Fatal("the chart's container has no read-only root filesystem")
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0:
		t.Fatal("the chart's container does not run as a non-root user")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Fatal("the chart's container allows privilege escalation")
	case ctr.LivenessProbe == nil || ctr.ReadinessProbe == nil:
		t.Fatal("the chart's container has no liveness or readiness probe")
	}
	mounts := map[string]bool{}
	for _, v := range spec.Volumes {
		switch {
		case v.ConfigMap != nil && v.ConfigMap.Name == fullname+"-policy":
			mounts["policy"] = true
		case v.Secret != nil && v.Secret.SecretName == webhookSecret:
			mounts["webhook-tls"] = true
		}
	}
	if !mounts["policy"] || !mounts["webhook-tls"] {
		t.Fatalf("the chart's pod lacks the policy ConfigMap or the webhook Secret volume: %+v", spec.Volumes)
	}
}

// assertConfined checks the running container as the kernel sees it: the
// nodecsr-controller process in the node's pod cgroups runs as the chart's
// non-root user, with no capabilities, no new privileges, a seccomp filter
// and a read-only root filesystem.
func assertConfined(t *testing.T, cgroup string, spec *corev1.PodSpec) {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	pid := 0
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.HasPrefix(string(cmdline), "/nodecsr-controller\x00") {
			continue
		}
		cg, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		if strings.Contains(string(cg), ":/"+cgroup+"/kubepods/") {
			pid, _ = strconv.Atoi(e.Name())
			break
		}
	}
	if pid == 0 {
		t.Fatalf("no /nodecsr-controller process in the cgroups of /%s/kubepods", cgroup)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	sc := spec.Containers[0].SecurityContext
	uid, gid := strconv.FormatInt(*sc.RunAsUser, 10), strconv.FormatInt(*sc.RunAsGroup, 10)
	want := map[string]string{
		"Uid":        strings.Repeat(uid+" ", 3) + uid,
		"Gid":        strings.Repeat(gid+" ", 3) + gid,
		"CapEff":     "0000000000000000",
		"CapPrm":     "0000000000000000",
		"NoNewPrivs": "1",
		"Seccomp":    "2", // a filter: RuntimeDefault
	}
	for k, v := range want {
		if fields[k] != v {
			t.Errorf("nodecsr-controller (pid %d): %s %q, want %q", pid, k, fields[k], v)
		}
	}
	mountinfo, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	rootRO := false
	for _, line := range strings.Split(string(mountinfo), "\n") {
		f := strings.Fields(line)
		if len(f) >= 6 && f[4] == "/" {
			rootRO = slices.Contains(strings.Split(f[5], ","), "ro") // the last "/" mount is the one in use
		}
	}
	if !rootRO {
		t.Errorf("nodecsr-controller (pid %d): the root filesystem is writable", pid)
	}
	t.Logf("nodecsr-controller runs as pid %d (host) in /%s/kubepods: uid/gid %s/%s, CapEff 0, NoNewPrivs, seccomp filter, read-only root filesystem",
		pid, cgroup, uid, gid)
}

func podSummary(p *corev1.Pod) string {
	if p == nil {
		return "(no pod)"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "phase %s", p.Status.Phase)
	for _, c := range p.Status.Conditions {
		fmt.Fprintf(&b, "; %s=%s %s", c.Type, c.Status, c.Message)
	}
	for _, cs := range p.Status.ContainerStatuses {
		fmt.Fprintf(&b, "; container %s ready=%v restarts=%d", cs.Name, cs.Ready, cs.RestartCount)
		if w := cs.State.Waiting; w != nil {
			fmt.Fprintf(&b, " waiting %s: %s", w.Reason, w.Message)
		}
		if x := cs.LastTerminationState.Terminated; x != nil {
			fmt.Fprintf(&b, " last exit %d %s: %s", x.ExitCode, x.Reason, x.Message)
		}
	}
	return b.String()
}

// waitRenewed waits until the kubelet uses a certificate other than old,
// issued by the cluster CA, and returns it.
func waitRenewed(ctx context.Context, t *testing.T, k *cluster.Kubelet, old, ca *x509.Certificate) *x509.Certificate {
	t.Helper()
	var cur *x509.Certificate
	err := wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(context.Context) (bool, error) {
		c, err := k.CurrentClientCert()
		if err != nil {
			return false, nil // between the kubelet's writes
		}
		cur = c
		return c.SerialNumber.Cmp(old.SerialNumber) != 0, nil
	})
	if err != nil {
		t.Fatalf("the kubelet did not renew its client certificate: %v", err)
	}
	if err := cur.CheckSignatureFrom(ca); err != nil {
		t.Fatalf("the renewed certificate is not signed by the cluster CA: %v", err)
	}
	if cur.Subject.CommonName != "system:node:"+nodeName {
		t.Fatalf("the renewed certificate is for %q", cur.Subject.CommonName)
	}
	return cur
}

// renewalCSR is the one CSR the node filed with its own identity.
func renewalCSR(ctx context.Context, t *testing.T, admin kubernetes.Interface) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	list, err := admin.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var mine []certificatesv1.CertificateSigningRequest
	for _, csr := range list.Items {
		if csr.Spec.Username == "system:node:"+nodeName {
			mine = append(mine, csr)
		}
	}
	if len(mine) != 1 {
		t.Fatalf("%d CSRs by system:node:%s, want exactly the renewal", len(mine), nodeName)
	}
	csr := &mine[0]
	if csr.Spec.SignerName != cluster.KubeletClientSigner {
		t.Fatalf("CSR %s has signer %s", csr.Name, csr.Spec.SignerName)
	}
	if len(csr.Spec.Extra["authentication.kubernetes.io/credential-id"]) == 0 {
		t.Errorf("CSR %s carries no credential-id: not filed with the node's certificate?", csr.Name)
	}
	return csr
}

// assertDecidedByPod shows that the pod decided the CSR: the Approved
// condition (RenewalApproved, by nodecsr), the decision Event reported by the
// pod's instance, the pod's own log line, and the label the pod's mutating
// webhook put on the CSR when the API server stored it.
func assertDecidedByPod(ctx context.Context, t *testing.T, admin kubernetes.Interface, csr *certificatesv1.CertificateSigningRequest, pod *corev1.Pod, dir string) {
	t.Helper()
	approved := env.Condition(csr, certificatesv1.CertificateApproved)
	if approved == nil || approved.Reason != approver.ReasonRenewalApproved {
		t.Fatalf("CSR %s: conditions %+v, want Approved %s", csr.Name, csr.Status.Conditions, approver.ReasonRenewalApproved)
	}
	if denied := env.Condition(csr, certificatesv1.CertificateDenied); denied != nil {
		t.Fatalf("CSR %s is also denied: %+v", csr.Name, denied)
	}
	t.Logf("CSR %s: %s %s: %q", csr.Name, approved.Type, approved.Reason, approved.Message)

	if got := csr.Labels[webhook.LabelNodeName]; got != nodeName {
		t.Errorf("CSR %s: label %s=%q, want %q (set by the pod's mutating webhook)", csr.Name, webhook.LabelNodeName, got, nodeName)
	}

	var ev *eventsv1.Event
	err := wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		evs, err := admin.EventsV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for i := range evs.Items {
			if evs.Items[i].Regarding.UID == csr.UID && evs.Items[i].ReportingController == approver.Component {
				ev = &evs.Items[i]
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no decision Event by %s about CSR %s: %v", approver.Component, csr.Name, err)
	}
	if ev.Reason != approver.ReasonRenewalApproved || ev.ReportingInstance != pod.Name {
		t.Fatalf("decision Event %s: reason %q by %s/%s, want %s by %s/%s", ev.Name, ev.Reason, ev.ReportingController, ev.ReportingInstance,
			approver.ReasonRenewalApproved, approver.Component, pod.Name)
	}
	t.Logf("Event %s/%s: %s %s by %s/%s: %s", ev.Namespace, ev.Name, ev.Type, ev.Reason, ev.ReportingController, ev.ReportingInstance, ev.Note)

	// The container's log, as the kubelet keeps it on the node.
	var line string
	err = wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(context.Context) (bool, error) {
		for _, l := range strings.Split(podLog(dir, pod), "\n") {
			if strings.Contains(l, csr.Name) && strings.Contains(l, approver.ReasonRenewalApproved) {
				line = l
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("the pod's log never mentions %s with %s: %v\n%s", csr.Name, approver.ReasonRenewalApproved, err, tailString(podLog(dir, pod), 30))
	}
	t.Logf("pod log: %s", line)
}

// podLog reads the container logs the kubelet wrote for pod (its podLogsDir
// is inside its folder, under the node's folder dir).
func podLog(dir string, pod *corev1.Pod) string {
	matches, _ := filepath.Glob(filepath.Join(dir, "cluster", "kubelets", "*", "*",
		pod.Namespace+"_"+pod.Name+"_"+string(pod.UID), "*", "*.log"))
	slices.Sort(matches)
	var b strings.Builder
	for _, m := range matches {
		data, _ := os.ReadFile(m)
		b.Write(data)
	}
	return b.String()
}

// assertIdentity checks that the kubelet's current certificate authenticates
// as the node.
func assertIdentity(ctx context.Context, t *testing.T, k *cluster.Kubelet) {
	t.Helper()
	cfg, err := k.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	review, err := kubernetes.NewForConfigOrDie(cfg).AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview with the renewed certificate: %v", err)
	}
	if u := review.Status.UserInfo; u.Username != "system:node:"+nodeName || !slices.Contains(u.Groups, "system:nodes") {
		t.Fatalf("the renewed certificate authenticates as %q %v", u.Username, u.Groups)
	}
}

// stopPod deletes the pod and follows it until the kubelet has stopped it
// and removed the object: nodecsr-controller must exit 0 on the kubelet's
// SIGTERM, as the last status the kubelet wrote shows.
func stopPod(ctx context.Context, t *testing.T, admin kubernetes.Interface, pod *corev1.Pod) {
	t.Helper()
	pods := admin.CoreV1().Pods(pod.Namespace)
	cur, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := pods.Watch(ctx, metav1.ListOptions{
		FieldSelector:   fields.OneTermEqualSelector("metadata.name", pod.Name).String(),
		ResourceVersion: cur.ResourceVersion,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if err := pods.Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	last := cur
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("the watch of pod %s ended before its deletion\n%s", pod.Name, podSummary(last))
			}
			p, isPod := ev.Object.(*corev1.Pod)
			if !isPod {
				t.Fatalf("watching pod %s: %v", pod.Name, ev.Object)
			}
			last = p
			if ev.Type != watch.Deleted {
				continue
			}
			for _, cs := range p.Status.ContainerStatuses {
				x := cs.State.Terminated
				if x == nil {
					t.Fatalf("pod %s was removed before container %s terminated: %s", pod.Name, cs.Name, podSummary(p))
				}
				if x.ExitCode != 0 {
					t.Fatalf("container %s exited %d (%s) on SIGTERM: %s", cs.Name, x.ExitCode, x.Reason, podSummary(p))
				}
				t.Logf("pod %s stopped by the kubelet: container %s exited 0 (%s), the object is gone", pod.Name, cs.Name, x.Reason)
			}
			return
		case <-ctx.Done():
			t.Fatalf("pod %s was not removed: %v\n%s", pod.Name, ctx.Err(), podSummary(last))
		}
	}
}

// assertNoLeftovers checks, after every clean-up ran, that no process, mount,
// cgroup or folder of the node remains, and that the host folders a default
// containerd or kubelet would use are as they were.
func assertNoLeftovers(t *testing.T, n *node, before map[string][]string, kubepodsBefore []string) {
	t.Helper()
	left, err := cluster.NodeLeftovers([]string{n.dir}, []string{"/" + n.cgroup})
	if err != nil {
		t.Fatal(err)
	}
	kl, err := cluster.KubeletLeftovers(n.dir)
	if err != nil {
		t.Fatal(err)
	}
	left = append(left, kl...)
	// The node's pods had a cgroup root of their own: no kubepods at the top.
	top, err := cluster.CgroupsNamed("/", "kubepods")
	if err != nil {
		t.Fatal(err)
	}
	for _, cg := range top {
		if !slices.Contains(kubepodsBefore, cg) {
			left = append(left, "cgroup "+cg)
		}
	}
	after := snapshot(hostPaths)
	for _, p := range hostPaths {
		if !slices.Equal(before[p], after[p]) {
			left = append(left, fmt.Sprintf("host folder %s: before %v, after %v", p, before[p], after[p]))
		}
	}
	netns := ""
	if n.netns != nil {
		nl, err := n.netns.Leftovers()
		if err != nil {
			t.Fatal(err)
		}
		left = append(left, nl...)
		netns = fmt.Sprintf("; no process is in the network namespace (inode %d), %s and its peer are gone and no address of %s is left",
			n.netns.Inode(), n.netns.HostLink(), n.netns.Subnet())
	}
	if len(left) > 0 {
		t.Fatalf("the node left behind:\n  %s", strings.Join(left, "\n  "))
	}
	t.Logf("leftover check: no process mentions %s or descends from one, nothing is mounted under it, no cgroup %s or kubepods in any hierarchy, the folder is gone, and %s are as before%s",
		n.dir, n.cgroup, strings.Join(hostPaths, " "), netns)
}

// snapshot lists each path's entries ("<absent>" when it does not exist).
func snapshot(paths []string) map[string][]string {
	out := map[string][]string{}
	for _, p := range paths {
		entries, err := os.ReadDir(p)
		if errors.Is(err, os.ErrNotExist) {
			out[p] = []string{"<absent>"}
			continue
		}
		names := []string{}
		for _, e := range entries {
			names = append(names, e.Name())
		}
		out[p] = names
	}
	return out
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
