package faults_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/test/env"
)

// TestLeaderPartition cuts the leader off from the API server while it keeps
// running: the leader (a) reaches the API server only through a TCP proxy,
// the standby (b) directly. Renewals from distinct nodes are filed all along;
// the proxy is cut (every connection, old or new, is blackholed), b takes
// over once a's Lease has expired, filing goes on, the proxy heals (a is
// started again if it has exited, as its kubelet would, and must come back as
// the standby), a little more is filed. Every CSR gets exactly one decision
// and one decision Event, and kube-apiserver's audit log shows that no write
// of a's identity landed after a's Lease expired. The failover gap is
// logged, not asserted.
func TestLeaderPartition(t *testing.T) {
	ctx := untilDeadline(t)
	policy := writePolicy(t, basePolicy)
	id := env.UniqueName("nodecsr-partition")
	proxy := startPartitionProxy(t, tc.Host())
	// Each replica has a client certificate of its own (user = --pod-name),
	// in auditedGroup: the audit log tells their writes apart.
	aOpts := replicaOptions{name: id + "-a", kubeconfig: replicaKubeconfig(t, id+"-a", "https://"+proxy.addr()),
		policy: policy, leaderElectionID: id, lease: shortLease}
	a := startReplica(t, aOpts)
	if l := waitForLeader(t, id, a); l != a {
		t.Fatalf("%s does not lead", a.name)
	}
	b := startReplica(t, replicaOptions{name: id + "-b", kubeconfig: replicaKubeconfig(t, id+"-b", tc.Host()),
		policy: policy, leaderElectionID: id, lease: shortLease})
	if l := waitForLeader(t, id, a, b); l != a {
		t.Fatalf("%s leads, want %s (behind the proxy)", l.name, a.name)
	}
	if h := leaseHolder(t, id); h != a.name {
		t.Fatalf("the Lease is held by %q, want %q", h, a.name)
	}
	aExited := make(chan time.Time, 1)
	go func() { <-a.done; aExited <- time.Now() }()

	load := startPartitionLoad(ctx, env.UniqueName("partition"))
	t.Cleanup(load.finish)
	waitUntil(t, ctx, fmt.Sprintf("%s deciding CSRs before the cut", a.name), func() (bool, error) {
		decided, _ := a.scrape("nodecsr_decisions_total", nil)
		return load.filed(phaseBefore) >= 40 && decided > 0, load.failed()
	})

	before := readLease(t, id)
	cutAt := proxy.cut()
	load.enter(phaseCut)
	t.Logf("cut %s off from the API server after %d CSRs (Lease renewed at %s, %ds)", a.name, load.filed(phaseBefore),
		before.renew.Format("15:04:05.000"), before.seconds)

	// Until b holds the Lease: a's last renewal (a renewal in flight at the
	// cut may still land) and who believes it leads.
	lastRenew := before
	var aBelievedUntil, takeoverSeen time.Time
	var takeover leaseState
	waitUntil(t, ctx, fmt.Sprintf("%s taking the Lease over", b.name), func() (bool, error) {
		if v, err := a.scrape("leader_election_master_status", map[string]string{"name": id}); err == nil && v == 1 {
			aBelievedUntil = time.Now()
		}
		l := readLease(t, id)
		switch l.holder {
		case a.name:
			if l.renew.After(lastRenew.renew) {
				lastRenew = l
			}
		case b.name:
			takeover, takeoverSeen = l, time.Now()
			return true, nil
		}
		return false, load.failed()
	})
	load.enter(phaseTakenOver)
	expiry := lastRenew.renew.Add(time.Duration(lastRenew.seconds) * time.Second)
	t.Logf("%s holds the Lease (acquired %s, seen at cut+%s); %s's Lease expired at cut+%s; %s said it led until at least cut+%s",
		b.name, takeover.acquire.Format("15:04:05.000"), since(cutAt, takeoverSeen), a.name, since(cutAt, expiry), a.name, since(cutAt, aBelievedUntil))

	waitUntil(t, ctx, fmt.Sprintf("%s deciding CSRs during the partition", b.name), func() (bool, error) {
		decided, _ := b.scrape("nodecsr_decisions_total", nil)
		return load.filed(phaseTakenOver) >= 40 && decided > 0, load.failed()
	})
	healAt := proxy.heal()
	load.enter(phaseHealed)
	t.Logf("healed at cut+%s", since(cutAt, healAt))
	// nodecsr-controller exits when it loses the leadership; its kubelet
	// would start it again, and it must come back as the standby.
	replicas := []*replica{a, b}
	if a.exited() {
		restarted := startReplica(t, aOpts)
		t.Logf("%s restarted (it had exited: %v), through the healed proxy", a.name, a.waitErr)
		replicas = append(replicas, restarted)
	}
	waitUntil(t, ctx, "filing after the heal", func() (bool, error) {
		return load.filed(phaseHealed) >= 40, load.failed()
	})
	reqs := load.stop(t)
	if l := waitForLeader(t, id, replicas...); l != b {
		t.Errorf("after the heal %s (pid %d) leads, want %s", l.name, l.cmd.Process.Pid, b.name)
	}
	counts := load.counts()
	t.Logf("filed %d CSRs: %d before the cut, %d cut off before the takeover, %d cut off after it, %d after the heal",
		len(reqs), counts[phaseBefore], counts[phaseCut], counts[phaseTakenOver], counts[phaseHealed])

	events := expectOneDecisionEach(t, reqs)
	aState := "still running"
	select {
	case at := <-aExited:
		aState = fmt.Sprintf("exited at cut+%s (%v)", since(cutAt, at), a.waitErr)
		// controller-runtime stops a's controllers only when client-go
		// reports the leadership lost, after its attempt to release the
		// Lease, so they outlive the renew deadline.
		if at.After(takeover.acquire) {
			aState += fmt.Sprintf(", its controllers still running %s after %s acquired the Lease", since(takeover.acquire, at), b.name)
		}
	default:
	}

	// Decisions by replica, from the Events.
	per := map[string]int{}
	var aLast, bFirst time.Time
	var aAfterCut []string
	for _, r := range reqs {
		for _, e := range events[r.name] {
			if e.ReportingController != approver.Component {
				continue
			}
			per[e.ReportingInstance]++
			at := e.EventTime.Time
			switch e.ReportingInstance {
			case a.name:
				aLast = latest(aLast, at)
				if at.After(cutAt) {
					aAfterCut = append(aAfterCut, r.name)
				}
			case b.name:
				if bFirst.IsZero() || at.Before(bFirst) {
					bFirst = at
				}
			}
		}
	}
	if per[b.name] == 0 {
		t.Errorf("%s decided nothing after %s was cut off", b.name, a.name)
	}
	if len(aAfterCut) > 0 {
		t.Logf("%d decision Events by %s are dated after the cut: %s", len(aAfterCut), a.name, strings.Join(first(aAfterCut, 10), ", "))
	}

	audit := auditWrites(t, reqs, a.name, b.name, cutAt, expiry)
	t.Logf("PROXY: %s", proxy.summary(t, cutAt, healAt))
	t.Logf("PARTITION: lease %s/%s/%s; %d CSRs; decision Events by %s (cut off): %d, by %s: %d; %s %s; "+
		"%s's last decision Event at cut%+dms; its Lease expired at cut+%dms; %s seen holding the Lease at cut+%dms; "+
		"first approval by %s landed at cut+%dms (the failover gap; its first decision Event is dated cut+%dms); healed at cut+%dms",
		shortLease[0], shortLease[1], shortLease[2], len(reqs), a.name, per[a.name], b.name, per[b.name], a.name, aState,
		a.name, aLast.Sub(cutAt).Milliseconds(), expiry.Sub(cutAt).Milliseconds(), b.name, takeoverSeen.Sub(cutAt).Milliseconds(),
		b.name, audit.firstApproval[b.name].Sub(cutAt).Milliseconds(), bFirst.Sub(cutAt).Milliseconds(), healAt.Sub(cutAt).Milliseconds())
}

