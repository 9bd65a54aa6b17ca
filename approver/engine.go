// Package approver decides kubelet certificate requests: client CSRs
// (signer kubernetes.io/kube-apiserver-client-kubelet) and, when the policy
// enables serving, serving CSRs (kubernetes.io/kubelet-serving).
//
// The pipeline is: Inspect a CSR once into a Request; Decide it with the
// effective policy and the cluster facts a FactGatherer collected, by running
// the rule table (rules.go) in order; then act (the Reconciler: throttle, one
// write, the Event, the log line and the metric). Decide is the single source
// of truth for the reconciler, the webhook and explain. It does no I/O.
package approver

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/text"
)

// Verdict is what to do with a CSR.
type Verdict string

const (
	// Approve: write an Approved condition.
	Approve Verdict = "Approve"
	// Deny: write a Denied condition.
	Deny Verdict = "Deny"
	// Ignore: write nothing; the CSR is not ours, already decided, or left
	// pending (LeavePending, waiting for a fact or the Node, rate limit).
	Ignore Verdict = "Ignore"
)

// Path is the way a request is recognised, as in kube-controller-manager.
type Path string

const (
	// PathRenewal: the requester is system:node:<name>, the name it asks
	// for. Authorized with the selfnodeclient subresource.
	PathRenewal Path = "Renewal"
	// PathBootstrap: the requester is in a bootstrap group or is a
	// bootstrap user. Authorized with the nodeclient subresource.
	PathBootstrap Path = "Bootstrap"
	// PathServing: a serving CSR whose requester is system:node:<name>, the
	// name it asks for. Authorized with serving.subresource (selfnodeclient
	// by default).
	PathServing Path = "Serving"
	// PathUnknown: neither.
	PathUnknown Path = ""
)

// CheckResult is the outcome of one check.
type CheckResult string

const (
	// Pass: the check ran and the CSR complies.
	Pass CheckResult = "Pass"
	// Fail: the check ran and the CSR violates it; Check.Reason says how.
	Fail CheckResult = "Fail"
	// Wait: the check ran and the CSR cannot be decided yet (the Node it
	// renews for is not registered); it stays pending and is decided again
	// when the cluster changes. Check.Reason says why.
	Wait CheckResult = "Wait"
	// Skipped: the check did not run, because a fact was not gathered or a
	// check it depends on failed; Check.Message says which.
	Skipped CheckResult = "Skipped"
)

// Signer is the kind of certificate a CSR asks for, as a bit set: a rule
// row lists the signers it applies to.
type Signer uint8

const (
	// SignerClient is kubernetes.io/kube-apiserver-client-kubelet.
	SignerClient Signer = 1 << iota
	// SignerServing is kubernetes.io/kubelet-serving.
	SignerServing
	// SignerOther is every other signer: none of nodecsr's business.
	SignerOther

	signersKubelet = SignerClient | SignerServing
	signersAll     = SignerClient | SignerServing | SignerOther
)

// SignerOf classifies a signer name.
func SignerOf(name string) Signer {
	switch name {
	case KubeletClientSigner:
		return SignerClient
	case KubeletServingSigner:
		return SignerServing
	}
	return SignerOther
}

// String is the metric label: client, serving or other.
func (s Signer) String() string {
	switch s {
	case SignerClient:
		return "client"
	case SignerServing:
		return "serving"
	case SignerOther:
		return "other"
	}
	return fmt.Sprintf("Signer(%d)", uint8(s))
}

// Fact names a kind of cluster fact a rule needs; Facts holds them.
type Fact uint8

const (
	// FactAuthorized is the SubjectAccessReview (Facts.Authorized).
	FactAuthorized Fact = 1 << iota
	// FactNode is whether the Node exists (Facts.NodeExists).
	FactNode
	// FactHeartbeat is the existing Node's last heartbeat
	// (Facts.NodeHeartbeat, Facts.Now); only for bootstrap recovery.
	FactHeartbeat
	// FactPending is the other CSRs for the node (Facts.NewerPendingForNode,
	// Facts.PendingForNode).
	FactPending
	// FactAddresses is the Node's status.addresses (Facts.NodeAddresses);
	// serving CSRs only.
	FactAddresses
	// FactNeighbours is the other Nodes that report one of the requested
	// SANs as an address (Facts.Neighbours); serving CSRs only.
	FactNeighbours
	// FactDNS is what the DNS SANs resolve to (Facts.Resolved); serving
	// CSRs with serving.resolveDNS only.
	FactDNS
)

// Has reports whether f includes every fact in g.
func (f Fact) Has(g Fact) bool { return f&g == g }

