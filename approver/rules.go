package approver

import (
	"crypto/dsa" //nolint:staticcheck // only to recognise and refuse DSA keys
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"

	"github.com/nodecsr/nodecsr/config"
)

// Rule is one row of the rule table: everything about one check in one
// place. Decide runs the table in order; the order is the priority of the
// reasons (the first violation is the decision's reason).
type Rule struct {
	// Name identifies the check (Check.Name).
	Name string
	// Reasons are the codes the rule can return when it fails or waits.
	Reasons []string
	// Policy names the policy fields the rule reads ("" when none).
	Policy string
	// Field is the CSR field the rule judges, for admission causes.
	Field string
	// Signers are the kinds of CSR the rule applies to; for the others it
	// does not run and is not listed.
	Signers Signer
	// Needs are the cluster facts the rule needs; 0 for a static rule.
	Needs Fact
	// MustPass: nothing is approved unless this rule ran and passed,
	// whatever the policy (a guard against a rule skipped by mistake).
	MustPass bool
	// Gate: a failure makes the CSR none of nodecsr's business (Ignore),
	// not a violation, and stops the evaluation.
	Gate bool
	// Deferred: the rule is costly and runs only when every static rule
	// before and after it passed.
	Deferred bool

	check func(*evaluation) Outcome
}

// Outcome is what a rule's check found. The zero Outcome means the rule
// does not apply to this CSR under this policy; it is not listed.
type Outcome struct {
	Result  CheckResult
	Reason  string
	Message string
}

func pass(msg string) Outcome                  { return Outcome{Result: Pass, Message: msg} }
func fail(reason, msg string) Outcome          { return Outcome{Result: Fail, Reason: reason, Message: msg} }
func wait(reason, msg string) Outcome          { return Outcome{Result: Wait, Reason: reason, Message: msg} }
func skipped(msg string) Outcome               { return Outcome{Result: Skipped, Message: msg} }
func failf(reason, f string, a ...any) Outcome { return fail(reason, fmt.Sprintf(f, a...)) }

// Check names, in rule order.
const (
	CheckSignerName          = "SignerName"
	CheckNotDecided          = "NotDecided"
	CheckRequestSize         = "RequestSize"
	CheckEncoding            = "Encoding"
	CheckKeyAlgorithm        = "KeyAlgorithm"
	CheckKeyCurve            = "KeyCurve"
	CheckKeySize             = "KeySize"
	CheckSignature           = "Signature"
	CheckCommonName          = "CommonName"
	CheckNodeName            = "NodeName"
	CheckRequester           = "Requester"
	CheckOrganization        = "Organization"
	CheckSubjectAttributes   = "SubjectAttributes"
	CheckSubjectAltNames     = "SubjectAltNames"
	CheckExtensions          = "Extensions"
	CheckUsages              = "Usages"
	CheckKeyEncipherment     = "KeyEncipherment"
	CheckLifetime            = "Lifetime"
	CheckNodeNameDenied      = "NodeNameDenied"
	CheckNodeNameAllowed     = "NodeNameAllowed"
	CheckTokenBinding        = "TokenBinding"
	CheckAuthorized          = "Authorized"
	CheckNodeExists          = "NodeExists"
	CheckNewerPendingForNode = "NewerPendingForNode"
	CheckPendingForNode      = "PendingForNode"

	// Serving CSRs only.
	CheckSANTypes      = "SANTypes"
	CheckDNSNameSyntax = "DNSNameSyntax"
	CheckSANCount      = "SANCount"
	CheckIPRange       = "IPRange"
	CheckNodeAddresses = "NodeAddresses"
	CheckIPAddresses   = "IPAddresses"
	CheckDNSNames      = "DNSNames"
	CheckNeighbours    = "Neighbours"
	CheckDNSResolution = "DNSResolution"
)

const (
	fieldRequest    = "spec.request"
	fieldUsages     = "spec.usages"
	fieldUsername   = "spec.username"
	fieldExpiration = "spec.expirationSeconds"
	fieldSigner     = "spec.signerName"
	fieldStatus     = "status"
)

