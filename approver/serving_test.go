package approver

import (
	"crypto/elliptic"
	"crypto/x509/pkix"
	"net/netip"
	"slices"
	"strings"
	"testing"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
)

// servingNode is the Node worker-1 (csrtest's default node) reports.
var servingNode = []corev1.NodeAddress{
	{Type: corev1.NodeInternalIP, Address: "10.0.0.1"},
	{Type: corev1.NodeExternalIP, Address: "203.0.113.10"},
	{Type: corev1.NodeInternalIP, Address: "fd00::1"},
	{Type: corev1.NodeHostName, Address: "worker-1"},
	{Type: corev1.NodeInternalDNS, Address: "worker-1.cluster.internal"},
}

var (
	withServing   = csrtest.Serving
	servingUsages = csrtest.ServingUsages()
)

// servingOn is a policy change that enables serving, then applies more.
func servingOn(more ...func(*config.Spec)) func(*config.Spec) {
	return func(s *config.Spec) {
		s.Serving.Enabled = true
		for _, f := range more {
			f(s)
		}
	}
}

// servingFacts are goodFacts(PathServing) changed by f.
func servingFacts(f func(*Facts)) *Facts {
	facts := goodFacts(PathServing)
	f(&facts)
	return &facts
}

func withNeighbour(key string, nodes ...string) func(*Facts) {
	return func(f *Facts) { f.Neighbours = map[string][]string{key: nodes} }
}

