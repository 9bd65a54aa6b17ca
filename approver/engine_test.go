package approver

import (
	"bytes"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"

	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
)

type evalCase struct {
	opts   []csrtest.Option
	policy func(*config.Spec)
	// facts replace goodFacts(wantPath) when set.
	facts *Facts
	// noFacts evaluates with no facts at all.
	noFacts bool

	wantVerdict Verdict
	wantReason  string
	wantPath    Path
	// wantViolations, when set, is the exact list of violation reasons in
	// priority order.
	wantViolations []string
	// wantSkipped, when set, must all be in Decision.Skipped.
	wantSkipped []string
	// wantMessage, when set, must be in Decision.Message.
	wantMessage string
}

func evalCases() map[string]evalCase {
	return map[string]evalCase{
		// ---- approvals ------------------------------------------------
		"renewal ECDSA P-256": {
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"renewal ECDSA P-384": {
			opts:        []csrtest.Option{ecKey(elliptic.P384())},
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"renewal RSA-2048 with key encipherment (stock kubelet)": {
			opts:        []csrtest.Option{rsaKey(2048), withUsages(usagesDSKECA...)},
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"renewal RSA-4096": {
			opts:        []csrtest.Option{rsaKey(4096)},
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"renewal RSA-PSS signature": {
			opts:        []csrtest.Option{rsaKey(2048), withSigAlg(x509.SHA256WithRSAPSS)},
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"renewal ECDSA with key encipherment is accepted by default (older kubelets, client-go)": {
			opts:        []csrtest.Option{withUsages(usagesDSKECA...)},
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"usages in any order": {
			opts:        []csrtest.Option{withUsages(certificatesv1.UsageClientAuth, certificatesv1.UsageKeyEncipherment, certificatesv1.UsageDigitalSignature)},
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"subject with CN before O": {
			opts: []csrtest.Option{withRawSubject(rawSubject(
				[]pkix.AttributeTypeAndValue{atv(csrtest.OIDCommonName, "system:node:worker-1")},
				[]pkix.AttributeTypeAndValue{atv(csrtest.OIDOrganization, "system:nodes")},
			))},
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"bootstrap": {
			opts:        []csrtest.Option{bootstrap("abcdef"), withNodeName("new-node")},
			wantVerdict: Approve, wantReason: ReasonBootstrapApproved, wantPath: PathBootstrap,
			wantMessage: `for node "new-node"`,
		},
		"bootstrap with a token bound to the name": {
			opts: []csrtest.Option{bootstrap("abcdef"), withNodeName("gpu-7")},
			policy: func(s *config.Spec) {
				s.Bootstrap.TokenBindings = []config.TokenBinding{{TokenID: "abcdef", NodeNames: []string{"gpu-[0-9]+"}}}
				s.Bootstrap.RequireTokenBinding = true
			},
			wantVerdict: Approve, wantReason: ReasonBootstrapApproved, wantPath: PathBootstrap,
			wantMessage: "the token is bound to that name",
		},
		"bootstrap in a custom group": {
			opts:        []csrtest.Option{withUsername("system:serviceaccount:kube-system:joiner"), withGroups("example.com:joiners"), withNodeName("new-node")},
			policy:      func(s *config.Spec) { s.Bootstrap.Groups = []string{"example.com:joiners"} },
			wantVerdict: Approve, wantReason: ReasonBootstrapApproved, wantPath: PathBootstrap,
		},
		"bootstrap for an existing node when allowExistingNode": {
			opts:        []csrtest.Option{bootstrap("abcdef")},
			policy:      func(s *config.Spec) { s.Bootstrap.AllowExistingNode = true },
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(true), NewerPendingForNode: ptr(false), PendingForNode: ptr(0)},
			wantVerdict: Approve, wantReason: ReasonBootstrapApproved, wantPath: PathBootstrap,
		},
		"bootstrap without rate limit needs no RateLimited fact": {
			opts:        []csrtest.Option{bootstrap("abcdef")},
			policy:      func(s *config.Spec) { s.Bootstrap.RateLimit.PerMinute = ptr[int32](0) },
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(false), NewerPendingForNode: ptr(false), PendingForNode: ptr(0)},
			wantVerdict: Approve, wantReason: ReasonBootstrapApproved, wantPath: PathBootstrap,
		},
		"renewal without a Node when requireNodeExists is off": {
			policy:      func(s *config.Spec) { s.Renewal.RequireNodeExists = ptr(false) },
			facts:       &Facts{Authorized: ptr(true), NewerPendingForNode: ptr(false), PendingForNode: ptr(0)},
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"Ed25519 when allowed": {
			opts:        []csrtest.Option{ed25519Key()},
			policy:      func(s *config.Spec) { s.Keys.Ed25519 = true },
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"P-521 when opted in": {
			opts:        []csrtest.Option{ecKey(elliptic.P521())},
			policy:      func(s *config.Spec) { s.Keys.ECDSA.Curves = []config.Curve{config.CurveP521} },
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"expiration within the cap": {
			opts:        []csrtest.Option{withExpiration(3600)},
			policy:      func(s *config.Spec) { s.Lifetime.MaxExpirationSeconds = 3600 },
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"expiration unset under a cap": {
			policy:      func(s *config.Spec) { s.Lifetime.MaxExpirationSeconds = 3600 },
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"name matching an allowed pattern": {
			opts:        []csrtest.Option{withNodeName("worker-17")},
			policy:      func(s *config.Spec) { s.NodeNames.Allowed = []string{"worker-[0-9]+"} },
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"pending CSRs below the limit": {
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(true), NewerPendingForNode: ptr(false), PendingForNode: ptr(2)},
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"key encipherment with RSA when keyEnciphermentRequiresRSA": {
			opts:        []csrtest.Option{rsaKey(2048), withUsages(usagesDSKECA...)},
			policy:      func(s *config.Spec) { s.Keys.KeyEnciphermentRequiresRSA = true },
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"leading and trailing whitespace around the PEM block": {
			opts:        []csrtest.Option{withPEMMutator(func(p []byte) []byte { return append(append([]byte("\n \t\r\n"), p...), "\n\n  \n"...) })},
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},

		// ---- ignored ----------------------------------------------------
		"another signer": {
			opts:        []csrtest.Option{withSigner(certificatesv1.KubeAPIServerClientSignerName)},
			wantVerdict: Ignore, wantReason: ReasonNotKubeletClientSigner,
		},
		"already approved": {
			opts:        []csrtest.Option{withCondition(certificatesv1.CertificateApproved)},
			wantVerdict: Ignore, wantReason: ReasonAlreadyDecided,
		},
		"already denied": {
			opts:        []csrtest.Option{withCondition(certificatesv1.CertificateDenied)},
			wantVerdict: Ignore, wantReason: ReasonAlreadyDecided,
		},
		"already failed": {
			opts:        []csrtest.Option{withCondition(certificatesv1.CertificateFailed)},
			wantVerdict: Ignore, wantReason: ReasonAlreadyDecided,
		},
		"already has a certificate": {
			opts:        []csrtest.Option{withCertificate([]byte("x"))},
			wantVerdict: Ignore, wantReason: ReasonAlreadyDecided,
		},
		"no facts": {
			noFacts:     true,
			wantVerdict: Ignore, wantReason: ReasonFactsIncomplete, wantPath: PathRenewal,
			wantSkipped: []string{CheckAuthorized, CheckNodeExists, CheckNewerPendingForNode},
		},
		"no facts, duplicates kept": {
			noFacts:     true,
			policy:      func(s *config.Spec) { s.Limits.CollapseDuplicates = ptr(false) },
			wantVerdict: Ignore, wantReason: ReasonFactsIncomplete, wantPath: PathRenewal,
			wantSkipped: []string{CheckAuthorized, CheckNodeExists, CheckPendingForNode},
		},
		"authorization not gathered": {
			facts:       &Facts{NodeExists: ptr(true), NewerPendingForNode: ptr(false), PendingForNode: ptr(0)},
			wantVerdict: Ignore, wantReason: ReasonFactsIncomplete, wantPath: PathRenewal,
			wantSkipped: []string{CheckAuthorized},
		},
		"violation left pending": {
			opts:        []csrtest.Option{withUsages(certificatesv1.UsageServerAuth)},
			policy:      func(s *config.Spec) { s.OnViolation = config.ViolationLeavePending },
			wantVerdict: Ignore, wantReason: ReasonInvalidUsages, wantPath: PathRenewal,
		},

		// ---- RequestTooLarge ------------------------------------------------
		"request larger than maxRequestBytes": {
			opts:        []csrtest.Option{withPEMMutator(func(p []byte) []byte { return append(p, bytes.Repeat([]byte(" "), 20000)...) })},
			wantVerdict: Deny, wantReason: ReasonRequestTooLarge,
			wantViolations: []string{ReasonRequestTooLarge},
			wantSkipped:    []string{CheckEncoding, CheckSignature, CheckCommonName, CheckRequester},
		},
		"RSA-4096 request larger than a 1024-byte maxRequestBytes": {
			opts:        []csrtest.Option{rsaKey(4096)},
			policy:      func(s *config.Spec) { s.Keys.MaxRequestBytes = 1024 },
			wantVerdict: Deny, wantReason: ReasonRequestTooLarge,
		},
		"bootstrapper with a request too large": {
			opts:        []csrtest.Option{bootstrap("abcdef"), withPEMMutator(func(p []byte) []byte { return append(p, bytes.Repeat([]byte("\n"), 17000)...) })},
			wantVerdict: Deny, wantReason: ReasonRequestTooLarge, wantPath: PathBootstrap,
		},

		// ---- MalformedRequest -----------------------------------------------
		"empty request": {
			opts:        []csrtest.Option{withRequest([]byte{})},
			wantVerdict: Deny, wantReason: ReasonMalformedRequest,
		},
		"not PEM": {
			opts:        []csrtest.Option{notPEM()},
			wantVerdict: Deny, wantReason: ReasonMalformedRequest,
		},
		"two PEM blocks": {
			opts:        []csrtest.Option{twoBlocks()},
			wantVerdict: Deny, wantReason: ReasonMalformedRequest,
		},
		"trailing garbage after the block": {
			opts:        []csrtest.Option{trailingGarbage()},
			wantVerdict: Deny, wantReason: ReasonMalformedRequest,
		},
		"leading garbage before the block": {
			opts:        []csrtest.Option{leadingGarbage()},
			wantVerdict: Deny, wantReason: ReasonMalformedRequest,
		},
		"a damaged block hiding a good one": {
			opts: []csrtest.Option{withPEMMutator(func(p []byte) []byte {
				return append([]byte("-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n"), p...)
			})},
			wantVerdict: Deny, wantReason: ReasonMalformedRequest,
		},
		"wrong PEM type": {
			opts:        []csrtest.Option{withPEMType("NEW CERTIFICATE REQUEST")},
			wantVerdict: Deny, wantReason: ReasonMalformedRequest,
		},
		"certificate PEM type": {
			opts:        []csrtest.Option{withPEMType("CERTIFICATE")},
			wantVerdict: Deny, wantReason: ReasonMalformedRequest,
		},
		"PEM headers": {
			opts:        []csrtest.Option{withPEMHeaders(map[string]string{"Proc-Type": "4,ENCRYPTED"})},
			wantVerdict: Deny, wantReason: ReasonMalformedRequest,
		},
		"trailing bytes after the DER": {
			opts:        []csrtest.Option{trailingDER()},
			wantVerdict: Deny, wantReason: ReasonMalformedRequest,
		},
		"truncated DER": {
			opts:        []csrtest.Option{withDERMutator(func(d []byte) []byte { return d[:len(d)-10] })},
			wantVerdict: Deny, wantReason: ReasonMalformedRequest,
		},
		"not ASN.1 at all": {
			opts:        []csrtest.Option{withDERMutator(func([]byte) []byte { return []byte("hello, world") })},
			wantVerdict: Deny, wantReason: ReasonMalformedRequest,
		},
		"node requester with a malformed request has no path": {
			opts:        []csrtest.Option{trailingGarbage()},
			wantVerdict: Deny, wantReason: ReasonMalformedRequest, wantPath: PathUnknown,
			wantSkipped: []string{CheckRequester},
		},

		// ---- key ------------------------------------------------------------
		"Ed25519 by default": {
			opts:        []csrtest.Option{ed25519Key()},
			wantVerdict: Deny, wantReason: ReasonKeyAlgorithmNotAllowed, wantPath: PathRenewal,
			wantSkipped: []string{CheckSignature},
		},
		"RSA when RSA is disabled": {
			opts:        []csrtest.Option{rsaKey(2048)},
			policy:      func(s *config.Spec) { s.Keys.RSA.Enabled = ptr(false) },
			wantVerdict: Deny, wantReason: ReasonKeyAlgorithmNotAllowed, wantPath: PathRenewal,
		},
		"ECDSA when no curve is allowed": {
			policy:      func(s *config.Spec) { s.Keys.ECDSA.Curves = []config.Curve{} },
			wantVerdict: Deny, wantReason: ReasonKeyAlgorithmNotAllowed, wantPath: PathRenewal,
		},
		"DSA": {
			opts:        []csrtest.Option{withSPKI(dsaSPKI())},
			wantVerdict: Deny, wantReason: ReasonKeyAlgorithmNotAllowed, wantPath: PathRenewal,
		},
		"X25519": {
			opts:        []csrtest.Option{withSPKI(x25519SPKI())},
			wantVerdict: Deny, wantReason: ReasonKeyAlgorithmNotAllowed, wantPath: PathRenewal,
		},
		"unknown key algorithm": {
			opts:        []csrtest.Option{withSPKI(unknownSPKI())},
			wantVerdict: Deny, wantReason: ReasonKeyAlgorithmNotAllowed, wantPath: PathRenewal,
		},
		"P-224 by default": {
			opts:        []csrtest.Option{ecKey(elliptic.P224())},
			wantVerdict: Deny, wantReason: ReasonKeyCurveNotAllowed, wantPath: PathRenewal,
		},
		"P-521 by default": {
			opts:        []csrtest.Option{ecKey(elliptic.P521())},
			wantVerdict: Deny, wantReason: ReasonKeyCurveNotAllowed, wantPath: PathRenewal,
		},
		"P-384 when only P-256 is allowed": {
			opts:        []csrtest.Option{ecKey(elliptic.P384())},
			policy:      func(s *config.Spec) { s.Keys.ECDSA.Curves = []config.Curve{config.CurveP256} },
			wantVerdict: Deny, wantReason: ReasonKeyCurveNotAllowed, wantPath: PathRenewal,
		},
		"secp256k1, a curve crypto/x509 does not know": {
			opts:        []csrtest.Option{withSPKI(secp256k1SPKI())},
			wantVerdict: Deny, wantReason: ReasonKeyCurveNotAllowed, wantPath: PathRenewal,
			wantSkipped: []string{CheckSignature, CheckExtensions},
		},
		"RSA-1024": {
			opts:        []csrtest.Option{rsaKey(1024)},
			wantVerdict: Deny, wantReason: ReasonKeySizeNotAllowed, wantPath: PathRenewal,
		},
		"RSA-3072 above a 2048 maximum": {
			opts:        []csrtest.Option{rsaKey(3072)},
			policy:      func(s *config.Spec) { s.Keys.RSA.MaxBits = 2048 },
			wantVerdict: Deny, wantReason: ReasonKeySizeNotAllowed, wantPath: PathRenewal,
		},
		"RSA-2048 below a 3072 minimum": {
			opts:        []csrtest.Option{rsaKey(2048)},
			policy:      func(s *config.Spec) { s.Keys.RSA.MinBits = 3072; s.Keys.RSA.MaxBits = 4096 },
			wantVerdict: Deny, wantReason: ReasonKeySizeNotAllowed, wantPath: PathRenewal,
		},
		"RSA-16384 is refused before its signature is verified": {
			opts:        []csrtest.Option{withRequest(readTestdata("rsa16384.csr")), withNodeName("huge-key")},
			wantVerdict: Deny, wantReason: ReasonKeySizeNotAllowed, wantPath: PathRenewal,
			wantSkipped: []string{CheckSignature},
		},

		// ---- signature ------------------------------------------------------
		"signed by another key": {
			opts:        []csrtest.Option{signedByOtherKey()},
			wantVerdict: Deny, wantReason: ReasonInvalidSignature, wantPath: PathRenewal,
		},
		"RSA signed by another key": {
			opts:        []csrtest.Option{rsaKey(2048), signedByOtherKey()},
			wantVerdict: Deny, wantReason: ReasonInvalidSignature, wantPath: PathRenewal,
		},
		"corrupted signature": {
			opts:        []csrtest.Option{corruptSignature()},
			wantVerdict: Deny, wantReason: ReasonInvalidSignature, wantPath: PathRenewal,
		},
		"SHA-1 RSA signature": {
			opts:        []csrtest.Option{rsaKey(2048), withSigAlg(x509.SHA1WithRSA)},
			wantVerdict: Deny, wantReason: ReasonInvalidSignature, wantPath: PathRenewal,
		},
		"SHA-1 ECDSA signature": {
			opts:        []csrtest.Option{withSigAlg(x509.ECDSAWithSHA1)},
			wantVerdict: Deny, wantReason: ReasonInvalidSignature, wantPath: PathRenewal,
		},

		// ---- common name and node name ----------------------------------------
		"common name without the node prefix": {
			opts:        []csrtest.Option{withCN("worker-1"), withUsername("system:node:worker-1")},
			wantVerdict: Deny, wantReason: ReasonInvalidCommonName,
		},
		"common name with an empty node name": {
			opts:        []csrtest.Option{withCN("system:node:")},
			wantVerdict: Deny, wantReason: ReasonInvalidCommonName, wantPath: PathRenewal,
		},
		"common name of an administrator": {
			opts:        []csrtest.Option{withCN("system:admin"), bootstrap("abcdef")},
			wantVerdict: Deny, wantReason: ReasonInvalidCommonName, wantPath: PathBootstrap,
		},
		"no common name": {
			opts:        []csrtest.Option{withRawSubject(rawSubject([]pkix.AttributeTypeAndValue{atv(csrtest.OIDOrganization, "system:nodes")})), bootstrap("abcdef")},
			wantVerdict: Deny, wantReason: ReasonInvalidCommonName, wantPath: PathBootstrap,
		},
		"upper-case node name": {
			opts:        []csrtest.Option{withNodeName("Worker-1")},
			wantVerdict: Deny, wantReason: ReasonInvalidNodeName, wantPath: PathRenewal,
		},
		"underscore in the node name": {
			opts:        []csrtest.Option{withNodeName("worker_1")},
			wantVerdict: Deny, wantReason: ReasonInvalidNodeName, wantPath: PathRenewal,
		},
		"Cyrillic look-alike in the node name": {
			opts:        []csrtest.Option{withNodeName("w\u043erker-1")},
			wantVerdict: Deny, wantReason: ReasonInvalidNodeName, wantPath: PathRenewal,
			wantMessage: `\u043e`,
		},
		"node name longer than 253": {
			opts:        []csrtest.Option{withNodeName(strings.Repeat("a", 254))},
			wantVerdict: Deny, wantReason: ReasonInvalidNodeName, wantPath: PathRenewal,
		},
		"node name with a leading dash": {
			opts:        []csrtest.Option{bootstrap("abcdef"), withNodeName("-worker")},
			wantVerdict: Deny, wantReason: ReasonInvalidNodeName, wantPath: PathBootstrap,
		},
		"node name with a slash": {
			opts:        []csrtest.Option{bootstrap("abcdef"), withNodeName("a/../b")},
			wantVerdict: Deny, wantReason: ReasonInvalidNodeName, wantPath: PathBootstrap,
		},

		// ---- requester --------------------------------------------------------
		"a node asking for another node's name": {
			opts:        []csrtest.Option{withNodeName("worker-2"), withUsername("system:node:worker-1")},
			wantVerdict: Deny, wantReason: ReasonRequesterMismatch, wantPath: PathUnknown,
			wantMessage: "a node can never ask for another node's name",
		},
		"a node in the bootstrap group asking for another node's name": {
			opts:        []csrtest.Option{withNodeName("worker-2"), withUsername("system:node:worker-1"), withGroups("system:nodes", "system:bootstrappers")},
			wantVerdict: Deny, wantReason: ReasonRequesterMismatch, wantPath: PathUnknown,
		},
		"an ordinary user": {
			opts:        []csrtest.Option{withUsername("alice"), withGroups("system:authenticated")},
			wantVerdict: Deny, wantReason: ReasonUnrecognizedRequester, wantPath: PathUnknown,
		},
		"a service account": {
			opts:        []csrtest.Option{withUsername("system:serviceaccount:default:x"), withGroups("system:serviceaccounts", "system:authenticated")},
			wantVerdict: Deny, wantReason: ReasonUnrecognizedRequester, wantPath: PathUnknown,
		},
		"a bootstrapper when bootstrap is disabled": {
			opts:        []csrtest.Option{bootstrap("abcdef")},
			policy:      func(s *config.Spec) { s.Bootstrap.Enabled = ptr(false) },
			wantVerdict: Deny, wantReason: ReasonBootstrapDisabled, wantPath: PathBootstrap,
		},

		// ---- subject ------------------------------------------------------------
		"no organization": {
			opts:        []csrtest.Option{withOrg()},
			wantVerdict: Deny, wantReason: ReasonInvalidOrganization, wantPath: PathRenewal,
		},
		"organization system:masters": {
			opts:        []csrtest.Option{withOrg("system:masters")},
			wantVerdict: Deny, wantReason: ReasonInvalidOrganization, wantPath: PathRenewal,
		},
		"extra organization system:masters": {
			opts:        []csrtest.Option{withOrg("system:nodes", "system:masters")},
			wantVerdict: Deny, wantReason: ReasonInvalidOrganization, wantPath: PathRenewal,
		},
		"duplicate organization": {
			opts:        []csrtest.Option{withOrg("system:nodes", "system:nodes")},
			wantVerdict: Deny, wantReason: ReasonInvalidOrganization, wantPath: PathRenewal,
		},
		"organization in the wrong case": {
			opts:        []csrtest.Option{withOrg("System:Nodes")},
			wantVerdict: Deny, wantReason: ReasonInvalidOrganization, wantPath: PathRenewal,
		},
		"organization that is not a string": {
			opts: []csrtest.Option{withRawSubject(rawSubject(
				[]pkix.AttributeTypeAndValue{atv(csrtest.OIDOrganization, 7)},
				[]pkix.AttributeTypeAndValue{atv(csrtest.OIDCommonName, "system:node:worker-1")},
			))},
			wantVerdict: Deny, wantReason: ReasonInvalidOrganization, wantPath: PathRenewal,
		},
		"organizational unit": {
			opts:        []csrtest.Option{withSubjectAttr(csrtest.OIDOrganizationalUnit, "ops")},
			wantVerdict: Deny, wantReason: ReasonExtraSubjectAttributes, wantPath: PathRenewal,
			wantMessage: "OU",
		},
		"country": {
			opts:        []csrtest.Option{withSubjectAttr(csrtest.OIDCountry, "DE")},
			wantVerdict: Deny, wantReason: ReasonExtraSubjectAttributes, wantPath: PathRenewal,
		},
		"locality and province": {
			opts:        []csrtest.Option{withSubjectAttr(csrtest.OIDLocality, "x"), withSubjectAttr(csrtest.OIDProvince, "y")},
			wantVerdict: Deny, wantReason: ReasonExtraSubjectAttributes, wantPath: PathRenewal,
		},
		"serial number": {
			opts:        []csrtest.Option{withSubjectAttr(csrtest.OIDSerialNumber, "1")},
			wantVerdict: Deny, wantReason: ReasonExtraSubjectAttributes, wantPath: PathRenewal,
		},
		"email address in the subject": {
			opts:        []csrtest.Option{withSubjectAttr(csrtest.OIDEmailAddress, "a@b.c")},
			wantVerdict: Deny, wantReason: ReasonExtraSubjectAttributes, wantPath: PathRenewal,
			wantMessage: "emailAddress",
		},
		"multi-valued RDN": {
			opts: []csrtest.Option{withRawSubject(rawSubject([]pkix.AttributeTypeAndValue{
				atv(csrtest.OIDOrganization, "system:nodes"),
				atv(csrtest.OIDCommonName, "system:node:worker-1"),
			}))},
			wantVerdict: Deny, wantReason: ReasonExtraSubjectAttributes, wantPath: PathRenewal,
			wantViolations: []string{ReasonExtraSubjectAttributes},
		},
		"two common names, the last one the requester": {
			opts: []csrtest.Option{withRawSubject(rawSubject(
				[]pkix.AttributeTypeAndValue{atv(csrtest.OIDOrganization, "system:nodes")},
				[]pkix.AttributeTypeAndValue{atv(csrtest.OIDCommonName, "system:node:control-plane-1")},
				[]pkix.AttributeTypeAndValue{atv(csrtest.OIDCommonName, "system:node:worker-1")},
			))},
			wantVerdict: Deny, wantReason: ReasonExtraSubjectAttributes, wantPath: PathRenewal,
			wantViolations: []string{ReasonExtraSubjectAttributes},
		},

		// ---- SANs and extensions -------------------------------------------------
		"DNS SAN": {
			opts:        []csrtest.Option{withDNSSAN("worker-1.example.com")},
			wantVerdict: Deny, wantReason: ReasonSANsNotAllowed, wantPath: PathRenewal,
		},
		"IP SAN": {
			opts:        []csrtest.Option{withIPSAN("10.0.0.1")},
			wantVerdict: Deny, wantReason: ReasonSANsNotAllowed, wantPath: PathRenewal,
		},
		"email SAN": {
			opts:        []csrtest.Option{withEmailSAN("node@example.com")},
			wantVerdict: Deny, wantReason: ReasonSANsNotAllowed, wantPath: PathRenewal,
		},
		"URI SAN": {
			opts:        []csrtest.Option{withURISAN("spiffe://cluster/ns/x")},
			wantVerdict: Deny, wantReason: ReasonSANsNotAllowed, wantPath: PathRenewal,
		},
		"empty SAN extension": {
			opts:        []csrtest.Option{withExtension(pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: []byte{0x30, 0x00}})},
			wantVerdict: Deny, wantReason: ReasonSANsNotAllowed, wantPath: PathRenewal,
		},
		"basic constraints extension": {
			opts:        []csrtest.Option{withExtension(pkix.Extension{Id: oidBasicConstraint, Critical: true, Value: []byte{0x30, 0x03, 0x01, 0x01, 0xff}})},
			wantVerdict: Deny, wantReason: ReasonUnexpectedExtensions, wantPath: PathRenewal,
		},
		"challengePassword attribute": {
			opts:        []csrtest.Option{withAttribute(csrtest.OIDChallengePassword, "secret")},
			wantVerdict: Deny, wantReason: ReasonUnexpectedExtensions, wantPath: PathRenewal,
		},
		"PKCS#10 version 2": {
			opts:        []csrtest.Option{withVersion(1)},
			wantVerdict: Deny, wantReason: ReasonUnexpectedExtensions, wantPath: PathRenewal,
		},

		// ---- usages -------------------------------------------------------------
		"no usages": {
			opts:        []csrtest.Option{withUsages()},
			wantVerdict: Deny, wantReason: ReasonInvalidUsages, wantPath: PathRenewal,
		},
		"client auth only": {
			opts:        []csrtest.Option{withUsages(certificatesv1.UsageClientAuth)},
			wantVerdict: Deny, wantReason: ReasonInvalidUsages, wantPath: PathRenewal,
		},
		"server auth added": {
			opts:        []csrtest.Option{withUsages(certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageServerAuth)},
			wantVerdict: Deny, wantReason: ReasonInvalidUsages, wantPath: PathRenewal,
		},
		"duplicate usage": {
			opts:        []csrtest.Option{withUsages(certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageClientAuth)},
			wantVerdict: Deny, wantReason: ReasonInvalidUsages, wantPath: PathRenewal,
		},
		"key encipherment without digital signature": {
			opts:        []csrtest.Option{withUsages(certificatesv1.UsageKeyEncipherment, certificatesv1.UsageClientAuth)},
			wantVerdict: Deny, wantReason: ReasonInvalidUsages, wantPath: PathRenewal,
		},
		"cert sign": {
			opts:        []csrtest.Option{withUsages(certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageCertSign)},
			wantVerdict: Deny, wantReason: ReasonInvalidUsages, wantPath: PathRenewal,
		},
		"key encipherment with ECDSA when it requires RSA": {
			opts:        []csrtest.Option{withUsages(usagesDSKECA...)},
			policy:      func(s *config.Spec) { s.Keys.KeyEnciphermentRequiresRSA = true },
			wantVerdict: Deny, wantReason: ReasonKeyEnciphermentRequiresRSA, wantPath: PathRenewal,
		},

		// ---- lifetime -------------------------------------------------------------
		"expiration above the cap": {
			opts:        []csrtest.Option{withExpiration(86400)},
			policy:      func(s *config.Spec) { s.Lifetime.MaxExpirationSeconds = 3600 },
			wantVerdict: Deny, wantReason: ReasonLifetimeTooLong, wantPath: PathRenewal,
		},

		// ---- node-name patterns ---------------------------------------------------
		"denied name": {
			opts:        []csrtest.Option{bootstrap("abcdef"), withNodeName("control-plane-1")},
			policy:      func(s *config.Spec) { s.NodeNames.Denied = []string{"control-plane-.*"} },
			wantVerdict: Deny, wantReason: ReasonNodeNameDenied, wantPath: PathBootstrap,
		},
		"denied name wins over allowed": {
			opts: []csrtest.Option{withNodeName("control-plane-1")},
			policy: func(s *config.Spec) {
				s.NodeNames.Denied = []string{"control-plane-.*"}
				s.NodeNames.Allowed = []string{".*"}
			},
			wantVerdict: Deny, wantReason: ReasonNodeNameDenied, wantPath: PathRenewal,
		},
		"name not allowed": {
			opts:        []csrtest.Option{withNodeName("laptop")},
			policy:      func(s *config.Spec) { s.NodeNames.Allowed = []string{"worker-[0-9]+"} },
			wantVerdict: Deny, wantReason: ReasonNodeNameNotAllowed, wantPath: PathRenewal,
		},
		"allowed pattern is anchored": {
			opts:        []csrtest.Option{withNodeName("evil-worker-1-x")},
			policy:      func(s *config.Spec) { s.NodeNames.Allowed = []string{"worker-[0-9]+"} },
			wantVerdict: Deny, wantReason: ReasonNodeNameNotAllowed, wantPath: PathRenewal,
		},

		// ---- token bindings ---------------------------------------------------------
		"token without binding when bindings are required": {
			opts:        []csrtest.Option{bootstrap("zzzzzz")},
			policy:      func(s *config.Spec) { s.Bootstrap.RequireTokenBinding = true },
			wantVerdict: Deny, wantReason: ReasonTokenNotBound, wantPath: PathBootstrap,
		},
		"non-token bootstrapper when bindings are required": {
			opts: []csrtest.Option{withUsername("system:serviceaccount:kube-system:joiner"), withGroups("system:bootstrappers")},
			policy: func(s *config.Spec) {
				s.Bootstrap.RequireTokenBinding = true
			},
			wantVerdict: Deny, wantReason: ReasonTokenNotBound, wantPath: PathBootstrap,
		},
		"token bound to other names": {
			opts: []csrtest.Option{bootstrap("abcdef"), withNodeName("worker-9")},
			policy: func(s *config.Spec) {
				s.Bootstrap.TokenBindings = []config.TokenBinding{{TokenID: "abcdef", NodeNames: []string{"gpu-[0-9]+"}}}
			},
			wantVerdict: Deny, wantReason: ReasonTokenNotBoundToName, wantPath: PathBootstrap,
		},

		// ---- facts --------------------------------------------------------------------
		"renewal not authorized": {
			facts:       &Facts{Authorized: ptr(false), NodeExists: ptr(true), NewerPendingForNode: ptr(false), PendingForNode: ptr(0)},
			wantVerdict: Deny, wantReason: ReasonNotAuthorized, wantPath: PathRenewal,
			wantMessage: "certificatesigningrequests/selfnodeclient",
		},
		"bootstrap not authorized": {
			opts:        []csrtest.Option{bootstrap("abcdef")},
			facts:       &Facts{Authorized: ptr(false), NodeExists: ptr(false), NewerPendingForNode: ptr(false), PendingForNode: ptr(0)},
			wantVerdict: Deny, wantReason: ReasonNotAuthorized, wantPath: PathBootstrap,
			wantMessage: "certificatesigningrequests/nodeclient",
		},
		"bootstrap takeover of an existing node": {
			opts:        []csrtest.Option{bootstrap("abcdef"), withNodeName("control-plane-1")},
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(true), NodeHeartbeat: ptr(now.Add(-time.Second)), NewerPendingForNode: ptr(false), PendingForNode: ptr(0), Now: now},
			wantVerdict: Deny, wantReason: ReasonNodeAlreadyExists, wantPath: PathBootstrap,
			wantMessage: "takeover",
		},
		"bootstrap takeover denied without the other facts when recovery is off": {
			opts:        []csrtest.Option{bootstrap("abcdef"), withNodeName("control-plane-1")},
			policy:      func(s *config.Spec) { s.Bootstrap.Recovery.Enabled = ptr(false) },
			facts:       &Facts{NodeExists: ptr(true)},
			wantVerdict: Deny, wantReason: ReasonNodeAlreadyExists, wantPath: PathBootstrap,
			wantSkipped: []string{CheckAuthorized},
		},
		"bootstrap for an existing node needs its heartbeat": {
			opts:        []csrtest.Option{bootstrap("abcdef"), withNodeName("worker-7")},
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(true), NewerPendingForNode: ptr(false), PendingForNode: ptr(0), Now: now},
			wantVerdict: Ignore, wantReason: ReasonFactsIncomplete, wantPath: PathBootstrap,
			wantSkipped: []string{CheckNodeExists},
		},
		"bootstrap for a live node is a takeover": {
			opts:        []csrtest.Option{bootstrap("abcdef"), withNodeName("worker-7")},
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(true), NodeHeartbeat: ptr(now.Add(-12 * time.Second)), NewerPendingForNode: ptr(false), PendingForNode: ptr(0), Now: now},
			wantVerdict: Deny, wantReason: ReasonNodeAlreadyExists, wantPath: PathBootstrap,
			wantMessage: "alive 12s ago",
		},
		"bootstrap for a node gone longer than staleAfterSeconds recovers": {
			opts:        []csrtest.Option{bootstrap("abcdef"), withNodeName("worker-7")},
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(true), NodeHeartbeat: ptr(now.Add(-3 * time.Hour)), NewerPendingForNode: ptr(false), PendingForNode: ptr(0), Now: now},
			wantVerdict: Approve, wantReason: ReasonRecoveryApproved, wantPath: PathBootstrap,
			wantMessage: "last heartbeat was 3h0m0s ago",
		},
		"recovery honours staleAfterSeconds": {
			opts:        []csrtest.Option{bootstrap("abcdef"), withNodeName("worker-7")},
			policy:      func(s *config.Spec) { s.Bootstrap.Recovery.StaleAfterSeconds = ptr[int32](4 * 3600) },
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(true), NodeHeartbeat: ptr(now.Add(-3 * time.Hour)), NewerPendingForNode: ptr(false), PendingForNode: ptr(0), Now: now},
			wantVerdict: Deny, wantReason: ReasonNodeAlreadyExists, wantPath: PathBootstrap,
		},
		"recovery off: a stale node is still refused": {
			opts:        []csrtest.Option{bootstrap("abcdef"), withNodeName("worker-7")},
			policy:      func(s *config.Spec) { s.Bootstrap.Recovery.Enabled = ptr(false) },
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(true), NodeHeartbeat: ptr(now.Add(-3 * time.Hour)), NewerPendingForNode: ptr(false), PendingForNode: ptr(0), Now: now},
			wantVerdict: Deny, wantReason: ReasonNodeAlreadyExists, wantPath: PathBootstrap,
		},
		"a bound token may re-admit a live node when its binding allows it": {
			opts: []csrtest.Option{bootstrap("abcdef"), withNodeName("gpu-1")},
			policy: func(s *config.Spec) {
				s.Bootstrap.TokenBindings = []config.TokenBinding{{TokenID: "abcdef", NodeNames: []string{"gpu-[0-9]+"}, AllowExistingNode: true}}
			},
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(true), NodeHeartbeat: ptr(now), NewerPendingForNode: ptr(false), PendingForNode: ptr(0), Now: now},
			wantVerdict: Approve, wantReason: ReasonRecoveryApproved, wantPath: PathBootstrap,
			wantMessage: "allowExistingNode",
		},
		"a bound token without allowExistingNode may not take a live node": {
			opts: []csrtest.Option{bootstrap("abcdef"), withNodeName("gpu-1")},
			policy: func(s *config.Spec) {
				s.Bootstrap.TokenBindings = []config.TokenBinding{{TokenID: "abcdef", NodeNames: []string{"gpu-[0-9]+"}}}
			},
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(true), NodeHeartbeat: ptr(now), NewerPendingForNode: ptr(false), PendingForNode: ptr(0), Now: now},
			wantVerdict: Deny, wantReason: ReasonNodeAlreadyExists, wantPath: PathBootstrap,
		},
		"a bootstrap user is recognised by name": {
			opts:        []csrtest.Option{withUsername("kubelet"), withGroups("system:authenticated")},
			policy:      func(s *config.Spec) { s.Bootstrap.Users = []string{"kubelet"} },
			wantVerdict: Approve, wantReason: ReasonBootstrapApproved, wantPath: PathBootstrap,
		},
		"a user not named in bootstrap.users is unrecognized": {
			opts:        []csrtest.Option{withUsername("kubelet"), withGroups("system:authenticated")},
			wantVerdict: Deny, wantReason: ReasonUnrecognizedRequester, wantPath: PathUnknown,
			wantMessage: "bootstrap.users",
		},
		"renewal for a node not registered yet waits": {
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(false), NewerPendingForNode: ptr(false), PendingForNode: ptr(0)},
			wantVerdict: Ignore, wantReason: ReasonWaitingForNode, wantPath: PathRenewal,
			wantMessage: "decided when the Node appears",
		},
		"renewal waiting for its node is still denied for a violation": {
			opts:        []csrtest.Option{withDNSSAN("x.example")},
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(false), NewerPendingForNode: ptr(false), PendingForNode: ptr(0)},
			wantVerdict: Deny, wantReason: ReasonSANsNotAllowed, wantPath: PathRenewal,
			wantViolations: []string{ReasonSANsNotAllowed},
		},
		"superseded by a newer CSR": {
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(true), NewerPendingForNode: ptr(true), PendingForNode: ptr(0)},
			wantVerdict: Deny, wantReason: ReasonSuperseded, wantPath: PathRenewal,
		},
		"newer CSR ignored when collapseDuplicates is off": {
			policy:      func(s *config.Spec) { s.Limits.CollapseDuplicates = ptr(false) },
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(true), NewerPendingForNode: ptr(true), PendingForNode: ptr(0)},
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"too many pending": {
			policy:      func(s *config.Spec) { s.Limits.CollapseDuplicates = ptr(false) },
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(true), NewerPendingForNode: ptr(false), PendingForNode: ptr(3)},
			wantVerdict: Deny, wantReason: ReasonTooManyPending, wantPath: PathRenewal,
		},
		"the newest of many duplicates wins when collapsing": {
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(true), NewerPendingForNode: ptr(false), PendingForNode: ptr(50)},
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},
		"pending limit disabled": {
			policy:      func(s *config.Spec) { s.Limits.MaxPendingPerNode = ptr[int32](0) },
			facts:       &Facts{Authorized: ptr(true), NodeExists: ptr(true), NewerPendingForNode: ptr(false), PendingForNode: ptr(100)},
			wantVerdict: Approve, wantReason: ReasonRenewalApproved, wantPath: PathRenewal,
		},

		// ---- several violations at once ------------------------------------------------
		"every violation is listed, the first in priority order is the reason": {
			opts: []csrtest.Option{
				bootstrap("abcdef"), withNodeName("control-plane-1"),
				withOrg("system:masters"), withSubjectAttr(csrtest.OIDOrganizationalUnit, "x"),
				withDNSSAN("kubernetes.default"), withIPSAN("10.0.0.1"),
				withUsages(certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth),
				withExpiration(86400),
			},
			policy: func(s *config.Spec) {
				s.Lifetime.MaxExpirationSeconds = 3600
				s.NodeNames.Denied = []string{"control-plane-.*"}
			},
			facts:       &Facts{Authorized: ptr(false), NodeExists: ptr(true), NodeHeartbeat: ptr(now), NewerPendingForNode: ptr(true), PendingForNode: ptr(5), Now: now},
			wantVerdict: Deny, wantReason: ReasonInvalidOrganization, wantPath: PathBootstrap,
			wantViolations: []string{
				ReasonInvalidOrganization, ReasonExtraSubjectAttributes, ReasonSANsNotAllowed, ReasonInvalidUsages,
				ReasonLifetimeTooLong, ReasonNodeNameDenied, ReasonNotAuthorized, ReasonNodeAlreadyExists,
				ReasonSuperseded,
			},
			wantMessage: "(also: ExtraSubjectAttributes, SANsNotAllowed, InvalidUsages, LifetimeTooLong, NodeNameDenied, NotAuthorized, NodeAlreadyExists, Superseded)",
		},
		"malformed request still reports the spec-level violations": {
			opts:        []csrtest.Option{trailingGarbage(), withUsages(certificatesv1.UsageServerAuth), withExpiration(86400), withUsername("alice"), withGroups()},
			policy:      func(s *config.Spec) { s.Lifetime.MaxExpirationSeconds = 3600 },
			wantVerdict: Deny, wantReason: ReasonMalformedRequest, wantPath: PathUnknown,
			wantViolations: []string{ReasonMalformedRequest, ReasonUnrecognizedRequester, ReasonInvalidUsages, ReasonLifetimeTooLong},
		},
	}
}

