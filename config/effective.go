package config

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Effective is a policy ready to decide with: the versioned Policy defaulted,
// validated and compiled once, with plain values and compiled patterns, as
// Kubernetes converts a versioned type into its internal one. Compile, Parse,
// Load and Default return one; nothing downstream defaults or checks for nil.
// An Effective is immutable and shared between goroutines.
type Effective struct {
	// Source is the defaulted versioned policy it was compiled from.
	Source Policy
	// Digest is a short hash (12 hex characters) of the defaulted policy:
	// files that differ only in comments, order or spelled-out defaults
	// share it. Two policies with the same digest decide alike.
	Digest string

	Mode        Mode
	OnViolation ViolationAction
	NodeNames   NodeNameRules
	Bootstrap   BootstrapRules
	Renewal     RenewalRules
	Keys        KeyRules
	Lifetime    LifetimeRules
	Limits      LimitRules
	Guard       GuardRules
	Serving     ServingRules
}

// Pattern is a compiled node-name pattern, anchored at both ends.
type Pattern struct {
	// Source is the pattern as written in the policy.
	Source string
	re     *regexp.Regexp
}

// Match reports whether name matches the whole pattern.
func (p Pattern) Match(name string) bool { return p.re.MatchString(name) }

// NodeNameRules is spec.nodeNames.
type NodeNameRules struct {
	// Allowed: a name must match one; empty allows every valid name.
	Allowed []Pattern
	// Denied: a name that matches one is refused.
	Denied []Pattern
}

// BootstrapRules is spec.bootstrap.
type BootstrapRules struct {
	Enabled             bool
	Groups              []string
	Users               []string
	AllowExistingNode   bool
	RecoveryEnabled     bool
	StaleAfter          time.Duration
	RequireTokenBinding bool
	// TokenBindings by token ID.
	TokenBindings map[string]TokenRule
	// RateLimitPerMinute is 0 when there is no limit.
	RateLimitPerMinute int
	RateLimitBurst     int
}

// TokenRule is one spec.bootstrap.tokenBindings entry.
type TokenRule struct {
	NodeNames         []Pattern
	AllowExistingNode bool
}

// Allows reports whether the binding lets its token claim name.
func (t TokenRule) Allows(name string) bool {
	for _, p := range t.NodeNames {
		if p.Match(name) {
			return true
		}
	}
	return false
}

// RenewalRules is spec.renewal.
type RenewalRules struct {
	RequireNodeExists bool
}

// KeyRules is spec.keys.
type KeyRules struct {
	// ECDSACurves is empty when no ECDSA key is allowed.
	ECDSACurves                []Curve
	RSAEnabled                 bool
	RSAMinBits, RSAMaxBits     int
	Ed25519                    bool
	KeyEnciphermentRequiresRSA bool
	MaxRequestBytes            int
}

// CurveAllowed reports whether ECDSA keys on curve are allowed.
func (k KeyRules) CurveAllowed(curve Curve) bool { return slices.Contains(k.ECDSACurves, curve) }

// LifetimeRules is spec.lifetime.
type LifetimeRules struct {
	// MaxExpirationSeconds is 0 when there is no cap.
	MaxExpirationSeconds int32
	// DefaultExpirationSeconds is 0 when unset.
	DefaultExpirationSeconds int32
}

// LimitRules is spec.limits.
type LimitRules struct {
	// MaxPendingPerNode is 0 when there is no limit.
	MaxPendingPerNode  int
	CollapseDuplicates bool
}

// GuardRules is spec.approvalGuard.
type GuardRules struct {
	Mode          GuardMode
	AllowedUsers  []string
	AllowedGroups []string
}

// ServingRules is spec.serving.
type ServingRules struct {
	Enabled bool
	// IPCIDRs is empty when no IP SAN is allowed.
	IPCIDRs []netip.Prefix
	// DNSNames are the templates, each with {node} in it.
	DNSNames       []string
	MaxSANs        int
	ResolveDNS     bool
	ResolveTimeout time.Duration
	// Subresource is selfnodeclient or selfnodeserver.
	Subresource string
}

