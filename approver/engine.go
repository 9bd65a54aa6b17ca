// Package approver decides kubelet client certificate requests.
//
// Evaluate is the single source of truth: a pure function of the policy, the
// CSR and cluster facts gathered by the caller. The reconciler, the webhook
// and the explain command all call it. It does no I/O.
package approver

import (
	"bytes"
	"crypto/dsa" //nolint:staticcheck // only to recognise and refuse DSA keys
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	certificatesv1 "k8s.io/api/certificates/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"

	"github.com/nodecsr/nodecsr/config"
)

// Verdict is what to do with a CSR.
type Verdict string

const (
	// Approve: write an Approved condition.
	Approve Verdict = "Approve"
	// Deny: write a Denied condition.
	Deny Verdict = "Deny"
	// Ignore: write nothing; the CSR is not ours, already decided, or left
	// pending (LeavePending, rate limit, facts missing).
	Ignore Verdict = "Ignore"
)

// Path is the way a request is recognised, as in kube-controller-manager.
type Path string

const (
	// PathRenewal: the requester is system:node:<name>, the name it asks
	// for. Authorized with the selfnodeclient subresource.
	PathRenewal Path = "Renewal"
	// PathBootstrap: the requester is in a bootstrap group. Authorized with
	// the nodeclient subresource.
	PathBootstrap Path = "Bootstrap"
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
	// Skipped: the check did not run, because a fact was not gathered or a
	// check it depends on failed; Check.Message says which.
	Skipped CheckResult = "Skipped"
)

// Check names, in the order Evaluate runs them. The fact checks are named
// after the Facts field they read.
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
	CheckRateLimited         = "RateLimited"
)

// Facts are cluster facts the caller gathered. A nil field was not
// gathered: its check is Skipped and listed in Decision.Skipped, and a CSR
// that needs it cannot be approved (Ignore, FactsIncomplete). Static
// violations still deny without any facts.
//
// Count pending CSRs per node name (NodeNameOf) and, so that one requester
// cannot supersede or starve another's request, per requester
// (spec.username) as well.
type Facts struct {
	// Authorized is the SubjectAccessReview result for the requester and
	// the path's subresource (SubresourceFor(RequestPath(...))): create
	// certificatesigningrequests/selfnodeclient or .../nodeclient.
	Authorized *bool
	// NodeExists says whether a Node named NodeNameOf(csr) exists.
	NodeExists *bool
	// NewerPendingForNode says whether another CSR for the same node name,
	// from the same requester, pending or approved, is newer than this one.
	NewerPendingForNode *bool
	// PendingForNode is the number of other pending CSRs for the same node
	// name, from the same requester, that are older than this one.
	PendingForNode *int
	// RateLimited says whether the requester exceeded bootstrap.rateLimit
	// (the caller keeps the buckets).
	RateLimited *bool
}

// Input is what Evaluate decides on.
type Input struct {
	// Policy to apply; nil means config.Default().
	Policy *config.Policy
	// CSR to decide. It is not modified.
	CSR *certificatesv1.CertificateSigningRequest
	// Facts gathered by the caller.
	Facts Facts
	// Parsed, when set, is Decision.Parsed of an earlier Evaluate of the
	// same request: the parse and the signature verification are reused
	// when the request bytes are the same, so a second pass with the
	// facts (the reconciler's) costs no second signature check.
	Parsed *Parsed
}

// Parsed is a request's parsed form and signature verdict, carried from one
// Evaluate to the next. It is opaque and read-only.
type Parsed struct {
	raw     []byte
	req     *request
	sigErr  error
	sigDone bool
}

// Check is one rule applied to the CSR.
type Check struct {
	// Name identifies the check (the Check* constants).
	Name string
	// Result is Pass, Fail or Skipped.
	Result CheckResult
	// Reason is the reason code when Result is Fail.
	Reason string
	// Message says what was found, for humans. It quotes at most 64
	// characters of any value taken from the request.
	Message string
}

// Decision is the outcome of Evaluate.
type Decision struct {
	// Verdict is Approve, Deny or Ignore.
	Verdict Verdict
	// Reason is a stable reason code (reasons.go): the first violation in
	// priority order, or why the CSR is approved or ignored.
	Reason string
	// Message explains Reason for humans.
	Message string
	// Path is how the requester was recognised.
	Path Path
	// NodeName is the name claimed (the common name after system:node:),
	// set only when it is a valid DNS-1123 subdomain.
	NodeName string
	// Checks lists every check in the order it ran.
	Checks []Check
	// Violations lists every failed check, in priority order: every rule
	// the CSR breaks. The pre-checks SignerName and NotDecided, which make
	// a CSR none of nodecsr's business (Ignore), are not violations, and
	// RateLimited is the one violation that never denies.
	Violations []Check
	// Skipped names the checks that did not run.
	Skipped []string
	// KeyAlgorithm describes the public key: ECDSA-P256, RSA-2048, Ed25519,
	// DSA, X25519 or Unknown; empty when the request did not parse.
	KeyAlgorithm string
	// PublicKeySHA256 is the hex SHA-256 of the DER SubjectPublicKeyInfo;
	// empty when the request did not parse.
	PublicKeySHA256 string
	// PolicyDigest is the digest of the policy applied.
	PolicyDigest string
	// Parsed can be handed to the next Evaluate of the same CSR (Input.Parsed).
	Parsed *Parsed
}

