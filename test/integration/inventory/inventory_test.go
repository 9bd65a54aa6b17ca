package inventory_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	nodecsrv1alpha1 "github.com/nodecsr/nodecsr/api/v1alpha1"
	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/inventory"
	"github.com/nodecsr/nodecsr/test/env"
)

const expirySeries = "nodecsr_node_certificate_expiry_timestamp_seconds"

// TestInventorySurvivesRestartAfterCSRsAreDeleted: a node bootstraps and
// renews; the controller stops, the issued CSRs are deleted (as
// kube-controller-manager's cleaner does after an hour), the controller
// starts again: the entry and the expiry metric still show the node's
// current certificate, which only the inventory still knows.
func TestInventorySurvivesRestartAfterCSRsAreDeleted(t *testing.T) {
	node := env.UniqueName("restart")
	boot, tok := env.BootstrapClient(t, tc)
	b := issued(t, create(t, boot, csrtest.Build(csrtest.WithNodeName(node))).Name)
	nc := entry(t, node, "the bootstrap certificate", hasClient(t, b))
	bcert := env.ParseCert(t, b.Status.Certificate)
	sum := sha256.Sum256(bcert.RawSubjectPublicKeyInfo)
	life := bcert.NotAfter.Sub(bcert.NotBefore)
	cl := nc.Status.Client
	switch {
	case cl.Path != nodecsrv1alpha1.PathBootstrap || cl.Requester != tok.Username() || cl.CSRName != b.Name || cl.SignerName != certificatesv1.KubeAPIServerClientKubeletSignerName:
		t.Errorf("bootstrap entry: path %s, requester %s, CSR %s, signer %s", cl.Path, cl.Requester, cl.CSRName, cl.SignerName)
	case !cl.NotBefore.Time.Equal(bcert.NotBefore) || !cl.NotAfter.Time.Equal(bcert.NotAfter):
		t.Errorf("validity %s–%s, the certificate's %s–%s", cl.NotBefore, cl.NotAfter, bcert.NotBefore, bcert.NotAfter)
	case !cl.RenewAfter.Time.Equal(bcert.NotBefore.Add(life*7/10).Truncate(time.Second)) || !cl.RenewBefore.Time.Equal(bcert.NotBefore.Add(life*9/10).Truncate(time.Second)):
		t.Errorf("rotation window %s–%s, want 70%%–90%% of %s–%s", cl.RenewAfter, cl.RenewBefore, bcert.NotBefore, bcert.NotAfter)
	case cl.PublicKeySHA256 != hex.EncodeToString(sum[:]):
		t.Errorf("publicKeySHA256 %s, want %x", cl.PublicKeySHA256, sum)
	case nc.Status.LastRenewal == nil || !nc.Status.LastRenewal.Equal(&b.CreationTimestamp):
		t.Errorf("lastRenewal %v, want the CSR's creation %s", nc.Status.LastRenewal, b.CreationTimestamp)
	case !residualOK(nc):
		t.Errorf("residual %q at %s of a certificate expiring at %s", nc.Status.ClientResidual, nc.Status.ObservedTime, cl.NotAfter)
	case len(nc.OwnerReferences) != 0:
		t.Errorf("owner references %v before the Node exists", nc.OwnerReferences)
	}

	// The kubelet registers its Node: the entry gets its owner reference.
	env.CreateNode(t, admin, node)
	n, err := admin.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	entry(t, node, "owned by its Node", func(nc *nodecsrv1alpha1.NodeCertificate) bool {
		return slices.ContainsFunc(nc.OwnerReferences, func(r metav1.OwnerReference) bool {
			return r.Kind == "Node" && r.APIVersion == "v1" && r.Name == node && r.UID == n.UID
		})
	})

	// It renews in a later second (validity has one-second resolution, and
	// the newer certificate is the later NotBefore).
	time.Sleep(1100 * time.Millisecond)
	r := issued(t, create(t, env.NodeClient(t, tc, node), csrtest.Build(csrtest.WithNodeName(node))).Name)
	nc = entry(t, node, "the renewed certificate", hasClient(t, r))
	if cl := nc.Status.Client; cl.Path != nodecsrv1alpha1.PathRenewal || cl.Requester != "system:node:"+node || !nc.Status.LastRenewal.Equal(&r.CreationTimestamp) {
		t.Errorf("renewal entry: path %s, requester %s, lastRenewal %s (CSR created %s)", cl.Path, cl.Requester, nc.Status.LastRenewal, r.CreationTimestamp)
	}
	notAfter := float64(env.ParseCert(t, r.Status.Certificate).NotAfter.Unix())
	waitMetric(t, expirySeries, map[string]string{"node": node, "signer": "client"}, notAfter)

	ctx, cancel := testutil.Context(t)
	defer cancel()
	if err := ctl.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{b.Name, r.Name} {
		if err := admin.CertificatesV1().CertificateSigningRequests().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	left, err := admin.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, csr := range left.Items {
		if strings.Contains(string(env.ParseRequest(t, csr.Spec.Request).Subject.CommonName), node) {
			t.Fatalf("CSR %s for %s is still there", csr.Name, node)
		}
	}
	if err := ctl.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, expirySeries, map[string]string{"node": node, "signer": "client"}, notAfter)
	entry(t, node, "still the renewed certificate after the restart", hasClient(t, r))
}