// servingCases are the serving rows' cases of TestEvaluate: every serving
// reason has one.
func servingCases() map[string]evalCase {
	on := servingOn()
	resolve := servingOn(func(s *config.Spec) { s.Serving.ResolveDNS.Enabled = true })
	return map[string]evalCase{
		// ---- approvals ------------------------------------------------
		"serving: hostname and InternalIP (stock kubelet)": {
			opts: []csrtest.Option{withServing("worker-1", "10.0.0.1")}, policy: on,
			wantVerdict: Approve, wantReason: ReasonServingApproved, wantPath: PathServing,
			wantMessage: `serving certificate for "worker-1", "10.0.0.1"`,
		},
		"serving: every address of the node, dual stack": {
			opts: []csrtest.Option{withServing("worker-1", "worker-1.cluster.internal", "10.0.0.1", "203.0.113.10", "fd00::1")}, policy: on,
			wantVerdict: Approve, wantReason: ReasonServingApproved, wantPath: PathServing,
		},
		"serving: RSA key with key encipherment": {
			opts:   []csrtest.Option{withServing("worker-1"), rsaKey(2048), withUsages(certificatesv1.UsageDigitalSignature, certificatesv1.UsageKeyEncipherment, certificatesv1.UsageServerAuth)},
			policy: on, wantVerdict: Approve, wantReason: ReasonServingApproved, wantPath: PathServing,
		},
		"serving: a serving.dnsNames name of the node": {
			opts:        []csrtest.Option{withServing("worker-1.nodes.example.internal", "10.0.0.1")},
			policy:      servingOn(func(s *config.Spec) { s.Serving.DNSNames = []string{"{node}.nodes.example.internal"} }),
			wantVerdict: Approve, wantReason: ReasonServingApproved, wantPath: PathServing,
		},
		"serving: only serving.dnsNames names, the Node reports no address yet": {
			opts:        []csrtest.Option{withServing("worker-1.nodes.example.internal")},
			policy:      servingOn(func(s *config.Spec) { s.Serving.DNSNames = []string{"{node}.nodes.example.internal"} }),
			facts:       servingFacts(func(f *Facts) { f.NodeAddresses = &NodeAddresses{Exists: true} }),
			wantVerdict: Approve, wantReason: ReasonServingApproved, wantPath: PathServing,
		},
		"serving: DNS names resolve to the node": {
			opts: []csrtest.Option{withServing("worker-1.cluster.internal", "10.0.0.1")}, policy: resolve,
			wantVerdict: Approve, wantReason: ReasonServingApproved, wantPath: PathServing,
			wantMessage: "the DNS names resolve to the Node",
		},
		"serving: the selfnodeserver subresource": {
			opts:        []csrtest.Option{withServing("10.0.0.1")},
			policy:      servingOn(func(s *config.Spec) { s.Serving.Subresource = config.SubresourceSelfNodeServer }),
			wantVerdict: Approve, wantReason: ReasonServingApproved, wantPath: PathServing,
			wantMessage: "SubjectAccessReview allowed selfnodeserver",
		},
		"serving: P-384 key": {
			opts: []csrtest.Option{withServing("10.0.0.1"), ecKey(elliptic.P384())}, policy: on,
			wantVerdict: Approve, wantReason: ReasonServingApproved, wantPath: PathServing,
		},

		// ---- not ours ----------------------------------------------------
		"serving CSR while serving is disabled": {
			opts:        []csrtest.Option{withServing("worker-1", "10.0.0.1")},
			wantVerdict: Ignore, wantReason: ReasonNotKubeletClientSigner, wantPath: PathUnknown,
			wantMessage: "serving.enabled",
		},
		"serving CSR already approved": {
			opts: []csrtest.Option{withServing("10.0.0.1"), withCondition(certificatesv1.CertificateApproved)}, policy: on,
			wantVerdict: Ignore, wantReason: ReasonAlreadyDecided, wantPath: PathUnknown,
		},

		// ---- the requester ---------------------------------------------
		"serving: bootstrapper": {
			opts: []csrtest.Option{withServing("worker-1"), bootstrap("abcdef")}, policy: on, noFacts: true,
			wantVerdict: Deny, wantReason: ReasonServingByBootstrapper, wantPath: PathBootstrap,
			wantViolations: []string{ReasonServingByBootstrapper},
		},
		"serving: node outside system:nodes": {
			opts: []csrtest.Option{withServing("worker-1"), withGroups("system:authenticated")}, policy: on,
			wantVerdict: Deny, wantReason: ReasonNodeNotInNodesGroup, wantPath: PathServing,
		},
		"serving: another node's name": {
			opts: []csrtest.Option{withServing("worker-1"), withUsername("system:node:attacker")}, policy: on, noFacts: true,
			wantVerdict: Deny, wantReason: ReasonRequesterMismatch, wantPath: PathUnknown,
			wantViolations: []string{ReasonRequesterMismatch},
		},
		"serving: a user": {
			opts: []csrtest.Option{withServing("worker-1"), withUsername("alice"), withGroups("devs")}, policy: on, noFacts: true,
			wantVerdict: Deny, wantReason: ReasonUnrecognizedRequester, wantPath: PathUnknown,
		},
		"serving: not authorized": {
			opts: []csrtest.Option{withServing("worker-1")}, policy: on,
			facts:       servingFacts(func(f *Facts) { f.Authorized = ptr(false) }),
			wantVerdict: Deny, wantReason: ReasonNotAuthorized, wantPath: PathServing,
			wantMessage: "certificatesigningrequests/selfnodeclient",
		},

		// ---- static SAN rules ------------------------------------------
		"serving: email SAN": {
			opts: []csrtest.Option{withServing("worker-1"), withEmailSAN("root@example.com")}, policy: on,
			wantVerdict: Deny, wantReason: ReasonSANTypeNotAllowed, wantPath: PathServing,
			wantViolations: []string{ReasonSANTypeNotAllowed}, wantMessage: "email SANs",
		},
		"serving: URI SAN": {
			opts: []csrtest.Option{withServing("10.0.0.1"), withURISAN("spiffe://cluster.local/ns/kube-system/sa/admin")}, policy: on,
			wantVerdict: Deny, wantReason: ReasonSANTypeNotAllowed, wantPath: PathServing,
			wantMessage: "URI SANs",
		},
		"serving: wildcard DNS name": {
			opts: []csrtest.Option{withServing("*.cluster.internal")}, policy: on,
			wantVerdict: Deny, wantReason: ReasonWildcardDNSName, wantPath: PathServing,
			wantViolations: []string{ReasonWildcardDNSName, ReasonDNSNameNotNodeAddress},
		},
		"serving: DNS name in upper case": {
			opts: []csrtest.Option{withServing("Worker-1")}, policy: on,
			wantVerdict: Deny, wantReason: ReasonInvalidDNSName, wantPath: PathServing,
		},
		"serving: no SAN": {
			opts: []csrtest.Option{withServing()}, policy: on,
			wantVerdict: Deny, wantReason: ReasonNoSANs, wantPath: PathServing,
			wantViolations: []string{ReasonNoSANs},
		},
		"serving: more SANs than serving.maxSANs": {
			opts:        []csrtest.Option{withServing("worker-1", "10.0.0.1", "203.0.113.10")},
			policy:      servingOn(func(s *config.Spec) { s.Serving.MaxSANs = 2 }),
			wantVerdict: Deny, wantReason: ReasonTooManySANs, wantPath: PathServing,
			wantViolations: []string{ReasonTooManySANs},
		},
		"serving: the node's own IP outside serving.ipCIDRs": {
			opts:        []csrtest.Option{withServing("10.0.0.1", "203.0.113.10")},
			policy:      servingOn(func(s *config.Spec) { s.Serving.IPCIDRs = []string{"10.0.0.0/8"} }),
			wantVerdict: Deny, wantReason: ReasonIPNotAllowed, wantPath: PathServing,
			wantViolations: []string{ReasonIPNotAllowed}, wantMessage: `"203.0.113.10"`,
		},
		"serving: client auth on the serving signer": {
			opts:   []csrtest.Option{withServing("worker-1"), withUsages(certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth, certificatesv1.UsageClientAuth)},
			policy: on, wantVerdict: Deny, wantReason: ReasonInvalidUsages, wantPath: PathServing,
			wantViolations: []string{ReasonInvalidUsages}, wantMessage: "client auth is never issued by the serving signer",
		},
		"serving: client usages": {
			opts:   []csrtest.Option{withServing("worker-1"), withUsages(usagesDSCA...)},
			policy: on, wantVerdict: Deny, wantReason: ReasonInvalidUsages, wantPath: PathServing,
		},
		"serving: no server auth": {
			opts:   []csrtest.Option{withServing("worker-1"), withUsages(certificatesv1.UsageDigitalSignature)},
			policy: on, wantVerdict: Deny, wantReason: ReasonInvalidUsages, wantPath: PathServing,
		},
		"serving: key encipherment with ECDSA under keyEnciphermentRequiresRSA": {
			opts:        []csrtest.Option{withServing("worker-1"), withUsages(certificatesv1.UsageDigitalSignature, certificatesv1.UsageKeyEncipherment, certificatesv1.UsageServerAuth)},
			policy:      servingOn(func(s *config.Spec) { s.Keys.KeyEnciphermentRequiresRSA = true }),
			wantVerdict: Deny, wantReason: ReasonKeyEnciphermentRequiresRSA, wantPath: PathServing,
		},
		"serving: lifetime over the cap": {
			opts:        []csrtest.Option{withServing("worker-1"), withExpiration(7200)},
			policy:      servingOn(func(s *config.Spec) { s.Lifetime.MaxExpirationSeconds = 3600 }),
			wantVerdict: Deny, wantReason: ReasonLifetimeTooLong, wantPath: PathServing,
		},
		"serving: denied node name": {
			opts:   []csrtest.Option{withServing("control-plane-1"), withNodeName("control-plane-1")},
			policy: servingOn(func(s *config.Spec) { s.NodeNames.Denied = []string{"control-plane-.*"} }),
			facts: servingFacts(func(f *Facts) {
				f.NodeAddresses = NodeAddressesOf([]corev1.NodeAddress{{Type: corev1.NodeHostName, Address: "control-plane-1"}})
			}),
			wantVerdict: Deny, wantReason: ReasonNodeNameDenied, wantPath: PathServing,
		},
		"serving: a hostile request breaks every static rule at once": {
			opts: []csrtest.Option{withServing("*.example.com", "10.9.9.9"), withURISAN("https://evil"), withOrg("system:masters"),
				withUsages(certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth, certificatesv1.UsageClientAuth), signedByOtherKey()},
			policy: servingOn(func(s *config.Spec) { s.Serving.IPCIDRs = []string{"10.0.0.0/24"} }), noFacts: true,
			wantVerdict: Deny, wantReason: ReasonInvalidOrganization, wantPath: PathServing,
			wantViolations: []string{ReasonInvalidOrganization, ReasonSANTypeNotAllowed, ReasonWildcardDNSName, ReasonIPNotAllowed, ReasonInvalidUsages},
			wantSkipped:    []string{CheckSignature},
		},

		// ---- SANs proven by the cluster ---------------------------------
		"serving: the Node does not exist yet": {
			opts: []csrtest.Option{withServing("worker-1", "10.0.0.1")}, policy: on,
			facts:       servingFacts(func(f *Facts) { f.NodeExists, f.NodeAddresses = ptr(false), &NodeAddresses{} }),
			wantVerdict: Ignore, wantReason: ReasonWaitingForNode, wantPath: PathServing,
		},
		"serving: the Node has no addresses yet": {
			opts: []csrtest.Option{withServing("worker-1", "10.0.0.1")}, policy: on,
			facts:       servingFacts(func(f *Facts) { f.NodeAddresses = &NodeAddresses{Exists: true} }),
			wantVerdict: Ignore, wantReason: ReasonWaitingForNodeAddresses, wantPath: PathServing,
		},
		"serving: an IP that is not the node's": {
			opts: []csrtest.Option{withServing("worker-1", "10.0.0.99")}, policy: on,
			wantVerdict: Deny, wantReason: ReasonIPNotNodeAddress, wantPath: PathServing,
			wantViolations: []string{ReasonIPNotNodeAddress}, wantMessage: `"10.0.0.99"`,
		},
		"serving: another node's IP": {
			opts: []csrtest.Option{withServing("worker-1", "10.0.0.2")}, policy: on,
			facts:       servingFacts(withNeighbour("10.0.0.2", "worker-2")),
			wantVerdict: Deny, wantReason: ReasonAddressOfOtherNode, wantPath: PathServing,
			wantViolations: []string{ReasonAddressOfOtherNode, ReasonIPNotNodeAddress},
			wantMessage:    `"10.0.0.2" is an address of node "worker-2"`,
		},
		"serving: an IP the node shares with another node": {
			opts: []csrtest.Option{withServing("10.0.0.1")}, policy: on,
			facts:       servingFacts(withNeighbour("10.0.0.1", "worker-1", "worker-7")),
			wantVerdict: Deny, wantReason: ReasonAddressOfOtherNode, wantPath: PathServing,
			wantViolations: []string{ReasonAddressOfOtherNode}, wantMessage: `node "worker-7"`,
		},
		"serving: another node's DNS name": {
			opts: []csrtest.Option{withServing("worker-2")}, policy: on,
			facts:       servingFacts(withNeighbour("worker-2", "worker-2")),
			wantVerdict: Deny, wantReason: ReasonAddressOfOtherNode, wantPath: PathServing,
			wantViolations: []string{ReasonAddressOfOtherNode, ReasonDNSNameNotNodeAddress},
		},
		"serving: a DNS name that is not the node's": {
			opts: []csrtest.Option{withServing("kubernetes.default.svc")}, policy: on,
			wantVerdict: Deny, wantReason: ReasonDNSNameNotNodeAddress, wantPath: PathServing,
			wantViolations: []string{ReasonDNSNameNotNodeAddress},
		},
		"serving: a serving.dnsNames name of another node": {
			opts:        []csrtest.Option{withServing("worker-2.nodes.example.internal")},
			policy:      servingOn(func(s *config.Spec) { s.Serving.DNSNames = []string{"{node}.nodes.example.internal"} }),
			wantVerdict: Deny, wantReason: ReasonDNSNameNotNodeAddress, wantPath: PathServing,
		},
		"serving: a DNS name that does not resolve": {
			opts: []csrtest.Option{withServing("worker-1.cluster.internal")}, policy: resolve,
			facts:       servingFacts(func(f *Facts) { f.Resolved = map[string]Resolution{"worker-1.cluster.internal": {NotFound: true}} }),
			wantVerdict: Deny, wantReason: ReasonDNSNameDoesNotResolveToNode, wantPath: PathServing,
			wantMessage: "does not resolve",
		},
		"serving: a DNS name that resolves elsewhere": {
			opts: []csrtest.Option{withServing("worker-1.cluster.internal")}, policy: resolve,
			facts: servingFacts(func(f *Facts) {
				f.Resolved = map[string]Resolution{"worker-1.cluster.internal": {IPs: []netip.Addr{netip.MustParseAddr("192.0.2.66")}}}
			}),
			wantVerdict: Deny, wantReason: ReasonDNSNameDoesNotResolveToNode, wantPath: PathServing,
			wantMessage: `resolves to "192.0.2.66"`,
		},
		"serving: superseded": {
			opts: []csrtest.Option{withServing("10.0.0.1")}, policy: on,
			facts:       servingFacts(func(f *Facts) { f.NewerPendingForNode = ptr(true) }),
			wantVerdict: Deny, wantReason: ReasonSuperseded, wantPath: PathServing,
		},
		"serving: without facts": {
			opts: []csrtest.Option{withServing("worker-1", "10.0.0.1")}, policy: on, noFacts: true,
			wantVerdict: Ignore, wantReason: ReasonFactsIncomplete, wantPath: PathServing,
			wantSkipped: []string{CheckAuthorized, CheckNodeExists, CheckNeighbours, CheckIPAddresses, CheckDNSNames},
		},
	}
}