// untilDeadline is t.Context(), ended early enough before the test's
// deadline (-timeout) to stop the replicas and report; every wait of the
// partition test lasts until it.
func untilDeadline(t *testing.T) context.Context {
	d, ok := t.Deadline()
	if !ok {
		return t.Context()
	}
	ctx, cancel := context.WithDeadline(t.Context(), d.Add(-min(time.Until(d)/4, time.Minute)))
	t.Cleanup(cancel)
	return ctx
}

// waitUntil polls cond until it holds, ctx ends or cond fails.
func waitUntil(t *testing.T, ctx context.Context, what string, cond func() (bool, error)) {
	t.Helper()
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(context.Context) (bool, error) { return cond() })
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func since(from, to time.Time) time.Duration { return to.Sub(from).Round(time.Millisecond) }

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func first(s []string, n int) []string { return s[:min(len(s), n)] }

// replicaKubeconfig writes a kubeconfig for host with a client certificate
// of user in system:masters and auditedGroup.
func replicaKubeconfig(t *testing.T, user, host string) string {
	t.Helper()
	cfg, err := tc.UserConfig(user, "system:masters", auditedGroup)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Host = host
	path := filepath.Join(t.TempDir(), user+".kubeconfig")
	if err := cluster.WriteKubeconfig(path, cfg); err != nil {
		t.Fatal(err)
	}
	return path
}