// Violated reports whether the decision lists a violation with reason.
func (d *Decision) Violated(reason string) bool {
	for _, v := range d.Violations {
		if v.Reason == reason {
			return true
		}
	}
	return false
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
// SubjectAccessReview for a path checks: selfnodeclient for renewal,
// nodeclient for bootstrap, "" for an unknown path.
func SubresourceFor(p Path) string {
	switch p {
	case PathRenewal:
		return "selfnodeclient"
	case PathBootstrap:
		return "nodeclient"
	}
	return ""
}

var defaultPolicy = sync.OnceValue(config.Default)

// RequestPath tells the caller which path a CSR takes, and so which
// SubjectAccessReview to run, without evaluating it. It agrees with
// Evaluate's Decision.Path. A bootstrapper is PathBootstrap even when
// bootstrap is disabled (Evaluate then denies it).
func RequestPath(p *config.Policy, csr *certificatesv1.CertificateSigningRequest) Path {
	if csr == nil {
		return PathUnknown
	}
	if p == nil {
		p = defaultPolicy()
	}
	if prepared, err := p.Prepared(); err == nil {
		p = prepared
	}
	cn, known := "", false
	if strings.HasPrefix(csr.Spec.Username, nodeUserPrefix) && len(csr.Spec.Request) <= p.MaxRequestBytes() {
		// The same parse as Evaluate's, so that the two always agree.
		if req, err := parseRequest(csr.Spec.Request); err == nil {
			cn, _ = commonName(req.rdns)
			known = true
		}
	}
	path, _ := classify(p, csr.Spec.Username, csr.Spec.Groups, cn, known)
	return path
}

// classify recognises the requester. For a system:node: user it needs the
// common name (known); it returns the bootstrap group that matched, if any.
func classify(p *config.Policy, username string, groups []string, cn string, known bool) (Path, string) {
	if strings.HasPrefix(username, nodeUserPrefix) {
		if known && username == cn {
			return PathRenewal, ""
		}
		return PathUnknown, ""
	}
	for _, g := range groups {
		if p.IsBootstrapGroup(g) {
			return PathBootstrap, g
		}
	}
	return PathUnknown, ""
}

// Evaluate decides a CSR. It runs every check that can run, lists every
// violation, and returns the first in priority order as the reason. Any
// violation denies (or, with onViolation LeavePending, ignores); a CSR
// without violations is approved only when every fact it needs was
// gathered. spec.mode does not change the decision: in DryRun the caller
// records it instead of writing it.
func Evaluate(in Input) Decision {
	csr := in.CSR
	if csr == nil {
		return Decision{Verdict: Ignore, Reason: ReasonMalformedRequest, Message: "no CertificateSigningRequest was given"}
	}
	p := in.Policy
	if p == nil {
		p = defaultPolicy()
	}
	p, err := p.Prepared()
	if err != nil {
		return Decision{Verdict: Ignore, Reason: ReasonInvalidPolicy, Message: "the policy is unusable: " + truncate(err.Error())}
	}
	e := &evaluation{p: p, csr: csr, facts: in.Facts, reuse: in.Parsed}
	e.d.Checks = make([]Check, 0, 26)
	e.d.PolicyDigest = p.Digest()

	if csr.Spec.SignerName != certificatesv1.KubeAPIServerClientKubeletSignerName {
		e.ignore(CheckSignerName, ReasonNotKubeletClientSigner,
			fmt.Sprintf("signer %s is not %s; not ours", quote(csr.Spec.SignerName), certificatesv1.KubeAPIServerClientKubeletSignerName))
		return e.d
	}
	e.pass(CheckSignerName, "signer is "+certificatesv1.KubeAPIServerClientKubeletSignerName)
	if why := decided(csr); why != "" {
		e.ignore(CheckNotDecided, ReasonAlreadyDecided, why)
		return e.d
	}
	e.pass(CheckNotDecided, "no Approved, Denied or Failed condition and no certificate")

	e.parse()
	e.key()
	e.signature()
	e.commonName()
	e.requester()
	e.subject()
	e.extensions()
	e.usages()
	e.lifetime()
	e.nodeNamePolicy()
	e.tokenBinding()
	e.clusterFacts()
	e.finish()
	return e.d
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

// evaluation carries the state of one Evaluate call.
type evaluation struct {
	p     *config.Policy
	csr   *certificatesv1.CertificateSigningRequest
	facts Facts
	d     Decision

	reuse     *Parsed  // an earlier Evaluate's parse, if any
	req       *request // nil when the request did not parse
	parseWhy  string   // why dependent checks are skipped
	keyOK     bool     // the key passed every key check
	isRSA     bool
	cn        string // the common name, when req.cr != nil
	name      string // the node name, when valid
	bootGroup string // the bootstrap group that matched
	missing   []string
}

func (e *evaluation) pass(name, msg string) {
	e.d.Checks = append(e.d.Checks, Check{Name: name, Result: Pass, Message: msg})
}

func (e *evaluation) fail(name, reason, msg string) {
	c := Check{Name: name, Result: Fail, Reason: reason, Message: msg}
	e.d.Checks = append(e.d.Checks, c)
	e.d.Violations = append(e.d.Violations, c)
}

// ignore records a failed pre-check that makes the CSR none of nodecsr's
// business: it is not a violation, and the verdict is Ignore.
func (e *evaluation) ignore(name, reason, msg string) {
	e.d.Checks = append(e.d.Checks, Check{Name: name, Result: Fail, Reason: reason, Message: msg})
	e.d.Verdict, e.d.Reason, e.d.Message = Ignore, reason, msg
}

func (e *evaluation) skip(name, msg string) {
	e.d.Checks = append(e.d.Checks, Check{Name: name, Result: Skipped, Message: msg})
	e.d.Skipped = append(e.d.Skipped, name)
}

// parsed reports whether crypto/x509 parsed the request.
func (e *evaluation) parsed() bool { return e.req != nil && e.req.cr != nil }

func (e *evaluation) parse() {
	raw := e.csr.Spec.Request
	maxBytes := e.p.MaxRequestBytes()
	if len(raw) > maxBytes {
		e.fail(CheckRequestSize, ReasonRequestTooLarge,
			fmt.Sprintf("spec.request is %d bytes, more than keys.maxRequestBytes (%d); it was not parsed", len(raw), maxBytes))
		e.parseWhy = "not checked: the request is too large to parse"
		e.skip(CheckEncoding, e.parseWhy)
		return
	}
	e.pass(CheckRequestSize, "spec.request is within keys.maxRequestBytes")
	if len(raw) == 0 {
		e.parseWhy = "not checked: the request is empty"
		e.fail(CheckEncoding, ReasonMalformedRequest, "spec.request is empty")
		return
	}
	var req *request
	var err error
	if e.reuse != nil && e.reuse.req != nil && bytes.Equal(e.reuse.raw, raw) {
		req = e.reuse.req
	} else {
		e.reuse = nil
		req, err = parseRequest(raw)
	}
	if err != nil {
		e.parseWhy = "not checked: the request did not parse"
		e.fail(CheckEncoding, ReasonMalformedRequest, err.Error())
		return
	}
	e.req = req
	e.d.Parsed = &Parsed{raw: raw, req: req}
	if e.reuse != nil {
		e.d.Parsed.sigErr, e.d.Parsed.sigDone = e.reuse.sigErr, e.reuse.sigDone
	}
	e.cn, _ = commonName(req.rdns)
	sum := sha256.Sum256(req.tbs.PublicKey.Raw)
	e.d.PublicKeySHA256 = hex.EncodeToString(sum[:])
	if req.cr == nil {
		e.parseWhy = "not checked: the key's curve is not supported, so crypto/x509 cannot parse the request"
		e.d.KeyAlgorithm = "ECDSA-unknown"
	}
	e.pass(CheckEncoding, "one PEM block holding one well-formed PKCS#10 request")
}

func (e *evaluation) key() {
	if e.req == nil {
		e.skip(CheckKeyAlgorithm, e.parseWhy)
		return
	}
	if e.req.cr == nil {
		e.pass(CheckKeyAlgorithm, "ECDSA key")
		e.fail(CheckKeyCurve, ReasonKeyCurveNotAllowed,
			fmt.Sprintf("the ECDSA key is on curve %s, which is not supported; allowed: %s", e.req.unsupportedCurve, e.curveList()))
		return
	}
	switch pub := e.req.cr.PublicKey.(type) {
	case *rsa.PublicKey:
		e.isRSA = true
		bits := pub.N.BitLen()
		e.d.KeyAlgorithm = "RSA-" + strconv.Itoa(bits)
		if !e.p.RSAEnabled() {
			e.fail(CheckKeyAlgorithm, ReasonKeyAlgorithmNotAllowed, "RSA keys are not allowed (keys.rsa.enabled is false)")
			return
		}
		e.pass(CheckKeyAlgorithm, "RSA key")
		lo, hi := e.p.RSABits()
		if bits < lo || bits > hi {
			e.fail(CheckKeySize, ReasonKeySizeNotAllowed,
				fmt.Sprintf("the RSA key has %d bits; allowed: %d to %d (keys.rsa)", bits, lo, hi))
			return
		}
		e.pass(CheckKeySize, "RSA key size within keys.rsa")
	case *ecdsa.PublicKey:
		curve := pub.Curve.Params().Name
		e.d.KeyAlgorithm = "ECDSA-" + strings.ReplaceAll(curve, "-", "")
		if len(e.p.ECDSACurves()) == 0 {
			e.fail(CheckKeyAlgorithm, ReasonKeyAlgorithmNotAllowed, "ECDSA keys are not allowed (keys.ecdsa.curves is empty)")
			return
		}
		e.pass(CheckKeyAlgorithm, "ECDSA key")
		if !e.p.CurveAllowed(config.Curve(curve)) {
			e.fail(CheckKeyCurve, ReasonKeyCurveNotAllowed,
				fmt.Sprintf("the ECDSA key is on curve %s; allowed: %s (keys.ecdsa.curves)", curve, e.curveList()))
			return
		}
		e.pass(CheckKeyCurve, "ECDSA curve in keys.ecdsa.curves")
	case ed25519.PublicKey:
		e.d.KeyAlgorithm = "Ed25519"
		if !e.p.Spec.Keys.Ed25519 {
			e.fail(CheckKeyAlgorithm, ReasonKeyAlgorithmNotAllowed, "Ed25519 keys are not allowed (keys.ed25519 is false)")
			return
		}
		e.pass(CheckKeyAlgorithm, "Ed25519 key")
	case *dsa.PublicKey:
		e.d.KeyAlgorithm = "DSA"
		e.fail(CheckKeyAlgorithm, ReasonKeyAlgorithmNotAllowed, "DSA keys are never allowed")
		return
	case *ecdh.PublicKey:
		e.d.KeyAlgorithm = "X25519"
		e.fail(CheckKeyAlgorithm, ReasonKeyAlgorithmNotAllowed, "X25519 keys cannot sign and are never allowed")
		return
	default:
		oid := e.req.tbs.PublicKey.Algorithm.Algorithm.String()
		name, known := keyAlgorithmNames[oid]
		if !known {
			name = "Unknown"
		}
		e.d.KeyAlgorithm = name
		e.fail(CheckKeyAlgorithm, ReasonKeyAlgorithmNotAllowed,
			fmt.Sprintf("the public key algorithm %s (%s) is not supported", name, truncate(oid)))
		return
	}
	e.keyOK = true
}

// keyAlgorithmNames names key algorithms crypto/x509 does not parse.
var keyAlgorithmNames = map[string]string{
	"1.3.101.110": "X25519",
	"1.3.101.111": "X448",
	"1.3.101.113": "Ed448",
}

func (e *evaluation) curveList() string {
	curves := e.p.ECDSACurves()
	if len(curves) == 0 {
		return "none"
	}
	s := make([]string, len(curves))
	for i, c := range curves {
		s[i] = string(c)
	}
	return strings.Join(s, ", ")
}

func (e *evaluation) signature() {
	switch {
	case !e.parsed():
		e.skip(CheckSignature, e.parseWhy)
		return
	case !e.keyOK:
		e.skip(CheckSignature, "not verified: the key is not allowed")
		return
	}
	cr := e.req.cr
	switch cr.SignatureAlgorithm {
	case x509.MD2WithRSA, x509.MD5WithRSA, x509.SHA1WithRSA, x509.DSAWithSHA1, x509.DSAWithSHA256, x509.ECDSAWithSHA1:
		e.fail(CheckSignature, ReasonInvalidSignature, fmt.Sprintf("the request is signed with %s, a weak algorithm", cr.SignatureAlgorithm))
		return
	}
	if !e.d.Parsed.sigDone {
		e.d.Parsed.sigErr, e.d.Parsed.sigDone = cr.CheckSignature(), true
	}
	if err := e.d.Parsed.sigErr; err != nil {
		e.fail(CheckSignature, ReasonInvalidSignature,
			"the signature does not verify with the request's own public key: "+truncate(err.Error()))
		return
	}
	e.pass(CheckSignature, "signature verifies with the request's public key")
}

func (e *evaluation) commonName() {
	if e.req == nil {
		e.skip(CheckCommonName, e.parseWhy)
		e.skip(CheckNodeName, e.parseWhy)
		return
	}
	name, ok := strings.CutPrefix(e.cn, nodeUserPrefix)
	if !ok || name == "" {
		e.fail(CheckCommonName, ReasonInvalidCommonName,
			fmt.Sprintf("the common name is %s; want system:node:<node name>", quote(e.cn)))
		e.skip(CheckNodeName, "not checked: the common name is invalid")
		return
	}
	e.pass(CheckCommonName, "common name is system:node:<name>")
	if !validNodeName(name) {
		e.fail(CheckNodeName, ReasonInvalidNodeName,
			fmt.Sprintf("node name %s is not a valid DNS-1123 subdomain (lowercase letters, digits, '-' and '.'; at most 253 characters)", quote(name)))
		return
	}
	e.name = name
	e.d.NodeName = name
	e.pass(CheckNodeName, "node name is a valid DNS-1123 subdomain")
}

// validNodeName reports whether name is a valid DNS-1123 subdomain.
func validNodeName(name string) bool {
	return name != "" && len(name) <= maxNodeNameLen && len(validation.IsDNS1123Subdomain(name)) == 0
}

func (e *evaluation) requester() {
	u := e.csr.Spec.Username
	if strings.HasPrefix(u, nodeUserPrefix) && e.req == nil {
		e.skip(CheckRequester, "not checked: the request did not parse, so the requester cannot be compared with the common name")
		return
	}
	path, group := classify(e.p, u, e.csr.Spec.Groups, e.cn, e.req != nil)
	e.d.Path = path
	e.bootGroup = group
	switch {
	case path == PathRenewal:
		e.pass(CheckRequester, "the requester is the node named in the request")
	case strings.HasPrefix(u, nodeUserPrefix):
		e.fail(CheckRequester, ReasonRequesterMismatch,
			fmt.Sprintf("node %s asked for a certificate as %s; a node can never ask for another node's name", quote(u), quote(e.cn)))
	case path == PathBootstrap && !e.p.BootstrapEnabled():
		e.fail(CheckRequester, ReasonBootstrapDisabled,
			fmt.Sprintf("requester %s is in bootstrap group %s but bootstrap is disabled (bootstrap.enabled is false)", quote(u), quote(group)))
	case path == PathBootstrap:
		e.pass(CheckRequester, "the requester is in a bootstrap group")
	default:
		e.fail(CheckRequester, ReasonUnrecognizedRequester,
			fmt.Sprintf("requester %s is neither the node named in the request nor in a bootstrap group (%s)", quote(u), truncate(strings.Join(e.p.BootstrapGroups(), ", "))))
	}
}

func (e *evaluation) subject() {
	if e.req == nil {
		e.skip(CheckOrganization, e.parseWhy)
		e.skip(CheckSubjectAttributes, e.parseWhy)
		return
	}
	var (
		orgs       []any
		cns        int
		multi      bool
		extraTypes []string
	)
	for _, rdn := range e.req.rdns {
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
				extraTypes = appendUnique(extraTypes, attributeName(atv.Type))
			}
		}
	}

	switch {
	case len(orgs) == 1 && orgs[0] == any(nodesGroup):
		e.pass(CheckOrganization, "one organization, system:nodes")
	case len(orgs) == 0:
		e.fail(CheckOrganization, ReasonInvalidOrganization, "the subject has no organization; want exactly one, system:nodes")
	case len(orgs) == 1:
		e.fail(CheckOrganization, ReasonInvalidOrganization,
			fmt.Sprintf("the organization is %s; want system:nodes", quoteValue(orgs[0])))
	default:
		vals := make([]string, 0, 4)
		for i, o := range orgs {
			if i == 4 {
				vals = append(vals, "…")
				break
			}
			vals = append(vals, quoteValue(o))
		}
		e.fail(CheckOrganization, ReasonInvalidOrganization,
			fmt.Sprintf("the subject has %d organizations (%s); want exactly one, system:nodes", len(orgs), strings.Join(vals, ", ")))
	}

	if !multi && cns <= 1 && len(extraTypes) == 0 {
		e.pass(CheckSubjectAttributes, "nothing in the subject but one common name and one organization")
		return
	}
	found := make([]string, 0, len(extraTypes)+2)
	if len(extraTypes) > 6 {
		extraTypes = append(extraTypes[:6], "…")
	}
	found = append(found, extraTypes...)
	if cns > 1 {
		found = append(found, fmt.Sprintf("%d common names", cns))
	}
	if multi {
		found = append(found, "a multi-valued RDN")
	}
	e.fail(CheckSubjectAttributes, ReasonExtraSubjectAttributes,
		"the subject must hold only one common name and one organization; it also has "+strings.Join(found, ", "))
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
	s := oid.String()
	if n, ok := attributeNames[s]; ok {
		return n
	}
	return truncate(s)
}

