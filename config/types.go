// Package config holds nodecsr's Policy: its type, defaults, strict loading,
// validation and hot reload.
//
// A Policy is read from a YAML file (apiVersion nodecsr.io/v1alpha1, kind
// Policy). Parse and Load decode it strictly (unknown fields, wrong types,
// duplicate keys and extra documents are errors that name the line), apply
// defaults, validate every field at once and compile the node-name patterns.
// A Policy returned by Parse, Load or Default is complete and must be treated
// as immutable: it is shared between goroutines.
package config

const (
	// APIVersion is the only apiVersion a policy file may declare.
	APIVersion = "nodecsr.io/v1alpha1"
	// Kind is the only kind a policy file may declare.
	Kind = "Policy"

	// MaxFileBytes is the largest policy file Parse and Load accept (1 MiB).
	MaxFileBytes = 1 << 20
)

// Mode says whether decisions are written to the cluster.
type Mode string

const (
	// ModeEnforce writes every decision as an approval condition (the default).
	ModeEnforce Mode = "Enforce"
	// ModeDryRun records what would have been decided (WouldApprove /
	// WouldDeny) and writes no condition.
	ModeDryRun Mode = "DryRun"
)

// ViolationAction says what happens to a CSR that violates the policy.
type ViolationAction string

const (
	// ViolationDeny denies the CSR with the reason code (the default).
	ViolationDeny ViolationAction = "Deny"
	// ViolationLeavePending leaves the CSR pending; the decision is still
	// recorded (Event, log, metric) with the reason code.
	ViolationLeavePending ViolationAction = "LeavePending"
)

// GuardMode is the approval guard's mode.
type GuardMode string

const (
	// GuardOff disables the approval guard (the default).
	GuardOff GuardMode = "Off"
	// GuardWarn admits a manual approval by someone not allowed, with a warning.
	GuardWarn GuardMode = "Warn"
	// GuardEnforce rejects a manual approval by someone not allowed.
	GuardEnforce GuardMode = "Enforce"
)

// Curve names an elliptic curve as crypto/elliptic spells it.
type Curve string

const (
	// CurveP224 is NIST P-224 (opt-in).
	CurveP224 Curve = "P-224"
	// CurveP256 is NIST P-256 (allowed by default; what kubelets generate).
	CurveP256 Curve = "P-256"
	// CurveP384 is NIST P-384 (allowed by default).
	CurveP384 Curve = "P-384"
	// CurveP521 is NIST P-521 (opt-in).
	CurveP521 Curve = "P-521"
)

// Policy is the versioned nodecsr policy file (nodecsr.io/v1alpha1). Optional
// fields are pointers so that "unset" can be told from "zero". Nothing decides
// with a Policy directly: Compile (or Parse, Load, Default) defaults,
// validates and compiles it into an Effective policy.
type Policy struct {
	// APIVersion must be nodecsr.io/v1alpha1.
	APIVersion string `json:"apiVersion"`
	// Kind must be Policy.
	Kind string `json:"kind"`
	// Spec is the policy itself. Every field is optional.
	Spec Spec `json:"spec"`
}

// Spec is the body of a Policy.
type Spec struct {
	// Mode is Enforce (write decisions) or DryRun (record only).
	// Default: Enforce.
	Mode Mode `json:"mode,omitempty"`
	// OnViolation is Deny (deny a violating CSR) or LeavePending (leave it
	// pending, recording the reason). Default: Deny.
	OnViolation ViolationAction `json:"onViolation,omitempty"`
	// NodeNames restricts the node names that may be claimed.
	NodeNames NodeNames `json:"nodeNames"`
	// Bootstrap configures the bootstrap path (a requester in a bootstrap
	// group asking for its first client certificate).
	Bootstrap Bootstrap `json:"bootstrap"`
	// Renewal configures the renewal path (system:node:<name> asking for
	// its own name).
	Renewal Renewal `json:"renewal"`
	// Keys restricts the key types and sizes in the request.
	Keys Keys `json:"keys"`
	// Lifetime restricts the requested certificate lifetime.
	Lifetime Lifetime `json:"lifetime"`
	// Limits bounds pending requests per node.
	Limits Limits `json:"limits"`
	// ApprovalGuard configures the webhook that guards manual approvals.
	ApprovalGuard ApprovalGuard `json:"approvalGuard"`
	// Serving configures kubelet serving certificates (signer
	// kubernetes.io/kubelet-serving). Off by default.
	Serving Serving `json:"serving"`
}