// rules is the table. A new rule is one row here, its check function, its
// reason codes in reasons.go and its lines in docs/reasons.md and
// docs/policy.md.
var rules = [...]Rule{
	{Name: CheckSignerName, Reasons: []string{ReasonNotKubeletClientSigner}, Policy: "serving.enabled", Field: fieldSigner, Signers: signersAll, Gate: true, MustPass: true, check: (*evaluation).signerName},
	{Name: CheckNotDecided, Reasons: []string{ReasonAlreadyDecided}, Field: fieldStatus, Signers: signersAll, Gate: true, MustPass: true, check: (*evaluation).notDecided},
	{Name: CheckRequestSize, Reasons: []string{ReasonRequestTooLarge}, Policy: "keys.maxRequestBytes", Field: fieldRequest, Signers: signersKubelet, MustPass: true, check: (*evaluation).requestSize},
	{Name: CheckEncoding, Reasons: []string{ReasonMalformedRequest}, Field: fieldRequest, Signers: signersKubelet, MustPass: true, check: (*evaluation).encoding},
	{Name: CheckKeyAlgorithm, Reasons: []string{ReasonKeyAlgorithmNotAllowed}, Policy: "keys.rsa.enabled, keys.ecdsa.curves, keys.ed25519", Field: fieldRequest, Signers: signersKubelet, MustPass: true, check: (*evaluation).keyAlgorithm},
	{Name: CheckKeyCurve, Reasons: []string{ReasonKeyCurveNotAllowed}, Policy: "keys.ecdsa.curves", Field: fieldRequest, Signers: signersKubelet, check: (*evaluation).keyCurve},
	{Name: CheckKeySize, Reasons: []string{ReasonKeySizeNotAllowed}, Policy: "keys.rsa.minBits, keys.rsa.maxBits", Field: fieldRequest, Signers: signersKubelet, check: (*evaluation).keySize},
	{Name: CheckSignature, Reasons: []string{ReasonInvalidSignature}, Field: fieldRequest, Signers: signersKubelet, MustPass: true, Deferred: true, check: (*evaluation).signature},
	{Name: CheckCommonName, Reasons: []string{ReasonInvalidCommonName}, Field: fieldRequest, Signers: signersKubelet, MustPass: true, check: (*evaluation).commonName},
	{Name: CheckNodeName, Reasons: []string{ReasonInvalidNodeName}, Field: fieldRequest, Signers: signersKubelet, MustPass: true, check: (*evaluation).nodeName},
	{Name: CheckRequester, Reasons: []string{ReasonRequesterMismatch, ReasonUnrecognizedRequester, ReasonBootstrapDisabled, ReasonServingByBootstrapper, ReasonNodeNotInNodesGroup}, Policy: "bootstrap.enabled, bootstrap.groups, bootstrap.users", Field: fieldUsername, Signers: signersKubelet, MustPass: true, check: (*evaluation).requester},
	{Name: CheckOrganization, Reasons: []string{ReasonInvalidOrganization}, Field: fieldRequest, Signers: signersKubelet, MustPass: true, check: (*evaluation).organization},
	{Name: CheckSubjectAttributes, Reasons: []string{ReasonExtraSubjectAttributes}, Field: fieldRequest, Signers: signersKubelet, MustPass: true, check: (*evaluation).subjectAttributes},
	{Name: CheckSubjectAltNames, Reasons: []string{ReasonSANsNotAllowed}, Field: fieldRequest, Signers: SignerClient, MustPass: true, check: (*evaluation).subjectAltNames},
	{Name: CheckSANTypes, Reasons: []string{ReasonSANTypeNotAllowed}, Field: fieldRequest, Signers: SignerServing, MustPass: true, check: (*evaluation).sanTypes},
	{Name: CheckDNSNameSyntax, Reasons: []string{ReasonWildcardDNSName, ReasonInvalidDNSName}, Field: fieldRequest, Signers: SignerServing, MustPass: true, check: (*evaluation).dnsNameSyntax},
	{Name: CheckSANCount, Reasons: []string{ReasonNoSANs, ReasonTooManySANs}, Policy: "serving.maxSANs", Field: fieldRequest, Signers: SignerServing, MustPass: true, check: (*evaluation).sanCount},
	{Name: CheckIPRange, Reasons: []string{ReasonIPNotAllowed}, Policy: "serving.ipCIDRs", Field: fieldRequest, Signers: SignerServing, MustPass: true, check: (*evaluation).ipRange},
	{Name: CheckExtensions, Reasons: []string{ReasonUnexpectedExtensions}, Field: fieldRequest, Signers: signersKubelet, MustPass: true, check: (*evaluation).extensions},
	{Name: CheckUsages, Reasons: []string{ReasonInvalidUsages}, Field: fieldUsages, Signers: signersKubelet, MustPass: true, check: (*evaluation).usages},
	{Name: CheckKeyEncipherment, Reasons: []string{ReasonKeyEnciphermentRequiresRSA}, Policy: "keys.keyEnciphermentRequiresRSA", Field: fieldUsages, Signers: signersKubelet, check: (*evaluation).keyEncipherment},
	{Name: CheckLifetime, Reasons: []string{ReasonLifetimeTooLong}, Policy: "lifetime.maxExpirationSeconds", Field: fieldExpiration, Signers: signersKubelet, MustPass: true, check: (*evaluation).lifetime},
	{Name: CheckNodeNameDenied, Reasons: []string{ReasonNodeNameDenied}, Policy: "nodeNames.denied", Field: fieldRequest, Signers: signersKubelet, MustPass: true, check: (*evaluation).nodeNameDenied},
	{Name: CheckNodeNameAllowed, Reasons: []string{ReasonNodeNameNotAllowed}, Policy: "nodeNames.allowed", Field: fieldRequest, Signers: signersKubelet, MustPass: true, check: (*evaluation).nodeNameAllowed},
	{Name: CheckTokenBinding, Reasons: []string{ReasonTokenNotBound, ReasonTokenNotBoundToName}, Policy: "bootstrap.requireTokenBinding, bootstrap.tokenBindings", Field: fieldUsername, Signers: SignerClient, check: (*evaluation).tokenBinding},
	{Name: CheckAuthorized, Reasons: []string{ReasonNotAuthorized}, Policy: "serving.subresource", Field: fieldUsername, Signers: signersKubelet, Needs: FactAuthorized, MustPass: true, check: (*evaluation).authorized},
	{Name: CheckNodeExists, Reasons: []string{ReasonNodeAlreadyExists, ReasonWaitingForNode}, Policy: "renewal.requireNodeExists, bootstrap.allowExistingNode, bootstrap.recovery, bootstrap.tokenBindings[].allowExistingNode", Field: fieldRequest, Signers: signersKubelet, Needs: FactNode | FactHeartbeat, check: (*evaluation).nodeExists},
	{Name: CheckNeighbours, Reasons: []string{ReasonAddressOfOtherNode}, Field: fieldRequest, Signers: SignerServing, Needs: FactNeighbours, MustPass: true, check: (*evaluation).neighbours},
	{Name: CheckNodeAddresses, Reasons: []string{ReasonWaitingForNodeAddresses}, Field: fieldRequest, Signers: SignerServing, Needs: FactAddresses, check: (*evaluation).nodeAddresses},
	{Name: CheckIPAddresses, Reasons: []string{ReasonIPNotNodeAddress}, Field: fieldRequest, Signers: SignerServing, Needs: FactAddresses, MustPass: true, check: (*evaluation).ipAddresses},
	{Name: CheckDNSNames, Reasons: []string{ReasonDNSNameNotNodeAddress}, Policy: "serving.dnsNames", Field: fieldRequest, Signers: SignerServing, Needs: FactAddresses, MustPass: true, check: (*evaluation).dnsNames},
	{Name: CheckDNSResolution, Reasons: []string{ReasonDNSNameDoesNotResolveToNode}, Policy: "serving.resolveDNS", Field: fieldRequest, Signers: SignerServing, Needs: FactDNS | FactAddresses, check: (*evaluation).dnsResolution},
	{Name: CheckNewerPendingForNode, Reasons: []string{ReasonSuperseded}, Policy: "limits.collapseDuplicates", Field: fieldRequest, Signers: signersKubelet, Needs: FactPending, check: (*evaluation).newerPending},
	{Name: CheckPendingForNode, Reasons: []string{ReasonTooManyPending}, Policy: "limits.maxPendingPerNode", Field: fieldRequest, Signers: signersKubelet, Needs: FactPending, check: (*evaluation).pendingForNode},
}