func readTestdata(name string) []byte {
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		panic(err)
	}
	return b
}

func TestEvaluate(t *testing.T) {
	cases := evalCases()
	maps.Copy(cases, servingCases())
	seen := map[string]bool{}
	ran := 0
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			ran++
			p := policyWith(t, tc.policy)
			csr := newCSR(tc.opts...)
			facts := goodFacts(tc.wantPath)
			switch {
			case tc.noFacts:
				facts = Facts{}
			case tc.facts != nil:
				facts = *tc.facts
			}
			d := evaluate(p, csr, facts)
			seen[d.Reason] = true
			for _, v := range d.Violations {
				seen[v.Reason] = true
			}

			if d.Verdict != tc.wantVerdict || d.Reason != tc.wantReason {
				t.Fatalf("got %s/%s (%s), want %s/%s\nviolations: %v", d.Verdict, d.Reason, d.Message, tc.wantVerdict, tc.wantReason, reasons(d.Violations))
			}
			if d.Path != tc.wantPath {
				t.Errorf("path %q, want %q", d.Path, tc.wantPath)
			}
			if tc.wantViolations != nil && !slices.Equal(reasons(d.Violations), tc.wantViolations) {
				t.Errorf("violations %v, want %v", reasons(d.Violations), tc.wantViolations)
			}
			for _, s := range tc.wantSkipped {
				if !slices.Contains(d.Skipped, s) {
					t.Errorf("skipped %v, want %s in it", d.Skipped, s)
				}
			}
			if tc.wantMessage != "" && !strings.Contains(d.Message, tc.wantMessage) {
				t.Errorf("message %q does not contain %q", d.Message, tc.wantMessage)
			}
			checkInvariants(t, p, csr, d)
		})
	}
	if ran != len(cases) {
		return // filtered with -run
	}
	for _, r := range AllReasons() {
		if r == ReasonInternalError || r == ReasonRateLimited {
			continue // unreachable; the reconciler's throttle (reconciler_test.go)
		}
		if !seen[r] {
			t.Errorf("reason %s has no case", r)
		}
	}
}