// The rows apply by signer: a serving CSR is never judged by the client
// rows (SANs are its point), a client CSR never by the serving rows.
func TestRulesBySigner(t *testing.T) {
	p := policyWith(t, servingOn())
	client := evaluate(p, newCSR(), goodFacts(PathRenewal))
	serving := evaluate(p, newCSR(withServing("worker-1", "10.0.0.1")), goodFacts(PathServing))
	if client.Verdict != Approve || serving.Verdict != Approve {
		t.Fatalf("client %s/%s, serving %s/%s", client.Verdict, client.Reason, serving.Verdict, serving.Reason)
	}
	if client.Signer != SignerClient || serving.Signer != SignerServing {
		t.Errorf("signers %s, %s", client.Signer, serving.Signer)
	}
	names := func(d Decision) []string {
		var out []string
		for _, c := range d.Checks {
			out = append(out, c.Name)
		}
		return out
	}
	for _, r := range Rules() {
		inClient, inServing := slices.Contains(names(client), r.Name), slices.Contains(names(serving), r.Name)
		applies := func(s Signer) bool { return r.Signers&s != 0 }
		// Rules that do not apply under this policy are not listed
		// either (KeyEncipherment, TokenBinding, PendingForNode,
		// DNSResolution).
		if inClient && !applies(SignerClient) || inServing && !applies(SignerServing) {
			t.Errorf("rule %s (signers %b) ran on a CSR it does not apply to", r.Name, r.Signers)
		}
		if r.MustPass && (applies(SignerClient) != inClient || applies(SignerServing) != inServing) {
			t.Errorf("MustPass rule %s: in the client decision %v, in the serving decision %v", r.Name, inClient, inServing)
		}
		if r.Signers == 0 {
			t.Errorf("rule %s applies to no signer", r.Name)
		}
	}
}