func (e *evaluation) extensions() {
	if !e.parsed() {
		e.skip(CheckSubjectAltNames, e.parseWhy)
		e.skip(CheckExtensions, e.parseWhy)
		return
	}
	cr := e.req.cr
	var sans []string
	if n := len(cr.DNSNames); n > 0 {
		sans = append(sans, fmt.Sprintf("%d DNS", n))
	}
	if n := len(cr.IPAddresses); n > 0 {
		sans = append(sans, fmt.Sprintf("%d IP", n))
	}
	if n := len(cr.EmailAddresses); n > 0 {
		sans = append(sans, fmt.Sprintf("%d email", n))
	}
	if n := len(cr.URIs); n > 0 {
		sans = append(sans, fmt.Sprintf("%d URI", n))
	}
	var others []string
	sanExt := false
	for _, ext := range cr.Extensions {
		if ext.Id.Equal(oidExtensionSAN) {
			sanExt = true
			continue
		}
		others = append(others, "extension "+truncate(ext.Id.String()))
	}
	switch {
	case len(sans) > 0:
		e.fail(CheckSubjectAltNames, ReasonSANsNotAllowed,
			fmt.Sprintf("the request asks for subject alternative names (%s); a kubelet client certificate has none", strings.Join(sans, ", ")))
	case sanExt:
		e.fail(CheckSubjectAltNames, ReasonSANsNotAllowed, "the request carries a subject alternative name extension; a kubelet client certificate has none")
	default:
		e.pass(CheckSubjectAltNames, "no subject alternative names")
	}

	if v := e.req.tbs.Version; v != 0 {
		others = append(others, fmt.Sprintf("version %d (want 0, PKCS#10 v1)", v))
	}
	extReqs := 0
	for _, raw := range e.req.tbs.RawAttributes {
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
		e.pass(CheckExtensions, "no extensions or attributes besides SAN")
		return
	}
	if len(others) > 6 {
		others = append(others[:6], "…")
	}
	e.fail(CheckExtensions, ReasonUnexpectedExtensions,
		"the request carries "+strings.Join(others, ", ")+"; kubelets request none")
}