func reasons(cs []Check) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Reason
	}
	return out
}

// checkInvariants holds for every decision.
func checkInvariants(t *testing.T, p *config.Effective, csr *certificatesv1.CertificateSigningRequest, d Decision) {
	t.Helper()
	if d.Reason == "" || d.Message == "" {
		t.Errorf("empty reason or message: %+v", d)
	}
	if d.Verdict == Approve && (len(d.Violations) > 0 || len(d.Skipped) > 0) {
		t.Errorf("approved with violations %v or skipped %v", reasons(d.Violations), d.Skipped)
	}
	if len(d.Violations) > 0 && d.Reason != d.Violations[0].Reason {
		t.Errorf("reason %s is not the first violation %s", d.Reason, d.Violations[0].Reason)
	}
	for i := 1; i < len(d.Violations); i++ {
		if ruleIndex[d.Violations[i-1].Name] > ruleIndex[d.Violations[i].Name] {
			t.Errorf("violations out of priority order: %v", reasons(d.Violations))
		}
	}
	names := map[string]bool{}
	fails, skips := 0, 0
	for _, c := range d.Checks {
		if names[c.Name] {
			t.Errorf("check %s twice", c.Name)
		}
		names[c.Name] = true
		switch c.Result {
		case Fail:
			fails++
			if c.Reason == "" {
				t.Errorf("failed check %s without reason", c.Name)
			}
		case Skipped:
			skips++
		}
		if len(c.Message) > 400 {
			t.Errorf("check %s message is %d bytes", c.Name, len(c.Message))
		}
	}
	if d.Reason == ReasonNotKubeletClientSigner || d.Reason == ReasonAlreadyDecided {
		if len(d.Violations) != 0 || d.Verdict != Ignore {
			t.Errorf("a CSR that is not ours has violations or verdict %s", d.Verdict)
		}
		fails--
	}
	if fails != len(d.Violations) || skips != len(d.Skipped) {
		t.Errorf("%d failed checks, %d violations; %d skipped checks, %d skipped", fails, len(d.Violations), skips, len(d.Skipped))
	}
	if len(d.Message) > 600 {
		t.Errorf("message is %d bytes", len(d.Message))
	}
	if d.Verdict == Approve {
		if d.NodeName == "" || d.KeyAlgorithm == "" || d.PublicKeySHA256 == "" || d.Path == PathUnknown {
			t.Errorf("approval without node name, key or path: %+v", d)
		}
		if p.OnViolation == "" {
			t.Error("no onViolation")
		}
	}
	if d.PublicKeySHA256 != "" {
		blk, _ := pem.Decode(bytes.TrimSpace(csr.Spec.Request))
		if cr, err := x509.ParseCertificateRequest(blk.Bytes); err == nil {
			sum := sha256.Sum256(cr.RawSubjectPublicKeyInfo)
			if got := hex.EncodeToString(sum[:]); got != d.PublicKeySHA256 {
				t.Errorf("PublicKeySHA256 %s, want %s", d.PublicKeySHA256, got)
			}
		}
	}
}