// TestPrinterColumns: the Table the API server serves for `kubectl get
// nodecertificates`, and --sort-by=.status.client.notAfter.
func TestPrinterColumns(t *testing.T) {
	lifetimes := map[string]int32{"short": 3600, "medium": 7200, "long": 0} // 0: the signer's year
	nodes := map[string]string{}
	var csrs []*certificatesv1.CertificateSigningRequest
	for kind, seconds := range lifetimes {
		node := env.UniqueName("cols-" + kind)
		nodes[kind] = node
		env.CreateNode(t, admin, node)
		opts := []csrtest.Option{csrtest.WithNodeName(node)}
		if seconds > 0 {
			opts = append(opts, csrtest.WithExpiration(seconds))
		}
		csrs = append(csrs, create(t, env.NodeClient(t, tc, node), csrtest.Build(opts...)))
	}
	entries := map[string]*nodecsrv1alpha1.NodeCertificate{}
	for _, csr := range csrs {
		csr = issued(t, csr.Name)
		node := strings.TrimPrefix(env.ParseCert(t, csr.Status.Certificate).Subject.CommonName, "system:node:")
		entries[node] = entry(t, node, "the certificate", hasClient(t, csr))
	}

	ctx, cancel := testutil.Context(t)
	defer cancel()
	raw, err := admin.Discovery().RESTClient().Get().AbsPath("/apis/nodecsr.io/v1alpha1/nodecertificates").
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var table metav1.Table
	if err := json.Unmarshal(raw, &table); err != nil {
		t.Fatal(err)
	}
	var cols []string
	for _, c := range table.ColumnDefinitions {
		cols = append(cols, fmt.Sprintf("%s/%s/%d", c.Name, c.Type, c.Priority))
	}
	want := []string{"Name/string/0", "Client Expires/string/0", "Residual/string/0", "Renew After/string/0", "Last Renewal/date/0", "Age/date/0",
		"Path/string/1", "Renew Before/string/1", "Serving Expires/string/1"}
	if !slices.Equal(cols, want) {
		t.Fatalf("columns %v, want %v", cols, want)
	}
	wantResidual := map[string]string{"short": "<1h", "medium": "1h"}
	var rows [][]any
	for _, row := range table.Rows {
		name, _ := row.Cells[0].(string)
		for kind, node := range nodes {
			if name != node {
				continue
			}
			rows = append(rows, row.Cells)
			cl := entries[node].Status.Client
			if got, want := row.Cells[1], cl.NotAfter.UTC().Format(time.RFC3339); got != want {
				t.Errorf("%s: CLIENT EXPIRES %v, want %s", node, got, want)
			}
			if got, want := row.Cells[2], wantResidual[kind]; got != entries[node].Status.ClientResidual || want != "" && got != want || !residualOK(entries[node]) {
				t.Errorf("%s: RESIDUAL %v (status %q), want %q", node, got, entries[node].Status.ClientResidual, want)
			}
			if got, want := row.Cells[3], cl.RenewAfter.UTC().Format(time.RFC3339); got != want {
				t.Errorf("%s: RENEW AFTER %v, want %s", node, got, want)
			}
			// date columns are ages ("5s"); a future time would be "<invalid>".
			for i, c := range map[int]string{4: "LAST RENEWAL", 5: "AGE"} {
				if s, _ := row.Cells[i].(string); s == "" || strings.HasPrefix(s, "<") {
					t.Errorf("%s: %s %q is not an age", node, c, s)
				}
			}
			if got := row.Cells[6]; got != nodecsrv1alpha1.PathRenewal {
				t.Errorf("%s: PATH %v, want Renewal", node, got)
			}
		}
	}
	if len(rows) != len(nodes) {
		t.Fatalf("%d of the test's %d nodes in the table", len(rows), len(nodes))
	}
	// kubectl --sort-by=.status.client.notAfter compares the strings: they
	// sort as the times do.
	sort.Slice(rows, func(i, j int) bool { return rows[i][1].(string) < rows[j][1].(string) })
	var order []string
	for _, r := range rows {
		order = append(order, r[0].(string))
	}
	if want := []string{nodes["short"], nodes["medium"], nodes["long"]}; !slices.Equal(order, want) {
		t.Errorf("sorted by CLIENT EXPIRES: %v, want %v", order, want)
	}
}

