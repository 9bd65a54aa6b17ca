package config

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
)

// compiled is what Complete derives from a valid policy.
type compiled struct {
	allowed  []*regexp.Regexp
	denied   []*regexp.Regexp
	bindings map[string][]*regexp.Regexp
	groups   map[string]struct{}
	curves   map[Curve]struct{}
	digest   string
	// err is set when the policy could not be compiled (only on a policy
	// that was never completed); matchers then fail closed.
	err error
}

// Complete applies defaults, validates, and compiles the node-name
// patterns. Parse, Load and Default call it; call it yourself after building
// or changing a Policy in code. The returned error lists every problem.
func (p *Policy) Complete() error {
	p.SetDefaults()
	if errs := p.Validate(); len(errs) > 0 {
		p.compiled = nil
		return errs.ToAggregate()
	}
	c := compile(p)
	if c.err != nil {
		return c.err
	}
	p.compiled = c
	return nil
}

// compile builds the lookups. It never panics; a pattern that does not
// compile is recorded in err.
func compile(p *Policy) *compiled {
	c := &compiled{
		bindings: make(map[string][]*regexp.Regexp, len(p.Spec.Bootstrap.TokenBindings)),
		groups:   make(map[string]struct{}),
		curves:   make(map[Curve]struct{}, 4),
	}
	var errs []string
	comp := func(path string, pats []string) []*regexp.Regexp {
		out := make([]*regexp.Regexp, 0, len(pats))
		for i, pat := range pats {
			re, err := compilePattern(pat)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s[%d]: %v", path, i, err))
				continue
			}
			out = append(out, re)
		}
		return out
	}
	c.allowed = comp("spec.nodeNames.allowed", p.Spec.NodeNames.Allowed)
	c.denied = comp("spec.nodeNames.denied", p.Spec.NodeNames.Denied)
	for i, tb := range p.Spec.Bootstrap.TokenBindings {
		c.bindings[tb.TokenID] = comp(fmt.Sprintf("spec.bootstrap.tokenBindings[%d].nodeNames", i), tb.NodeNames)
	}
	groups := p.Spec.Bootstrap.Groups
	if groups == nil {
		groups = []string{DefaultBootstrapGroup}
	}
	for _, g := range groups {
		c.groups[g] = struct{}{}
	}
	curves := p.Spec.Keys.ECDSA.Curves
	if curves == nil {
		curves = DefaultCurves()
	}
	for _, cv := range curves {
		c.curves[cv] = struct{}{}
	}
	if len(errs) > 0 {
		c.err = fmt.Errorf("invalid node-name patterns: %s", strings.Join(errs, "; "))
	}

	// The digest covers the effective policy, so files that differ only in
	// comments, order or spelled-out defaults share it.
	if b, err := json.Marshal(p); err == nil {
		sum := sha256.Sum256(b)
		c.digest = hex.EncodeToString(sum[:6])
	}
	return c
}

// c returns the compiled lookups; on a policy that was never completed it
// compiles them on the fly (slow, but correct).
func (p *Policy) c() *compiled {
	if p.compiled != nil {
		return p.compiled
	}
	return compile(p)
}

// Prepared returns a policy ready for many lookups: p itself when it was
// completed, otherwise a shallow copy carrying the compiled patterns (so a
// policy built in code without Complete is not recompiled on every lookup).
// The error is that of Ready.
func (p *Policy) Prepared() (*Policy, error) {
	if p == nil {
		return nil, fmt.Errorf("no policy")
	}
	if p.compiled != nil {
		return p, nil
	}
	cp := *p
	cp.compiled = compile(p)
	return &cp, cp.compiled.err
}

// Ready reports whether the policy can be used: nil for a completed policy;
// for one built in code without Complete, nil when its patterns compile.
func (p *Policy) Ready() error {
	if p == nil {
		return fmt.Errorf("no policy")
	}
	return p.c().err
}

// Digest is a short hash (12 hex characters) of the effective policy, for
// logs and metrics. Two policies with the same digest decide alike.
func (p *Policy) Digest() string { return p.c().digest }

// AllowedNodeNamePatterns returns the compiled spec.nodeNames.allowed
// patterns. The slice is shared: do not modify it.
func (p *Policy) AllowedNodeNamePatterns() []*regexp.Regexp { return p.c().allowed }

// DeniedNodeNamePatterns returns the compiled spec.nodeNames.denied
// patterns. The slice is shared: do not modify it.
func (p *Policy) DeniedNodeNamePatterns() []*regexp.Regexp { return p.c().denied }

// NodeNameAllowed reports whether name matches spec.nodeNames.allowed (true
// when the list is empty). It does not check DNS-1123 validity.
func (p *Policy) NodeNameAllowed(name string) bool {
	c := p.c()
	if len(p.Spec.NodeNames.Allowed) == 0 {
		return true
	}
	for _, re := range c.allowed {
		if re.MatchString(name) {
			return true
		}
	}
	return false
}