// NodeNames restricts the node names (the part of the common name after
// system:node:) a request may claim. A name must always be a valid DNS-1123
// subdomain, whatever the patterns say.
type NodeNames struct {
	// Allowed lists RE2 regular expressions, implicitly anchored (^…$); a
	// name must match at least one. Default: none, meaning every valid
	// DNS-1123 subdomain is allowed.
	Allowed []string `json:"allowed,omitempty"`
	// Denied lists RE2 regular expressions, implicitly anchored (^…$); a
	// name that matches any of them is refused, even when Allowed matches.
	// Default: none.
	Denied []string `json:"denied,omitempty"`
}

// Bootstrap configures the bootstrap path.
type Bootstrap struct {
	// Enabled turns the bootstrap path on. When false, every request from a
	// bootstrap group is refused. Default: true.
	Enabled *bool `json:"enabled,omitempty"`
	// Groups lists the groups whose members are bootstrappers.
	// Default: [system:bootstrappers].
	Groups []string `json:"groups"`
	// Users lists usernames that are bootstrappers whatever their groups,
	// for installers that give kubelets a shared bootstrap client
	// certificate (CN=kubelet) instead of a token. Like every bootstrapper,
	// each is still authorized with the nodeclient SubjectAccessReview.
	// Default: none.
	Users []string `json:"users,omitempty"`
	// AllowExistingNode lets a bootstrapper claim any name whose Node object
	// already exists, alive or not. Off, such a request is refused as a node
	// takeover unless Recovery re-admits the node. Default: false.
	AllowExistingNode bool `json:"allowExistingNode,omitempty"`
	// Recovery re-admits a node whose client certificate expired while it
	// was off: its kubelet falls back to its bootstrap token for a name whose
	// Node object still exists.
	Recovery Recovery `json:"recovery"`
	// RequireTokenBinding refuses a bootstrapper whose token has no entry in
	// TokenBindings. Default: false.
	RequireTokenBinding bool `json:"requireTokenBinding,omitempty"`
	// TokenBindings binds bootstrap tokens to the node names they may claim.
	// Default: none.
	TokenBindings []TokenBinding `json:"tokenBindings,omitempty"`
	// RateLimit bounds how fast one bootstrapper's requests are considered;
	// requests over the limit stay pending and are retried later, never
	// denied.
	RateLimit RateLimit `json:"rateLimit"`
}

// TokenBinding binds one bootstrap token to the node names it may claim.
type TokenBinding struct {
	// TokenID is the bootstrap token's ID (six characters [a-z0-9]); the
	// requester is system:bootstrap:<tokenID>. Required.
	TokenID string `json:"tokenID"`
	// NodeNames lists RE2 regular expressions, implicitly anchored (^…$);
	// the token may only claim a name that matches one of them. Required.
	NodeNames []string `json:"nodeNames"`
	// AllowExistingNode lets this token claim one of its names even when
	// the Node exists and is heartbeating (a node re-installed in place).
	// Default: false.
	AllowExistingNode bool `json:"allowExistingNode,omitempty"`
}