type leaseState struct {
	holder         string
	renew, acquire time.Time
	seconds        int32
}

func readLease(t *testing.T, id string) leaseState {
	t.Helper()
	l, err := admin.CoordinationV1().Leases(podNamespace).Get(t.Context(), id, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var s leaseState
	if l.Spec.HolderIdentity != nil {
		s.holder = *l.Spec.HolderIdentity
	}
	if l.Spec.RenewTime != nil {
		s.renew = l.Spec.RenewTime.Time
	}
	if l.Spec.AcquireTime != nil {
		s.acquire = l.Spec.AcquireTime.Time
	}
	if l.Spec.LeaseDurationSeconds != nil {
		s.seconds = *l.Spec.LeaseDurationSeconds
	}
	return s
}

// The phases of the partition test, in order.
const (
	phaseBefore    = iota // before the cut
	phaseCut              // cut, the standby has not taken over yet
	phaseTakenOver        // cut, the standby leads
	phaseHealed           // after the heal
	phases
)

// maxCutOff bounds the CSRs filed before the heal: if the takeover is slow,
// filing pauses rather than piling up.
const maxCutOff = 2000

// partitionLoad files renewals from distinct nodes, 40 a second in batches
// (fileAll), until stopped, and counts them by the phase they were filed in.
type partitionLoad struct {
	run   string
	mu    sync.Mutex
	phase int
	by    [phases]int
	reqs  []request
	err   error
	quit  chan struct{}
	done  chan struct{}
	once  sync.Once
}

func startPartitionLoad(ctx context.Context, run string) *partitionLoad {
	l := &partitionLoad{run: run, quit: make(chan struct{}), done: make(chan struct{})}
	go l.loop(ctx)
	return l
}

func (l *partitionLoad) loop(ctx context.Context) {
	defer close(l.done)
	for {
		select {
		case <-l.quit:
			return
		case <-ctx.Done():
			return
		default:
		}
		l.mu.Lock()
		n, phase := len(l.reqs), l.phase
		l.mu.Unlock()
		if phase < phaseHealed && n >= maxCutOff {
			select {
			case <-l.quit:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		batch := make([]request, 10)
		for i := range batch {
			name := fmt.Sprintf("%s-%04d", l.run, n+i)
			batch[i] = renewal(name, name)
		}
		err := fileAll(ctx, batch, 4, 40, func(int) {
			l.mu.Lock()
			l.by[l.phase]++
			l.mu.Unlock()
		})
		l.mu.Lock()
		l.reqs = append(l.reqs, batch...)
		l.err = err
		l.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (l *partitionLoad) enter(phase int) {
	l.mu.Lock()
	l.phase = phase
	l.mu.Unlock()
}

func (l *partitionLoad) filed(phase int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.by[phase]
}

func (l *partitionLoad) counts() [phases]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.by
}

func (l *partitionLoad) failed() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return fmt.Errorf("filing failed: %w", l.err)
	}
	return nil
}

func (l *partitionLoad) finish() {
	l.once.Do(func() { close(l.quit) })
	<-l.done
}

// stop ends the filing (after the batch in progress) and returns every
// request filed.
func (l *partitionLoad) stop(t *testing.T) []request {
	t.Helper()
	l.finish()
	if err := l.failed(); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.reqs)
}

// partitionProxy is a TCP proxy on 127.0.0.1 in front of the API server: it
// copies bytes untouched (TLS passes through) until cut. Cut, it blackholes,
// as a partitioned network drops packets: every connection, open or newly
// accepted, stays open and whatever either side sends is dropped; nothing
// reaches the API server, nothing comes back, nobody is told. heal closes
// the blackholed connections (their streams have holes) and forwards new
// ones again. It records, per connection and direction, the bytes forwarded
// and dropped and when the last byte was forwarded.
type partitionProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu     sync.Mutex
	isCut  bool
	closed bool
	links  []*proxyLink
}