// TestDeletingTheNodeDeletesItsEntry: the garbage collector follows the
// owner reference; the expiry series goes with the Node.
func TestDeletingTheNodeDeletesItsEntry(t *testing.T) {
	node := env.UniqueName("deleted")
	env.CreateNode(t, admin, node)
	csr := issued(t, create(t, env.NodeClient(t, tc, node), csrtest.Build(csrtest.WithNodeName(node))).Name)
	entry(t, node, "owned by its Node", func(nc *nodecsrv1alpha1.NodeCertificate) bool {
		return hasClient(t, csr)(nc) && len(nc.OwnerReferences) == 1 && nc.OwnerReferences[0].Kind == "Node"
	})
	waitMetric(t, expirySeries, map[string]string{"node": node, "signer": "client"}, float64(env.ParseCert(t, csr.Status.Certificate).NotAfter.Unix()))
	if err := admin.CoreV1().Nodes().Delete(t.Context(), node, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	gone(t, node, "its Node was deleted")
	waitMetric(t, expirySeries, map[string]string{"node": node, "signer": "client"}, 0)
}

// TestNeverRegisteredNameIsCollected: a name that got a certificate but
// never registered a Node loses its entry after the grace period.
func TestNeverRegisteredNameIsCollected(t *testing.T) {
	node := env.UniqueName("ghost")
	boot, _ := env.BootstrapClient(t, tc)
	csr := issued(t, create(t, boot, csrtest.Build(csrtest.WithNodeName(node))).Name)
	entry(t, node, "the bootstrap certificate", hasClient(t, csr))
	deletes := metric(t, "nodecsr_inventory_writes_total", map[string]string{"operation": "delete"})
	gone(t, node, fmt.Sprintf("no Node registered within the %s grace period", grace))
	if got := metric(t, "nodecsr_inventory_writes_total", map[string]string{"operation": "delete"}); got != deletes+1 {
		t.Errorf("nodecsr_inventory_writes_total{operation=delete} went from %v to %v, want one delete", deletes, got)
	}
	waitMetric(t, expirySeries, map[string]string{"node": node, "signer": "client"}, 0)
}

// TestRotationOverdue: a node whose client certificate is past its rotation
// window while its Lease is renewed raises RotationOverdue (a Warning Event
// on the entry, once per certificate, and the metric); one whose Lease is
// stale does not; a renewal clears it. The certificates past their window
// are issued by the cluster CA and written into approved CSRs while
// kube-controller-manager's signer is stopped, as if it had signed them.
func TestRotationOverdue(t *testing.T) {
	live, quiet := env.UniqueName("overdue"), env.UniqueName("quiet")
	now := time.Now()
	for node, renewed := range map[string]time.Time{live: now, quiet: now.Add(-time.Hour)} {
		env.CreateNode(t, admin, node)
		createLease(t, node, renewed)
	}
	if err := tc.StopControllerManager(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := testutil.CleanupContext(t)
		defer cancel()
		if !tc.Running()["kube-controller-manager"] {
			if err := tc.StartControllerManager(ctx); err != nil {
				t.Error(err)
			}
		}
	})
	// quiet first: by the time live is overdue, quiet was long looked at.
	quietCSR := issueOwn(t, quiet, now.Add(-10*time.Hour), now.Add(time.Hour))
	entry(t, quiet, "the certificate past its window", hasClient(t, quietCSR))
	liveCSR := issueOwn(t, live, now.Add(-10*time.Hour), now.Add(time.Hour))
	nc := entry(t, live, "the certificate past its window", hasClient(t, liveCSR))
	if !time.Now().After(nc.Status.Client.RenewBefore.Time) {
		t.Fatalf("renewBefore %s is not past", nc.Status.Client.RenewBefore)
	}
	ctx, cancel := testutil.Context(t)
	defer cancel()
	if err := tc.StartControllerManager(ctx); err != nil {
		t.Fatal(err)
	}

	overdueEvent := func(e *eventsv1.Event) bool {
		return e.Reason == inventory.ReasonRotationOverdue && e.Regarding.Kind == nodecsrv1alpha1.NodeCertificateKind
	}
	ev, err := env.WaitEvent(ctx, admin, metav1.NamespaceDefault, live, overdueEvent)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Type != corev1.EventTypeWarning || ev.Regarding.APIVersion != "nodecsr.io/v1alpha1" || ev.Regarding.UID != nc.UID ||
		!strings.Contains(ev.Note, nc.Status.Client.SerialNumber) || ev.ReportingController != "nodecsr" {
		t.Errorf("RotationOverdue Event: %+v", ev)
	}
	overdue := "nodecsr_node_certificate_rotation_overdue"
	waitMetric(t, overdue, map[string]string{"node": live}, 1)
	if got := metric(t, overdue, map[string]string{"node": quiet}); got != 0 {
		t.Errorf("%s{node=%q} = %v: its Lease is an hour old", overdue, quiet, got)
	}
	if n := countEvents(t, quiet, inventory.ReasonRotationOverdue); n != 0 {
		t.Errorf("%d RotationOverdue Events for %s, whose Lease is an hour old", n, quiet)
	}

	// A restarted controller looks at every entry again: the metric comes
	// back, the Event is not repeated (once per certificate).
	if err := ctl.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ctl.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, overdue, map[string]string{"node": live}, 1)
	if n := countEvents(t, live, inventory.ReasonRotationOverdue); n != 1 {
		t.Errorf("%d RotationOverdue Events for %s, want one per certificate", n, live)
	}

	// The kubelet renews: no longer overdue.
	r := issued(t, create(t, env.NodeClient(t, tc, live), csrtest.Build(csrtest.WithNodeName(live))).Name)
	entry(t, live, "the renewed certificate", hasClient(t, r))
	waitMetric(t, overdue, map[string]string{"node": live}, 0)
}

