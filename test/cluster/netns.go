package cluster

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// A node that needs an address of its own (the kubelet refuses a loopback
// node IP; its serving certificate names the IP the API server reaches it
// at) gets one inside a network namespace the test creates, never on the
// host's own network (DESIGN.md, "Network"):
//
//	root namespace                            the node's namespace
//	  127.0.0.1:<api>  kube-apiserver   ◄───  127.0.0.1:<fwd>  Forwarder (the kubelet's API server)
//	  <host>  10.250.K.1/30  ═════ veth ═════  <node>  10.250.K.2/30  kubelet :<port>
//
// The namespace is bind-mounted on a file in the test's own folder (not
// under /run/netns, which `ip netns` would create and leave on the host), so
// that the folder's clean-up (UnmountUnder) also releases a namespace that a
// killed run left behind. The kubelet enters only the network namespace
// (nsenter --net): `ip netns exec` would also remount /sys and hide the
// cgroup mounts the kubelet needs.

// NetNSPackages are the Debian packages that provide NetNSBinaries.
var NetNSPackages = []string{"iproute2", "util-linux"}

// NetNSBinaries are the programs CreateNetNS and a kubelet in a namespace
// need on PATH.
var NetNSBinaries = []string{"ip", "nsenter"}

// MissingNetNSBinaries lists the NetNSBinaries not found on PATH.
func MissingNetNSBinaries() []string {
	var missing []string
	for _, b := range NetNSBinaries {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	return missing
}

// NetNSPool is where CreateNetNS takes a /30 for each namespace: host end
// .1, node end .2. A policy that must allow a node's address allows it.
var NetNSPool = netip.MustParsePrefix("10.250.0.0/16")

// Files of a namespace in its folder.
const (
	netnsFile   = "netns"      // the namespace, bind-mounted
	netnsRecord = "netns.json" // what RemoveNetNSIn needs to remove it
)

// netnsState is what RemoveNetNSIn reads to remove a namespace, also one a
// killed run left behind.
type netnsState struct {
	HostLink string `json:"hostLink"`
	NodeLink string `json:"nodeLink"`
	Subnet   string `json:"subnet"`
}

// NetNS is a network namespace created by CreateNetNS, joined to the root
// namespace by a veth pair: HostIP on the root namespace's end, NodeIP on
// the end inside, and the namespace's loopback up.
type NetNS struct {
	dir   string
	path  string
	inode uint64
	state netnsState
	host  netip.Addr
	node  netip.Addr

	mu      sync.Mutex
	fwds    []*Forwarder
	deleted bool
}

// CreateNetNS creates a network namespace bound to dir/netns, a veth pair
// between it and the root namespace with a free /30 of 10.250.0.0/16 (one
// no interface or route of the host overlaps), and records what
// RemoveNetNSIn needs in dir/netns.json. dir must exist; the caller calls
// Delete, and RemoveNetNSIn(dir) removes what a killed run left. Needs root
// and NetNSBinaries.
func CreateNetNS(ctx context.Context, dir string) (_ *NetNS, err error) {
	if missing := MissingNetNSBinaries(); len(missing) > 0 {
		return nil, fmt.Errorf("netns: not on PATH: %s (Debian packages %s)", strings.Join(missing, ", "), strings.Join(NetNSPackages, " "))
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("netns: folder %s does not exist", dir)
	}
	n := &NetNS{dir: dir, path: filepath.Join(dir, netnsFile)}
	h := fnv.New32a()
	_, _ = io.WriteString(h, dir)
	// Interface names have at most 15 bytes.
	base := fmt.Sprintf("ncsr%08x", h.Sum32())
	n.state.HostLink, n.state.NodeLink = base+"h", base+"n"
	if _, err := net.InterfaceByName(n.state.HostLink); err == nil {
		return nil, fmt.Errorf("netns: interface %s already exists (a namespace of %s not removed?)", n.state.HostLink, dir)
	}
	subnet, err := freeSubnet()
	if err != nil {
		return nil, err
	}
	n.state.Subnet = subnet.String()
	n.host = subnet.Addr().Next()
	n.node = n.host.Next()
	// The record first: whatever follows, RemoveNetNSIn finds it.
	data, err := json.Marshal(n.state)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, netnsRecord), data, 0o600); err != nil {
		return nil, fmt.Errorf("netns: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, RemoveNetNSIn(dir))
		}
	}()
	if err := newNamespace(n.path); err != nil {
		return nil, err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(n.path, &st); err != nil {
		return nil, fmt.Errorf("netns: %w", err)
	}
	n.inode = st.Ino

	prefix := "/" + strconv.Itoa(subnet.Bits())
	steps := [][]string{
		{"ip", "link", "add", n.state.HostLink, "type", "veth", "peer", "name", n.state.NodeLink, "netns", n.path},
		{"ip", "addr", "add", n.host.String() + prefix, "dev", n.state.HostLink},
		{"ip", "link", "set", n.state.HostLink, "up"},
		{"nsenter", "--net=" + n.path, "--", "ip", "addr", "add", n.node.String() + prefix, "dev", n.state.NodeLink},
		{"nsenter", "--net=" + n.path, "--", "ip", "link", "set", n.state.NodeLink, "up"},
		{"nsenter", "--net=" + n.path, "--", "ip", "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := run(ctx, s...); err != nil {
			return nil, fmt.Errorf("netns: %w", err)
		}
	}
	return n, nil
}

