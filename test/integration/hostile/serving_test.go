package hostile_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/internal/testutil"
)

// The hostile kubelet serving CSRs (signer kubernetes.io/kubelet-serving;
// the policy enables serving with ipCIDRs [10.0.0.0/8]). Each class files
// for its own Node, created by the suite before nodecsr-controller starts
// with the addresses InternalIP 10.77.0.<i>, ExternalIP 198.51.100.<i>
// (outside the CIDRs) and Hostname srv-<i>; the neighbour Node srv-neighbour
// reports InternalIP 10.66.0.1 and Hostname srv-neighbour. Requesters: node
// = the class's node's own credential (system:node:srv-<i> in system:nodes;
// NodeRestriction lets it file only for itself); other-node and token as in
// hostile_test.go; node-outside-group = system:node:srv-<i> impersonated
// without system:nodes.
//
//	| #  | class                                        | by                 | webhook-on                      | webhook-off                    |
//	|----|----------------------------------------------|--------------------|---------------------------------|--------------------------------|
//	| S1 | control: hostname and InternalIP             | node               | approved ServingApproved        | approved ServingApproved       |
//	| S2 | SAN of another node's IP (names it)          | node               | rejected AddressOfOtherNode     | denied AddressOfOtherNode      |
//	| S3 | DNS name of another node (names it)          | node               | rejected AddressOfOtherNode     | denied AddressOfOtherNode      |
//	| S4 | the node's own IP outside serving.ipCIDRs    | node               | rejected IPNotAllowed           | denied IPNotAllowed            |
//	| S5 | an IP in the CIDRs that no Node reports      | node               | rejected IPNotNodeAddress       | denied IPNotNodeAddress        |
//	| S6 | a DNS name that is not the node's            | node               | rejected DNSNameNotNodeAddress  | denied DNSNameNotNodeAddress   |
//	| S7 | wildcard DNS name                            | node               | rejected WildcardDNSName        | denied WildcardDNSName         |
//	| S8 | URI SAN                                      | node               | rejected SANTypeNotAllowed      | denied SANTypeNotAllowed       |
//	| S9 | client auth usage on the serving signer      | node               | rejected InvalidUsages          | denied InvalidUsages           |
//	| S10| CN of another node (requester mismatch)      | other-node         | rejected RequesterMismatch      | denied RequesterMismatch       |
//	| S11| serving CSR from a bootstrap token           | token              | rejected ServingByBootstrapper  | denied ServingByBootstrapper   |
//	| S12| the node's name outside system:nodes         | node-outside-group | rejected NodeNotInNodesGroup    | denied NodeNotInNodesGroup     |
//	| S13| no SAN at all                                | node               | rejected NoSANs                 | denied NoSANs                  |
//
// TestServingDisabledLeavesServingCSRsAlone adds: with serving.enabled
// turned off by a reload, a valid and a hostile serving CSR get no
// condition, no Event, no label, while client CSRs are still decided.
const (
	servingCIDR      = "10.0.0.0/8"
	neighbourNode    = "srv-neighbour"
	neighbourIP      = "10.66.0.1"
	servingNodeCount = 14
)

// servingNode is the i-th serving Node (1-based) and its addresses.
func servingNode(i int) (name, internalIP, externalIP string) {
	return fmt.Sprintf("srv-%d", i), fmt.Sprintf("10.77.0.%d", i), fmt.Sprintf("198.51.100.%d", i)
}

func nodeWithAddresses(name string, addrs ...corev1.NodeAddress) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{Addresses: addrs}}
}

// createServingNodes creates the Nodes of the serving classes with their
// addresses (status, written through the status subresource as a kubelet
// does).
func createServingNodes(ctx context.Context) error {
	nodes := []*corev1.Node{nodeWithAddresses(neighbourNode,
		corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: neighbourIP},
		corev1.NodeAddress{Type: corev1.NodeHostName, Address: neighbourNode})}
	for i := 1; i <= servingNodeCount; i++ {
		name, in, ex := servingNode(i)
		nodes = append(nodes, nodeWithAddresses(name,
			corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: in},
			corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: ex},
			corev1.NodeAddress{Type: corev1.NodeHostName, Address: name}))
	}
	for _, n := range nodes {
		created, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: n.ObjectMeta}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("failed to create node %s: %w", n.Name, err)
		}
		created.Status = n.Status
		if _, err := admin.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("failed to set the addresses of node %s: %w", n.Name, err)
		}
	}
	return nil
}

