package config

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"regexp/syntax"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/apiserver/pkg/authentication/user"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"
)

// forbiddenBootstrapGroups would turn the bootstrap path into "anyone".
var forbiddenBootstrapGroups = map[string]string{
	user.AllAuthenticated:                  "every authenticated user would be a bootstrapper",
	user.AllUnauthenticated:                "anonymous requests would be bootstrappers",
	serviceaccount.AllServiceAccountsGroup: "every service account would be a bootstrapper",
	user.NodesGroup:                        "nodes renew their own certificate; they are not bootstrappers",
	user.SystemPrivilegedGroup:             "administrators are not bootstrappers",
}

// nodeUserPrefix starts every kubelet's username.
const nodeUserPrefix = "system:node:"

// Validate checks a defaulted policy and returns every problem at once, with
// field paths that follow the YAML keys (spec.keys.rsa.minBits). Call
// SetDefaults first: unset fields are reported as invalid.
func (p *Policy) Validate() field.ErrorList {
	var errs field.ErrorList
	if p.APIVersion != APIVersion {
		errs = append(errs, field.NotSupported(field.NewPath("apiVersion"), p.APIVersion, []string{APIVersion}))
	}
	if p.Kind != Kind {
		errs = append(errs, field.NotSupported(field.NewPath("kind"), p.Kind, []string{Kind}))
	}
	spec := field.NewPath("spec")
	s := &p.Spec

	if s.Mode != ModeEnforce && s.Mode != ModeDryRun {
		errs = append(errs, field.NotSupported(spec.Child("mode"), s.Mode, []Mode{ModeEnforce, ModeDryRun}))
	}
	if s.OnViolation != ViolationDeny && s.OnViolation != ViolationLeavePending {
		errs = append(errs, field.NotSupported(spec.Child("onViolation"), s.OnViolation, []ViolationAction{ViolationDeny, ViolationLeavePending}))
	}

	nn := spec.Child("nodeNames")
	errs = append(errs, validatePatterns(nn.Child("allowed"), s.NodeNames.Allowed)...)
	errs = append(errs, validatePatterns(nn.Child("denied"), s.NodeNames.Denied)...)

	errs = append(errs, validateBootstrap(spec.Child("bootstrap"), &s.Bootstrap)...)

	if s.Renewal.RequireNodeExists == nil {
		errs = append(errs, field.Required(spec.Child("renewal", "requireNodeExists"), "must be set (call SetDefaults)"))
	}

	errs = append(errs, validateKeys(spec.Child("keys"), &s.Keys)...)
	errs = append(errs, validateLifetime(spec.Child("lifetime"), &s.Lifetime)...)

	lim := spec.Child("limits")
	if s.Limits.MaxPendingPerNode == nil {
		errs = append(errs, field.Required(lim.Child("maxPendingPerNode"), "must be set (call SetDefaults)"))
	} else if *s.Limits.MaxPendingPerNode < 0 {
		errs = append(errs, field.Invalid(lim.Child("maxPendingPerNode"), *s.Limits.MaxPendingPerNode, "must be 0 (no limit) or more"))
	}
	if s.Limits.CollapseDuplicates == nil {
		errs = append(errs, field.Required(lim.Child("collapseDuplicates"), "must be set (call SetDefaults)"))
	}

	ag := spec.Child("approvalGuard")
	switch s.ApprovalGuard.Mode {
	case GuardOff, GuardWarn, GuardEnforce:
	default:
		errs = append(errs, field.NotSupported(ag.Child("mode"), s.ApprovalGuard.Mode, []GuardMode{GuardOff, GuardWarn, GuardEnforce}))
	}
	errs = append(errs, validateNames(ag.Child("allowedUsers"), s.ApprovalGuard.AllowedUsers)...)
	errs = append(errs, validateNames(ag.Child("allowedGroups"), s.ApprovalGuard.AllowedGroups)...)
	errs = append(errs, validateServing(spec.Child("serving"), &s.Serving)...)
	return errs
}