// ruleIndex maps a check name to its row.
var ruleIndex = func() map[string]int {
	m := make(map[string]int, len(rules))
	for i := range rules {
		m[rules[i].Name] = i
	}
	return m
}()

// Rules returns a copy of the rule table, in order.
func Rules() []Rule { return append([]Rule(nil), rules[:]...) }

// notParsed is the skip message of a rule that needs the parsed request.
func (e *evaluation) notParsed() Outcome {
	switch {
	case e.r.TooLarge:
		return skipped("not checked: the request is too large to parse")
	case e.r.req == nil && len(e.csr.Spec.Request) == 0:
		return skipped("not checked: the request is empty")
	case e.r.req == nil:
		return skipped("not checked: the request did not parse")
	}
	return skipped("not checked: the key's curve is not supported, so crypto/x509 cannot parse the request")
}

func (e *evaluation) signerName() Outcome {
	switch e.r.Signer {
	case SignerClient:
		return pass("signer is " + KubeletClientSigner)
	case SignerServing:
		if !e.p.Serving.Enabled {
			return failf(ReasonNotKubeletClientSigner, "signer %s is decided only when serving.enabled is true; not ours", KubeletServingSigner)
		}
		return pass("signer is " + KubeletServingSigner + " (serving.enabled)")
	}
	signers := KubeletClientSigner
	if e.p.Serving.Enabled {
		signers += " or " + KubeletServingSigner
	}
	return failf(ReasonNotKubeletClientSigner, "signer %s is not %s; not ours", quote(e.csr.Spec.SignerName), signers)
}

func (e *evaluation) notDecided() Outcome {
	if why := decided(e.csr); why != "" {
		return fail(ReasonAlreadyDecided, why)
	}
	return pass("no Approved, Denied or Failed condition and no certificate")
}