func TestEvaluateKeyAlgorithm(t *testing.T) {
	cases := map[string]struct {
		opt  csrtest.Option
		want string
	}{
		"P-256":    {ecKey(elliptic.P256()), "ECDSA-P256"},
		"P-384":    {ecKey(elliptic.P384()), "ECDSA-P384"},
		"P-224":    {ecKey(elliptic.P224()), "ECDSA-P224"},
		"RSA-2048": {rsaKey(2048), "RSA-2048"},
		"Ed25519":  {ed25519Key(), "Ed25519"},
		"DSA":      {withSPKI(dsaSPKI()), "DSA"},
		"X25519":   {withSPKI(x25519SPKI()), "X25519"},
		"unknown":  {withSPKI(unknownSPKI()), "Unknown"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			d := evaluate(nil, newCSR(tc.opt), Facts{})
			if d.KeyAlgorithm != tc.want {
				t.Errorf("KeyAlgorithm %q, want %q", d.KeyAlgorithm, tc.want)
			}
			if len(d.PublicKeySHA256) != 64 {
				t.Errorf("PublicKeySHA256 %q", d.PublicKeySHA256)
			}
		})
	}
}

// The default policy approves a stock kubelet's renewal.
func TestDefaultPolicy(t *testing.T) {
	d := evaluate(nil, newCSR(), goodFacts(PathRenewal))
	if d.Verdict != Approve || d.PolicyDigest != config.Default().Digest {
		t.Errorf("default policy: %+v", d)
	}
}