func validateServing(path *field.Path, s *Serving) field.ErrorList {
	var errs field.ErrorList
	cp := path.Child("ipCIDRs")
	seen := make(map[netip.Prefix]bool, len(s.IPCIDRs))
	for i, c := range s.IPCIDRs {
		pfx, err := parseCIDR(c)
		if err != nil {
			errs = append(errs, field.Invalid(cp.Index(i), c, err.Error()))
			continue
		}
		if seen[pfx] {
			errs = append(errs, field.Duplicate(cp.Index(i), c))
		}
		seen[pfx] = true
	}
	dp := path.Child("dnsNames")
	seenNames := make(map[string]bool, len(s.DNSNames))
	for i, n := range s.DNSNames {
		if err := validateDNSTemplate(n); err != nil {
			errs = append(errs, field.Invalid(dp.Index(i), n, err.Error()))
			continue
		}
		if seenNames[n] {
			errs = append(errs, field.Duplicate(dp.Index(i), n))
		}
		seenNames[n] = true
	}
	if s.MaxSANs < 1 || s.MaxSANs > MaxServingMaxSANs {
		errs = append(errs, field.Invalid(path.Child("maxSANs"), s.MaxSANs, fmt.Sprintf("must be between 1 and %d", MaxServingMaxSANs)))
	}
	if t := s.ResolveDNS.TimeoutSeconds; t < 1 || t > MaxResolveTimeoutSeconds {
		errs = append(errs, field.Invalid(path.Child("resolveDNS", "timeoutSeconds"), t, fmt.Sprintf("must be between 1 and %d", MaxResolveTimeoutSeconds)))
	}
	switch s.Subresource {
	case SubresourceSelfNodeClient, SubresourceSelfNodeServer:
	default:
		errs = append(errs, field.NotSupported(path.Child("subresource"), s.Subresource, []string{SubresourceSelfNodeClient, SubresourceSelfNodeServer}))
	}
	return errs
}

// parseCIDR parses a CIDR that names a network: "10.0.0.0/8", not
// "10.0.0.1/8" (a host address with a prefix length is a likely mistake).
func parseCIDR(c string) (netip.Prefix, error) {
	pfx, err := netip.ParsePrefix(c)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("not a CIDR (such as 10.0.0.0/8 or fd00::/8): %w", err)
	}
	if pfx.Addr().Zone() != "" {
		return netip.Prefix{}, errors.New("must not carry an IPv6 zone")
	}
	if m := pfx.Masked(); m != pfx {
		return netip.Prefix{}, fmt.Errorf("has host bits set; the network is %s", m)
	}
	return pfx, nil
}

// validateDNSTemplate checks a serving.dnsNames entry: it names the node
// ({node}) and becomes a valid DNS name once the node's name is put in.
func validateDNSTemplate(t string) error {
	switch {
	case t == "":
		return errors.New("must not be empty")
	case !strings.Contains(t, NodePlaceholder):
		return fmt.Errorf("must contain %s: a name without it would be every node's", NodePlaceholder)
	case strings.Contains(t, "*"):
		return errors.New("must not contain a wildcard")
	}
	// Any valid node name in place of {node} must give a valid DNS name;
	// "n" stands for the shortest.
	if errs := validation.IsDNS1123Subdomain(strings.ReplaceAll(t, NodePlaceholder, "n")); len(errs) > 0 {
		return fmt.Errorf("is not a DNS name once %s is replaced: %s", NodePlaceholder, strings.Join(errs, "; "))
	}
	return nil
}