// decided says why a CSR is already decided, or "".
func decided(csr *certificatesv1.CertificateSigningRequest) string {
	if len(csr.Status.Certificate) != 0 {
		return "the CSR already has a certificate"
	}
	for _, c := range csr.Status.Conditions {
		switch c.Type {
		case certificatesv1.CertificateApproved, certificatesv1.CertificateDenied, certificatesv1.CertificateFailed:
			return fmt.Sprintf("the CSR already has a %s condition", c.Type)
		}
	}
	return ""
}

func (e *evaluation) requestSize() Outcome {
	if e.r.TooLarge {
		return failf(ReasonRequestTooLarge, "spec.request is %d bytes, more than keys.maxRequestBytes (%d); it was not parsed", len(e.csr.Spec.Request), e.p.Keys.MaxRequestBytes)
	}
	return pass("spec.request is within keys.maxRequestBytes")
}

func (e *evaluation) encoding() Outcome {
	switch {
	case e.r.TooLarge:
		return e.notParsed()
	case e.r.req == nil:
		return fail(ReasonMalformedRequest, e.r.ParseError)
	}
	return pass("one PEM block holding one well-formed PKCS#10 request")
}

func (e *evaluation) keyAlgorithm() Outcome {
	req := e.r.req
	if req == nil {
		return e.notParsed()
	}
	if req.cr == nil {
		return pass("ECDSA key")
	}
	k := &e.p.Keys
	switch req.cr.PublicKey.(type) {
	case *rsa.PublicKey:
		if !k.RSAEnabled {
			return fail(ReasonKeyAlgorithmNotAllowed, "RSA keys are not allowed (keys.rsa.enabled is false)")
		}
		return pass("RSA key")
	case *ecdsa.PublicKey:
		if len(k.ECDSACurves) == 0 {
			return fail(ReasonKeyAlgorithmNotAllowed, "ECDSA keys are not allowed (keys.ecdsa.curves is empty)")
		}
		return pass("ECDSA key")
	case ed25519.PublicKey:
		if !k.Ed25519 {
			return fail(ReasonKeyAlgorithmNotAllowed, "Ed25519 keys are not allowed (keys.ed25519 is false)")
		}
		return pass("Ed25519 key")
	case *dsa.PublicKey:
		return fail(ReasonKeyAlgorithmNotAllowed, "DSA keys are never allowed")
	case *ecdh.PublicKey:
		return fail(ReasonKeyAlgorithmNotAllowed, "X25519 keys cannot sign and are never allowed")
	}
	return failf(ReasonKeyAlgorithmNotAllowed, "the public key algorithm %s (%s) is not supported", e.r.KeyAlgorithm, truncate(req.tbs.PublicKey.Algorithm.Algorithm.String()))
}

func (e *evaluation) keyCurve() Outcome {
	req := e.r.req
	switch {
	case req == nil || e.result(CheckKeyAlgorithm) != Pass:
		return Outcome{}
	case req.cr == nil:
		return failf(ReasonKeyCurveNotAllowed, "the ECDSA key is on curve %s, which is not supported; allowed: %s", req.unsupportedCurve, e.curveList())
	}
	pub, ok := req.cr.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return Outcome{}
	}
	curve := pub.Curve.Params().Name
	if !e.p.Keys.CurveAllowed(config.Curve(curve)) {
		return failf(ReasonKeyCurveNotAllowed, "the ECDSA key is on curve %s; allowed: %s (keys.ecdsa.curves)", curve, e.curveList())
	}
	return pass("ECDSA curve in keys.ecdsa.curves")
}

func (e *evaluation) curveList() string {
	curves := e.p.Keys.ECDSACurves
	if len(curves) == 0 {
		return "none"
	}
	s := make([]string, len(curves))
	for i, c := range curves {
		s[i] = string(c)
	}
	return strings.Join(s, ", ")
}

func (e *evaluation) keySize() Outcome {
	if !e.r.x509Parsed() || e.result(CheckKeyAlgorithm) != Pass {
		return Outcome{}
	}
	pub, ok := e.r.req.cr.PublicKey.(*rsa.PublicKey)
	if !ok {
		return Outcome{}
	}
	bits, k := pub.N.BitLen(), &e.p.Keys
	if bits < k.RSAMinBits || bits > k.RSAMaxBits {
		return failf(ReasonKeySizeNotAllowed, "the RSA key has %d bits; allowed: %d to %d (keys.rsa)", bits, k.RSAMinBits, k.RSAMaxBits)
	}
	return pass("RSA key size within keys.rsa")
}