func TestEvaluateDoesNotModifyInput(t *testing.T) {
	csr := newCSR(withDNSSAN("x"))
	before := csr.DeepCopy()
	p := config.Default()
	digest := p.Digest
	evaluate(p, csr, Facts{})
	if !equalCSR(before, csr) {
		t.Error("Decide modified the CSR")
	}
	if p.Digest != digest {
		t.Error("Decide modified the policy")
	}
}

func equalCSR(a, b *certificatesv1.CertificateSigningRequest) bool {
	return a.String() == b.String()
}

func TestMessagesAreBounded(t *testing.T) {
	long := strings.Repeat("\u202e\x00A", 5000)
	cases := map[string][]csrtest.Option{
		"long common name":   {withCN("system:node:" + long), bootstrap("abcdef")},
		"long organization":  {withOrg(long)},
		"long username":      {withUsername("system:node:" + long)},
		"long bootstrapper":  {withUsername(long), withGroups("system:bootstrappers")},
		"long usage":         {withUsages(certificatesv1.KeyUsage(long))},
		"many usages":        {withUsages(slices.Repeat([]certificatesv1.KeyUsage{"x"}, 1000)...)},
		"long signer":        {withSigner(long)},
		"long PEM type":      {withPEMType(strings.Repeat("A", 3000))},
		"many organizations": {withOrg(slices.Repeat([]string{"o"}, 200)...)},
	}
	for name, opts := range cases {
		t.Run(name, func(t *testing.T) {
			d := evaluate(nil, newCSR(opts...), goodFacts(PathBootstrap))
			for _, c := range append(d.Checks, Check{Message: d.Message}) {
				if len(c.Message) > 600 {
					t.Errorf("%s: message of %d bytes", c.Name, len(c.Message))
				}
				if strings.ContainsAny(c.Message, "\x00\u202e") {
					t.Errorf("%s: message carries raw control characters: %q", c.Name, c.Message)
				}
			}
		})
	}
}