func validateBootstrap(path *field.Path, b *Bootstrap) field.ErrorList {
	var errs field.ErrorList
	if b.Enabled == nil {
		errs = append(errs, field.Required(path.Child("enabled"), "must be set (call SetDefaults)"))
	}
	enabled := b.Enabled == nil || *b.Enabled
	if enabled && len(b.Groups) == 0 {
		errs = append(errs, field.Required(path.Child("groups"), "at least one group is required while bootstrap is enabled"))
	}
	errs = append(errs, validateNames(path.Child("groups"), b.Groups)...)
	for i, g := range b.Groups {
		if why, ok := forbiddenBootstrapGroups[g]; ok {
			errs = append(errs, field.Invalid(path.Child("groups").Index(i), g, "must not be a bootstrap group: "+why))
		}
	}

	errs = append(errs, validateNames(path.Child("users"), b.Users)...)
	for i, u := range b.Users {
		if strings.HasPrefix(u, nodeUserPrefix) || strings.HasPrefix(u, serviceaccount.ServiceAccountUsernamePrefix) || u == user.Anonymous {
			errs = append(errs, field.Invalid(path.Child("users").Index(i), u, "must not be a node, service account or anonymous user"))
		}
	}
	rp := path.Child("recovery")
	if b.Recovery.Enabled == nil {
		errs = append(errs, field.Required(rp.Child("enabled"), "must be set (call SetDefaults)"))
	}
	switch {
	case b.Recovery.StaleAfterSeconds == nil:
		errs = append(errs, field.Required(rp.Child("staleAfterSeconds"), "must be set (call SetDefaults)"))
	case *b.Recovery.StaleAfterSeconds < MinStaleAfterSeconds:
		errs = append(errs, field.Invalid(rp.Child("staleAfterSeconds"), *b.Recovery.StaleAfterSeconds, fmt.Sprintf("must be at least %d: a live kubelet renews its Lease every 10 s", MinStaleAfterSeconds)))
	}

	seen := make(map[string]int, len(b.TokenBindings))
	for i := range b.TokenBindings {
		tb := &b.TokenBindings[i]
		tp := path.Child("tokenBindings").Index(i)
		switch {
		case tb.TokenID == "":
			errs = append(errs, field.Required(tp.Child("tokenID"), "the bootstrap token ID (six characters [a-z0-9])"))
		case !bootstraputil.IsValidBootstrapTokenID(tb.TokenID):
			errs = append(errs, field.Invalid(tp.Child("tokenID"), tb.TokenID, "must be a bootstrap token ID: six characters [a-z0-9]"))
		default:
			if _, dup := seen[tb.TokenID]; dup {
				errs = append(errs, field.Duplicate(tp.Child("tokenID"), tb.TokenID))
			}
			seen[tb.TokenID] = i
		}
		if len(tb.NodeNames) == 0 {
			errs = append(errs, field.Required(tp.Child("nodeNames"), "at least one pattern is required"))
		}
		errs = append(errs, validatePatterns(tp.Child("nodeNames"), tb.NodeNames)...)
	}

	rl := path.Child("rateLimit")
	switch {
	case b.RateLimit.PerMinute == nil:
		errs = append(errs, field.Required(rl.Child("perMinute"), "must be set (call SetDefaults)"))
	case *b.RateLimit.PerMinute < 0:
		errs = append(errs, field.Invalid(rl.Child("perMinute"), *b.RateLimit.PerMinute, "must be 0 (no limit) or more"))
	}
	switch {
	case b.RateLimit.Burst == nil:
		errs = append(errs, field.Required(rl.Child("burst"), "must be set (call SetDefaults)"))
	case *b.RateLimit.Burst < 0:
		errs = append(errs, field.Invalid(rl.Child("burst"), *b.RateLimit.Burst, "must be 0 or more"))
	case *b.RateLimit.Burst == 0 && b.RateLimit.PerMinute != nil && *b.RateLimit.PerMinute > 0:
		errs = append(errs, field.Invalid(rl.Child("burst"), *b.RateLimit.Burst, "must be at least 1 while perMinute is set"))
	}
	return errs
}