// Recovery decides when a bootstrap request for the name of an existing Node
// is a node coming back rather than a takeover.
type Recovery struct {
	// Enabled re-admits an existing node through the bootstrap path when
	// its heartbeat (the renewTime of its Lease in kube-node-lease; the
	// Node's creation time when it has no Lease) is older than
	// StaleAfterSeconds. A node that is still heartbeating is never
	// re-admitted: its name is refused as a takeover. Default: true.
	Enabled *bool `json:"enabled,omitempty"`
	// StaleAfterSeconds is how old the heartbeat must be, at least 60
	// (kubelets renew their Lease every 10 s; the node controller marks a
	// node NotReady after 50 s). Default: 300.
	StaleAfterSeconds *int32 `json:"staleAfterSeconds,omitempty"`
}

// RateLimit is a token bucket per bootstrap requester.
type RateLimit struct {
	// PerMinute is the sustained number of requests per minute one
	// requester may have considered; 0 disables the limit. Default: 60.
	PerMinute *int32 `json:"perMinute,omitempty"`
	// Burst is the bucket size; must be at least 1 when PerMinute is set.
	// Default: 20.
	Burst *int32 `json:"burst,omitempty"`
}

// Renewal configures the renewal path.
type Renewal struct {
	// RequireNodeExists approves a renewal only once the node's Node object
	// exists; until then the CSR stays pending (WaitingForNode) and is
	// decided when the Node appears. Default: true.
	RequireNodeExists *bool `json:"requireNodeExists,omitempty"`
}

// Keys restricts the public key in the request.
type Keys struct {
	// ECDSA lists the allowed ECDSA curves.
	ECDSA ECDSAKeys `json:"ecdsa"`
	// RSA bounds RSA key sizes.
	RSA RSAKeys `json:"rsa"`
	// Ed25519 allows Ed25519 keys. Default: false.
	Ed25519 bool `json:"ed25519,omitempty"`
	// KeyEnciphermentRequiresRSA refuses the "key encipherment" usage with
	// a non-RSA key. Stock kubelets and many client-go requesters send it
	// with ECDSA keys, and upstream accepts it. Default: false.
	KeyEnciphermentRequiresRSA bool `json:"keyEnciphermentRequiresRSA,omitempty"`
	// MaxRequestBytes is the largest spec.request accepted; larger requests
	// are refused before any parsing. Between 1024 and 65536.
	// Default: 16384.
	MaxRequestBytes int32 `json:"maxRequestBytes,omitempty"`
}

// ECDSAKeys lists the allowed ECDSA curves.
type ECDSAKeys struct {
	// Curves lists the allowed curves, out of P-224, P-256, P-384 and
	// P-521. An empty list allows no ECDSA key. Default: [P-256, P-384].
	Curves []Curve `json:"curves"`
}

// RSAKeys bounds RSA key sizes.
type RSAKeys struct {
	// Enabled allows RSA keys. Default: true.
	Enabled *bool `json:"enabled,omitempty"`
	// MinBits is the smallest modulus allowed, at least 2048.
	// Default: 2048.
	MinBits int32 `json:"minBits,omitempty"`
	// MaxBits is the largest modulus allowed, at most 8192.
	// Default: 4096.
	MaxBits int32 `json:"maxBits,omitempty"`
}

// Lifetime restricts spec.expirationSeconds.
type Lifetime struct {
	// MaxExpirationSeconds refuses a request whose expirationSeconds is
	// larger; 0 means no cap beyond the signer's own. Otherwise at least
	// 600 (the API server's minimum). Default: 0.
	MaxExpirationSeconds int32 `json:"maxExpirationSeconds,omitempty"`
	// DefaultExpirationSeconds is set by the mutating webhook on a request
	// without expirationSeconds. At least 600 and at most
	// MaxExpirationSeconds when both are set. Default: unset.
	DefaultExpirationSeconds *int32 `json:"defaultExpirationSeconds,omitempty"`
}