// run runs a command and returns its output in the error when it fails.
func run(ctx context.Context, argv ...string) error {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// newNamespace creates a network namespace and bind-mounts it on path (a
// new file), from a thread of its own that returns to the test's namespace
// afterwards.
func newNamespace(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o600)
	if err != nil {
		return fmt.Errorf("netns: %w", err)
	}
	_ = f.Close()
	return onThread(func(self string) error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("netns: unshare: %w", err)
		}
		if err := unix.Mount(self, path, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("netns: bind-mount the namespace on %s: %w", path, err)
		}
		return nil
	})
}

// onThread runs fn on a thread locked for it and then puts the thread back
// in the network namespace it started in; self is the thread's own
// /proc/.../ns/net. A thread that cannot go back is never unlocked: Go
// discards it when the goroutine ends, so no other goroutine runs in a
// namespace it does not expect.
func onThread(fn func(self string) error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		orig, err := os.Open(self)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: %w", err)
			return
		}
		defer func() { _ = orig.Close() }()
		ferr := fn(self)
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("netns: return to the test's namespace: %w", err))
			return // still locked: the thread ends with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Do runs fn on a thread inside the namespace: a socket fn opens belongs to
// the namespace for its whole life, whatever thread uses it later.
func (n *NetNS) Do(fn func() error) error {
	return onThread(func(string) error {
		f, err := os.Open(n.path)
		if err != nil {
			return fmt.Errorf("netns: %w", err)
		}
		defer func() { _ = f.Close() }()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("netns: enter %s: %w", n.path, err)
		}
		return fn()
	})
}