// NodeNameDenied reports whether name matches a spec.nodeNames.denied
// pattern, and which one. A policy whose denied patterns failed to compile
// denies every name.
func (p *Policy) NodeNameDenied(name string) (pattern string, denied bool) {
	c := p.c()
	if c.err != nil && len(p.Spec.NodeNames.Denied) > 0 {
		return "<invalid pattern>", true
	}
	for i, re := range c.denied {
		if re.MatchString(name) {
			return p.Spec.NodeNames.Denied[i], true
		}
	}
	return "", false
}

// TokenBinding returns the compiled node-name patterns bound to a bootstrap
// token ID, and whether the token has a binding. The slice is shared: do not
// modify it.
func (p *Policy) TokenBinding(tokenID string) ([]*regexp.Regexp, bool) {
	res, ok := p.c().bindings[tokenID]
	return res, ok
}

// TokenAllowsNodeName reports whether the bootstrap token has a binding and,
// if so, whether name matches one of its patterns.
func (p *Policy) TokenAllowsNodeName(tokenID, name string) (bound, allowed bool) {
	res, ok := p.TokenBinding(tokenID)
	if !ok {
		return false, false
	}
	for _, re := range res {
		if re.MatchString(name) {
			return true, true
		}
	}
	return true, false
}

// IsBootstrapGroup reports whether group is one of spec.bootstrap.groups.
func (p *Policy) IsBootstrapGroup(group string) bool {
	_, ok := p.c().groups[group]
	return ok
}

// BootstrapGroups returns spec.bootstrap.groups, defaulted.
func (p *Policy) BootstrapGroups() []string {
	if p.Spec.Bootstrap.Groups == nil {
		return []string{DefaultBootstrapGroup}
	}
	return p.Spec.Bootstrap.Groups
}

// ECDSACurves returns spec.keys.ecdsa.curves, defaulted; empty means no
// ECDSA key is allowed.
func (p *Policy) ECDSACurves() []Curve {
	if p.Spec.Keys.ECDSA.Curves == nil {
		return DefaultCurves()
	}
	return p.Spec.Keys.ECDSA.Curves
}

// CurveAllowed reports whether ECDSA keys on curve are allowed.
func (p *Policy) CurveAllowed(curve Curve) bool {
	_, ok := p.c().curves[curve]
	return ok
}

// EffectiveMode returns spec.mode, defaulted.
func (p *Policy) EffectiveMode() Mode {
	if p.Spec.Mode == "" {
		return DefaultMode
	}
	return p.Spec.Mode
}

// EffectiveOnViolation returns spec.onViolation, defaulted.
func (p *Policy) EffectiveOnViolation() ViolationAction {
	if p.Spec.OnViolation == "" {
		return DefaultOnViolation
	}
	return p.Spec.OnViolation
}

// BootstrapEnabled returns spec.bootstrap.enabled, defaulted.
func (p *Policy) BootstrapEnabled() bool {
	return deref(p.Spec.Bootstrap.Enabled, DefaultBootstrapEnabled)
}

// RateLimit returns spec.bootstrap.rateLimit, defaulted; perMinute 0 means
// no limit.
func (p *Policy) RateLimit() (perMinute, burst int) {
	rl := p.Spec.Bootstrap.RateLimit
	return int(deref(rl.PerMinute, DefaultRateLimitPerMinute)), int(deref(rl.Burst, DefaultRateLimitBurst))
}

// RequireNodeExists returns spec.renewal.requireNodeExists, defaulted.
func (p *Policy) RequireNodeExists() bool {
	return deref(p.Spec.Renewal.RequireNodeExists, DefaultRequireNodeExists)
}

// RSAEnabled returns spec.keys.rsa.enabled, defaulted.
func (p *Policy) RSAEnabled() bool { return deref(p.Spec.Keys.RSA.Enabled, DefaultRSAEnabled) }

// RSABits returns spec.keys.rsa.minBits and maxBits, defaulted.
func (p *Policy) RSABits() (minBits, maxBits int) {
	minBits, maxBits = int(p.Spec.Keys.RSA.MinBits), int(p.Spec.Keys.RSA.MaxBits)
	if minBits == 0 {
		minBits = DefaultRSAMinBits
	}
	if maxBits == 0 {
		maxBits = DefaultRSAMaxBits
	}
	return minBits, maxBits
}

// MaxRequestBytes returns spec.keys.maxRequestBytes, defaulted.
func (p *Policy) MaxRequestBytes() int {
	if p.Spec.Keys.MaxRequestBytes == 0 {
		return DefaultMaxRequestBytes
	}
	return int(p.Spec.Keys.MaxRequestBytes)
}

// MaxPendingPerNode returns spec.limits.maxPendingPerNode, defaulted; 0
// means no limit.
func (p *Policy) MaxPendingPerNode() int {
	return int(deref(p.Spec.Limits.MaxPendingPerNode, DefaultMaxPendingPerNode))
}

// CollapseDuplicates returns spec.limits.collapseDuplicates, defaulted.
func (p *Policy) CollapseDuplicates() bool {
	return deref(p.Spec.Limits.CollapseDuplicates, DefaultCollapseDuplicates)
}

func deref[T any](v *T, def T) T {
	if v == nil {
		return def
	}
	return *v
}