func servingUsages(u ...certificatesv1.KeyUsage) csrtest.Option { return csrtest.WithUsages(u...) }

// servingClasses are the serving rows of the table above.
func servingClasses() []class {
	own := func(i int, more ...string) func(string) []csrtest.Option {
		name, in, _ := servingNode(i)
		return func(string) []csrtest.Option {
			return []csrtest.Option{csrtest.Serving(append([]string{name, in}, more...)...)}
		}
	}
	node := func(i int) string { n, _, _ := servingNode(i); return n }
	_, _, external4 := servingNode(4)
	cs := []class{
		{name: "serving-control", node: node(1), by: byNode, opts: own(1), on: approved(approver.ReasonServingApproved), off: approved(approver.ReasonServingApproved)},
		{name: "serving-neighbour-ip", node: node(2), by: byNode, opts: own(2, neighbourIP), message: `"` + neighbourIP + `" is an address of node "` + neighbourNode + `"`,
			on: rejected(approver.ReasonAddressOfOtherNode), off: denied(approver.ReasonAddressOfOtherNode)},
		{name: "serving-neighbour-dns-name", node: node(3), by: byNode, opts: own(3, neighbourNode), message: `node "` + neighbourNode + `"`,
			on: rejected(approver.ReasonAddressOfOtherNode), off: denied(approver.ReasonAddressOfOtherNode)},
		{name: "serving-ip-outside-cidrs", node: node(4), by: byNode, opts: own(4, external4), message: external4,
			on: rejected(approver.ReasonIPNotAllowed), off: denied(approver.ReasonIPNotAllowed)},
		{name: "serving-ip-of-no-node", node: node(5), by: byNode, opts: own(5, "10.99.0.1"),
			on: rejected(approver.ReasonIPNotNodeAddress), off: denied(approver.ReasonIPNotNodeAddress)},
		{name: "serving-dns-name-not-the-nodes", node: node(6), by: byNode, opts: own(6, "kubernetes.default.svc"),
			on: rejected(approver.ReasonDNSNameNotNodeAddress), off: denied(approver.ReasonDNSNameNotNodeAddress)},
		{name: "serving-wildcard", node: node(7), by: byNode, opts: own(7, "*.cluster.local"),
			on: rejected(approver.ReasonWildcardDNSName), off: denied(approver.ReasonWildcardDNSName)},
		{name: "serving-uri-san", node: node(8), by: byNode, opts: func(n string) []csrtest.Option {
			return append(own(8)(n), csrtest.WithURISAN("spiffe://cluster.local/ns/kube-system/sa/admin"))
		}, on: rejected(approver.ReasonSANTypeNotAllowed), off: denied(approver.ReasonSANTypeNotAllowed)},
		{name: "serving-client-auth-usage", node: node(9), by: byNode, opts: func(n string) []csrtest.Option {
			return append(own(9)(n), servingUsages(certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth, certificatesv1.UsageClientAuth))
		}, message: "client auth", on: rejected(approver.ReasonInvalidUsages), off: denied(approver.ReasonInvalidUsages)},
		{name: "serving-cn-requester-mismatch", node: node(10), by: byOtherNode, opts: own(10),
			on: rejected(approver.ReasonRequesterMismatch), off: denied(approver.ReasonRequesterMismatch)},
		{name: "serving-from-bootstrap-token", node: node(11), by: byToken, opts: own(11),
			on: rejected(approver.ReasonServingByBootstrapper), off: denied(approver.ReasonServingByBootstrapper)},
		{name: "serving-node-outside-nodes-group", node: node(12), by: byNodeOutsideNodesGroup, opts: own(12),
			on: rejected(approver.ReasonNodeNotInNodesGroup), off: denied(approver.ReasonNodeNotInNodesGroup)},
		{name: "serving-no-san", node: node(13), by: byNode, opts: func(string) []csrtest.Option { return []csrtest.Option{csrtest.Serving()} },
			on: rejected(approver.ReasonNoSANs), off: denied(approver.ReasonNoSANs)},
	}
	return cs
}