// freeSubnet picks, from a random start, a /30 of NetNSPool that no
// address or route of the root namespace overlaps (the default route
// aside).
func freeSubnet() (netip.Prefix, error) {
	var used []netip.Prefix
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("netns: list addresses: %w", err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if p, err := netip.ParsePrefix(ipn.String()); err == nil {
				used = append(used, p.Masked())
			}
		}
	}
	routes, err := ipv4Routes()
	if err != nil {
		return netip.Prefix{}, err
	}
	used = append(used, routes...)
	base := NetNSPool.Addr().As4()
	blocks := 1 << (30 - NetNSPool.Bits())
	start := rand.IntN(blocks)
	for i := range blocks {
		b := (start + i) % blocks
		a := base
		v := binary.BigEndian.Uint32(a[:]) + uint32(b)<<2
		binary.BigEndian.PutUint32(a[:], v)
		p := netip.PrefixFrom(netip.AddrFrom4(a), 30)
		free := true
		for _, u := range used {
			if u.Overlaps(p) {
				free = false
				break
			}
		}
		if free {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("netns: no free /30 in %s", NetNSPool)
}

// ipv4Routes lists the root namespace's IPv4 routes but the default one
// (/proc/net/route).
func ipv4Routes() ([]netip.Prefix, error) {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return nil, fmt.Errorf("netns: %w", err)
	}
	defer func() { _ = f.Close() }()
	var out []netip.Prefix
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Iface Destination Gateway Flags RefCnt Use Metric Mask ...,
		// addresses in host byte order (little-endian here).
		fl := strings.Fields(sc.Text())
		if len(fl) < 8 || fl[0] == "Iface" {
			continue
		}
		dst, err1 := strconv.ParseUint(fl[1], 16, 32)
		mask, err2 := strconv.ParseUint(fl[7], 16, 32)
		if err1 != nil || err2 != nil || mask == 0 {
			continue
		}
		var d [4]byte
		binary.LittleEndian.PutUint32(d[:], uint32(dst))
		var m [4]byte
		binary.LittleEndian.PutUint32(m[:], uint32(mask))
		bits, _ := net.IPMask(m[:]).Size()
		out = append(out, netip.PrefixFrom(netip.AddrFrom4(d), bits).Masked())
	}
	return out, sc.Err()
}

// Path is the namespace's file, for nsenter --net=<path>.
func (n *NetNS) Path() string { return n.path }

// NodeIP is the address of the namespace's end of the veth pair.
func (n *NetNS) NodeIP() netip.Addr { return n.node }

// HostIP is the address of the root namespace's end of the veth pair.
func (n *NetNS) HostIP() netip.Addr { return n.host }

// Subnet is the namespace's /30: HostIP and NodeIP.
func (n *NetNS) Subnet() netip.Prefix { return netip.MustParsePrefix(n.state.Subnet) }

// HostLink is the name of the veth pair's end in the root namespace.
func (n *NetNS) HostLink() string { return n.state.HostLink }

// NodeLink is the name of the veth pair's end inside the namespace.
func (n *NetNS) NodeLink() string { return n.state.NodeLink }

// Inode identifies the namespace (the inode of /proc/<pid>/ns/net of every
// process in it).
func (n *NetNS) Inode() uint64 { return n.inode }

// Command is a command that runs inside the namespace (network only:
// nsenter --net), for example a kubelet.
func (n *NetNS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.path, "--", name}, args...)...)
}

