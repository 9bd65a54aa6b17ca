package config

import (
	"k8s.io/apiserver/pkg/authentication/user"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	"k8s.io/utils/ptr"
)

// Defaults. Each is documented on the field it applies to.
const (
	DefaultMode               = ModeEnforce
	DefaultOnViolation        = ViolationDeny
	DefaultBootstrapEnabled   = true
	DefaultRateLimitPerMinute = 60
	DefaultRateLimitBurst     = 20
	DefaultRequireNodeExists  = true
	DefaultRecoveryEnabled    = true
	DefaultStaleAfterSeconds  = 300
	MinStaleAfterSeconds      = 60
	DefaultRSAEnabled         = true
	DefaultRSAMinBits         = 2048
	DefaultRSAMaxBits         = 4096
	DefaultMaxRequestBytes    = 16384
	DefaultMaxPendingPerNode  = 3
	DefaultCollapseDuplicates = true
	DefaultApprovalGuardMode  = GuardOff
	DefaultBreakGlassGroup    = user.SystemPrivilegedGroup
	DefaultBootstrapGroup     = bootstrapapi.BootstrapDefaultGroup
	MinExpirationSeconds      = 600
	MinRSABits                = 2048
	MaxRSABits                = 8192
	MinMaxRequestBytes        = 1024
	MaxMaxRequestBytes        = 65536
	maxPatternLength          = 1024

	DefaultServingMaxSANs        = 16
	MaxServingMaxSANs            = 100
	DefaultResolveTimeoutSeconds = 2
	MaxResolveTimeoutSeconds     = 10
	DefaultServingSubresource    = SubresourceSelfNodeClient
	// NodePlaceholder stands for the node's name in spec.serving.dnsNames.
	NodePlaceholder = "{node}"
)

// DefaultServingIPCIDRs are the CIDRs allowed when serving.ipCIDRs is unset:
// every address (each IP must be one of the Node's own addresses anyway).
func DefaultServingIPCIDRs() []string { return []string{"0.0.0.0/0", "::/0"} }

// DefaultCurves are the ECDSA curves allowed when keys.ecdsa.curves is unset.
func DefaultCurves() []Curve { return []Curve{CurveP256, CurveP384} }

// Default returns the policy that runs when no policy file is given: the
// empty policy, defaulted and compiled.
func Default() *Effective {
	e, err := Compile(&Policy{APIVersion: APIVersion, Kind: Kind})
	if err != nil {
		// The defaults are valid; a failure here is a programming error.
		panic("config: default policy is invalid: " + err.Error())
	}
	return e
}

// SetDefaults fills every unset field with its default. It is idempotent
// and keeps every value that is set, including explicit empty lists.
func (p *Policy) SetDefaults() {
	if p.APIVersion == "" {
		p.APIVersion = APIVersion
	}
	if p.Kind == "" {
		p.Kind = Kind
	}
	s := &p.Spec
	if s.Mode == "" {
		s.Mode = DefaultMode
	}
	if s.OnViolation == "" {
		s.OnViolation = DefaultOnViolation
	}

	b := &s.Bootstrap
	if b.Enabled == nil {
		b.Enabled = ptr.To(DefaultBootstrapEnabled)
	}
	if b.Groups == nil {
		b.Groups = []string{DefaultBootstrapGroup}
	}
	if b.Recovery.Enabled == nil {
		b.Recovery.Enabled = ptr.To(DefaultRecoveryEnabled)
	}
	if b.Recovery.StaleAfterSeconds == nil {
		b.Recovery.StaleAfterSeconds = ptr.To[int32](DefaultStaleAfterSeconds)
	}
	if b.RateLimit.PerMinute == nil {
		b.RateLimit.PerMinute = ptr.To[int32](DefaultRateLimitPerMinute)
	}
	if b.RateLimit.Burst == nil {
		b.RateLimit.Burst = ptr.To[int32](DefaultRateLimitBurst)
	}

	if s.Renewal.RequireNodeExists == nil {
		s.Renewal.RequireNodeExists = ptr.To(DefaultRequireNodeExists)
	}

	k := &s.Keys
	if k.ECDSA.Curves == nil {
		k.ECDSA.Curves = DefaultCurves()
	}
	if k.RSA.Enabled == nil {
		k.RSA.Enabled = ptr.To(DefaultRSAEnabled)
	}
	if k.RSA.MinBits == 0 {
		k.RSA.MinBits = DefaultRSAMinBits
	}
	if k.RSA.MaxBits == 0 {
		k.RSA.MaxBits = DefaultRSAMaxBits
	}
	if k.MaxRequestBytes == 0 {
		k.MaxRequestBytes = DefaultMaxRequestBytes
	}

	if s.Limits.MaxPendingPerNode == nil {
		s.Limits.MaxPendingPerNode = ptr.To[int32](DefaultMaxPendingPerNode)
	}
	if s.Limits.CollapseDuplicates == nil {
		s.Limits.CollapseDuplicates = ptr.To(DefaultCollapseDuplicates)
	}

	g := &s.ApprovalGuard
	if g.Mode == "" {
		g.Mode = DefaultApprovalGuardMode
	}
	if g.AllowedGroups == nil {
		g.AllowedGroups = []string{DefaultBreakGlassGroup}
	}

	sv := &s.Serving
	if sv.IPCIDRs == nil {
		sv.IPCIDRs = DefaultServingIPCIDRs()
	}
	if sv.MaxSANs == 0 {
		sv.MaxSANs = DefaultServingMaxSANs
	}
	if sv.ResolveDNS.TimeoutSeconds == 0 {
		sv.ResolveDNS.TimeoutSeconds = DefaultResolveTimeoutSeconds
	}
	if sv.Subresource == "" {
		sv.Subresource = DefaultServingSubresource
	}
}
