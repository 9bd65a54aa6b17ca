package approver

// Reason codes. Each is stable: it is written as the approval condition's
// reason, put on Events and used as a metric label. docs/reasons.md says
// what triggers each and what to do about it.
//
// A CSR that breaks several rules is reported with every violation; the
// Decision's Reason is the first of them in rule order (rules.go).
const (
	// ReasonNotKubeletClientSigner: the CSR is for a signer nodecsr does not
	// decide: neither kubernetes.io/kube-apiserver-client-kubelet nor, when
	// serving.enabled, kubernetes.io/kubelet-serving. Verdict Ignore: not
	// ours.
	ReasonNotKubeletClientSigner = "NotKubeletClientSigner"
	// ReasonAlreadyDecided: the CSR already has an Approved, Denied or
	// Failed condition, or a certificate. Verdict Ignore.
	ReasonAlreadyDecided = "AlreadyDecided"

	// ReasonRequestTooLarge: spec.request is larger than
	// keys.maxRequestBytes; it was not parsed.
	ReasonRequestTooLarge = "RequestTooLarge"
	// ReasonMalformedRequest: spec.request is not exactly one PEM block of
	// type CERTIFICATE REQUEST holding one well-formed PKCS#10 request.
	ReasonMalformedRequest = "MalformedRequest"
	// ReasonKeyAlgorithmNotAllowed: the public key's algorithm is not
	// allowed (Ed25519 while keys.ed25519 is off, RSA while keys.rsa.enabled
	// is off, DSA, X25519, unknown).
	ReasonKeyAlgorithmNotAllowed = "KeyAlgorithmNotAllowed"
	// ReasonKeyCurveNotAllowed: the ECDSA key's curve is not in
	// keys.ecdsa.curves.
	ReasonKeyCurveNotAllowed = "KeyCurveNotAllowed"
	// ReasonKeySizeNotAllowed: the RSA modulus is outside
	// keys.rsa.minBits..maxBits.
	ReasonKeySizeNotAllowed = "KeySizeNotAllowed"
	// ReasonInvalidSignature: the request's signature does not verify with
	// its own public key, or uses a weak algorithm (MD5, SHA-1).
	ReasonInvalidSignature = "InvalidSignature"
	// ReasonInvalidCommonName: the subject's common name is not
	// system:node:<name> with a non-empty name.
	ReasonInvalidCommonName = "InvalidCommonName"
	// ReasonInvalidNodeName: the name in the common name is not a valid
	// DNS-1123 subdomain.
	ReasonInvalidNodeName = "InvalidNodeName"
	// ReasonRequesterMismatch: a node (system:node:<a>) asked for another
	// node's name. A node can never ask for another node's name.
	ReasonRequesterMismatch = "RequesterMismatch"
	// ReasonUnrecognizedRequester: the requester is neither the node itself
	// nor in a bootstrap group.
	ReasonUnrecognizedRequester = "UnrecognizedRequester"
	// ReasonBootstrapDisabled: the requester is a bootstrapper and
	// bootstrap.enabled is false.
	ReasonBootstrapDisabled = "BootstrapDisabled"
	// ReasonServingByBootstrapper: a bootstrapper filed a serving CSR. There
	// is no bootstrap path for serving certificates: only a node that has
	// joined may ask for its own.
	ReasonServingByBootstrapper = "ServingByBootstrapper"
	// ReasonNodeNotInNodesGroup: a serving CSR's requester is
	// system:node:<name> but not in the system:nodes group.
	ReasonNodeNotInNodesGroup = "NodeNotInNodesGroup"
	// ReasonInvalidOrganization: the subject does not hold exactly one
	// organization, system:nodes.
	ReasonInvalidOrganization = "InvalidOrganization"
	// ReasonExtraSubjectAttributes: the subject holds something besides one
	// common name and one organization (OU, C, serialNumber, a second CN, a
	// multi-valued RDN, ...).
	ReasonExtraSubjectAttributes = "ExtraSubjectAttributes"
	// ReasonSANsNotAllowed: the request asks for subject alternative names
	// (DNS, IP, email, URI), or carries a SAN extension at all.
	ReasonSANsNotAllowed = "SANsNotAllowed"
	// ReasonSANTypeNotAllowed: a serving CSR asks for a SAN that is neither
	// a DNS name nor an IP address (email, URI, another name type), or
	// carries more than one SAN extension.
	ReasonSANTypeNotAllowed = "SANTypeNotAllowed"
	// ReasonWildcardDNSName: a serving CSR asks for a wildcard DNS name.
	ReasonWildcardDNSName = "WildcardDNSName"
	// ReasonInvalidDNSName: a serving CSR's DNS SAN is not a valid lower-case
	// DNS-1123 subdomain.
	ReasonInvalidDNSName = "InvalidDNSName"
	// ReasonNoSANs: a serving CSR asks for no SAN at all.
	ReasonNoSANs = "NoSANs"
	// ReasonTooManySANs: a serving CSR asks for more than serving.maxSANs
	// SANs.
	ReasonTooManySANs = "TooManySANs"
	// ReasonIPNotAllowed: a serving CSR's IP SAN is inside none of
	// serving.ipCIDRs.
	ReasonIPNotAllowed = "IPNotAllowed"
	// ReasonUnexpectedExtensions: the request asks for extensions other
	// than SAN, or carries attributes other than an extension request, or a
	// version other than 1.
	ReasonUnexpectedExtensions = "UnexpectedExtensions"
	// ReasonInvalidUsages: spec.usages is not exactly {digital signature,
	// client auth} or {digital signature, key encipherment, client auth}.
	ReasonInvalidUsages = "InvalidUsages"
	// ReasonKeyEnciphermentRequiresRSA: key encipherment was asked for with
	// a non-RSA key while keys.keyEnciphermentRequiresRSA is on.
	ReasonKeyEnciphermentRequiresRSA = "KeyEnciphermentRequiresRSA"
	// ReasonLifetimeTooLong: spec.expirationSeconds exceeds
	// lifetime.maxExpirationSeconds.
	ReasonLifetimeTooLong = "LifetimeTooLong"
	// ReasonNodeNameDenied: the node name matches a nodeNames.denied
	// pattern.
	ReasonNodeNameDenied = "NodeNameDenied"
	// ReasonNodeNameNotAllowed: the node name matches no nodeNames.allowed
	// pattern.
	ReasonNodeNameNotAllowed = "NodeNameNotAllowed"
	// ReasonTokenNotBound: bootstrap.requireTokenBinding is on and the
	// bootstrap token has no entry in bootstrap.tokenBindings.
	ReasonTokenNotBound = "TokenNotBound"
	// ReasonTokenNotBoundToName: the bootstrap token is bound to node names
	// and the requested name is not one of them.
	ReasonTokenNotBoundToName = "TokenNotBoundToName"
	// ReasonNotAuthorized: the SubjectAccessReview for the path's
	// subresource (selfnodeclient or nodeclient) was not allowed.
	ReasonNotAuthorized = "NotAuthorized"
	// ReasonNodeAlreadyExists: a bootstrapper claimed the name of a Node
	// that exists and is alive (its heartbeat is newer than
	// bootstrap.recovery.staleAfterSeconds, or recovery is off) while
	// bootstrap.allowExistingNode is off: a takeover.
	ReasonNodeAlreadyExists = "NodeAlreadyExists"
	// ReasonWaitingForNode: a renewal for a node whose Node object does not
	// exist yet while renewal.requireNodeExists is on. Verdict Ignore: the
	// CSR stays pending and is decided when the Node appears.
	ReasonWaitingForNode = "WaitingForNode"
	// ReasonWaitingForNodeAddresses: a serving CSR for a Node that has not
	// reported any address yet. Not a violation: the CSR stays pending and
	// is decided again when the Node's addresses change. Verdict Ignore.
	ReasonWaitingForNodeAddresses = "WaitingForNodeAddresses"
	// ReasonIPNotNodeAddress: a serving CSR's IP SAN is not one of the
	// Node's own InternalIP or ExternalIP addresses.
	ReasonIPNotNodeAddress = "IPNotNodeAddress"
	// ReasonDNSNameNotNodeAddress: a serving CSR's DNS SAN is neither one of
	// the Node's Hostname, InternalDNS or ExternalDNS addresses nor a
	// serving.dnsNames name of the node.
	ReasonDNSNameNotNodeAddress = "DNSNameNotNodeAddress"
	// ReasonAddressOfOtherNode: a serving CSR's SAN is an address another
	// Node reports; the message names that Node.
	ReasonAddressOfOtherNode = "AddressOfOtherNode"
	// ReasonDNSNameDoesNotResolveToNode: serving.resolveDNS is on and a DNS
	// SAN does not exist or resolves to none of the Node's IP addresses.
	ReasonDNSNameDoesNotResolveToNode = "DNSNameDoesNotResolveToNode"
	// ReasonSuperseded: a newer pending or approved CSR for the same node from the same requester exists and
	// limits.collapseDuplicates is on; the newest wins.
	ReasonSuperseded = "Superseded"
	// ReasonTooManyPending: limits.maxPendingPerNode older CSRs for the same
	// node are still pending.
	ReasonTooManyPending = "TooManyPending"
	// ReasonRateLimited: the bootstrap requester exceeded
	// bootstrap.rateLimit. Not a rule: the reconciler throttles an approval
	// after the decision. Verdict Ignore: the CSR is retried later, never
	// denied for rate.
	ReasonRateLimited = "RateLimited"
	// ReasonFactsIncomplete: every check that ran passed, but a cluster fact
	// needed for approval was not gathered. Verdict Ignore.
	ReasonFactsIncomplete = "FactsIncomplete"

	// ReasonInternalError: every check passed but one that approval needs
	// did not run. It should never happen; Decide refuses to approve and
	// leaves the CSR pending. Report it as a bug.
	ReasonInternalError = "InternalError"

	// ReasonRenewalApproved: a node renewing its own certificate passed
	// every check. Verdict Approve.
	ReasonRenewalApproved = "RenewalApproved"
	// ReasonBootstrapApproved: a bootstrapper's request passed every check.
	// Verdict Approve.
	ReasonBootstrapApproved = "BootstrapApproved"
	// ReasonRecoveryApproved: a bootstrapper's request for the name of an
	// existing Node whose kubelet is gone (its heartbeat is older than
	// bootstrap.recovery.staleAfterSeconds, or its token's binding allows
	// it) passed every check: the node comes back after its certificate
	// expired. Verdict Approve.
	ReasonRecoveryApproved = "RecoveryApproved"
	// ReasonServingApproved: a node's serving CSR passed every check: every
	// SAN is proven by the cluster. Verdict Approve.
	ReasonServingApproved = "ServingApproved"
)

// AllReasons returns every reason code a decision can carry: the rule
// table's, in rule order, then those of the outcomes.
func AllReasons() []string {
	var out []string
	for i := range rules {
		out = append(out, rules[i].Reasons...)
	}
	return append(out, ReasonRateLimited, ReasonFactsIncomplete, ReasonInternalError,
		ReasonRenewalApproved, ReasonBootstrapApproved, ReasonRecoveryApproved, ReasonServingApproved)
}