// Turning serving on changes nothing for client CSRs: every client case
// decides alike with serving on and off.
func TestServingChangesNothingForClientCSRs(t *testing.T) {
	for name, tc := range evalCases() {
		t.Run(name, func(t *testing.T) {
			off, on := policyWith(t, tc.policy), policyWith(t, servingOn(func(s *config.Spec) {
				if tc.policy != nil {
					tc.policy(s)
				}
			}))
			csr := newCSR(tc.opts...)
			facts := goodFacts(tc.wantPath)
			switch {
			case tc.noFacts:
				facts = Facts{}
			case tc.facts != nil:
				facts = *tc.facts
			}
			a, b := evaluate(off, csr, facts), evaluate(on, csr, facts)
			if a.Verdict != b.Verdict || a.Reason != b.Reason || a.Needs != b.Needs || !slices.Equal(reasons(a.Violations), reasons(b.Violations)) || !slices.Equal(a.Skipped, b.Skipped) {
				t.Errorf("serving off: %s/%s %v; on: %s/%s %v", a.Verdict, a.Reason, reasons(a.Violations), b.Verdict, b.Reason, reasons(b.Violations))
			}
			if len(a.Checks) != len(b.Checks) {
				t.Fatalf("checks off %d, on %d", len(a.Checks), len(b.Checks))
			}
			for i := range a.Checks {
				x, y := a.Checks[i], b.Checks[i]
				if x.Name != y.Name || x.Result != y.Result || x.Reason != y.Reason || x.Message != y.Message && x.Name != CheckSignerName {
					t.Errorf("check off %+v, on %+v", x, y)
				}
			}
		})
	}
}