// String lists the facts, e.g. "SubjectAccessReview,Node".
func (f Fact) String() string {
	var names []string
	for _, n := range factNames {
		if f.Has(n.fact) {
			names = append(names, n.name)
		}
	}
	return strings.Join(names, ",")
}

var factNames = [...]struct {
	fact Fact
	name string
}{
	{FactAuthorized, "SubjectAccessReview"}, {FactNode, "Node"}, {FactHeartbeat, "Heartbeat"}, {FactPending, "PendingCSRs"},
	{FactAddresses, "NodeAddresses"}, {FactNeighbours, "Neighbours"}, {FactDNS, "DNS"},
}

// Facts are cluster facts a FactGatherer collected. A nil field was not
// gathered: its check is Skipped and listed in Decision.Skipped, and a CSR
// that needs it cannot be approved (Ignore, FactsIncomplete). Static
// violations still deny without any facts.
type Facts struct {
	// Authorized is the SubjectAccessReview result for the requester and
	// the path's subresource (SubresourceFor): create
	// certificatesigningrequests/selfnodeclient or .../nodeclient.
	Authorized *bool
	// NodeExists says whether a Node named Request.NodeName exists.
	NodeExists *bool
	// NodeHeartbeat is when the existing Node last showed its kubelet alive:
	// its Lease's renewTime, else the Node's creation time.
	NodeHeartbeat *time.Time
	// Now is when the facts were gathered; the heartbeat's age is Now minus
	// NodeHeartbeat.
	Now time.Time
	// NewerPendingForNode says whether another CSR for the same node name,
	// from the same requester, pending or approved, is newer than this one.
	NewerPendingForNode *bool
	// PendingForNode is the number of other pending CSRs for the same node
	// name, from the same requester, that are older than this one.
	PendingForNode *int
	// NodeAddresses are the addresses of the Node named Request.NodeName
	// (serving CSRs).
	NodeAddresses *NodeAddresses
	// Neighbours maps each requested SAN (Request.SANKeys) that another
	// Node also reports as one of its addresses to those Nodes' names,
	// sorted; a SAN no other Node reports has no entry. Non-nil (maybe
	// empty) when gathered.
	Neighbours map[string][]string
	// Resolved holds what each DNS SAN resolved to, by name; non-nil when
	// gathered.
	Resolved map[string]Resolution
}

// NodeAddresses are a Node's status.addresses, sorted by kind.
type NodeAddresses struct {
	// Exists: a Node of that name exists. Otherwise the lists are empty.
	Exists bool
	// IPs are its InternalIP and ExternalIP addresses.
	IPs []netip.Addr
	// DNSNames are its Hostname, InternalDNS and ExternalDNS addresses, in
	// lower case.
	DNSNames []string
}

// NodeAddressesOf sorts a Node's status.addresses. Addresses of other types
// and IPs that do not parse are left out.
func NodeAddressesOf(addrs []corev1.NodeAddress) *NodeAddresses {
	na := &NodeAddresses{Exists: true}
	for _, a := range addrs {
		switch a.Type {
		case corev1.NodeInternalIP, corev1.NodeExternalIP:
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				na.IPs = append(na.IPs, ip.Unmap())
			}
		case corev1.NodeHostName, corev1.NodeInternalDNS, corev1.NodeExternalDNS:
			if a.Address != "" {
				na.DNSNames = append(na.DNSNames, strings.ToLower(a.Address))
			}
		}
	}
	return na
}

// Resolution is what one DNS name resolved to.
type Resolution struct {
	// NotFound: the name does not exist (NXDOMAIN) or has no address.
	NotFound bool
	// IPs are its addresses.
	IPs []netip.Addr
}

// Check is one rule applied to the CSR.
type Check struct {
	// Name identifies the rule (the Check* constants).
	Name string
	// Result is Pass, Fail, Wait or Skipped.
	Result CheckResult
	// Reason is the reason code when Result is Fail or Wait.
	Reason string
	// Message says what was found, for humans. It quotes at most 64
	// characters of any value taken from the request.
	Message string
	// Field is the CSR field the rule judges (spec.request, spec.usages,
	// spec.username, spec.expirationSeconds).
	Field string
}

