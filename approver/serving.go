package approver

import (
	"encoding/asn1"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	certificatesv1 "k8s.io/api/certificates/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// The check functions of the rule rows that apply to serving CSRs (signer
// kubernetes.io/kubelet-serving) only, and the serving branches of shared
// rows. Every SAN is proven by the cluster (the Node's own addresses, or a
// serving.dnsNames name of the node), never by the request.

// maxListed bounds how many values one message lists.
const maxListed = 4

// listValues quotes at most maxListed values, noting how many there are.
func listValues(vals []string) string {
	parts := make([]string, 0, min(len(vals), maxListed+1))
	for i, v := range vals {
		if i == maxListed {
			parts = append(parts, fmt.Sprintf("… %d in all", len(vals)))
			break
		}
		parts = append(parts, quote(v))
	}
	return strings.Join(parts, ", ")
}

func ipStrings(ips []netip.Addr) []string {
	out := make([]string, len(ips))
	for i, ip := range ips {
		out[i] = ip.String()
	}
	return out
}

func (e *evaluation) servingRequester() Outcome {
	u := e.csr.Spec.Username
	isNode := strings.HasPrefix(u, nodeUserPrefix)
	switch {
	case isNode && e.r.req == nil:
		return skipped("not checked: the request did not parse, so the requester cannot be compared with the common name")
	case e.r.Path == PathServing && !slices.Contains(e.csr.Spec.Groups, nodesGroup):
		return failf(ReasonNodeNotInNodesGroup, "requester %s is not in the group %s; a serving certificate is issued only to a node's own credential", quote(u), nodesGroup)
	case e.r.Path == PathServing:
		return pass("the requester is the node named in the request, in " + nodesGroup)
	case isNode:
		return failf(ReasonRequesterMismatch, "node %s asked for a serving certificate as %s; a node can never ask for another node's name", quote(u), quote(e.r.CommonName))
	case e.r.Path == PathBootstrap:
		return failf(ReasonServingByBootstrapper, "requester %s is a bootstrapper (%s); there is no bootstrap path for serving certificates: only a node that has joined may ask for its own", quote(u), truncate(e.r.BootstrapBy))
	}
	return failf(ReasonUnrecognizedRequester, "requester %s is not the node named in the request; only a node may ask for its own serving certificate", quote(u))
}

func (e *evaluation) servingUsages() Outcome {
	var ds, ke, sa, ca, other int
	for _, u := range e.csr.Spec.Usages {
		switch u {
		case certificatesv1.UsageDigitalSignature:
			ds++
		case certificatesv1.UsageKeyEncipherment:
			ke++
		case certificatesv1.UsageServerAuth:
			sa++
		case certificatesv1.UsageClientAuth:
			ca++
		default:
			other++
		}
	}
	const want = "want exactly [digital signature, server auth] or [digital signature, key encipherment, server auth]"
	switch {
	case ds == 1 && sa == 1 && ke <= 1 && ca == 0 && other == 0:
		return pass("usages are digital signature and server auth (and optionally key encipherment)")
	case ca > 0:
		return failf(ReasonInvalidUsages, "usages are %s; client auth is never issued by the serving signer (a node's client certificate comes from %s); %s", e.usageList(), KubeletClientSigner, want)
	}
	return failf(ReasonInvalidUsages, "usages are %s; %s", e.usageList(), want)
}

// generalNameTypes names the GeneralName choices (RFC 5280) by tag.
var generalNameTypes = map[int]string{
	0: "otherName", 1: "email", 3: "x400Address", 4: "directoryName", 5: "ediPartyName", 6: "URI", 8: "registeredID",
}

func (e *evaluation) sanTypes() Outcome {
	if !e.r.x509Parsed() {
		return e.notParsed()
	}
	var found []string
	exts := 0
	for _, ext := range e.r.req.cr.Extensions {
		if !ext.Id.Equal(oidExtensionSAN) {
			continue
		}
		exts++
		for _, t := range otherNameTypes(ext.Value) {
			found = appendUnique(found, t)
		}
	}
	if exts > 1 {
		found = append(found, fmt.Sprintf("%d SAN extensions", exts))
	}
	if len(found) > 0 {
		return failf(ReasonSANTypeNotAllowed, "the request asks for %s; a kubelet serving certificate names the node by DNS names and IP addresses only", strings.Join(found, ", "))
	}
	return pass("only DNS and IP SANs")
}

// otherNameTypes lists the GeneralName types in a SAN extension's value
// other than dNSName and iPAddress.
func otherNameTypes(der []byte) []string {
	var seq asn1.RawValue
	rest, err := asn1.Unmarshal(der, &seq)
	if err != nil || len(rest) != 0 || seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence || !seq.IsCompound {
		return []string{"an unparseable SAN extension"}
	}
	var out []string
	for rest = seq.Bytes; len(rest) > 0; {
		var v asn1.RawValue
		if rest, err = asn1.Unmarshal(rest, &v); err != nil {
			return append(out, "an unparseable SAN extension")
		}
		switch {
		case v.Class != asn1.ClassContextSpecific:
			out = appendUnique(out, "a malformed SAN")
		case v.Tag == 2 || v.Tag == 7: // dNSName, iPAddress
		default:
			name, ok := generalNameTypes[v.Tag]
			if !ok {
				name = fmt.Sprintf("SAN type [%d]", v.Tag)
			}
			out = appendUnique(out, name+" SANs")
		}
	}
	return out
}

func (e *evaluation) dnsNameSyntax() Outcome {
	if !e.r.x509Parsed() {
		return e.notParsed()
	}
	var wild, invalid []string
	for _, n := range e.r.DNSNames {
		switch {
		case strings.Contains(n, "*"):
			wild = append(wild, n)
		case len(validation.IsDNS1123Subdomain(n)) > 0:
			invalid = append(invalid, n)
		}
	}
	switch {
	case len(wild) > 0:
		return failf(ReasonWildcardDNSName, "the request asks for the wildcard DNS name(s) %s; a serving certificate names one node, never a wildcard", listValues(wild))
	case len(invalid) > 0:
		return failf(ReasonInvalidDNSName, "the DNS name(s) %s are not valid DNS-1123 subdomains (lower-case letters, digits, '-' and '.', no trailing dot)", listValues(invalid))
	}
	return pass("every DNS SAN is a valid DNS name, none a wildcard")
}

func (e *evaluation) sanCount() Outcome {
	if !e.r.x509Parsed() {
		return e.notParsed()
	}
	cr := e.r.req.cr
	n := len(cr.DNSNames) + len(cr.IPAddresses) + len(cr.EmailAddresses) + len(cr.URIs)
	switch limit := e.p.Serving.MaxSANs; {
	case n == 0:
		return fail(ReasonNoSANs, "the request asks for no subject alternative name; a serving certificate must name the node's addresses")
	case n > limit:
		return failf(ReasonTooManySANs, "the request asks for %d subject alternative names, more than serving.maxSANs (%d)", n, limit)
	}
	return pass("the number of SANs is within serving.maxSANs")
}

func (e *evaluation) ipRange() Outcome {
	if !e.r.x509Parsed() {
		return e.notParsed()
	}
	var outside []string
	for _, ip := range e.r.IPAddresses {
		if !e.p.Serving.IPAllowed(ip) {
			outside = append(outside, ip.String())
		}
	}
	if len(outside) > 0 {
		return failf(ReasonIPNotAllowed, "the IP SAN(s) %s are inside none of serving.ipCIDRs", listValues(outside))
	}
	if len(e.r.IPAddresses) == 0 {
		return pass("no IP SANs")
	}
	return pass("every IP SAN is inside serving.ipCIDRs")
}

func (e *evaluation) servingNodeExists() Outcome {
	name := e.r.NodeName
	switch {
	case name == "":
		return skipped("not checked: no valid node name")
	case e.facts.NodeExists == nil:
		return e.need(FactNode)
	case !*e.facts.NodeExists:
		return waitf(ReasonWaitingForNode, "node %s is not registered yet; the serving CSR stays pending and is decided when the Node appears", quote(name))
	}
	return pass("the Node exists")
}

// unprovenDNSNames are the DNS SANs that are no serving.dnsNames name of the
// node: only the Node's own addresses can prove them.
func (e *evaluation) unprovenDNSNames() []string {
	var out []string
	for _, n := range e.r.DNSNames {
		if _, ok := e.p.Serving.DNSNameTemplate(e.r.NodeName, n); !ok {
			out = append(out, n)
		}
	}
	return out
}

// nodeAddrs returns the Node's addresses, or why they cannot be compared
// with the request (ok false).
func (e *evaluation) nodeAddrs() (na *NodeAddresses, why Outcome, ok bool) {
	switch {
	case !e.r.x509Parsed():
		return nil, e.notParsed(), false
	case e.r.NodeName == "":
		return nil, skipped("not checked: no valid node name"), false
	case e.facts.NodeAddresses == nil:
		return nil, e.need(FactAddresses), false
	case !e.facts.NodeAddresses.Exists:
		return nil, skipped("not checked: the Node is not registered"), false
	}
	na = e.facts.NodeAddresses
	if len(na.IPs) == 0 && len(na.DNSNames) == 0 {
		return nil, skipped("not checked: the Node has reported no addresses yet"), false
	}
	return na, Outcome{}, true
}

func (e *evaluation) nodeAddresses() Outcome {
	if e.r.Path != PathServing {
		return Outcome{}
	}
	if e.r.x509Parsed() && len(e.r.IPAddresses) == 0 && len(e.unprovenDNSNames()) == 0 {
		return pass("every SAN is a serving.dnsNames name of the node; no Node address is needed")
	}
	switch {
	case !e.r.x509Parsed():
		return e.notParsed()
	case e.r.NodeName == "":
		return skipped("not checked: no valid node name")
	case e.facts.NodeAddresses == nil:
		return e.need(FactAddresses)
	case !e.facts.NodeAddresses.Exists:
		return skipped("not checked: the Node is not registered")
	}
	na := e.facts.NodeAddresses
	if len(na.IPs) == 0 && len(na.DNSNames) == 0 {
		return waitf(ReasonWaitingForNodeAddresses, "node %s has reported no addresses yet; the serving CSR stays pending and is decided when it does", quote(e.r.NodeName))
	}
	return pass(fmt.Sprintf("the Node reports %d IP and %d DNS addresses", len(na.IPs), len(na.DNSNames)))
}

func (e *evaluation) ipAddresses() Outcome {
	if e.r.Path != PathServing {
		return Outcome{}
	}
	if e.r.x509Parsed() && len(e.r.IPAddresses) == 0 {
		return pass("no IP SANs")
	}
	na, why, ok := e.nodeAddrs()
	if !ok {
		return why
	}
	var foreign []string
	for _, ip := range e.r.IPAddresses {
		if !slices.Contains(na.IPs, ip) {
			foreign = append(foreign, ip.String())
		}
	}
	if len(foreign) > 0 {
		own := "none"
		if len(na.IPs) > 0 {
			own = listValues(ipStrings(na.IPs))
		}
		return failf(ReasonIPNotNodeAddress, "the IP SAN(s) %s are not addresses of node %s (its InternalIP and ExternalIP addresses: %s)", listValues(foreign), quote(e.r.NodeName), own)
	}
	return pass("every IP SAN is one of the Node's InternalIP or ExternalIP addresses")
}

func (e *evaluation) dnsNames() Outcome {
	if e.r.Path != PathServing {
		return Outcome{}
	}
	if !e.r.x509Parsed() {
		return e.notParsed()
	}
	unproven := e.unprovenDNSNames()
	switch {
	case len(e.r.DNSNames) == 0:
		return pass("no DNS SANs")
	case len(unproven) == 0:
		return pass("every DNS SAN is a serving.dnsNames name of the node")
	}
	na, why, ok := e.nodeAddrs()
	if !ok {
		return why
	}
	var foreign []string
	for _, n := range unproven {
		if !slices.Contains(na.DNSNames, strings.ToLower(n)) {
			foreign = append(foreign, n)
		}
	}
	if len(foreign) > 0 {
		return failf(ReasonDNSNameNotNodeAddress, "the DNS SAN(s) %s are neither Hostname, InternalDNS or ExternalDNS addresses of node %s nor serving.dnsNames names of it", listValues(foreign), quote(e.r.NodeName))
	}
	return pass("every DNS SAN is one of the Node's DNS addresses or a serving.dnsNames name")
}

func (e *evaluation) neighbours() Outcome {
	switch {
	case e.r.Path != PathServing:
		return Outcome{}
	case !e.r.x509Parsed():
		return e.notParsed()
	case len(e.r.IPAddresses)+len(e.r.DNSNames) == 0:
		return pass("no SANs")
	case e.facts.Neighbours == nil:
		return e.need(FactNeighbours)
	}
	var taken []string
	for _, key := range e.r.SANKeys() {
		var others []string
		for _, n := range e.facts.Neighbours[key] {
			if n != e.r.NodeName {
				others = append(others, n)
			}
		}
		if len(others) > 0 {
			taken = append(taken, fmt.Sprintf("%s is an address of node %s", quote(key), listValues(others)))
		}
	}
	if len(taken) > 0 {
		if len(taken) > maxListed {
			taken = append(taken[:maxListed], fmt.Sprintf("… %d in all", len(taken)))
		}
		return failf(ReasonAddressOfOtherNode, "%s; a node never gets a certificate for another node's address", strings.Join(taken, "; "))
	}
	return pass("no other Node reports any of the SANs")
}

func (e *evaluation) dnsResolution() Outcome {
	switch {
	case e.r.Path != PathServing || !e.p.Serving.ResolveDNS:
		return Outcome{}
	case !e.r.x509Parsed():
		return e.notParsed()
	case len(e.r.DNSNames) == 0:
		return pass("no DNS SANs to resolve")
	}
	var need Fact
	if e.facts.Resolved == nil {
		need |= FactDNS
	}
	if e.facts.NodeAddresses == nil {
		need |= FactAddresses
	}
	if need != 0 {
		return e.need(need)
	}
	na, why, ok := e.nodeAddrs()
	if !ok {
		return why
	}
	var bad []string
	for _, n := range e.r.DNSNames {
		res, gathered := e.facts.Resolved[NodeAddressKey(n)]
		switch {
		case !gathered:
			return e.need(FactDNS)
		case res.NotFound:
			bad = append(bad, quote(n)+" does not resolve")
		case !slices.ContainsFunc(res.IPs, func(ip netip.Addr) bool { return slices.Contains(na.IPs, ip) }):
			bad = append(bad, fmt.Sprintf("%s resolves to %s", quote(n), listValues(ipStrings(res.IPs))))
		}
	}
	if len(bad) > 0 {
		if len(bad) > maxListed {
			bad = append(bad[:maxListed], fmt.Sprintf("… %d in all", len(bad)))
		}
		return failf(ReasonDNSNameDoesNotResolveToNode, "%s; each DNS SAN must resolve to one of node %s's IP addresses (serving.resolveDNS)", strings.Join(bad, "; "), quote(e.r.NodeName))
	}
	return pass("every DNS SAN resolves to one of the Node's IP addresses")
}

// sanSummary lists the SANs for the approval message.
func (e *evaluation) sanSummary() string {
	vals := make([]string, 0, len(e.r.DNSNames)+len(e.r.IPAddresses))
	vals = append(vals, e.r.DNSNames...)
	vals = append(vals, ipStrings(e.r.IPAddresses)...)
	return listValues(vals)
}
