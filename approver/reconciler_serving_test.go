package approver

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/nodecsr/nodecsr/internal/csrtest"
)

const servingPolicy = "apiVersion: nodecsr.io/v1alpha1\nkind: Policy\nspec:\n  serving:\n    enabled: true\n"

func node(name string, addrs ...corev1.NodeAddress) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{Addresses: addrs}}
}

func internalIP(ip string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip}
}

func hostname(n string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeHostName, Address: n}
}

// fakeResolver answers from a map; a name it does not know does not exist.
type fakeResolver struct {
	hosts map[string][]netip.Addr
	err   error
}

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if f.err != nil {
		return nil, f.err
	}
	if ips, ok := f.hosts[host]; ok {
		return ips, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// servingHarness is a harness whose cache was set up for serving, with the
// Nodes worker-1 (10.0.0.1, worker-1) and worker-2 (10.0.0.2, worker-2).
func servingHarness(t *testing.T, policyYAML string, resolver Resolver, objs ...client.Object) *harness {
	t.Helper()
	objs = append(objs,
		node("worker-1", internalIP("10.0.0.1"), hostname("worker-1")),
		node("worker-2", internalIP("10.0.0.2"), hostname("worker-2")))
	var h *harness
	h = newHarnessWith(t, policyYAML, interceptor.Funcs{}, func(r *Reconciler) {
		r.Serving = true
		g := r.Facts.(*Gatherer)
		g.Addresses = CachedNodeAddresses{Reader: r.Client}
		g.Nodes = CachedNodes{Reader: r.Client, Serving: true}
		g.Resolver = resolver
	}, objs...)
	return h
}

func condition(t *testing.T, csr *certificatesv1.CertificateSigningRequest) certificatesv1.CertificateSigningRequestCondition {
	t.Helper()
	if len(csr.Status.Conditions) != 1 {
		t.Fatalf("conditions %+v, want one", csr.Status.Conditions)
	}
	return csr.Status.Conditions[0]
}

func TestReconcileServing(t *testing.T) {
	good := csrtest.Build(csrtest.WithName("good"), csrtest.Serving("worker-1", "10.0.0.1"))
	neighbour := csrtest.Build(csrtest.WithName("neighbour"), csrtest.Serving("worker-1", "10.0.0.2"))
	// Separate clusters: two CSRs of one node would collapse to the newest.
	h := servingHarness(t, servingPolicy, nil, good)
	h.reconcile(t, "good")
	if c := condition(t, h.csr(t, "good")); c.Type != certificatesv1.CertificateApproved || c.Reason != ReasonServingApproved {
		t.Errorf("good: %+v", c)
	}
	if evs := h.events(t); len(evs) != 1 || evs[0].Reason != ReasonServingApproved {
		t.Errorf("events %+v", evs)
	}
	h2 := servingHarness(t, servingPolicy, nil, neighbour)
	h2.reconcile(t, "neighbour")
	c := condition(t, h2.csr(t, "neighbour"))
	if c.Type != certificatesv1.CertificateDenied || c.Reason != ReasonAddressOfOtherNode || !strings.Contains(c.Message, `node "worker-2"`) {
		t.Errorf("neighbour: %+v", c)
	}
	if evs := h2.events(t); len(evs) != 1 || evs[0].Reason != ReasonAddressOfOtherNode || !strings.Contains(evs[0].Note, "worker-2") {
		t.Errorf("events %+v", evs)
	}
	if v := testutil.ToFloat64(h.r.Metrics.Decisions.WithLabelValues("Approve", ReasonServingApproved, "Serving", "serving")); v != 1 {
		t.Errorf("approvals counted %v", v)
	}
	if v := testutil.ToFloat64(h2.r.Metrics.Decisions.WithLabelValues("Deny", ReasonAddressOfOtherNode, "Serving", "serving")); v != 1 {
		t.Errorf("denials counted %v", v)
	}
}

// A serving CSR is left alone (no condition, no Event) while the policy
// does not enable serving, even when the cache was set up for it (a reload
// turned serving off), and whatever the policy when it was not.
func TestReconcileServingDisabled(t *testing.T) {
	for name, tc := range map[string]struct {
		policy        string
		cacheForServe bool
	}{
		"policy off, cache for serving":    {"", true},
		"policy on, cache without serving": {servingPolicy, false},
	} {
		t.Run(name, func(t *testing.T) {
			csr := csrtest.Build(csrtest.WithName("serving"), csrtest.Serving("worker-1", "10.0.0.1"))
			h := servingHarness(t, tc.policy, nil, csr)
			h.r.Serving = tc.cacheForServe
			if res := h.reconcile(t, "serving"); res.RequeueAfter != 0 || res.Requeue {
				t.Errorf("result %+v", res)
			}
			if got := h.csr(t, "serving"); len(got.Status.Conditions) != 0 {
				t.Errorf("conditions %+v", got.Status.Conditions)
			}
			if evs := h.events(t); len(evs) != 0 {
				t.Errorf("events %+v", evs)
			}
			if h.auth.calls != 0 {
				t.Errorf("%d SubjectAccessReviews", h.auth.calls)
			}
		})
	}
}

// A node's client and serving CSRs do not supersede each other.
func TestReconcileServingAndClientDoNotCollapse(t *testing.T) {
	older := csrtest.Build(csrtest.WithName("client"), csrtest.WithCreationTimestamp(now))
	newer := csrtest.Build(csrtest.WithName("serving"), csrtest.WithCreationTimestamp(now.Add(10e9)), csrtest.Serving("worker-1"))
	h := servingHarness(t, servingPolicy, nil, older, newer)
	h.reconcile(t, "client")
	h.reconcile(t, "serving")
	if c := condition(t, h.csr(t, "client")); c.Reason != ReasonRenewalApproved {
		t.Errorf("client: %+v", c)
	}
	if c := condition(t, h.csr(t, "serving")); c.Reason != ReasonServingApproved {
		t.Errorf("serving: %+v", c)
	}
}

func TestReconcileServingDNSResolution(t *testing.T) {
	const policy = servingPolicy + "    resolveDNS: {enabled: true}\n"
	t.Run("resolves to the node", func(t *testing.T) {
		h := servingHarness(t, policy, fakeResolver{hosts: map[string][]netip.Addr{"worker-1": {netip.MustParseAddr("10.0.0.1")}}},
			csrtest.Build(csrtest.WithName("s"), csrtest.Serving("worker-1")))
		h.reconcile(t, "s")
		if c := condition(t, h.csr(t, "s")); c.Reason != ReasonServingApproved || !strings.Contains(c.Message, "resolve") {
			t.Errorf("%+v", c)
		}
	})
	t.Run("does not exist", func(t *testing.T) {
		h := servingHarness(t, policy, fakeResolver{}, csrtest.Build(csrtest.WithName("s"), csrtest.Serving("worker-1")))
		h.reconcile(t, "s")
		if c := condition(t, h.csr(t, "s")); c.Reason != ReasonDNSNameDoesNotResolveToNode {
			t.Errorf("%+v", c)
		}
	})
	t.Run("lookup fails", func(t *testing.T) {
		h := servingHarness(t, policy, fakeResolver{err: &net.DNSError{Err: "i/o timeout", Name: "worker-1", IsTimeout: true}},
			csrtest.Build(csrtest.WithName("s"), csrtest.Serving("worker-1")))
		_, err := h.r.Reconcile(t.Context(), reqFor("s"))
		var fe *FactError
		if !errors.As(err, &fe) || fe.Fact != FactDNS {
			t.Fatalf("err %v, want a DNS FactError", err)
		}
		if got := h.csr(t, "s"); len(got.Status.Conditions) != 0 {
			t.Errorf("decided on a failed lookup: %+v", got.Status.Conditions)
		}
		if v := testutil.ToFloat64(h.r.Metrics.FactErrors.WithLabelValues("DNS")); v != 1 {
			t.Errorf("fact errors %v", v)
		}
	})
}

// A serving CSR for a Node that does not exist waits, and is decided once
// the Node appears.
func TestReconcileServingWaitsForNode(t *testing.T) {
	h := servingHarness(t, servingPolicy, nil, csrtest.Build(csrtest.WithName("s"), csrtest.WithNodeName("late"), csrtest.Serving("late", "10.0.0.9")))
	if res := h.reconcile(t, "s"); res.RequeueAfter == 0 {
		t.Errorf("no requeue while waiting: %+v", res)
	}
	if got := h.csr(t, "s"); len(got.Status.Conditions) != 0 {
		t.Fatalf("conditions %+v", got.Status.Conditions)
	}
	if err := h.client.Create(t.Context(), node("late", internalIP("10.0.0.9"), hostname("late"))); err != nil {
		t.Fatal(err)
	}
	reqs := h.r.csrsForNode(t.Context(), node("late"))
	if len(reqs) != 1 || reqs[0].Name != "s" {
		t.Fatalf("requeued %v", reqs)
	}
	h.reconcile(t, "s")
	if c := condition(t, h.csr(t, "s")); c.Reason != ReasonServingApproved {
		t.Errorf("%+v", c)
	}
}

func TestTrimNode(t *testing.T) {
	n := node("big", internalIP("10.0.0.1"))
	n.UID, n.ResourceVersion, n.Labels = "u", "7", map[string]string{"a": "b"}
	n.Status.Images = []corev1.ContainerImage{{Names: []string{strings.Repeat("x", 1000)}}}
	got, err := TrimNode(n)
	if err != nil {
		t.Fatal(err)
	}
	tn := got.(*corev1.Node)
	if tn.Name != "big" || tn.UID != "u" || tn.ResourceVersion != "7" || len(tn.Labels) != 0 || len(tn.Status.Images) != 0 || len(tn.Status.Addresses) != 1 {
		t.Errorf("trimmed %+v", tn)
	}
	if other, _ := TrimNode("not a node"); other != "not a node" {
		t.Error("changed a non-Node")
	}
	foreign := csrtest.Build(csrtest.WithSignerName("example.com/x"))
	trimmed, _ := trimForeignCSR(foreign.DeepCopy())
	if c := trimmed.(*certificatesv1.CertificateSigningRequest); len(c.Spec.Request) != 0 || c.Spec.SignerName != "example.com/x" {
		t.Errorf("foreign CSR kept its request: %d bytes", len(c.Spec.Request))
	}
	ours, _ := trimForeignCSR(csrtest.Build(csrtest.Serving("worker-1")))
	if c := ours.(*certificatesv1.CertificateSigningRequest); len(c.Spec.Request) == 0 {
		t.Error("a serving CSR lost its request")
	}
}

func reqFor(name string) reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Name: name}}
}