func (e *evaluation) signature() Outcome {
	switch {
	case !e.r.x509Parsed():
		return e.notParsed()
	case e.result(CheckKeyAlgorithm) != Pass || !e.passedOrNA(CheckKeyCurve, CheckKeySize):
		return skipped("not verified: the key is not allowed")
	}
	switch alg := e.r.req.cr.SignatureAlgorithm; alg {
	case x509.MD2WithRSA, x509.MD5WithRSA, x509.SHA1WithRSA, x509.DSAWithSHA1, x509.DSAWithSHA256, x509.ECDSAWithSHA1:
		return failf(ReasonInvalidSignature, "the request is signed with %s, a weak algorithm", alg)
	}
	if err := e.r.SignatureError(); err != nil {
		return fail(ReasonInvalidSignature, "the signature does not verify with the request's own public key: "+truncate(err.Error()))
	}
	return pass("signature verifies with the request's public key")
}

func (e *evaluation) commonName() Outcome {
	if e.r.req == nil {
		return e.notParsed()
	}
	if name, ok := strings.CutPrefix(e.r.CommonName, nodeUserPrefix); !ok || name == "" {
		return failf(ReasonInvalidCommonName, "the common name is %s; want system:node:<node name>", quote(e.r.CommonName))
	}
	return pass("common name is system:node:<name>")
}

func (e *evaluation) nodeName() Outcome {
	switch e.result(CheckCommonName) {
	case Fail:
		return skipped("not checked: the common name is invalid")
	case Skipped:
		return e.notParsed()
	}
	if e.r.NodeName == "" {
		name := strings.TrimPrefix(e.r.CommonName, nodeUserPrefix)
		return failf(ReasonInvalidNodeName, "node name %s is not a valid DNS-1123 subdomain (lowercase letters, digits, '-' and '.'; at most 253 characters)", quote(name))
	}
	return pass("node name is a valid DNS-1123 subdomain")
}

// validNodeName reports whether name is a valid DNS-1123 subdomain.
func validNodeName(name string) bool {
	return name != "" && len(name) <= maxNodeNameLen && len(validation.IsDNS1123Subdomain(name)) == 0
}

func (e *evaluation) requester() Outcome {
	if e.r.Signer == SignerServing {
		return e.servingRequester()
	}
	u := e.csr.Spec.Username
	isNode := strings.HasPrefix(u, nodeUserPrefix)
	switch {
	case isNode && e.r.req == nil:
		return skipped("not checked: the request did not parse, so the requester cannot be compared with the common name")
	case e.r.Path == PathRenewal:
		return pass("the requester is the node named in the request")
	case isNode:
		return failf(ReasonRequesterMismatch, "node %s asked for a certificate as %s; a node can never ask for another node's name", quote(u), quote(e.r.CommonName))
	case e.r.Path == PathBootstrap && !e.p.Bootstrap.Enabled:
		return failf(ReasonBootstrapDisabled, "requester %s is a bootstrapper (%s) but bootstrap is disabled (bootstrap.enabled is false)", quote(u), quote(e.r.BootstrapBy))
	case e.r.Path == PathBootstrap:
		return pass("the requester is a bootstrapper (" + truncate(e.r.BootstrapBy) + ")")
	}
	msg := fmt.Sprintf("requester %s is neither the node named in the request nor a bootstrapper (groups: %s", quote(u), truncate(strings.Join(e.p.Bootstrap.Groups, ", ")))
	if len(e.p.Bootstrap.Users) > 0 {
		msg += "; users: " + truncate(strings.Join(e.p.Bootstrap.Users, ", "))
	}
	return fail(ReasonUnrecognizedRequester, msg+"); a requester granted certificatesigningrequests/nodeclient can be named in bootstrap.users")
}

// subject summarises the subject's RDNs.
func (e *evaluation) subject() (orgs []any, cns int, multi bool, extra []string) {
	for _, rdn := range e.r.req.rdns {
		if len(rdn) != 1 {
			multi = true
		}
		for _, atv := range rdn {
			switch {
			case atv.Type.Equal(oidCommonName):
				cns++
			case atv.Type.Equal(oidOrganization):
				orgs = append(orgs, atv.Value)
			default:
				extra = appendUnique(extra, attributeName(atv.Type))
			}
		}
	}
	return orgs, cns, multi, extra
}

func (e *evaluation) organization() Outcome {
	if e.r.req == nil {
		return e.notParsed()
	}
	orgs, _, _, _ := e.subject()
	switch {
	case len(orgs) == 1 && orgs[0] == any(nodesGroup):
		return pass("one organization, system:nodes")
	case len(orgs) == 0:
		return fail(ReasonInvalidOrganization, "the subject has no organization; want exactly one, system:nodes")
	case len(orgs) == 1:
		return failf(ReasonInvalidOrganization, "the organization is %s; want system:nodes", quoteValue(orgs[0]))
	}
	vals := make([]string, 0, 5)
	for i, o := range orgs {
		if i == 4 {
			vals = append(vals, "…")
			break
		}
		vals = append(vals, quoteValue(o))
	}
	return failf(ReasonInvalidOrganization, "the subject has %d organizations (%s); want exactly one, system:nodes", len(orgs), strings.Join(vals, ", "))
}