func (e *evaluation) usages() {
	var ds, ke, ca, other int
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
	if ds == 1 && ca == 1 && ke <= 1 && other == 0 {
		e.pass(CheckUsages, "usages are digital signature and client auth (and optionally key encipherment)")
	} else {
		e.fail(CheckUsages, ReasonInvalidUsages,
			fmt.Sprintf("usages are %s; want exactly [digital signature, client auth] or [digital signature, key encipherment, client auth]", e.usageList()))
	}
	if !e.p.Spec.Keys.KeyEnciphermentRequiresRSA || ke == 0 {
		return
	}
	switch {
	case e.req == nil:
		e.skip(CheckKeyEncipherment, e.parseWhy)
	case !e.isRSA:
		e.fail(CheckKeyEncipherment, ReasonKeyEnciphermentRequiresRSA,
			fmt.Sprintf("key encipherment is requested with a %s key; keys.keyEnciphermentRequiresRSA allows it only with RSA", e.d.KeyAlgorithm))
	default:
		e.pass(CheckKeyEncipherment, "key encipherment with an RSA key")
	}
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

func (e *evaluation) lifetime() {
	limit := e.p.Spec.Lifetime.MaxExpirationSeconds
	exp := e.csr.Spec.ExpirationSeconds
	switch {
	case limit <= 0:
		e.pass(CheckLifetime, "no lifetime cap (lifetime.maxExpirationSeconds is 0)")
	case exp == nil:
		e.pass(CheckLifetime, "expirationSeconds is not set; the signer's default duration applies")
	case *exp > limit:
		e.fail(CheckLifetime, ReasonLifetimeTooLong,
			fmt.Sprintf("expirationSeconds is %d, more than lifetime.maxExpirationSeconds (%d)", *exp, limit))
	default:
		e.pass(CheckLifetime, "expirationSeconds within lifetime.maxExpirationSeconds")
	}
}

func (e *evaluation) nodeNamePolicy() {
	if e.name == "" {
		why := e.parseWhy
		if e.req != nil {
			why = "not checked: no valid node name"
		}
		e.skip(CheckNodeNameDenied, why)
		e.skip(CheckNodeNameAllowed, why)
		return
	}
	if pat, denied := e.p.NodeNameDenied(e.name); denied {
		e.fail(CheckNodeNameDenied, ReasonNodeNameDenied,
			fmt.Sprintf("node name %s matches denied pattern %s (nodeNames.denied)", quote(e.name), quote(pat)))
	} else {
		e.pass(CheckNodeNameDenied, "node name matches no nodeNames.denied pattern")
	}
	if e.p.NodeNameAllowed(e.name) {
		e.pass(CheckNodeNameAllowed, "node name allowed by nodeNames.allowed")
	} else {
		e.fail(CheckNodeNameAllowed, ReasonNodeNameNotAllowed,
			fmt.Sprintf("node name %s matches none of nodeNames.allowed", quote(e.name)))
	}
}

func (e *evaluation) tokenBinding() {
	if e.d.Path != PathBootstrap || !e.p.BootstrapEnabled() {
		return
	}
	u := e.csr.Spec.Username
	tokenID, isToken := strings.CutPrefix(u, bootstrapapi.BootstrapUserPrefix)
	bound := false
	if isToken {
		_, bound = e.p.TokenBinding(tokenID)
	}
	switch {
	case !bound && e.p.Spec.Bootstrap.RequireTokenBinding && !isToken:
		e.fail(CheckTokenBinding, ReasonTokenNotBound,
			fmt.Sprintf("requester %s is not a bootstrap token (system:bootstrap:<id>) and bootstrap.requireTokenBinding is true", quote(u)))
	case !bound && e.p.Spec.Bootstrap.RequireTokenBinding:
		e.fail(CheckTokenBinding, ReasonTokenNotBound,
			fmt.Sprintf("bootstrap token %s has no entry in bootstrap.tokenBindings and bootstrap.requireTokenBinding is true", quote(tokenID)))
	case !bound:
		e.pass(CheckTokenBinding, "no binding for this requester; bootstrap.requireTokenBinding is false")
	case e.name == "":
		e.skip(CheckTokenBinding, "not checked: no valid node name")
	default:
		if _, ok := e.p.TokenAllowsNodeName(tokenID, e.name); ok {
			e.pass(CheckTokenBinding, "node name allowed by the token's binding")
		} else {
			e.fail(CheckTokenBinding, ReasonTokenNotBoundToName,
				fmt.Sprintf("bootstrap token %s may not claim node name %s (bootstrap.tokenBindings)", quote(tokenID), quote(e.name)))
		}
	}
}

// clusterFacts applies the facts the path needs.
func (e *evaluation) clusterFacts() {
	path := e.d.Path
	if path == PathUnknown {
		return
	}
	p := e.p

	switch {
	case e.facts.Authorized == nil:
		e.missingFact(CheckAuthorized)
	case !*e.facts.Authorized:
		e.fail(CheckAuthorized, ReasonNotAuthorized,
			fmt.Sprintf("SubjectAccessReview: %s may not create certificatesigningrequests/%s", quote(e.csr.Spec.Username), SubresourceFor(path)))
	default:
		e.pass(CheckAuthorized, "SubjectAccessReview allowed create certificatesigningrequests/"+SubresourceFor(path))
	}

	needNode := (path == PathRenewal && p.RequireNodeExists()) || (path == PathBootstrap && !p.Spec.Bootstrap.AllowExistingNode)
	switch {
	case !needNode:
	case e.name == "":
		e.skip(CheckNodeExists, "not checked: no valid node name")
	case e.facts.NodeExists == nil:
		e.missingFact(CheckNodeExists)
	case path == PathBootstrap && *e.facts.NodeExists:
		e.fail(CheckNodeExists, ReasonNodeAlreadyExists,
			fmt.Sprintf("node %s already exists; a bootstrap request for an existing node's name is a takeover (bootstrap.allowExistingNode is false)", quote(e.name)))
	case path == PathBootstrap:
		e.pass(CheckNodeExists, "no Node of that name exists yet")
	case !*e.facts.NodeExists:
		e.fail(CheckNodeExists, ReasonNodeNotFound,
			fmt.Sprintf("node %s does not exist; a renewal needs its Node (renewal.requireNodeExists is true)", quote(e.name)))
	default:
		e.pass(CheckNodeExists, "the Node exists")
	}

	if p.CollapseDuplicates() {
		switch {
		case e.facts.NewerPendingForNode == nil:
			e.missingFact(CheckNewerPendingForNode)
		case *e.facts.NewerPendingForNode:
			e.fail(CheckNewerPendingForNode, ReasonSuperseded,
				fmt.Sprintf("a newer pending or approved CSR for node %s from the same requester exists; the newest wins (limits.collapseDuplicates)", quote(e.name)))
		default:
			e.pass(CheckNewerPendingForNode, "no newer pending CSR for this node")
		}
	}

	// With collapseDuplicates the older requests are denied as Superseded, so
	// the newest must not be refused for their number: the limit applies only
	// when duplicates are kept.
	if limit := p.MaxPendingPerNode(); limit > 0 && !p.CollapseDuplicates() {
		switch {
		case e.facts.PendingForNode == nil:
			e.missingFact(CheckPendingForNode)
		case *e.facts.PendingForNode >= limit:
			e.fail(CheckPendingForNode, ReasonTooManyPending,
				fmt.Sprintf("%d older CSRs for node %s are pending; the limit is %d (limits.maxPendingPerNode)", *e.facts.PendingForNode, quote(e.name), limit))
		default:
			e.pass(CheckPendingForNode, "pending CSRs for this node within limits.maxPendingPerNode")
		}
	}

	if perMinute, burst := p.RateLimit(); path == PathBootstrap && perMinute > 0 {
		switch {
		case e.facts.RateLimited == nil:
			e.missingFact(CheckRateLimited)
		case *e.facts.RateLimited:
			e.fail(CheckRateLimited, ReasonRateLimited,
				fmt.Sprintf("requester %s exceeded bootstrap.rateLimit (%d per minute, burst %d); the CSR stays pending and is retried", quote(e.csr.Spec.Username), perMinute, burst))
		default:
			e.pass(CheckRateLimited, "requester within bootstrap.rateLimit")
		}
	}
}

func (e *evaluation) missingFact(name string) {
	e.skip(name, "not checked: the fact was not gathered")
	e.missing = append(e.missing, name)
}

// mustPass are the checks that must have run and passed before anything is
// approved, whatever the policy. Evaluate refuses to approve otherwise; this
// guards against a check being skipped by mistake.
var mustPass = [...]string{
	CheckSignerName, CheckNotDecided, CheckRequestSize, CheckEncoding, CheckKeyAlgorithm,
	CheckSignature, CheckCommonName, CheckNodeName, CheckRequester, CheckOrganization,
	CheckSubjectAttributes, CheckSubjectAltNames, CheckExtensions, CheckUsages, CheckLifetime,
	CheckNodeNameDenied, CheckNodeNameAllowed, CheckAuthorized,
}

func (e *evaluation) finish() {
	d := &e.d
	// Insertion sort by priority: few elements, stable.
	v := d.Violations
	for i := 1; i < len(v); i++ {
		for j := i; j > 0 && rank[v[j].Reason] < rank[v[j-1].Reason]; j-- {
			v[j], v[j-1] = v[j-1], v[j]
		}
	}

	first, rateLimited := -1, -1
	for i := range v {
		switch {
		case v[i].Reason == ReasonRateLimited:
			rateLimited = i
		case first < 0:
			first = i
		}
	}

	switch {
	case first >= 0:
		d.Verdict = Deny
		if e.p.EffectiveOnViolation() == config.ViolationLeavePending {
			d.Verdict = Ignore
		}
		d.Reason, d.Message = v[first].Reason, v[first].Message
		var also []string
		for i := first + 1; i < len(v); i++ {
			if v[i].Reason != ReasonRateLimited {
				also = append(also, v[i].Reason)
			}
		}
		if len(also) > 0 {
			d.Message += " (also: " + strings.Join(also, ", ") + ")"
		}
	case rateLimited >= 0:
		d.Verdict, d.Reason, d.Message = Ignore, ReasonRateLimited, v[rateLimited].Message
	case len(e.missing) > 0:
		d.Verdict, d.Reason = Ignore, ReasonFactsIncomplete
		d.Message = "every check that ran passed, but approval needs facts that were not gathered: " + strings.Join(e.missing, ", ")
	default:
		e.approve()
	}
}

func (e *evaluation) approve() {
	d := &e.d
	for _, name := range mustPass {
		if c, ok := d.Check(name); !ok || c.Result != Pass {
			d.Verdict, d.Reason = Ignore, ReasonInternalError
			d.Message = fmt.Sprintf("check %s did not pass; refusing to approve", name)
			return
		}
	}
	var b strings.Builder
	switch d.Path {
	case PathRenewal:
		d.Reason = ReasonRenewalApproved
		fmt.Fprintf(&b, "node %s renews its own client certificate: %s key, signature, subject, usages verified; SubjectAccessReview allowed selfnodeclient", quote(e.name), d.KeyAlgorithm)
		if _, ok := d.Check(CheckNodeExists); ok {
			b.WriteString("; the Node exists")
		}
	case PathBootstrap:
		d.Reason = ReasonBootstrapApproved
		fmt.Fprintf(&b, "bootstrap by %s for node %s: %s key, signature, subject, usages verified; SubjectAccessReview allowed nodeclient", quote(e.csr.Spec.Username), quote(e.name), d.KeyAlgorithm)
		if _, ok := d.Check(CheckNodeExists); ok {
			b.WriteString("; no Node of that name exists yet")
		}
		if c, ok := d.Check(CheckTokenBinding); ok && c.Message == "node name allowed by the token's binding" {
			b.WriteString("; the token is bound to that name")
		}
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
func truncate(s string) string {
	if len(s) <= maxQuoted {
		return s
	}
	cut := maxQuoted
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// quote quotes a value taken from the request for a message: at most 64
// bytes, non-ASCII escaped so look-alike characters show.
func quote(s string) string {
	if len(s) <= maxQuoted {
		return strconv.QuoteToASCII(s)
	}
	cut := maxQuoted
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.QuoteToASCII(s[:cut]) + fmt.Sprintf("…(%d bytes)", len(s))
}

// quoteValue quotes an ASN.1 attribute value.
func quoteValue(v any) string {
	if s, ok := v.(string); ok {
		return quote(s)
	}
	return fmt.Sprintf("a non-string value (%T)", v)
}