const (
	toServer = iota
	toClient
)

type proxyLink struct {
	opened time.Time

	// wmu is held while a byte is forwarded, so that once cut returns
	// nothing more is.
	wmu        sync.Mutex
	blackholed bool
	flows      [2]proxyFlow

	cmu            sync.Mutex
	client, server net.Conn // server: nil if accepted while cut
	closed         bool
}

type proxyFlow struct {
	forwarded, dropped int64
	lastForwarded      time.Time
}

func startPartitionProxy(t *testing.T, apiserver string) *partitionProxy {
	t.Helper()
	u, err := url.Parse(apiserver)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &partitionProxy{ln: ln, target: u.Host}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *partitionProxy) addr() string { return p.ln.Addr().String() }

func (p *partitionProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		l := &proxyLink{opened: time.Now(), client: c}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = c.Close()
			return
		}
		l.blackholed = p.isCut
		p.links = append(p.links, l)
		p.mu.Unlock()
		p.wg.Go(func() { p.connect(l) })
	}
}

func (p *partitionProxy) connect(l *proxyLink) {
	if !l.isBlackholed() {
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			l.close()
			return
		}
		l.cmu.Lock()
		l.server = s
		closed := l.closed
		l.cmu.Unlock()
		if closed {
			_ = s.Close()
			return
		}
		p.wg.Go(func() { p.pump(l, s, l.client, toClient) })
	}
	p.pump(l, l.client, l.serverConn(), toServer)
}

// pump copies src to dst (nil: nowhere) until src ends, dropping what
// arrives while the link is blackholed.
func (p *partitionProxy) pump(l *proxyLink, src, dst net.Conn, dir int) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			l.wmu.Lock()
			f := &l.flows[dir]
			if l.blackholed || dst == nil {
				f.dropped += int64(n)
			} else {
				w, werr := dst.Write(buf[:n])
				f.forwarded += int64(w)
				if w > 0 {
					f.lastForwarded = time.Now()
				}
				if werr != nil {
					// cut interrupts a blocked write with a deadline.
					f.dropped += int64(n - w)
					if !p.cutNow() {
						l.wmu.Unlock()
						l.close()
						return
					}
				}
			}
			l.wmu.Unlock()
		}
		if err != nil {
			// A side closed. Through a partition the other side does not
			// learn it; heal closes the link.
			if !l.isBlackholed() {
				l.close()
			}
			return
		}
	}
}

func (p *partitionProxy) cutNow() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.isCut
}

// cut blackholes every connection and the ones accepted from now on. When
// it returns nothing more is forwarded.
func (p *partitionProxy) cut() time.Time {
	p.mu.Lock()
	p.isCut = true
	links := slices.Clone(p.links)
	p.mu.Unlock()
	for _, l := range links {
		now := time.Now()
		l.cmu.Lock()
		_ = l.client.SetWriteDeadline(now)
		if l.server != nil {
			_ = l.server.SetWriteDeadline(now)
		}
		l.cmu.Unlock()
		l.wmu.Lock()
		l.blackholed = true
		l.wmu.Unlock()
	}
	return time.Now()
}

// heal closes the blackholed connections and forwards new ones.
func (p *partitionProxy) heal() time.Time {
	p.mu.Lock()
	p.isCut = false
	links := slices.Clone(p.links)
	p.mu.Unlock()
	for _, l := range links {
		if l.isBlackholed() {
			l.close()
		}
	}
	return time.Now()
}

func (p *partitionProxy) close() {
	p.mu.Lock()
	p.closed = true
	links := slices.Clone(p.links)
	p.mu.Unlock()
	_ = p.ln.Close()
	for _, l := range links {
		l.close()
	}
	p.wg.Wait()
}