func (e *evaluation) subjectAttributes() Outcome {
	if e.r.req == nil {
		return e.notParsed()
	}
	_, cns, multi, extra := e.subject()
	if !multi && cns <= 1 && len(extra) == 0 {
		return pass("nothing in the subject but one common name and one organization")
	}
	if len(extra) > 6 {
		extra = append(extra[:6], "…")
	}
	found := append(make([]string, 0, len(extra)+2), extra...)
	if cns > 1 {
		found = append(found, fmt.Sprintf("%d common names", cns))
	}
	if multi {
		found = append(found, "a multi-valued RDN")
	}
	return fail(ReasonExtraSubjectAttributes, "the subject must hold only one common name and one organization; it also has "+strings.Join(found, ", "))
}

func appendUnique(s []string, v string) []string {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}

// attributeNames names the subject attribute types worth naming.
var attributeNames = map[string]string{
	"2.5.4.3":                    "CN",
	"2.5.4.4":                    "SN",
	"2.5.4.5":                    "serialNumber",
	"2.5.4.6":                    "C",
	"2.5.4.7":                    "L",
	"2.5.4.8":                    "ST",
	"2.5.4.9":                    "street",
	"2.5.4.10":                   "O",
	"2.5.4.11":                   "OU",
	"2.5.4.12":                   "title",
	"2.5.4.17":                   "postalCode",
	"2.5.4.42":                   "GN",
	"0.9.2342.19200300.100.1.1":  "UID",
	"0.9.2342.19200300.100.1.25": "DC",
	"1.2.840.113549.1.9.1":       "emailAddress",
}

func attributeName(oid asn1.ObjectIdentifier) string {
	if n, ok := attributeNames[oid.String()]; ok {
		return n
	}
	return truncate(oid.String())
}

func (e *evaluation) subjectAltNames() Outcome {
	if !e.r.x509Parsed() {
		return e.notParsed()
	}
	cr := e.r.req.cr
	var sans []string
	for _, n := range []struct {
		kind  string
		count int
	}{{"DNS", len(cr.DNSNames)}, {"IP", len(cr.IPAddresses)}, {"email", len(cr.EmailAddresses)}, {"URI", len(cr.URIs)}} {
		if n.count > 0 {
			sans = append(sans, fmt.Sprintf("%d %s", n.count, n.kind))
		}
	}
	if len(sans) > 0 {
		return failf(ReasonSANsNotAllowed, "the request asks for subject alternative names (%s); a kubelet client certificate has none", strings.Join(sans, ", "))
	}
	for _, ext := range cr.Extensions {
		if ext.Id.Equal(oidExtensionSAN) {
			return fail(ReasonSANsNotAllowed, "the request carries a subject alternative name extension; a kubelet client certificate has none")
		}
	}
	return pass("no subject alternative names")
}

func (e *evaluation) extensions() Outcome {
	if !e.r.x509Parsed() {
		return e.notParsed()
	}
	req := e.r.req
	var others []string
	for _, ext := range req.cr.Extensions {
		if !ext.Id.Equal(oidExtensionSAN) {
			others = append(others, "extension "+truncate(ext.Id.String()))
		}
	}
	if v := req.tbs.Version; v != 0 {
		others = append(others, fmt.Sprintf("version %d (want 0, PKCS#10 v1)", v))
	}
	extReqs := 0
	for _, raw := range req.tbs.RawAttributes {
		var a attribute
		if rest, err := asn1.Unmarshal(raw.FullBytes, &a); err != nil || len(rest) != 0 {
			others = append(others, "an unparseable attribute")
			continue
		}
		if a.Type.Equal(oidExtensionRequest) {
			extReqs++
			continue
		}
		others = append(others, "attribute "+truncate(a.Type.String()))
	}
	if extReqs > 1 {
		others = append(others, fmt.Sprintf("%d extension requests", extReqs))
	}
	if len(others) == 0 {
		return pass("no extensions or attributes besides SAN")
	}
	if len(others) > 6 {
		others = append(others[:6], "…")
	}
	return fail(ReasonUnexpectedExtensions, "the request carries "+strings.Join(others, ", ")+"; kubelets request none")
}

// usageCounts counts the requested usages.
func (e *evaluation) usageCounts() (ds, ke, ca, other int) {
	for _, u := range e.csr.Spec.Usages {
		switch u {
		case certificatesv1.UsageDigitalSignature:
			ds++
		case certificatesv1.UsageKeyEncipherment:
			ke++
		case certificatesv1.UsageClientAuth:
			ca++
		default:
			other++
		}
	}
	return ds, ke, ca, other
}

func (e *evaluation) usages() Outcome {
	if e.r.Signer == SignerServing {
		return e.servingUsages()
	}
	if ds, ke, ca, other := e.usageCounts(); ds == 1 && ca == 1 && ke <= 1 && other == 0 {
		return pass("usages are digital signature and client auth (and optionally key encipherment)")
	}
	return failf(ReasonInvalidUsages, "usages are %s; want exactly [digital signature, client auth] or [digital signature, key encipherment, client auth]", e.usageList())
}