// IPAllowed reports whether ip is inside one of spec.serving.ipCIDRs.
func (s *ServingRules) IPAllowed(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range s.IPCIDRs {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// DNSNameTemplate returns the spec.serving.dnsNames template that, with the
// node's name put in for {node}, is name.
func (s *ServingRules) DNSNameTemplate(node, name string) (string, bool) {
	for _, t := range s.DNSNames {
		if strings.ReplaceAll(t, NodePlaceholder, node) == name {
			return t, true
		}
	}
	return "", false
}

// Compile defaults a copy of p, validates it and compiles it. The error
// lists every problem (a field.ErrorList aggregate).
func Compile(p *Policy) (*Effective, error) {
	src := *p
	src.Spec = *deepCopySpec(&p.Spec)
	src.SetDefaults()
	if errs := src.Validate(); len(errs) > 0 {
		return nil, errs.ToAggregate()
	}
	return compile(&src)
}

// compile builds the Effective policy of a defaulted, valid policy.
func compile(p *Policy) (*Effective, error) {
	s := &p.Spec
	e := &Effective{
		Source:      *p,
		Mode:        s.Mode,
		OnViolation: s.OnViolation,
		Bootstrap: BootstrapRules{
			Enabled:             *s.Bootstrap.Enabled,
			Groups:              s.Bootstrap.Groups,
			Users:               s.Bootstrap.Users,
			AllowExistingNode:   s.Bootstrap.AllowExistingNode,
			RecoveryEnabled:     *s.Bootstrap.Recovery.Enabled,
			StaleAfter:          time.Duration(*s.Bootstrap.Recovery.StaleAfterSeconds) * time.Second,
			RequireTokenBinding: s.Bootstrap.RequireTokenBinding,
			TokenBindings:       make(map[string]TokenRule, len(s.Bootstrap.TokenBindings)),
			RateLimitPerMinute:  int(*s.Bootstrap.RateLimit.PerMinute),
			RateLimitBurst:      int(*s.Bootstrap.RateLimit.Burst),
		},
		Renewal: RenewalRules{RequireNodeExists: *s.Renewal.RequireNodeExists},
		Keys: KeyRules{
			ECDSACurves:                s.Keys.ECDSA.Curves,
			RSAEnabled:                 *s.Keys.RSA.Enabled,
			RSAMinBits:                 int(s.Keys.RSA.MinBits),
			RSAMaxBits:                 int(s.Keys.RSA.MaxBits),
			Ed25519:                    s.Keys.Ed25519,
			KeyEnciphermentRequiresRSA: s.Keys.KeyEnciphermentRequiresRSA,
			MaxRequestBytes:            int(s.Keys.MaxRequestBytes),
		},
		Lifetime: LifetimeRules{MaxExpirationSeconds: s.Lifetime.MaxExpirationSeconds},
		Limits: LimitRules{
			MaxPendingPerNode:  int(*s.Limits.MaxPendingPerNode),
			CollapseDuplicates: *s.Limits.CollapseDuplicates,
		},
		Guard: GuardRules{
			Mode:          s.ApprovalGuard.Mode,
			AllowedUsers:  s.ApprovalGuard.AllowedUsers,
			AllowedGroups: s.ApprovalGuard.AllowedGroups,
		},
	}
	e.Serving = ServingRules{
		Enabled:        s.Serving.Enabled,
		IPCIDRs:        make([]netip.Prefix, 0, len(s.Serving.IPCIDRs)),
		DNSNames:       s.Serving.DNSNames,
		MaxSANs:        int(s.Serving.MaxSANs),
		ResolveDNS:     s.Serving.ResolveDNS.Enabled,
		ResolveTimeout: time.Duration(s.Serving.ResolveDNS.TimeoutSeconds) * time.Second,
		Subresource:    s.Serving.Subresource,
	}
	for i, c := range s.Serving.IPCIDRs {
		pfx, err := parseCIDR(c)
		if err != nil {
			// Validate parsed every CIDR already.
			return nil, fmt.Errorf("spec.serving.ipCIDRs[%d]: %w", i, err)
		}
		e.Serving.IPCIDRs = append(e.Serving.IPCIDRs, pfx)
	}
	if d := s.Lifetime.DefaultExpirationSeconds; d != nil {
		e.Lifetime.DefaultExpirationSeconds = *d
	}
	var err error
	if e.NodeNames.Allowed, err = compileAll("spec.nodeNames.allowed", s.NodeNames.Allowed); err != nil {
		return nil, err
	}
	if e.NodeNames.Denied, err = compileAll("spec.nodeNames.denied", s.NodeNames.Denied); err != nil {
		return nil, err
	}
	for i, tb := range s.Bootstrap.TokenBindings {
		pats, err := compileAll(fmt.Sprintf("spec.bootstrap.tokenBindings[%d].nodeNames", i), tb.NodeNames)
		if err != nil {
			return nil, err
		}
		e.Bootstrap.TokenBindings[tb.TokenID] = TokenRule{NodeNames: pats, AllowExistingNode: tb.AllowExistingNode}
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("failed to encode the policy for its digest: %w", err)
	}
	sum := sha256.Sum256(b)
	e.Digest = hex.EncodeToString(sum[:6])
	return e, nil
}

func compileAll(path string, pats []string) ([]Pattern, error) {
	out := make([]Pattern, 0, len(pats))
	for i, pat := range pats {
		re, err := compilePattern(pat)
		if err != nil {
			// Validate compiled every pattern already.
			return nil, fmt.Errorf("%s[%d]: %w", path, i, err)
		}
		out = append(out, Pattern{Source: pat, re: re})
	}
	return out, nil
}

// deepCopySpec copies the slices and pointers SetDefaults may fill, so that
// Compile never changes its argument.
func deepCopySpec(s *Spec) *Spec {
	b, err := json.Marshal(s)
	if err != nil {
		panic("config: a Spec always encodes: " + err.Error())
	}
	out := &Spec{}
	if err := json.Unmarshal(b, out); err != nil {
		panic("config: a Spec always decodes: " + err.Error())
	}
	return out
}

// NodeNameAllowed reports whether name matches spec.nodeNames.allowed (true
// when the list is empty). It does not check DNS-1123 validity.
func (e *Effective) NodeNameAllowed(name string) bool {
	if len(e.NodeNames.Allowed) == 0 {
		return true
	}
	for _, p := range e.NodeNames.Allowed {
		if p.Match(name) {
			return true
		}
	}
	return false
}

// NodeNameDenied returns the first spec.nodeNames.denied pattern name
// matches.
func (e *Effective) NodeNameDenied(name string) (pattern string, denied bool) {
	for _, p := range e.NodeNames.Denied {
		if p.Match(name) {
			return p.Source, true
		}
	}
	return "", false
}

// IsBootstrapGroup reports whether group is one of spec.bootstrap.groups.
func (e *Effective) IsBootstrapGroup(group string) bool {
	return slices.Contains(e.Bootstrap.Groups, group)
}

// IsBootstrapUser reports whether username is one of spec.bootstrap.users.
func (e *Effective) IsBootstrapUser(username string) bool {
	return slices.Contains(e.Bootstrap.Users, username)
}