func TestHostileServingCSRsWithWebhook(t *testing.T) {
	setWebhooks(t, true)
	runClasses(t, servingClasses(), func(c *class) outcome { return c.on })
}

func TestHostileServingCSRsWithoutWebhook(t *testing.T) {
	setWebhooks(t, false)
	runClasses(t, servingClasses(), func(c *class) outcome { return c.off })
}

// TestServingDisabledLeavesServingCSRsAlone turns serving.enabled off by a
// reload (which takes effect at once) and files serving CSRs, a valid one
// and a hostile one, beside a client renewal: the renewal is approved, the
// serving CSRs get no condition, no Event, no label or annotation, also with
// the webhooks on (they are called, and admit serving CSRs untouched).
func TestServingDisabledLeavesServingCSRsAlone(t *testing.T) {
	setWebhooks(t, true)
	setPolicy(t, false)
	t.Cleanup(func() { setPolicy(t, true) })

	name, in, _ := servingNode(servingNodeCount)
	ctx := t.Context()
	create := func(by requester, csr *certificatesv1.CertificateSigningRequest) string {
		t.Helper()
		csr.Name = uniqueName("off")
		csr.Spec.Username, csr.Spec.Groups, csr.Spec.UID = "", nil, ""
		created, err := by.client(t, name).CertificatesV1().CertificateSigningRequests().Create(ctx, csr, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		return created.Name
	}
	valid := create(byNode, csrtest.Build(csrtest.WithNodeName(name), csrtest.Serving(name, in)))
	hostile := create(byNode, csrtest.Build(csrtest.WithNodeName(name), csrtest.Serving(name, neighbourIP, "*.evil.example")))
	renewal := create(byNode, csrtest.Build(csrtest.WithNodeName(name)))

	waitFor(t, "the client renewal approved", func(all map[string]*certificatesv1.CertificateSigningRequest) (bool, string) {
		csr := all[renewal]
		return csr != nil && approvedCondition(csr), renewal
	})
	time.Sleep(recheckAfter)
	all, err := listCSRs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	events := decisionEvents(t)
	expectDecision(t, all[renewal], events, certificatesv1.CertificateApproved, approver.ReasonRenewalApproved)
	for _, n := range []string{valid, hostile} {
		csr := all[n]
		if csr == nil {
			t.Fatalf("CSR %s is gone", n)
		}
		if len(csr.Status.Conditions) != 0 || len(csr.Status.Certificate) != 0 {
			t.Errorf("CSR %s: conditions %+v, certificate %d bytes; want nothing", n, csr.Status.Conditions, len(csr.Status.Certificate))
		}
		if evs := events[n]; len(evs) != 0 {
			t.Errorf("CSR %s: Events %s; want none", n, describe(evs))
		}
		for k := range csr.Labels {
			if strings.HasPrefix(k, "nodecsr.io/") {
				t.Errorf("CSR %s: labelled %v", n, csr.Labels)
			}
		}
	}
	// Leave no pending serving CSR for this node behind for other tests.
	for _, n := range []string{valid, hostile} {
		decideByHand(t, n, certificatesv1.CertificateDenied, "CleanedUpByTest")
	}
}

// setPolicy writes the policy with serving on or off and waits until
// nodecsr-controller runs it (its digest is nodecsr_policy_info's).
func setPolicy(t *testing.T, serving bool) {
	t.Helper()
	data := policy(serving)
	p, err := config.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := ctl.WritePolicy(data); err != nil {
		t.Fatal(err)
	}
	var last string
	err = testutil.Poll(t, 100*time.Millisecond, func(ctx context.Context) (bool, error) {
		checkController(t)
		v, err := ctl.MetricSum(ctx, "nodecsr_policy_info", map[string]string{"digest": p.Digest})
		last = fmt.Sprint(v, err)
		return err == nil && v == 1, nil
	})
	if err != nil {
		t.Fatalf("policy %s (serving %v) not in force: %v (%s)", p.Digest, serving, err, last)
	}
}