// Decision is the outcome of Decide.
type Decision struct {
	// Verdict is Approve, Deny or Ignore.
	Verdict Verdict
	// Reason is a stable reason code (reasons.go): the first violation in
	// rule order, or why the CSR is approved, waits or is ignored.
	Reason string
	// Message explains Reason for humans.
	Message string
	// Path is how the requester was recognised.
	Path Path
	// Signer is the kind of certificate asked for.
	Signer Signer
	// NodeName is the name claimed, set only when it is a valid DNS-1123
	// subdomain.
	NodeName string
	// Checks lists every rule that applied, in rule order.
	Checks []Check
	// Violations lists every failed check, in rule order: every rule the
	// CSR breaks. The gates SignerName and NotDecided, which make a CSR
	// none of nodecsr's business (Ignore), are not violations.
	Violations []Check
	// Skipped names the checks that did not run.
	Skipped []string
	// Needs lists the facts that were missing for approval; a FactGatherer
	// gathers them for the next Decide.
	Needs Fact
	// KeyAlgorithm and PublicKeySHA256 describe the key (Request).
	KeyAlgorithm    string
	PublicKeySHA256 string
	// PolicyDigest is the digest of the policy applied.
	PolicyDigest string
}

// Check returns the check named name, if it is in the decision.
func (d *Decision) Check(name string) (Check, bool) {
	for _, c := range d.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return Check{}, false
}

// SubresourceFor returns the certificatesigningrequests subresource the
// SubjectAccessReview for a client path checks: selfnodeclient for renewal,
// nodeclient for bootstrap, "" for an unknown path. A serving CSR's is the
// policy's serving.subresource (Request.Subresource).
func SubresourceFor(p Path) string {
	switch p {
	case PathRenewal:
		return config.SubresourceSelfNodeClient
	case PathBootstrap:
		return "nodeclient"
	}
	return ""
}

// Decide runs the rule table on an inspected request. It reports every
// violation and returns the first in rule order as the reason. Any violation
// denies (or, with onViolation LeavePending, ignores); without violations a
// rule that waits leaves the CSR pending; otherwise the CSR is approved only
// when every fact it needs was gathered. The signature, the one costly
// check, is verified only when every other static rule passed. spec.mode
// does not change the decision: in DryRun the caller records it instead of
// writing it.
func Decide(p *config.Effective, r *Request, facts Facts) Decision {
	e := &evaluation{p: p, r: r, csr: r.CSR, facts: facts, index: ruleIndex}
	d := &e.d
	d.Path, d.NodeName, d.Signer = r.Path, r.NodeName, r.Signer
	d.KeyAlgorithm, d.PublicKeySHA256 = r.KeyAlgorithm, r.PublicKeySHA256
	d.PolicyDigest = p.Digest

	out := make([]Outcome, len(rules))
	e.out = out
	staticFailed := false
	for i := range rules {
		rule := &rules[i]
		if rule.Deferred || rule.Signers&r.Signer == 0 {
			continue
		}
		out[i] = rule.check(e)
		if rule.Gate && out[i].Result == Fail {
			// Not ours: nothing about the request is reported.
			e.collect()
			*d = Decision{Verdict: Ignore, Reason: out[i].Reason, Message: out[i].Message, Checks: d.Checks, Signer: r.Signer, PolicyDigest: p.Digest}
			return *d
		}
		if rule.Needs == 0 && out[i].Result == Fail {
			staticFailed = true
		}
	}
	for i := range rules {
		if !rules[i].Deferred || rules[i].Signers&r.Signer == 0 {
			continue
		}
		if staticFailed {
			out[i] = skipped("not verified: the request is refused for other reasons")
			continue
		}
		out[i] = rules[i].check(e)
	}
	e.collect()
	e.finish()
	return *d
}

// evaluation carries the state of one Decide call.
type evaluation struct {
	p     *config.Effective
	r     *Request
	csr   *certificatesv1.CertificateSigningRequest
	facts Facts
	d     Decision
	out   []Outcome // by rule index
	// index is ruleIndex, carried so that the check functions the table
	// refers to do not refer to the table (an initialization cycle).
	index map[string]int

	// recovered is set by the NodeExists rule when it re-admits an
	// existing node.
	recovered string
}

// result returns the outcome of an earlier rule ("" when it did not apply
// or has not run).
func (e *evaluation) result(name string) CheckResult { return e.out[e.index[name]].Result }

// passedOrNA reports whether each named rule passed or did not apply.
func (e *evaluation) passedOrNA(names ...string) bool {
	for _, n := range names {
		if r := e.result(n); r != "" && r != Pass {
			return false
		}
	}
	return true
}

// need records a fact that was missing.
func (e *evaluation) need(f Fact) Outcome {
	e.d.Needs |= f
	return skipped("not checked: the fact was not gathered")
}