// The static decision of a serving CSR asks for exactly the facts its rules
// need: the address facts only for the node's own request, DNS only with
// serving.resolveDNS.
func TestServingNeeds(t *testing.T) {
	cases := map[string]struct {
		opts   []csrtest.Option
		policy func(*config.Spec)
		want   Fact
	}{
		"IP and DNS":   {[]csrtest.Option{withServing("worker-1", "10.0.0.1")}, servingOn(), FactAuthorized | FactNode | FactAddresses | FactNeighbours | FactPending},
		"with resolve": {[]csrtest.Option{withServing("worker-1")}, servingOn(func(s *config.Spec) { s.Serving.ResolveDNS.Enabled = true }), FactAuthorized | FactNode | FactAddresses | FactNeighbours | FactDNS | FactPending},
		"only template names": {[]csrtest.Option{withServing("worker-1.n.example")}, servingOn(func(s *config.Spec) { s.Serving.DNSNames = []string{"{node}.n.example"} }),
			FactAuthorized | FactNode | FactNeighbours | FactPending},
		"bootstrapper": {[]csrtest.Option{withServing("worker-1"), bootstrap("abcdef")}, servingOn(), 0},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			d := evaluate(policyWith(t, tc.policy), newCSR(tc.opts...), Facts{})
			if d.Needs != tc.want {
				t.Errorf("needs %s, want %s (%s %s)", d.Needs, tc.want, d.Verdict, d.Reason)
			}
		})
	}
}