// issueOwn files a renewal CSR for node, waits for nodecsr's approval and
// writes a certificate valid from notBefore to notAfter, signed by the
// cluster CA, as the signer would.
func issueOwn(t *testing.T, node string, notBefore, notAfter time.Time) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	csr := approved(t, create(t, env.NodeClient(t, tc, node), csrtest.Build(csrtest.WithNodeName(node))).Name)
	kp, err := tc.IssueKubeletClientCert(node, notBefore, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	csrs := admin.CertificatesV1().CertificateSigningRequests()
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := csrs.Get(t.Context(), csr.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Status.Certificate = kp.CertPEM
		csr, err = csrs.UpdateStatus(t.Context(), cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("failed to write the certificate of CSR %s: %v", csr.Name, err)
	}
	return csr
}

// createLease creates the node's heartbeat Lease, last renewed at renewed.
func createLease(t *testing.T, node string, renewed time.Time) {
	t.Helper()
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: node, Namespace: corev1.NamespaceNodeLease},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity: ptr.To(node), LeaseDurationSeconds: ptr.To[int32](40),
			RenewTime: &metav1.MicroTime{Time: renewed},
		},
	}
	if _, err := admin.CoordinationV1().Leases(corev1.NamespaceNodeLease).Create(t.Context(), lease, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := testutil.CleanupContext(t)
		defer cancel()
		_ = admin.CoordinationV1().Leases(corev1.NamespaceNodeLease).Delete(ctx, node, metav1.DeleteOptions{})
	})
}