func TestInspectPath(t *testing.T) {
	p := config.Default()
	users := policyWith(t, func(s *config.Spec) { s.Bootstrap.Users = []string{"kubelet"} })
	cases := map[string]struct {
		csr    *certificatesv1.CertificateSigningRequest
		policy *config.Effective
		want   Path
	}{
		"renewal":                 {newCSR(), p, PathRenewal},
		"bootstrap":               {newCSR(bootstrap("abcdef")), p, PathBootstrap},
		"node for another node":   {newCSR(withNodeName("b"), withUsername("system:node:a")), p, PathUnknown},
		"node with a bad request": {newCSR(withRequest([]byte("junk"))), p, PathUnknown},
		"bootstrapper with junk":  {newCSR(bootstrap("abcdef"), withRequest([]byte("junk"))), p, PathBootstrap},
		"user":                    {newCSR(withUsername("alice"), withGroups("devs")), p, PathUnknown},
		"bootstrap user":          {newCSR(withUsername("kubelet"), withGroups("devs")), users, PathBootstrap},
		"other user":              {newCSR(withUsername("alice"), withGroups("devs")), users, PathUnknown},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := Inspect(tc.policy, tc.csr).Path; got != tc.want {
				t.Errorf("Path = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSubresourceFor(t *testing.T) {
	for path, want := range map[Path]string{PathRenewal: "selfnodeclient", PathBootstrap: "nodeclient", PathUnknown: ""} {
		if got := SubresourceFor(path); got != want {
			t.Errorf("SubresourceFor(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestNodeNameOf(t *testing.T) {
	cases := map[string]struct {
		csr    *certificatesv1.CertificateSigningRequest
		want   string
		wantOK bool
	}{
		"valid":                 {newCSR(withNodeName("worker-3")), "worker-3", true},
		"bootstrap":             {newCSR(bootstrap("abcdef"), withNodeName("new")), "new", true},
		"bad signature":         {newCSR(signedByOtherKey()), "worker-1", true},
		"no prefix":             {newCSR(withCN("worker-3")), "", false},
		"invalid name":          {newCSR(withNodeName("Worker_3")), "", false},
		"garbage":               {newCSR(withRequest([]byte("garbage"))), "", false},
		"empty":                 {newCSR(withRequest(nil)), "", false},
		"two blocks":            {newCSR(twoBlocks()), "", false},
		"too large":             {newCSR(withPEMMutator(func(p []byte) []byte { return append(p, bytes.Repeat([]byte(" "), config.MaxMaxRequestBytes)...) })), "", false},
		"nil":                   {nil, "", false},
		"last common name wins": {newCSR(withRawSubject(rawSubject([]pkix.AttributeTypeAndValue{atv(csrtest.OIDCommonName, "system:node:a")}, []pkix.AttributeTypeAndValue{atv(csrtest.OIDCommonName, "system:node:b")}))), "b", true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, ok := NodeNameOf(tc.csr)
			if got != tc.want || ok != tc.wantOK {
				t.Errorf("NodeNameOf = %q, %v; want %q, %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

// The rule table is consistent: unique names and reasons, every reason
// known, a field for every rule, only fact rules need facts.
func TestRuleTable(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range AllReasons() {
		if seen[r] {
			t.Errorf("reason %s twice", r)
		}
		seen[r] = true
	}
	names := map[string]bool{}
	for _, r := range Rules() {
		if names[r.Name] {
			t.Errorf("rule %s twice", r.Name)
		}
		names[r.Name] = true
		if len(r.Reasons) == 0 || r.Field == "" || r.check == nil {
			t.Errorf("rule %s lacks reasons, field or check", r.Name)
		}
		if r.Deferred && r.Needs != 0 {
			t.Errorf("rule %s: only static rules are deferred", r.Name)
		}
		if got := rules[ruleIndex[r.Name]]; got.Name != r.Name {
			t.Errorf("ruleIndex[%s] names %s", r.Name, got.Name)
		}
	}
	rs := Rules()
	rs[0].Name = "changed"
	if Rules()[0].Name == "changed" {
		t.Error("Rules returns shared state")
	}
}

// docs/reasons.md documents every reason code.
func TestReasonsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/reasons.md")
	if err != nil {
		t.Fatalf("read docs: %v", err)
	}
	for _, r := range AllReasons() {
		if !bytes.Contains(doc, []byte("`"+r+"`")) {
			t.Errorf("docs/reasons.md does not mention `%s`", r)
		}
	}
	i := 0
	for _, rule := range Rules() {
		if rule.Gate {
			continue
		}
		for _, r := range rule.Reasons {
			i++
			if row := fmt.Sprintf("| %d | `%s` | %s |", i, r, rule.Name); !bytes.Contains(doc, []byte(row)) {
				t.Errorf("docs/reasons.md lacks the priority row %q", row)
			}
		}
	}
}

// The reconciler's two passes over one inspected request verify the
// signature once: the second pass reuses the first's verdict.
func TestSignatureVerifiedOncePerRequest(t *testing.T) {
	facts := Facts{Authorized: ptr(true), NodeExists: ptr(true), NewerPendingForNode: ptr(false), PendingForNode: ptr(0)}
	p := config.Default()
	r := Inspect(p, csrtest.Build())
	if d := Decide(p, r, Facts{}); d.Reason != ReasonFactsIncomplete {
		t.Fatalf("static pass: %s %s", d.Verdict, d.Reason)
	}
	// Were the signature checked again, this would now fail it.
	r.req.cr.Signature = []byte("not a signature")
	if d := Decide(p, r, facts); d.Verdict != Approve {
		t.Fatalf("second pass: %s %s (%s)", d.Verdict, d.Reason, d.Message)
	}
	// A fresh inspection does check it.
	bad := csrtest.Build(csrtest.SignedByOtherKey())
	if d := evaluate(p, bad, facts); d.Reason != ReasonInvalidSignature {
		t.Fatalf("bad signature: %s %s", d.Verdict, d.Reason)
	}
}

// A hopeless CSR costs no signature check: the signature rule is deferred
// and skipped when another static rule fails.
func TestHopelessCSRCostsNoSignatureCheck(t *testing.T) {
	d := evaluate(nil, csrtest.Build(csrtest.SignedByOtherKey(), csrtest.WithDNSSAN("x.example")), Facts{})
	c, ok := d.Check(CheckSignature)
	if d.Reason != ReasonSANsNotAllowed || !ok || c.Result != Skipped {
		t.Fatalf("got %s, signature check %+v", d.Reason, c)
	}
}

// The reconciler's pipeline on an approvable CSR: inspect once, decide
// statically, decide with the facts. Compare with BenchmarkEvaluate: the
// second decision adds no signature verification.
func BenchmarkReconcilePipeline(b *testing.B) {
	facts := Facts{Authorized: ptr(true), NodeExists: ptr(true), NewerPendingForNode: ptr(false), PendingForNode: ptr(0)}
	p, csr := config.Default(), csrtest.Build()
	b.ReportAllocs()
	for b.Loop() {
		r := Inspect(p, csr)
		if d := Decide(p, r, Facts{}); d.Reason != ReasonFactsIncomplete {
			b.Fatal(d.Reason)
		}
		if d := Decide(p, r, facts); d.Verdict != Approve {
			b.Fatal(d.Reason)
		}
	}
}