func TestNodeAddressesOf(t *testing.T) {
	na := NodeAddressesOf(append(slices.Clone(servingNode),
		corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "not-an-ip"},
		corev1.NodeAddress{Type: "Other", Address: "10.9.9.9"},
		corev1.NodeAddress{Type: corev1.NodeExternalDNS, Address: "Worker-1.Example.COM"},
		corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "::ffff:192.0.2.1"}))
	wantIPs := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("fd00::1"), netip.MustParseAddr("192.0.2.1")}
	if !na.Exists || !slices.Equal(na.IPs, wantIPs) || !slices.Equal(na.DNSNames, []string{"worker-1", "worker-1.cluster.internal", "worker-1.example.com"}) {
		t.Errorf("NodeAddressesOf = %+v", na)
	}
	for in, want := range map[string]string{"10.0.0.1": "10.0.0.1", "::ffff:10.0.0.1": "10.0.0.1", "FD00::0001": "fd00::1", "Worker-1": "worker-1"} {
		if got := NodeAddressKey(in); got != want {
			t.Errorf("NodeAddressKey(%q) = %q, want %q", in, got, want)
		}
	}
	r := Inspect(policyWith(t, servingOn()), newCSR(withServing("Worker-1", "worker-1", "10.0.0.1", "::ffff:10.0.0.1")))
	if got := r.SANKeys(); !slices.Equal(got, []string{"10.0.0.1", "worker-1"}) {
		t.Errorf("SANKeys = %v", got)
	}
}