// summary describes the traffic by when the connections were opened, and
// checks that nothing was forwarded between the cut and the heal.
func (p *partitionProxy) summary(t *testing.T, cutAt, healAt time.Time) string {
	t.Helper()
	p.mu.Lock()
	links := slices.Clone(p.links)
	p.mu.Unlock()
	type group struct {
		links               int
		up, down            int64 // forwarded
		droppedUp, droppedD int64
	}
	var g [3]group // opened before the cut, while cut, after the heal
	var lastUp time.Time
	for _, l := range links {
		i := 0
		switch {
		case l.opened.After(healAt):
			i = 2
		case l.opened.After(cutAt):
			i = 1
		}
		l.wmu.Lock()
		f := l.flows
		l.wmu.Unlock()
		g[i].links++
		g[i].up += f[toServer].forwarded
		g[i].down += f[toClient].forwarded
		g[i].droppedUp += f[toServer].dropped
		g[i].droppedD += f[toClient].dropped
		if i < 2 {
			for _, fl := range f {
				if fl.lastForwarded.After(cutAt) {
					t.Errorf("the proxy forwarded bytes at cut+%s, while cut", since(cutAt, fl.lastForwarded))
				}
			}
			lastUp = latest(lastUp, f[toServer].lastForwarded)
		}
	}
	return fmt.Sprintf("connections opened before the cut: %d (%d bytes to the API server, %d back; dropped while cut: %d to, %d from; last byte to the API server at cut%+dms); "+
		"opened while cut: %d (%d bytes dropped); opened after the heal: %d (%d bytes to the API server, %d back)",
		g[0].links, g[0].up, g[0].down, g[0].droppedUp, g[0].droppedD, lastUp.Sub(cutAt).Milliseconds(),
		g[1].links, g[1].droppedUp+g[1].droppedD, g[2].links, g[2].up, g[2].down)
}

func (l *proxyLink) isBlackholed() bool {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	return l.blackholed
}

func (l *proxyLink) serverConn() net.Conn {
	l.cmu.Lock()
	defer l.cmu.Unlock()
	return l.server
}

func (l *proxyLink) close() {
	l.cmu.Lock()
	defer l.cmu.Unlock()
	l.closed = true
	_ = l.client.Close()
	if l.server != nil {
		_ = l.server.Close()
	}
}

// auditEvent is what the partition test reads of an audit.k8s.io/v1 Event.
type auditEvent struct {
	Stage string `json:"stage"`
	Verb  string `json:"verb"`
	User  struct {
		Username string `json:"username"`
	} `json:"user"`
	SourceIPs []string `json:"sourceIPs"`
	UserAgent string   `json:"userAgent"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
		Subresource string `json:"subresource"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int32 `json:"code"`
	} `json:"responseStatus"`
	RequestReceivedTimestamp metav1.MicroTime `json:"requestReceivedTimestamp"`
	StageTimestamp           metav1.MicroTime `json:"stageTimestamp"`
}

// kind is the resource written, with its subresource.
func (e *auditEvent) kind() string {
	switch {
	case e.ObjectRef == nil:
		return "-"
	case e.ObjectRef.Subresource != "":
		return e.ObjectRef.Resource + "/" + e.ObjectRef.Subresource
	}
	return e.ObjectRef.Resource
}

func (e *auditEvent) object() string {
	if e.ObjectRef == nil {
		return "-"
	}
	return strings.Trim(strings.Join([]string{e.ObjectRef.Namespace, e.ObjectRef.Resource, e.ObjectRef.Name, e.ObjectRef.Subresource}, "/"), "/")
}

func (e *auditEvent) ok() bool {
	return e.ResponseStatus != nil && e.ResponseStatus.Code >= 200 && e.ResponseStatus.Code < 300
}

type auditResult struct {
	firstApproval map[string]time.Time // by user
}