func validateKeys(path *field.Path, k *Keys) field.ErrorList {
	var errs field.ErrorList
	cp := path.Child("ecdsa", "curves")
	seen := make(map[Curve]bool, len(k.ECDSA.Curves))
	for i, c := range k.ECDSA.Curves {
		switch c {
		case CurveP224, CurveP256, CurveP384, CurveP521:
		default:
			errs = append(errs, field.NotSupported(cp.Index(i), c, []Curve{CurveP224, CurveP256, CurveP384, CurveP521}))
			continue
		}
		if seen[c] {
			errs = append(errs, field.Duplicate(cp.Index(i), c))
		}
		seen[c] = true
	}

	rp := path.Child("rsa")
	if k.RSA.Enabled == nil {
		errs = append(errs, field.Required(rp.Child("enabled"), "must be set (call SetDefaults)"))
	}
	minOK := true
	if k.RSA.MinBits < MinRSABits || k.RSA.MinBits > MaxRSABits {
		errs = append(errs, field.Invalid(rp.Child("minBits"), k.RSA.MinBits, fmt.Sprintf("must be between %d and %d", MinRSABits, MaxRSABits)))
		minOK = false
	}
	if k.RSA.MaxBits < MinRSABits || k.RSA.MaxBits > MaxRSABits {
		errs = append(errs, field.Invalid(rp.Child("maxBits"), k.RSA.MaxBits, fmt.Sprintf("must be between %d and %d", MinRSABits, MaxRSABits)))
	} else if minOK && k.RSA.MaxBits < k.RSA.MinBits {
		errs = append(errs, field.Invalid(rp.Child("maxBits"), k.RSA.MaxBits, fmt.Sprintf("must not be less than minBits (%d)", k.RSA.MinBits)))
	}

	if k.MaxRequestBytes < MinMaxRequestBytes || k.MaxRequestBytes > MaxMaxRequestBytes {
		errs = append(errs, field.Invalid(path.Child("maxRequestBytes"), k.MaxRequestBytes, fmt.Sprintf("must be between %d and %d", MinMaxRequestBytes, MaxMaxRequestBytes)))
	}
	return errs
}

func validateLifetime(path *field.Path, l *Lifetime) field.ErrorList {
	var errs field.ErrorList
	if l.MaxExpirationSeconds != 0 && l.MaxExpirationSeconds < MinExpirationSeconds {
		errs = append(errs, field.Invalid(path.Child("maxExpirationSeconds"), l.MaxExpirationSeconds, fmt.Sprintf("must be 0 (no cap) or at least %d, the API server's minimum", MinExpirationSeconds)))
	}
	if d := l.DefaultExpirationSeconds; d != nil {
		switch {
		case *d < MinExpirationSeconds:
			errs = append(errs, field.Invalid(path.Child("defaultExpirationSeconds"), *d, fmt.Sprintf("must be at least %d, the API server's minimum", MinExpirationSeconds)))
		case l.MaxExpirationSeconds > 0 && *d > l.MaxExpirationSeconds:
			errs = append(errs, field.Invalid(path.Child("defaultExpirationSeconds"), *d, fmt.Sprintf("must not exceed maxExpirationSeconds (%d)", l.MaxExpirationSeconds)))
		}
	}
	return errs
}

// validatePatterns checks that every entry compiles as an anchored RE2
// expression.
func validatePatterns(path *field.Path, patterns []string) field.ErrorList {
	var errs field.ErrorList
	for i, pat := range patterns {
		if _, err := compilePattern(pat); err != nil {
			errs = append(errs, field.Invalid(path.Index(i), pat, err.Error()))
		}
	}
	return errs
}

// validateNames checks a list of user or group names: no empty entries, no
// duplicates.
func validateNames(path *field.Path, names []string) field.ErrorList {
	var errs field.ErrorList
	seen := make(map[string]bool, len(names))
	for i, n := range names {
		if n == "" {
			errs = append(errs, field.Required(path.Index(i), "must not be empty"))
			continue
		}
		if seen[n] {
			errs = append(errs, field.Duplicate(path.Index(i), n))
		}
		seen[n] = true
	}
	return errs
}

// compilePattern compiles a node-name pattern, anchored at both ends.
func compilePattern(pat string) (*regexp.Regexp, error) {
	switch {
	case pat == "":
		return nil, fmt.Errorf("must not be empty")
	case len(pat) > maxPatternLength:
		return nil, fmt.Errorf("must be at most %d characters", maxPatternLength)
	}
	// Parse the pattern on its own first: "a)|(b" is unbalanced alone but
	// would compile, unanchored, inside ^(?:…)$.
	if _, err := syntax.Parse(pat, syntax.Perl); err != nil {
		return nil, fmt.Errorf("not a valid RE2 regular expression: %w", err)
	}
	re, err := regexp.Compile(`^(?:` + pat + `)$`)
	if err != nil {
		return nil, fmt.Errorf("not a valid RE2 regular expression: %w", err)
	}
	return re, nil
}