// collect turns the outcomes into checks, violations and skipped names.
func (e *evaluation) collect() {
	d := &e.d
	d.Checks = make([]Check, 0, len(rules))
	for i := range rules {
		o := e.out[i]
		if o.Result == "" {
			continue
		}
		c := Check{Name: rules[i].Name, Result: o.Result, Reason: o.Reason, Message: o.Message, Field: rules[i].Field}
		d.Checks = append(d.Checks, c)
		switch o.Result {
		case Fail:
			d.Violations = append(d.Violations, c)
		case Skipped:
			d.Skipped = append(d.Skipped, c.Name)
		}
	}
}

func (e *evaluation) finish() {
	d := &e.d
	if v := d.Violations; len(v) > 0 {
		d.Verdict = Deny
		if e.p.OnViolation == config.ViolationLeavePending {
			d.Verdict = Ignore
		}
		d.Reason, d.Message = v[0].Reason, v[0].Message
		if len(v) > 1 {
			also := make([]string, 0, len(v)-1)
			for _, c := range v[1:] {
				also = append(also, c.Reason)
			}
			d.Message += " (also: " + strings.Join(also, ", ") + ")"
		}
		return
	}
	for _, c := range d.Checks {
		if c.Result == Wait {
			d.Verdict, d.Reason, d.Message = Ignore, c.Reason, c.Message
			return
		}
	}
	if d.Needs != 0 {
		d.Verdict, d.Reason = Ignore, ReasonFactsIncomplete
		missing := make([]string, 0, 4)
		for _, c := range d.Checks {
			if c.Result == Skipped && rules[ruleIndex[c.Name]].Needs != 0 {
				missing = append(missing, c.Name)
			}
		}
		d.Message = "every check that ran passed, but approval needs facts that were not gathered: " + strings.Join(missing, ", ")
		return
	}
	e.approve()
}

func (e *evaluation) approve() {
	d := &e.d
	for i := range rules {
		if rules[i].MustPass && rules[i].Signers&e.r.Signer != 0 && e.out[i].Result != Pass {
			d.Verdict, d.Reason = Ignore, ReasonInternalError
			d.Message = fmt.Sprintf("check %s did not pass; refusing to approve", rules[i].Name)
			return
		}
	}
	var b strings.Builder
	switch d.Path {
	case PathRenewal:
		d.Reason = ReasonRenewalApproved
		fmt.Fprintf(&b, "node %s renews its own client certificate: %s key, signature, subject, usages verified; SubjectAccessReview allowed selfnodeclient", quote(e.r.NodeName), d.KeyAlgorithm)
		if e.result(CheckNodeExists) == Pass {
			b.WriteString("; the Node exists")
		}
	case PathBootstrap:
		d.Reason = ReasonBootstrapApproved
		if e.recovered != "" {
			d.Reason = ReasonRecoveryApproved
		}
		fmt.Fprintf(&b, "bootstrap by %s for node %s: %s key, signature, subject, usages verified; SubjectAccessReview allowed nodeclient", quote(e.csr.Spec.Username), quote(e.r.NodeName), d.KeyAlgorithm)
		switch {
		case e.recovered != "":
			b.WriteString("; " + e.recovered)
		case e.result(CheckNodeExists) == Pass:
			b.WriteString("; no Node of that name exists yet")
		}
		if e.out[ruleIndex[CheckTokenBinding]].Message == msgTokenBound {
			b.WriteString("; the token is bound to that name")
		}
	case PathServing:
		d.Reason = ReasonServingApproved
		fmt.Fprintf(&b, "node %s gets a serving certificate for %s: %s key, signature, subject, usages verified; every SAN is the Node's own address or a serving.dnsNames name, and no other Node's", quote(e.r.NodeName), e.sanSummary(), d.KeyAlgorithm)
		if e.result(CheckDNSResolution) == Pass {
			b.WriteString("; the DNS names resolve to the Node")
		}
		b.WriteString("; SubjectAccessReview allowed " + e.r.Subresource)
	default:
		d.Verdict, d.Reason = Ignore, ReasonInternalError
		d.Message = "no request path; refusing to approve"
		return
	}
	d.Verdict = Approve
	d.Message = b.String()
}

const maxQuoted = 64

// truncate bounds a string for a message, on a rune boundary.
func truncate(s string) string { return text.Truncate(s, maxQuoted) }

// quote quotes a value taken from the request for a message: at most 64
// bytes, non-ASCII escaped so look-alike characters show.
func quote(s string) string { return text.Quote(s, maxQuoted) }

// quoteValue quotes an ASN.1 attribute value.
func quoteValue(v any) string {
	if s, ok := v.(string); ok {
		return quote(s)
	}
	return fmt.Sprintf("a non-string value (%T)", v)
}