// auditWrites reads the writes of the two replicas (users cutOff and
// standby) from the audit log. No write of cutOff may have landed after
// expiry (access reviews, which persist nothing, aside); every CSR of reqs
// has exactly one successful approval write and one successful decision
// Event creation, by either.
func auditWrites(t *testing.T, reqs []request, cutOff, standby string, cutAt, expiry time.Time) auditResult {
	t.Helper()
	f, err := os.Open(auditLog)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	res := auditResult{firstApproval: map[string]time.Time{}}
	type tally struct {
		ok, failed        map[string]int // by kind
		last              time.Time
		agents, sources   map[string]bool
		failedAfterExpiry int
	}
	tallies := map[string]*tally{}
	for _, u := range []string{cutOff, standby} {
		tallies[u] = &tally{ok: map[string]int{}, failed: map[string]int{}, agents: map[string]bool{}, sources: map[string]bool{}}
	}
	approvals, eventCreates := map[string][]string{}, map[string][]string{} // CSR → users
	var late []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e auditEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			continue // a line being written
		}
		tl := tallies[e.User.Username]
		if tl == nil || e.Stage != "ResponseComplete" {
			continue
		}
		at := e.StageTimestamp.Time
		kind := e.kind()
		tl.agents[e.UserAgent] = true
		for _, ip := range e.SourceIPs {
			tl.sources[ip] = true
		}
		if !e.ok() {
			code := "no status"
			if e.ResponseStatus != nil {
				code = fmt.Sprint(e.ResponseStatus.Code)
			}
			tl.failed[kind+" "+code]++
			if e.User.Username == cutOff && at.After(expiry) {
				tl.failedAfterExpiry++
			}
			continue
		}
		tl.ok[kind]++
		tl.last = latest(tl.last, at)
		if e.User.Username == cutOff && at.After(expiry) && !strings.HasSuffix(kind, "reviews") {
			late = append(late, fmt.Sprintf("%s %s %s (%d) received at expiry%+dms, done at expiry%+dms, user agent %q",
				e.Verb, kind, e.object(), e.ResponseStatus.Code,
				e.RequestReceivedTimestamp.Sub(expiry).Milliseconds(), at.Sub(expiry).Milliseconds(), e.UserAgent))
		}
		switch kind {
		case "certificatesigningrequests/approval":
			approvals[e.ObjectRef.Name] = append(approvals[e.ObjectRef.Name], e.User.Username)
			if fa := res.firstApproval[e.User.Username]; fa.IsZero() || at.Before(fa) {
				res.firstApproval[e.User.Username] = at
			}
		case "events":
			if e.Verb == "create" {
				csr, _, _ := strings.Cut(e.ObjectRef.Name, ".")
				eventCreates[csr] = append(eventCreates[csr], e.User.Username)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(late) > 0 {
		t.Errorf("%d writes of %s (cut off) landed after its Lease expired (cut+%s): %s",
			len(late), cutOff, since(cutAt, expiry), strings.Join(first(late, 10), "; "))
	}
	var multiApproval, noApproval, multiEvent, noEvent []string
	repaired := 0
	for _, r := range reqs {
		switch us := approvals[r.name]; len(us) {
		case 0:
			noApproval = append(noApproval, r.name)
		case 1:
			if es := eventCreates[r.name]; len(es) == 1 && es[0] != us[0] {
				repaired++
			}
		default:
			multiApproval = append(multiApproval, fmt.Sprintf("%s by %v", r.name, us))
		}
		switch es := eventCreates[r.name]; len(es) {
		case 0:
			noEvent = append(noEvent, r.name)
		case 1:
		default:
			multiEvent = append(multiEvent, fmt.Sprintf("%s by %v", r.name, es))
		}
	}
	report := func(what string, items []string) {
		if len(items) > 0 {
			t.Errorf("audit log: %d of %d CSRs %s: %s", len(items), len(reqs), what, strings.Join(first(items, 10), "; "))
		}
	}
	report("have no successful approval write", noApproval)
	report("have more than one successful approval write", multiApproval)
	report("have no successful decision Event creation", noEvent)
	report("have more than one successful decision Event creation", multiEvent)
	for _, u := range []string{cutOff, standby} {
		tl := tallies[u]
		t.Logf("AUDIT %s: successful writes %v; failed %v; last successful write at cut%+dms (the cut-off replica's Lease expired at cut%+dms); "+
			"%d failed after that; user agents %q, source IPs %v",
			u, tl.ok, tl.failed, tl.last.Sub(cutAt).Milliseconds(), expiry.Sub(cutAt).Milliseconds(),
			tl.failedAfterExpiry, keys(tl.agents), keys(tl.sources))
	}
	t.Logf("AUDIT: %d CSRs, each approved by exactly one write and recorded by exactly one Event creation: %t; %d decided by one replica and their Event written by the other",
		len(reqs), len(noApproval)+len(multiApproval)+len(noEvent)+len(multiEvent) == 0, repaired)
	return res
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