func (e *evaluation) usageList() string {
	us := e.csr.Spec.Usages
	if len(us) == 0 {
		return "empty"
	}
	parts := make([]string, 0, min(len(us), 9))
	for i, u := range us {
		if i == 8 {
			parts = append(parts, fmt.Sprintf("… %d in all", len(us)))
			break
		}
		parts = append(parts, quote(string(u)))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func (e *evaluation) keyEncipherment() Outcome {
	if _, ke, _, _ := e.usageCounts(); !e.p.Keys.KeyEnciphermentRequiresRSA || ke == 0 {
		return Outcome{}
	}
	switch {
	case e.r.req == nil:
		return e.notParsed()
	case !strings.HasPrefix(e.r.KeyAlgorithm, "RSA-"):
		return failf(ReasonKeyEnciphermentRequiresRSA, "key encipherment is requested with a %s key; keys.keyEnciphermentRequiresRSA allows it only with RSA", e.r.KeyAlgorithm)
	}
	return pass("key encipherment with an RSA key")
}

func (e *evaluation) lifetime() Outcome {
	limit, exp := e.p.Lifetime.MaxExpirationSeconds, e.csr.Spec.ExpirationSeconds
	switch {
	case limit <= 0:
		return pass("no lifetime cap (lifetime.maxExpirationSeconds is 0)")
	case exp == nil:
		return pass("expirationSeconds is not set; the signer's default duration applies")
	case *exp > limit:
		return failf(ReasonLifetimeTooLong, "expirationSeconds is %d, more than lifetime.maxExpirationSeconds (%d)", *exp, limit)
	}
	return pass("expirationSeconds within lifetime.maxExpirationSeconds")
}

// noName is the skip of a rule that needs a valid node name.
func (e *evaluation) noName() Outcome {
	if e.r.req == nil {
		return e.notParsed()
	}
	return skipped("not checked: no valid node name")
}

func (e *evaluation) nodeNameDenied() Outcome {
	if e.r.NodeName == "" {
		return e.noName()
	}
	if pat, denied := e.p.NodeNameDenied(e.r.NodeName); denied {
		return failf(ReasonNodeNameDenied, "node name %s matches denied pattern %s (nodeNames.denied)", quote(e.r.NodeName), quote(pat))
	}
	return pass("node name matches no nodeNames.denied pattern")
}

func (e *evaluation) nodeNameAllowed() Outcome {
	if e.r.NodeName == "" {
		return e.noName()
	}
	if !e.p.NodeNameAllowed(e.r.NodeName) {
		return failf(ReasonNodeNameNotAllowed, "node name %s matches none of nodeNames.allowed", quote(e.r.NodeName))
	}
	return pass("node name allowed by nodeNames.allowed")
}

const msgTokenBound = "node name allowed by the token's binding"

// tokenRule returns the binding of the requester's bootstrap token.
func (e *evaluation) tokenRule() (id string, rule config.TokenRule, isToken, bound bool) {
	id, isToken = strings.CutPrefix(e.csr.Spec.Username, bootstrapapi.BootstrapUserPrefix)
	if isToken {
		rule, bound = e.p.Bootstrap.TokenBindings[id]
	}
	return id, rule, isToken, bound
}

func (e *evaluation) tokenBinding() Outcome {
	if e.r.Path != PathBootstrap || !e.p.Bootstrap.Enabled {
		return Outcome{}
	}
	id, rule, isToken, bound := e.tokenRule()
	require := e.p.Bootstrap.RequireTokenBinding
	switch {
	case !bound && require && !isToken:
		return failf(ReasonTokenNotBound, "requester %s is not a bootstrap token (system:bootstrap:<id>) and bootstrap.requireTokenBinding is true", quote(e.csr.Spec.Username))
	case !bound && require:
		return failf(ReasonTokenNotBound, "bootstrap token %s has no entry in bootstrap.tokenBindings and bootstrap.requireTokenBinding is true", quote(id))
	case !bound:
		return pass("no binding for this requester; bootstrap.requireTokenBinding is false")
	case e.r.NodeName == "":
		return skipped("not checked: no valid node name")
	case !rule.Allows(e.r.NodeName):
		return failf(ReasonTokenNotBoundToName, "bootstrap token %s may not claim node name %s (bootstrap.tokenBindings)", quote(id), quote(e.r.NodeName))
	}
	return pass(msgTokenBound)
}

func (e *evaluation) authorized() Outcome {
	sub := e.r.Subresource
	switch {
	case !e.recognised():
		return Outcome{}
	case e.facts.Authorized == nil:
		return e.need(FactAuthorized)
	case !*e.facts.Authorized:
		return failf(ReasonNotAuthorized, "SubjectAccessReview: %s may not create certificatesigningrequests/%s", quote(e.csr.Spec.Username), sub)
	}
	return pass("SubjectAccessReview allowed create certificatesigningrequests/" + sub)
}

// recognised reports whether the requester is on a path of the CSR's
// signer: renewal or bootstrap for a client CSR, the node itself for a
// serving CSR.
func (e *evaluation) recognised() bool {
	if e.r.Signer == SignerServing {
		return e.r.Path == PathServing
	}
	return e.r.Path != PathUnknown
}

func (e *evaluation) nodeExists() Outcome {
	b := &e.p.Bootstrap
	switch {
	case e.r.Path == PathServing:
		return e.servingNodeExists()
	case e.r.Signer == SignerServing:
		return Outcome{}
	}
	switch e.r.Path {
	case PathRenewal:
		if !e.p.Renewal.RequireNodeExists {
			return Outcome{}
		}
	case PathBootstrap:
		if b.AllowExistingNode {
			return Outcome{}
		}
	default:
		return Outcome{}
	}
	name := e.r.NodeName
	switch {
	case name == "":
		return skipped("not checked: no valid node name")
	case e.facts.NodeExists == nil:
		need := FactNode
		if e.r.Path == PathBootstrap && b.RecoveryEnabled {
			need |= FactHeartbeat
		}
		return e.need(need)
	case e.r.Path == PathRenewal && !*e.facts.NodeExists:
		return waitf(ReasonWaitingForNode, "node %s is not registered yet; the renewal stays pending and is decided when the Node appears (renewal.requireNodeExists)", quote(name))
	case e.r.Path == PathRenewal:
		return pass("the Node exists")
	case !*e.facts.NodeExists:
		return pass("no Node of that name exists yet")
	}
	// A bootstrap request for an existing Node: a takeover, or the node
	// coming back after its certificate expired.
	if _, rule, _, bound := e.tokenRule(); bound && rule.AllowExistingNode && rule.Allows(name) {
		e.recovered = "the Node exists and the token's binding allows re-admitting it (bootstrap.tokenBindings[].allowExistingNode)"
		return pass(e.recovered)
	}
	if !b.RecoveryEnabled {
		return failf(ReasonNodeAlreadyExists, "node %s already exists; a bootstrap request for an existing node's name is a takeover (bootstrap.allowExistingNode is false, bootstrap.recovery.enabled is false)", quote(name))
	}
	if e.facts.NodeHeartbeat == nil || e.facts.Now.IsZero() {
		return e.need(FactHeartbeat)
	}
	age := e.facts.Now.Sub(*e.facts.NodeHeartbeat)
	if age < b.StaleAfter {
		return failf(ReasonNodeAlreadyExists, "node %s already exists and its kubelet was alive %s ago (heartbeat newer than bootstrap.recovery.staleAfterSeconds, %s); a bootstrap request for a live node's name is a takeover", quote(name), roundAge(age), b.StaleAfter)
	}
	e.recovered = fmt.Sprintf("the Node exists but its last heartbeat was %s ago (older than bootstrap.recovery.staleAfterSeconds, %s): the node is recovering", roundAge(age), b.StaleAfter)
	return pass(e.recovered)
}

func waitf(reason, f string, a ...any) Outcome { return wait(reason, fmt.Sprintf(f, a...)) }

// roundAge prints an age to the second (never negative: a heartbeat from a
// clock ahead of ours counts as now).
func roundAge(d time.Duration) time.Duration { return max(d, 0).Round(time.Second) }

func (e *evaluation) newerPending() Outcome {
	switch {
	case !e.recognised() || !e.p.Limits.CollapseDuplicates:
		return Outcome{}
	case e.facts.NewerPendingForNode == nil:
		return e.need(FactPending)
	case *e.facts.NewerPendingForNode:
		return failf(ReasonSuperseded, "a newer pending or approved CSR for node %s from the same requester exists; the newest wins (limits.collapseDuplicates)", quote(e.r.NodeName))
	}
	return pass("no newer pending CSR for this node")
}

// pendingForNode applies limits.maxPendingPerNode. With collapseDuplicates
// the older requests are denied as Superseded, so the newest must not be
// refused for their number: the limit applies only when duplicates are kept.
func (e *evaluation) pendingForNode() Outcome {
	limit := e.p.Limits.MaxPendingPerNode
	switch {
	case !e.recognised() || limit <= 0 || e.p.Limits.CollapseDuplicates:
		return Outcome{}
	case e.facts.PendingForNode == nil:
		return e.need(FactPending)
	case *e.facts.PendingForNode >= limit:
		return failf(ReasonTooManyPending, "%d older CSRs for node %s are pending; the limit is %d (limits.maxPendingPerNode)", *e.facts.PendingForNode, quote(e.r.NodeName), limit)
	}
	return pass("pending CSRs for this node within limits.maxPendingPerNode")
}