func TestSignerOf(t *testing.T) {
	for name, want := range map[string]Signer{KubeletClientSigner: SignerClient, KubeletServingSigner: SignerServing, "example.com/x": SignerOther, "": SignerOther} {
		if got := SignerOf(name); got != want {
			t.Errorf("SignerOf(%q) = %s, want %s", name, got, want)
		}
	}
	if SignerClient.String() != "client" || SignerServing.String() != "serving" {
		t.Error("metric labels")
	}
}

// A SAN extension carrying name types crypto/x509 does not parse
// (otherName, directoryName) is refused, as is a second SAN extension.
func TestOtherNameTypes(t *testing.T) {
	if got := otherNameTypes([]byte{0x30, 0x00}); len(got) != 0 {
		t.Errorf("empty sequence: %v", got)
	}
	// [4] directoryName (an empty Name) and [2] dNSName "a".
	der := []byte{0x30, 0x07, 0xa4, 0x02, 0x30, 0x00, 0x82, 0x01, 'a'}
	if got := otherNameTypes(der); !slices.Equal(got, []string{"directoryName SANs"}) {
		t.Errorf("directoryName: %v", got)
	}
	if got := otherNameTypes([]byte{0x04, 0x00}); !slices.Equal(got, []string{"an unparseable SAN extension"}) {
		t.Errorf("not a sequence: %v", got)
	}
	p := policyWith(t, servingOn())
	d := evaluate(p, newCSR(withServing(), sanExtension(der)), goodFacts(PathServing))
	if d.Verdict != Deny || d.Reason != ReasonSANTypeNotAllowed || !strings.Contains(d.Message, "directoryName SANs") {
		t.Errorf("a directoryName SAN: %s/%s %v (%s)", d.Verdict, d.Reason, reasons(d.Violations), d.Message)
	}
	// A second SAN extension: whichever one a parser reads, it must not
	// hide the other.
	d = evaluate(p, newCSR(withServing("worker-1"), sanExtension([]byte{0x30, 0x03, 0x82, 0x01, 'a'})), goodFacts(PathServing))
	if d.Verdict == Approve {
		t.Errorf("two SAN extensions approved: %s", d.Message)
	}
	t.Logf("two SAN extensions: %s/%s (%s)", d.Verdict, d.Reason, d.Message)
}

// TestServingCasesCoverReasons: every serving reason has a case (TestEvaluate
// checks all reasons together; this names the serving ones' cases).
func TestServingCasesCoverReasons(t *testing.T) {
	seen := map[string]bool{}
	for _, tc := range servingCases() {
		seen[tc.wantReason] = true
		for _, v := range tc.wantViolations {
			seen[v] = true
		}
	}
	for _, r := range Rules() {
		if r.Signers != SignerServing {
			continue
		}
		for _, reason := range r.Reasons {
			if !seen[reason] {
				t.Errorf("serving reason %s has no serving case", reason)
			}
		}
	}
}

func sanExtension(der []byte) csrtest.Option {
	return withExtension(pkix.Extension{Id: oidExtensionSAN, Value: der})
}