// Forwarder listens on the loopback of a namespace and forwards every
// connection to a loopback address of the root namespace: a process inside
// (the kubelet) reaches the API server, or a pod of the host's network, at
// 127.0.0.1 as it would on a single-network node.
type Forwarder struct {
	l      net.Listener
	target string

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Forward listens on 127.0.0.1:port inside the namespace (0: a free port)
// and forwards each connection to target, a loopback host:port of the root
// namespace. Delete closes it; so does Forwarder.Close.
func (n *NetNS) Forward(port int, target string) (*Forwarder, error) {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return nil, fmt.Errorf("netns: forward target %q: %w", target, err)
	}
	if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("netns: forward target %q is not a loopback address (tests talk only to loopback and to their own namespaces)", target)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.deleted {
		return nil, errors.New("netns: the namespace is deleted")
	}
	f := &Forwarder{target: target, conns: map[net.Conn]struct{}{}}
	err = n.Do(func() error {
		f.l, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns: listen on 127.0.0.1:%d inside %s: %w", port, n.path, err)
	}
	n.fwds = append(n.fwds, f)
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

// Port is the port the forwarder listens on inside the namespace.
func (f *Forwarder) Port() int { return f.l.Addr().(*net.TCPAddr).Port }

// Target is the root namespace's address it forwards to.
func (f *Forwarder) Target() string { return f.target }

func (f *Forwarder) serve() {
	defer f.wg.Done()
	for {
		in, err := f.l.Accept()
		if err != nil {
			return
		}
		if !f.track(in) {
			_ = in.Close()
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer f.untrack(in)
			out, err := net.Dial("tcp", f.target)
			if err != nil {
				return
			}
			if !f.track(out) {
				_ = out.Close()
				return
			}
			defer f.untrack(out)
			done := make(chan struct{}, 2)
			pipe := func(dst, src net.Conn) {
				_, _ = io.Copy(dst, src)
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
				done <- struct{}{}
			}
			go pipe(out, in)
			go pipe(in, out)
			<-done
			<-done
		}()
	}
}

func (f *Forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *Forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	_ = c.Close()
}

// Close stops listening, closes every forwarded connection and waits for
// them. It is safe to call more than once.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	err := f.l.Close()
	for c := range f.conns {
		_ = c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// Delete closes the namespace's forwarders and removes the namespace:
// RemoveNetNSIn its folder. Stop what runs inside first (a process in the
// namespace keeps it alive, though without its veth pair). It is safe to
// call more than once.
func (n *NetNS) Delete() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.deleted {
		return nil
	}
	n.deleted = true
	var errs []error
	for _, f := range n.fwds {
		errs = append(errs, f.Close())
	}
	errs = append(errs, RemoveNetNSIn(n.dir))
	return errors.Join(errs...)
}

// RemoveNetNSIn removes the namespace CreateNetNS created in dir, as its
// record there says: the veth pair (deleting the host's end deletes both),
// the bind mount that holds the namespace, and both files. Without a record
// it does nothing. It is how a run removes the namespace a killed run left.
func RemoveNetNSIn(dir string) error {
	data, err := os.ReadFile(filepath.Join(dir, netnsRecord))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("netns: %w", err)
	}
	var st netnsState
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("netns: %s: %w", filepath.Join(dir, netnsRecord), err)
	}
	var errs []error
	if st.HostLink != "" {
		if _, err := net.InterfaceByName(st.HostLink); err == nil {
			if err := run(context.Background(), "ip", "link", "del", st.HostLink); err != nil {
				errs = append(errs, fmt.Errorf("netns: %w", err))
			}
		}
	}
	path := filepath.Join(dir, netnsFile)
	if mps, err := mountPoints(path); err != nil {
		errs = append(errs, err)
	} else {
		for range mps {
			if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("netns: unmount %s: %w", path, err))
				break
			}
		}
	}
	for _, f := range []string{path, filepath.Join(dir, netnsRecord)} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("netns: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Leftovers lists what is left of the namespace, one line each: a process
// in it, its veth pair's host end, an address of its subnet on the host,
// its bind mount or files. Empty after Delete means the namespace is gone
// (with no process, mount or file holding it, the kernel frees it and the
// veth end inside it).
func (n *NetNS) Leftovers() ([]string, error) {
	var out []string
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st); err == nil && st.Ino == n.inode {
			cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			out = append(out, fmt.Sprintf("process %s in the namespace: %s", e.Name(), strings.ReplaceAll(strings.TrimRight(string(cmdline), "\x00"), "\x00", " ")))
		}
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	subnet := netip.MustParsePrefix(n.state.Subnet)
	for _, i := range ifs {
		if i.Name == n.state.HostLink || i.Name == n.state.NodeLink {
			out = append(out, "network interface "+i.Name)
		}
		addrs, _ := i.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok && subnet.Contains(ip.Unmap()) {
					out = append(out, fmt.Sprintf("address %s on %s", ipn, i.Name))
				}
			}
		}
	}
	mps, err := mountPoints(n.path)
	if err != nil {
		return nil, err
	}
	for _, mp := range mps {
		out = append(out, "mount "+mp)
	}
	for _, f := range []string{n.path, filepath.Join(n.dir, netnsRecord)} {
		if exists(f) {
			out = append(out, "file "+f)
		}
	}
	return out, nil
}