// Limits bounds pending requests per node.
type Limits struct {
	// MaxPendingPerNode refuses a request when this many older requests for
	// the same node name are still pending; 0 disables the limit.
	// Default: 3.
	MaxPendingPerNode *int32 `json:"maxPendingPerNode,omitempty"`
	// CollapseDuplicates denies a pending request as Superseded when a
	// newer pending request for the same node exists: the newest wins.
	// Default: true.
	CollapseDuplicates *bool `json:"collapseDuplicates,omitempty"`
}

// ApprovalGuard configures the webhook that guards manual approvals of
// kubelet client CSRs.
type ApprovalGuard struct {
	// Mode is Off, Warn or Enforce. Default: Off.
	Mode GuardMode `json:"mode,omitempty"`
	// AllowedUsers may approve by hand. Default: none.
	AllowedUsers []string `json:"allowedUsers,omitempty"`
	// AllowedGroups may approve by hand; an empty list allows none.
	// Default: [system:masters] (break-glass).
	AllowedGroups []string `json:"allowedGroups"`
}

// SubresourceSelfNodeClient and SubresourceSelfNodeServer are the
// certificatesigningrequests subresources a serving CSR's SubjectAccessReview
// may check.
const (
	SubresourceSelfNodeClient = "selfnodeclient"
	SubresourceSelfNodeServer = "selfnodeserver"
)

// Serving configures kubelet serving certificates: CSRs for the signer
// kubernetes.io/kubelet-serving, which a kubelet with serverTLSBootstrap
// files for the certificate its HTTPS endpoint serves. Their subject
// alternative names are proven by the cluster (the Node's own
// status.addresses), never taken from the request.
type Serving struct {
	// Enabled makes nodecsr decide kubelet serving CSRs. Off, nodecsr leaves
	// them to whatever else approves them in the cluster. Turning it on
	// takes a restart of nodecsr-controller (its cache must watch serving
	// CSRs and Node addresses); turning it off takes effect on reload.
	// Default: false.
	Enabled bool `json:"enabled,omitempty"`
	// IPCIDRs lists the CIDRs an IP SAN must be inside, in addition to being
	// one of the Node's own InternalIP or ExternalIP addresses. An empty list
	// allows no IP SAN at all. Default: [0.0.0.0/0, ::/0].
	IPCIDRs []string `json:"ipCIDRs"`
	// DNSNames lists DNS names a node may have in its serving certificate
	// besides its own Hostname, InternalDNS and ExternalDNS addresses, as
	// templates in which {node} stands for the node's name
	// ("{node}.nodes.example.internal"). Every template must contain {node}
	// (a name without it would be every node's) and no wildcard.
	// Default: none.
	DNSNames []string `json:"dnsNames,omitempty"`
	// MaxSANs is the most subject alternative names (DNS and IP together) a
	// serving CSR may ask for, 1 to 100. Default: 16.
	MaxSANs int32 `json:"maxSANs,omitempty"`
	// ResolveDNS checks, in addition, that each DNS SAN resolves to one of
	// the Node's own IP addresses.
	ResolveDNS ResolveDNS `json:"resolveDNS"`
	// Subresource is the certificatesigningrequests subresource the
	// SubjectAccessReview checks for the node: selfnodeclient (what kubeadm
	// grants system:nodes, so it works unchanged) or selfnodeserver (for a
	// cluster that binds a distinct grant for serving certificates).
	// Default: selfnodeclient.
	Subresource string `json:"subresource,omitempty"`
}

// ResolveDNS configures the DNS resolution check of serving CSRs.
type ResolveDNS struct {
	// Enabled resolves every DNS SAN through the controller's resolver; a
	// name that does not resolve, or resolves to none of the Node's IP
	// addresses, is refused. A lookup that fails otherwise (a timeout, a
	// server failure) leaves the CSR pending and is retried. Default: false.
	Enabled bool `json:"enabled,omitempty"`
	// TimeoutSeconds bounds each lookup, 1 to 10. Default: 2.
	TimeoutSeconds int32 `json:"timeoutSeconds,omitempty"`
}