func countEvents(t *testing.T, regarding, reason string) int {
	t.Helper()
	sel := fields.OneTermEqualSelector("regarding.name", regarding).String()
	list, err := admin.EventsV1().Events(metav1.NamespaceDefault).List(t.Context(), metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range list.Items {
		if e.Reason == reason {
			n++
		}
	}
	return n
}

// TestRenewalStormCoalesces: nodes renewing back to back cost at most one
// write per node per interval (plus the create), and the entry ends on each
// node's newest certificate.
func TestRenewalStormCoalesces(t *testing.T) {
	const nodes, renewals = 4, 8
	var names []string
	for i := range nodes {
		names = append(names, env.UniqueName(fmt.Sprintf("storm%d", i)))
		env.CreateNode(t, admin, names[i])
	}
	writes := func() float64 { return metric(t, "nodecsr_inventory_writes_total", nil) }
	before := writes()
	ctx, cancel := testutil.Context(t)
	defer cancel()
	start := time.Now()
	newest := make([]*certificatesv1.CertificateSigningRequest, nodes)
	errs := make([]error, nodes)
	var wg sync.WaitGroup
	for i, node := range names {
		cs := env.NodeClient(t, tc, node)
		wg.Go(func() {
			for range renewals {
				csr := csrtest.Build(csrtest.WithNodeName(node))
				csr.Spec.Username, csr.Spec.Groups, csr.Spec.UID, csr.Name = "", nil, "", env.UniqueName("storm")
				if _, err := cs.CertificatesV1().CertificateSigningRequests().Create(ctx, csr, metav1.CreateOptions{}); err != nil {
					errs[i] = err
					return
				}
				got, err := waitIssued(ctx, csr.Name)
				if err != nil {
					errs[i] = err
					return
				}
				if newest[i] == nil || certNewer(t, got, newest[i]) {
					newest[i] = got
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i, node := range names {
		want := env.ParseCert(t, newest[i].Status.Certificate)
		entry(t, node, "the newest certificate of the storm", func(nc *nodecsrv1alpha1.NodeCertificate) bool {
			cl := nc.Status.Client
			return cl != nil && cl.NotBefore.Time.Equal(want.NotBefore) && cl.NotAfter.Time.Equal(want.NotAfter)
		})
	}
	elapsed := time.Since(start)
	got := writes() - before
	// Per node: the create, then at most one status write per interval.
	bound := float64(nodes * (1 + int(elapsed/interval) + 1))
	t.Logf("%d nodes × %d renewals in %s: %v inventory writes (bound %v, interval %s)", nodes, renewals, elapsed.Round(time.Millisecond), got, bound, interval)
	if got > bound {
		t.Errorf("%v inventory writes for %d nodes in %s, more than one per node per %s interval (%v)", got, nodes, elapsed, interval, bound)
	}
}

func certNewer(t *testing.T, a, b *certificatesv1.CertificateSigningRequest) bool {
	ca, cb := env.ParseCert(t, a.Status.Certificate), env.ParseCert(t, b.Status.Certificate)
	if !ca.NotBefore.Equal(cb.NotBefore) {
		return ca.NotBefore.After(cb.NotBefore)
	}
	return ca.NotAfter.After(cb.NotAfter)
}

// waitIssued waits until the CSR is signed (from a goroutine: no t).
func waitIssued(ctx context.Context, name string) (*certificatesv1.CertificateSigningRequest, error) {
	for {
		got, err := admin.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		if len(got.Status.Certificate) > 0 {
			return got, nil
		}
		if c := env.Decision(got); c != nil && c.Type == certificatesv1.CertificateDenied {
			return nil, fmt.Errorf("CSR %s was denied: %s: %s", name, c.Reason, c.Message)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("CSR %s was not issued: %w", name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// residualOK: the entry's residual is the client certificate's time left
// when the status was written (observedTime has one-second resolution).
func residualOK(nc *nodecsrv1alpha1.NodeCertificate) bool {
	if nc.Status.Client == nil || nc.Status.ObservedTime == nil {
		return false
	}
	at, end := nc.Status.ObservedTime.Time, nc.Status.Client.NotAfter.Time
	early, _ := inventory.Residual(end, at)
	late, _ := inventory.Residual(end, at.Add(time.Second))
	return nc.Status.ClientResidual == early || nc.Status.ClientResidual == late
}
