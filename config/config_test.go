package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"
	sigsyaml "sigs.k8s.io/yaml"
)

const header = "apiVersion: nodecsr.io/v1alpha1\nkind: Policy\n"

func TestParseExample(t *testing.T) {
	p, err := Load("example-policy.yaml")
	if err != nil {
		t.Fatalf("example policy: %v", err)
	}
	if got := p.Source.Spec.NodeNames.Denied; !slices.Equal(got, []string{"control-plane-.*"}) {
		t.Errorf("denied = %v", got)
	}
	if len(p.NodeNames.Denied) != 1 || p.NodeNames.Denied[0].Source != "control-plane-.*" {
		t.Errorf("compiled denied = %+v", p.NodeNames.Denied)
	}
	if p.Source.Spec.ApprovalGuard.Mode != GuardOff || p.Guard.Mode != GuardOff {
		t.Errorf("approvalGuard.mode = %q (compiled %q)", p.Source.Spec.ApprovalGuard.Mode, p.Guard.Mode)
	}
	if p.Source.Spec.Lifetime.MaxExpirationSeconds != 2592000 || *p.Source.Spec.Lifetime.DefaultExpirationSeconds != 604800 {
		t.Errorf("lifetime = %+v", p.Source.Spec.Lifetime)
	}
	if p.Lifetime != (LifetimeRules{MaxExpirationSeconds: 2592000, DefaultExpirationSeconds: 604800}) {
		t.Errorf("compiled lifetime = %+v", p.Lifetime)
	}
	if rule, bound := p.Bootstrap.TokenBindings["abcdef"]; !bound || !rule.Allows("gpu-a1") {
		t.Error("token abcdef should be bound to gpu-a1")
	}
	if _, denied := p.NodeNameDenied("control-plane-1"); !denied {
		t.Error("control-plane-1 should be denied")
	}
	if !p.NodeNameAllowed("worker-12") || p.NodeNameAllowed("laptop") {
		t.Error("allowed patterns do not match as expected")
	}
}

func TestDefaults(t *testing.T) {
	p := Default()
	s := p.Source.Spec
	want := Spec{
		Mode:        ModeEnforce,
		OnViolation: ViolationDeny,
		Bootstrap: Bootstrap{
			Enabled:   ptr.To(true),
			Groups:    []string{"system:bootstrappers"},
			Recovery:  Recovery{Enabled: ptr.To(true), StaleAfterSeconds: ptr.To[int32](300)},
			RateLimit: RateLimit{PerMinute: ptr.To[int32](60), Burst: ptr.To[int32](20)},
		},
		Renewal: Renewal{RequireNodeExists: ptr.To(true)},
		Keys: Keys{
			ECDSA:           ECDSAKeys{Curves: []Curve{CurveP256, CurveP384}},
			RSA:             RSAKeys{Enabled: ptr.To(true), MinBits: 2048, MaxBits: 4096},
			MaxRequestBytes: 16384,
		},
		Limits:        Limits{MaxPendingPerNode: ptr.To[int32](3), CollapseDuplicates: ptr.To(true)},
		ApprovalGuard: ApprovalGuard{Mode: GuardOff, AllowedGroups: []string{"system:masters"}},
		Serving: Serving{
			IPCIDRs: []string{"0.0.0.0/0", "::/0"}, MaxSANs: 16,
			ResolveDNS: ResolveDNS{TimeoutSeconds: 2}, Subresource: "selfnodeclient",
		},
	}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", s, want)
	}
	if s.Keys.Ed25519 || s.Keys.KeyEnciphermentRequiresRSA || s.Bootstrap.AllowExistingNode || s.Bootstrap.RequireTokenBinding {
		t.Error("opt-in strictness is on by default")
	}
	if p.Source.APIVersion != APIVersion || p.Source.Kind != Kind {
		t.Errorf("source header %q %q", p.Source.APIVersion, p.Source.Kind)
	}

	// The empty policy file is the default policy.
	parsed, err := Parse([]byte(header))
	if err != nil {
		t.Fatal(err)
	}
	if parsed.Digest != p.Digest || len(p.Digest) != 12 {
		t.Errorf("digest %q of the empty file, %q of Default()", parsed.Digest, p.Digest)
	}
	if !reflect.DeepEqual(parsed.Source, p.Source) {
		t.Errorf("the empty file is not the default policy:\n got %+v\nwant %+v", parsed.Source, p.Source)
	}

	// SetDefaults is idempotent and keeps explicit values, even empty ones.
	q := &Policy{Spec: Spec{Keys: Keys{ECDSA: ECDSAKeys{Curves: []Curve{}}}, ApprovalGuard: ApprovalGuard{AllowedGroups: []string{}}}}
	q.SetDefaults()
	q.SetDefaults()
	if q.Spec.Keys.ECDSA.Curves == nil || len(q.Spec.Keys.ECDSA.Curves) != 0 || len(q.Spec.ApprovalGuard.AllowedGroups) != 0 {
		t.Errorf("explicit empty lists were defaulted: %+v", q.Spec)
	}
}

func TestParseExplicitEmptyLists(t *testing.T) {
	p, err := Parse([]byte(header + "spec:\n  keys:\n    ecdsa:\n      curves: []\n  approvalGuard:\n    allowedGroups: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Keys.ECDSACurves) != 0 || p.Keys.CurveAllowed(CurveP256) {
		t.Errorf("curves: [] should allow no curve, got %v", p.Keys.ECDSACurves)
	}
	if p.Source.Spec.ApprovalGuard.AllowedGroups == nil || len(p.Source.Spec.ApprovalGuard.AllowedGroups) != 0 || len(p.Guard.AllowedGroups) != 0 {
		t.Errorf("allowedGroups: [] should stay empty, got %v (compiled %v)", p.Source.Spec.ApprovalGuard.AllowedGroups, p.Guard.AllowedGroups)
	}
	// null means unset.
	p, err = Parse([]byte(header + "spec:\n  keys:\n    ecdsa:\n      curves: null\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !p.Keys.CurveAllowed(CurveP256) || !p.Keys.CurveAllowed(CurveP384) || p.Keys.CurveAllowed(CurveP521) {
		t.Errorf("curves: null should be the default, got %v", p.Keys.ECDSACurves)
	}
}

func TestParseErrors(t *testing.T) {
	cases := map[string]struct {
		in   string
		want []string // each must appear in the error
		line int      // line of the first problem, when > 0
	}{
		"unknown top-level field": {
			in:   header + "spce:\n  mode: DryRun\n",
			want: []string{`unknown field "spce"`, `did you mean "spec"?`},
			line: 3,
		},
		"unknown nested field": {
			in:   header + "spec:\n  keys:\n    rsa:\n      minbits: 3072\n",
			want: []string{"spec.keys.rsa", `unknown field "minbits"`, `did you mean "minBits"?`},
			line: 6,
		},
		"unknown field in a list entry": {
			in:   header + "spec:\n  bootstrap:\n    tokenBindings:\n      - tokenID: \"abcdef\"\n        nodeNames: [\"a\"]\n        names: [\"b\"]\n",
			want: []string{"spec.bootstrap.tokenBindings[0]", `unknown field "names"`},
			line: 8,
		},
		"string for an integer": {
			in:   header + "spec:\n  keys:\n    rsa:\n      minBits: \"3072\"\n",
			want: []string{"spec.keys.rsa.minBits", "expected an integer", `a string "3072"`},
			line: 6,
		},
		"float for an integer": {
			in:   header + "spec:\n  limits:\n    maxPendingPerNode: 2.5\n",
			want: []string{"spec.limits.maxPendingPerNode", "expected an integer"},
			line: 5,
		},
		"integer out of range": {
			in:   header + "spec:\n  keys:\n    maxRequestBytes: 99999999999\n",
			want: []string{"spec.keys.maxRequestBytes", "out of range"},
			line: 5,
		},
		"yes for a boolean": {
			in:   header + "spec:\n  bootstrap:\n    enabled: yes\n",
			want: []string{"spec.bootstrap.enabled", "expected true or false"},
			line: 5,
		},
		"unquoted numeric token ID": {
			in:   header + "spec:\n  bootstrap:\n    tokenBindings:\n      - tokenID: 123456\n        nodeNames: [\"a\"]\n",
			want: []string{"spec.bootstrap.tokenBindings[0].tokenID", "expected a string", `quote it: "123456"`},
			line: 6,
		},
		"mapping for a list": {
			in:   header + "spec:\n  nodeNames:\n    allowed:\n      a: b\n",
			want: []string{"spec.nodeNames.allowed", "expected a list, got a mapping"},
			line: 6,
		},
		"list for a mapping": {
			in:   header + "spec:\n  - mode\n",
			want: []string{"spec", "expected a mapping, got a list"},
			line: 4,
		},
		"null list entry": {
			in:   header + "spec:\n  nodeNames:\n    denied:\n      -\n      - x\n",
			want: []string{"spec.nodeNames.denied[0]", "must not be empty"},
		},
		"duplicate key": {
			in:   header + "spec:\n  mode: Enforce\n  mode: DryRun\n",
			want: []string{`field "mode" is set twice (first at line 4)`},
			line: 5,
		},
		"alias": {
			in:   header + "spec:\n  nodeNames:\n    allowed: &names [\"a\"]\n    denied: *names\n",
			want: []string{"aliases are not supported"},
			line: 6,
		},
		"non-string key": {
			in:   header + "spec:\n  1: x\n",
			want: []string{"field names must be strings"},
			line: 4,
		},
		"wrong apiVersion": {
			in:   "apiVersion: v1\nkind: Policy\n",
			want: []string{`unsupported apiVersion "v1" (want "nodecsr.io/v1alpha1")`},
			line: 1,
		},
		"wrong kind": {
			in:   "apiVersion: nodecsr.io/v1alpha1\nkind: ConfigMap\nmetadata: {}\n",
			want: []string{`unsupported kind "ConfigMap" (want "Policy")`},
			line: 2,
		},
		"missing kind": {
			in:   "apiVersion: nodecsr.io/v1alpha1\nspec: {}\n",
			want: []string{`kind: required (want "Policy")`},
		},
		"empty file":     {in: "", want: []string{"policy file is empty"}},
		"only comments":  {in: "# nothing\n\n# here\n", want: []string{"policy file is empty"}},
		"empty document": {in: "---\n", want: []string{"policy file is empty"}},
		"two documents": {
			in:   header + "---\n" + header,
			want: []string{"exactly one YAML document"},
			line: 3,
		},
		"not a mapping": {
			in:   "- a\n- b\n",
			want: []string{"must be a YAML mapping"},
			line: 1,
		},
		"invalid YAML": {
			in:   header + "spec:\n  mode: [\n",
			want: []string{"invalid YAML"},
		},
		"tab indentation": {
			in:   header + "spec:\n\tmode: DryRun\n",
			want: []string{"invalid YAML"},
			line: 4,
		},
		"too large": {
			in:   header + "# " + strings.Repeat("x", MaxFileBytes) + "\n",
			want: []string{"larger than 1048576 bytes"},
		},
		"bad regex": {
			in:   header + "spec:\n  nodeNames:\n    allowed:\n      - \"worker-[0-9]+\"\n      - \"worker-[\"\n",
			want: []string{"spec.nodeNames.allowed[1]", "not a valid RE2 regular expression", "missing closing ]"},
			line: 7,
		},
		"regex that would escape its anchors": {
			in:   header + "spec:\n  nodeNames:\n    denied: [\"a)|(b\"]\n",
			want: []string{"spec.nodeNames.denied[0]", "not a valid RE2 regular expression"},
			line: 5,
		},
		"bad enum": {
			in:   header + "spec:\n  mode: enforce\n",
			want: []string{"spec.mode", `Unsupported value: "enforce"`, `"Enforce"`, `"DryRun"`},
			line: 4,
		},
		"staleAfterSeconds below the minimum": {
			in:   header + "spec:\n  bootstrap:\n    recovery:\n      staleAfterSeconds: 10\n",
			want: []string{"spec.bootstrap.recovery.staleAfterSeconds", "must be at least 60", "Invalid value: 10"},
			line: 6,
		},
		"recovery.enabled not a boolean": {
			in:   header + "spec:\n  bootstrap:\n    recovery:\n      enabled: \"no\"\n",
			want: []string{"spec.bootstrap.recovery.enabled", "expected true or false"},
			line: 6,
		},
		"unknown field in recovery": {
			in:   header + "spec:\n  bootstrap:\n    recovery:\n      staleAfterSecond: 600\n",
			want: []string{"spec.bootstrap.recovery", `unknown field "staleAfterSecond"`, `did you mean "staleAfterSeconds"?`},
			line: 6,
		},
		"node user as a bootstrap user": {
			in:   header + "spec:\n  bootstrap:\n    users:\n      - kubelet\n      - system:node:x\n",
			want: []string{"spec.bootstrap.users[1]", `"system:node:x"`, "must not be a node, service account or anonymous user"},
			line: 7,
		},
		"service account as a bootstrap user": {
			in:   header + "spec:\n  bootstrap:\n    users: [\"system:serviceaccount:kube-system:default\"]\n",
			want: []string{"spec.bootstrap.users[0]", "must not be a node, service account or anonymous user"},
			line: 5,
		},
		"anonymous as a bootstrap user": {
			in:   header + "spec:\n  bootstrap:\n    users: [\"system:anonymous\"]\n",
			want: []string{"spec.bootstrap.users[0]", "must not be a node, service account or anonymous user"},
			line: 5,
		},
		"duplicate bootstrap user": {
			in:   header + "spec:\n  bootstrap:\n    users:\n      - kubelet\n      - kubelet\n",
			want: []string{"spec.bootstrap.users[1]", "Duplicate value"},
			line: 7,
		},
		"tokenBindings allowExistingNode not a boolean": {
			in:   header + "spec:\n  bootstrap:\n    tokenBindings:\n      - tokenID: \"abcdef\"\n        nodeNames: [\"a\"]\n        allowExistingNode: 1\n",
			want: []string{"spec.bootstrap.tokenBindings[0].allowExistingNode", "expected true or false", "an integer 1"},
			line: 8,
		},
		"Off unquoted is the string Off": {
			in:   header + "spec:\n  approvalGuard:\n    mode: Of\n",
			want: []string{"spec.approvalGuard.mode", `Unsupported value: "Of"`},
			line: 5,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in))
			if err == nil {
				t.Fatal("no error")
			}
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not *Error: %v", err, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tc.line > 0 && (len(pe.Problems) == 0 || pe.Problems[0].Line != tc.line) {
				t.Errorf("line %v, want %d (%v)", pe.Problems, tc.line, err)
			}
		})
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, header+"spec:\n  keys:\n    rsa:\n      minbits: 1\n")
	_, err := Load(path)
	if err == nil {
		t.Fatal("no error")
	}
	want := path + `:6: spec.keys.rsa: unknown field "minbits" (did you mean "minBits"?)`
	if err.Error() != want {
		t.Errorf("error\n %q\nwant\n %q", err, want)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestParseAcceptsOffAndQuotedValues(t *testing.T) {
	for _, v := range []string{"Off", `"Off"`, "Warn", "Enforce"} {
		p, err := Parse([]byte(header + "spec:\n  approvalGuard:\n    mode: " + v + "\n"))
		if err != nil {
			t.Fatalf("mode %s: %v", v, err)
		}
		if string(p.Source.Spec.ApprovalGuard.Mode) != strings.Trim(v, `"`) || string(p.Guard.Mode) != strings.Trim(v, `"`) {
			t.Errorf("mode %s parsed as %q (compiled %q)", v, p.Source.Spec.ApprovalGuard.Mode, p.Guard.Mode)
		}
	}
}

func TestValidateReportsEverything(t *testing.T) {
	in := header + `spec:
  mode: Audit
  onViolation: Approve
  nodeNames:
    allowed: ["("]
    denied: [""]
  bootstrap:
    groups: ["system:authenticated", ""]
    users: ["system:node:worker-1"]
    recovery:
      staleAfterSeconds: 0
    tokenBindings:
      - tokenID: "ABCDEF"
        nodeNames: []
      - tokenID: "abcdef"
        nodeNames: ["x"]
      - tokenID: "abcdef"
        nodeNames: ["y"]
    rateLimit:
      perMinute: -1
      burst: -2
  keys:
    ecdsa:
      curves: ["P-256", "P-256", "secp256k1"]
    rsa:
      minBits: 1024
      maxBits: 16384
    maxRequestBytes: 100
  lifetime:
    maxExpirationSeconds: 60
    defaultExpirationSeconds: 30
  limits:
    maxPendingPerNode: -1
  approvalGuard:
    mode: Block
    allowedUsers: ["a", "a"]
`
	_, err := Parse([]byte(in))
	var pe *Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %v", err)
	}
	var got []string
	for _, p := range pe.Problems {
		got = append(got, p.Field)
		if p.Line == 0 {
			t.Errorf("problem without a line: %+v", p)
		}
	}
	want := []string{
		"spec.mode",
		"spec.onViolation",
		"spec.nodeNames.allowed[0]",
		"spec.nodeNames.denied[0]",
		"spec.bootstrap.groups[0]",
		"spec.bootstrap.groups[1]",
		"spec.bootstrap.users[0]",
		"spec.bootstrap.recovery.staleAfterSeconds",
		"spec.bootstrap.tokenBindings[0].tokenID",
		"spec.bootstrap.tokenBindings[0].nodeNames",
		"spec.bootstrap.tokenBindings[2].tokenID",
		"spec.bootstrap.rateLimit.perMinute",
		"spec.bootstrap.rateLimit.burst",
		"spec.keys.ecdsa.curves[1]",
		"spec.keys.ecdsa.curves[2]",
		"spec.keys.rsa.minBits",
		"spec.keys.rsa.maxBits",
		"spec.keys.maxRequestBytes",
		"spec.lifetime.maxExpirationSeconds",
		"spec.lifetime.defaultExpirationSeconds",
		"spec.limits.maxPendingPerNode",
		"spec.approvalGuard.mode",
		"spec.approvalGuard.allowedUsers[1]",
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("problems at\n %v\nwant\n %v\nerror:\n%v", got, want, err)
	}
}

func TestValidateRules(t *testing.T) {
	cases := map[string]struct {
		mutate func(*Spec)
		want   field.ErrorType
		field  string
	}{
		"rsa max below min": {
			mutate: func(s *Spec) { s.Keys.RSA.MinBits, s.Keys.RSA.MaxBits = 4096, 3072 },
			want:   field.ErrorTypeInvalid, field: "spec.keys.rsa.maxBits",
		},
		"default above max": {
			mutate: func(s *Spec) {
				s.Lifetime.MaxExpirationSeconds = 3600
				s.Lifetime.DefaultExpirationSeconds = ptr.To[int32](7200)
			},
			want: field.ErrorTypeInvalid, field: "spec.lifetime.defaultExpirationSeconds",
		},
		"burst zero with a rate": {
			mutate: func(s *Spec) { s.Bootstrap.RateLimit.Burst = ptr.To[int32](0) },
			want:   field.ErrorTypeInvalid, field: "spec.bootstrap.rateLimit.burst",
		},
		"bootstrap enabled without groups": {
			mutate: func(s *Spec) { s.Bootstrap.Groups = []string{} },
			want:   field.ErrorTypeRequired, field: "spec.bootstrap.groups",
		},
		"system:nodes as a bootstrap group": {
			mutate: func(s *Spec) { s.Bootstrap.Groups = []string{"system:nodes"} },
			want:   field.ErrorTypeInvalid, field: "spec.bootstrap.groups[0]",
		},
		"token binding without a token": {
			mutate: func(s *Spec) { s.Bootstrap.TokenBindings = []TokenBinding{{NodeNames: []string{"a"}}} },
			want:   field.ErrorTypeRequired, field: "spec.bootstrap.tokenBindings[0].tokenID",
		},
		"token binding allowing existing nodes without names": {
			mutate: func(s *Spec) {
				s.Bootstrap.TokenBindings = []TokenBinding{{TokenID: "abcdef", AllowExistingNode: true}}
			},
			want: field.ErrorTypeRequired, field: "spec.bootstrap.tokenBindings[0].nodeNames",
		},
		"pattern too long": {
			mutate: func(s *Spec) { s.NodeNames.Allowed = []string{strings.Repeat("a", 2000)} },
			want:   field.ErrorTypeInvalid, field: "spec.nodeNames.allowed[0]",
		},
		"staleAfterSeconds below the minimum": {
			mutate: func(s *Spec) { s.Bootstrap.Recovery.StaleAfterSeconds = ptr.To[int32](10) },
			want:   field.ErrorTypeInvalid, field: "spec.bootstrap.recovery.staleAfterSeconds",
		},
		"staleAfterSeconds just below the minimum": {
			mutate: func(s *Spec) { s.Bootstrap.Recovery.StaleAfterSeconds = ptr.To[int32](MinStaleAfterSeconds - 1) },
			want:   field.ErrorTypeInvalid, field: "spec.bootstrap.recovery.staleAfterSeconds",
		},
		"negative staleAfterSeconds": {
			mutate: func(s *Spec) { s.Bootstrap.Recovery.StaleAfterSeconds = ptr.To[int32](-300) },
			want:   field.ErrorTypeInvalid, field: "spec.bootstrap.recovery.staleAfterSeconds",
		},
		"node user as a bootstrap user": {
			mutate: func(s *Spec) { s.Bootstrap.Users = []string{"kubelet", "system:node:x"} },
			want:   field.ErrorTypeInvalid, field: "spec.bootstrap.users[1]",
		},
		"service account as a bootstrap user": {
			mutate: func(s *Spec) { s.Bootstrap.Users = []string{"system:serviceaccount:kube-system:default"} },
			want:   field.ErrorTypeInvalid, field: "spec.bootstrap.users[0]",
		},
		"anonymous as a bootstrap user": {
			mutate: func(s *Spec) { s.Bootstrap.Users = []string{"system:anonymous"} },
			want:   field.ErrorTypeInvalid, field: "spec.bootstrap.users[0]",
		},
		"empty bootstrap user": {
			mutate: func(s *Spec) { s.Bootstrap.Users = []string{""} },
			want:   field.ErrorTypeRequired, field: "spec.bootstrap.users[0]",
		},
		"duplicate bootstrap user": {
			mutate: func(s *Spec) { s.Bootstrap.Users = []string{"kubelet", "kubelet"} },
			want:   field.ErrorTypeDuplicate, field: "spec.bootstrap.users[1]",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p := &Policy{APIVersion: APIVersion, Kind: Kind}
			tc.mutate(&p.Spec)
			before := *deepCopySpec(&p.Spec)
			e, err := Compile(p)
			if err == nil || e != nil {
				t.Fatalf("Compile accepted an invalid policy: %v, %v", e, err)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("Compile error %q does not name %s", err, tc.field)
			}
			if !reflect.DeepEqual(p.Spec, before) {
				t.Errorf("Compile changed its argument:\n got %+v\nwant %+v", p.Spec, before)
			}
			p.SetDefaults()
			errs := p.Validate()
			if len(errs) != 1 || errs[0].Type != tc.want || errs[0].Field != tc.field {
				t.Errorf("errors %v, want one %s at %s", errs, tc.want, tc.field)
			}
		})
	}

	// Valid boundaries.
	p := &Policy{APIVersion: APIVersion, Kind: Kind}
	p.Spec.Bootstrap.Enabled = ptr.To(false)
	p.Spec.Bootstrap.Groups = []string{}
	p.Spec.Bootstrap.Users = []string{"kubelet", "system:bootstrap:abcdef"}
	p.Spec.Bootstrap.Recovery = Recovery{Enabled: ptr.To(false), StaleAfterSeconds: ptr.To[int32](MinStaleAfterSeconds)}
	p.Spec.Bootstrap.TokenBindings = []TokenBinding{{TokenID: "abcdef", NodeNames: []string{"gpu-.*"}, AllowExistingNode: true}}
	p.Spec.Bootstrap.RateLimit = RateLimit{PerMinute: ptr.To[int32](0), Burst: ptr.To[int32](0)}
	p.Spec.Keys.RSA.MinBits, p.Spec.Keys.RSA.MaxBits = 8192, 8192
	p.Spec.Lifetime.MaxExpirationSeconds = 600
	p.Spec.Lifetime.DefaultExpirationSeconds = ptr.To[int32](600)
	p.Spec.Limits.MaxPendingPerNode = ptr.To[int32](0)
	e, err := Compile(p)
	if err != nil {
		t.Fatalf("valid boundaries rejected: %v", err)
	}
	b := e.Bootstrap
	if b.Enabled || len(b.Groups) != 0 || !slices.Equal(b.Users, []string{"kubelet", "system:bootstrap:abcdef"}) || b.RecoveryEnabled || b.StaleAfter != time.Minute {
		t.Errorf("compiled bootstrap %+v", b)
	}
	if rule, ok := b.TokenBindings["abcdef"]; !ok || !rule.AllowExistingNode || !rule.Allows("gpu-1") || rule.Allows("worker-1") {
		t.Errorf("compiled token binding %+v", b.TokenBindings)
	}
	if b.RateLimitPerMinute != 0 || b.RateLimitBurst != 0 {
		t.Errorf("compiled rate limit %d/%d", b.RateLimitPerMinute, b.RateLimitBurst)
	}
	if e.Keys.RSAMinBits != 8192 || e.Keys.RSAMaxBits != 8192 || e.Lifetime != (LifetimeRules{MaxExpirationSeconds: 600, DefaultExpirationSeconds: 600}) || e.Limits.MaxPendingPerNode != 0 {
		t.Errorf("compiled keys %+v, lifetime %+v, limits %+v", e.Keys, e.Lifetime, e.Limits)
	}
	if !e.IsBootstrapUser("kubelet") || e.IsBootstrapUser("alice") {
		t.Error("IsBootstrapUser does not follow spec.bootstrap.users")
	}
	// SetDefaults keeps every value set above.
	p.SetDefaults()
	if errs := p.Validate(); len(errs) > 0 {
		t.Errorf("valid boundaries rejected by Validate: %v", errs)
	}
	if *p.Spec.Bootstrap.Recovery.Enabled || *p.Spec.Bootstrap.Recovery.StaleAfterSeconds != MinStaleAfterSeconds {
		t.Errorf("SetDefaults changed recovery: %+v", p.Spec.Bootstrap.Recovery)
	}
}

// The new bootstrap fields parse into the compiled policy.
func TestParseBootstrapUsersAndRecovery(t *testing.T) {
	p, err := Parse([]byte(header + `spec:
  bootstrap:
    users: ["kubelet"]
    recovery:
      enabled: false
      staleAfterSeconds: 600
    tokenBindings:
      - tokenID: "abcdef"
        nodeNames: ["gpu-[0-9]+"]
        allowExistingNode: true
      - tokenID: "ghijkl"
        nodeNames: ["edge-[0-9]+"]
`))
	if err != nil {
		t.Fatal(err)
	}
	b := p.Bootstrap
	if !slices.Equal(b.Users, []string{"kubelet"}) || !p.IsBootstrapUser("kubelet") || p.IsBootstrapUser("system:bootstrap:abcdef") {
		t.Errorf("users = %v", b.Users)
	}
	if b.RecoveryEnabled || b.StaleAfter != 10*time.Minute {
		t.Errorf("recovery enabled %v, stale after %s; want false, 10m", b.RecoveryEnabled, b.StaleAfter)
	}
	if r := p.Source.Spec.Bootstrap.Recovery; *r.Enabled || *r.StaleAfterSeconds != 600 {
		t.Errorf("source recovery %+v", r)
	}
	if r := b.TokenBindings["abcdef"]; !r.AllowExistingNode || !r.Allows("gpu-1") || r.Allows("gpu-x") {
		t.Errorf("binding abcdef %+v", r)
	}
	if r, ok := b.TokenBindings["ghijkl"]; !ok || r.AllowExistingNode || !r.Allows("edge-1") {
		t.Errorf("binding ghijkl %+v (present %v): allowExistingNode must default to false", r, ok)
	}
	if !b.Enabled || !slices.Equal(b.Groups, []string{DefaultBootstrapGroup}) || b.AllowExistingNode {
		t.Errorf("the other bootstrap fields are not the defaults: %+v", b)
	}

	// Unset, recovery is on after five minutes, and no user is a bootstrapper.
	d := Default()
	if !d.Bootstrap.RecoveryEnabled || d.Bootstrap.StaleAfter != 5*time.Minute || len(d.Bootstrap.Users) != 0 || d.IsBootstrapUser("kubelet") {
		t.Errorf("default bootstrap %+v", d.Bootstrap)
	}
}

func TestDigest(t *testing.T) {
	a, err := Parse([]byte(header + "spec:\n  mode: DryRun\n  keys:\n    rsa:\n      minBits: 2048\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Parse([]byte("# comment\nkind: Policy\napiVersion: nodecsr.io/v1alpha1\nspec:\n  keys: {rsa: {minBits: 2048}}\n  mode: \"DryRun\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse([]byte(header + "spec:\n  mode: Enforce\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a.Digest != b.Digest {
		t.Errorf("equivalent policies have digests %s and %s", a.Digest, b.Digest)
	}
	if a.Digest == c.Digest {
		t.Error("different policies share a digest")
	}
	// Spelled-out defaults of the recovery fields do not change the digest;
	// another value does.
	spelled, err := Parse([]byte(header + "spec:\n  mode: Enforce\n  bootstrap:\n    recovery: {enabled: true, staleAfterSeconds: 300}\n"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := Parse([]byte(header + "spec:\n  bootstrap:\n    recovery: {staleAfterSeconds: 301}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if spelled.Digest != c.Digest || spelled.Digest != Default().Digest {
		t.Errorf("spelled-out defaults: digest %s, want %s", spelled.Digest, c.Digest)
	}
	if other.Digest == c.Digest {
		t.Error("a different staleAfterSeconds shares the default digest")
	}
	// Compile gives a policy built in code the digest of the same file.
	p := &Policy{APIVersion: APIVersion, Kind: Kind}
	p.Spec.Mode = ModeDryRun
	p.Spec.Keys.RSA.MinBits = 2048
	e, err := Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	if e.Digest != a.Digest {
		t.Errorf("Compile digest %s, Parse digest %s", e.Digest, a.Digest)
	}
}

// Default and Compile yield plain, defaulted values: nothing downstream
// defaults again.
func TestEffectiveDefaults(t *testing.T) {
	for name, p := range map[string]*Effective{
		"Default":                  Default(),
		"Compile of an empty spec": mustCompile(t, &Policy{}),
	} {
		t.Run(name, func(t *testing.T) {
			if !p.Bootstrap.Enabled || !p.Renewal.RequireNodeExists || !p.Limits.CollapseDuplicates || !p.Keys.RSAEnabled || !p.Bootstrap.RecoveryEnabled {
				t.Error("boolean defaults")
			}
			if p.Keys.Ed25519 || p.Keys.KeyEnciphermentRequiresRSA || p.Bootstrap.AllowExistingNode || p.Bootstrap.RequireTokenBinding {
				t.Error("opt-in strictness is on by default")
			}
			if p.Limits.MaxPendingPerNode != 3 || p.Keys.MaxRequestBytes != 16384 {
				t.Error("integer defaults")
			}
			if p.Keys.RSAMinBits != 2048 || p.Keys.RSAMaxBits != 4096 {
				t.Error("RSA defaults")
			}
			if p.Bootstrap.RateLimitPerMinute != 60 || p.Bootstrap.RateLimitBurst != 20 {
				t.Error("rate limit defaults")
			}
			if p.Bootstrap.StaleAfter != 300*time.Second {
				t.Errorf("stale after %s, want 5m", p.Bootstrap.StaleAfter)
			}
			if !p.IsBootstrapGroup("system:bootstrappers") || p.IsBootstrapGroup("system:nodes") || !p.Keys.CurveAllowed(CurveP256) || !p.Keys.CurveAllowed(CurveP384) || p.Keys.CurveAllowed(CurveP521) {
				t.Error("group or curve defaults")
			}
			if p.Mode != ModeEnforce || p.OnViolation != ViolationDeny || p.Guard.Mode != GuardOff {
				t.Error("mode defaults")
			}
			if !slices.Equal(p.Guard.AllowedGroups, []string{"system:masters"}) || len(p.Guard.AllowedUsers) != 0 {
				t.Errorf("guard defaults %+v", p.Guard)
			}
			if p.Lifetime != (LifetimeRules{}) {
				t.Errorf("lifetime defaults %+v", p.Lifetime)
			}
			if len(p.NodeNames.Allowed) != 0 || len(p.NodeNames.Denied) != 0 || !p.NodeNameAllowed("anything") {
				t.Error("node name defaults")
			}
			if _, denied := p.NodeNameDenied("anything"); denied {
				t.Error("the default policy denies a name")
			}
			if p.Source.APIVersion != APIVersion || p.Source.Kind != Kind || len(p.Digest) != 12 || p.Digest != Default().Digest {
				t.Errorf("source %q %q, digest %q", p.Source.APIVersion, p.Source.Kind, p.Digest)
			}
		})
	}

	// A policy whose patterns do not compile never becomes an Effective
	// policy (there is no half-compiled policy to fail closed with).
	for _, pats := range []NodeNames{{Denied: []string{"("}}, {Allowed: []string{"a)|(b"}}} {
		e, err := Compile(&Policy{Spec: Spec{NodeNames: pats}})
		if err == nil || e != nil {
			t.Errorf("Compile of %+v = %v, %v; want an error", pats, e, err)
		}
	}
	tb := &Policy{Spec: Spec{Bootstrap: Bootstrap{TokenBindings: []TokenBinding{{TokenID: "abcdef", NodeNames: []string{"["}}}}}}
	if e, err := Compile(tb); err == nil || e != nil || !strings.Contains(err.Error(), "spec.bootstrap.tokenBindings[0].nodeNames[0]") {
		t.Errorf("Compile of a bad binding pattern = %v, %v", e, err)
	}
}

func mustCompile(t *testing.T, p *Policy) *Effective {
	t.Helper()
	e, err := Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// docs/policy.md documents every field by its full path.
func TestPolicyFieldsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/policy.md")
	if err != nil {
		t.Fatalf("read docs: %v", err)
	}
	var paths []string
	var walk func(reflect.Type, string)
	walk = func(tp reflect.Type, prefix string) {
		for tp.Kind() == reflect.Pointer || tp.Kind() == reflect.Slice {
			tp = tp.Elem()
		}
		if tp.Kind() != reflect.Struct {
			return
		}
		sf := fieldsOf(tp)
		for _, n := range sf.names {
			p := join(prefix, n)
			paths = append(paths, p)
			if ft := sf.byName[n]; ft.Kind() == reflect.Slice {
				p += "[]"
			}
			walk(sf.byName[n], p)
		}
	}
	walk(policyType, "")
	for _, p := range paths {
		if !strings.Contains(string(doc), "`"+p+"`") {
			t.Errorf("docs/policy.md does not mention `%s`", p)
		}
	}
}

// writeFile replaces path atomically, as a ConfigMap update or a careful
// editor does, so a watcher never reads half a file.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// FuzzParse's seed corpus is committed in testdata/fuzz/FuzzParse (rewrite
// it with go test ./config/ -run TestWriteFuzzSeeds -update-fuzz-seeds).
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			if p != nil {
				t.Fatal("policy and error")
			}
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if errs := p.Source.Validate(); len(errs) > 0 {
			t.Fatalf("parsed policy does not validate: %v", errs)
		}
		if len(p.Digest) != 12 {
			t.Fatalf("digest %q", p.Digest)
		}
		// The source recompiles to the same policy.
		again, err := Compile(&p.Source)
		if err != nil {
			t.Fatalf("the parsed policy's source does not compile: %v", err)
		}
		if again.Digest != p.Digest {
			t.Fatalf("recompiled digest %s, parsed %s", again.Digest, p.Digest)
		}
	})
}

// Every YAML example in docs/policy.md parses.
func TestPolicyDocExamplesParse(t *testing.T) {
	doc, err := os.ReadFile("../docs/policy.md")
	if err != nil {
		t.Fatalf("read docs: %v", err)
	}
	blocks := strings.Split(string(doc), "```yaml\n")[1:]
	if len(blocks) == 0 {
		t.Fatal("no yaml examples")
	}
	for i, b := range blocks {
		body, _, _ := strings.Cut(b, "```")
		if _, err := Parse([]byte(body)); err != nil {
			t.Errorf("example %d: %v", i+1, err)
		}
	}
}

// A policy written with sigs.k8s.io/yaml (as explain or a Helm chart would)
// parses back to the same policy.
func TestRoundTripThroughSigsYAML(t *testing.T) {
	p, err := Load("example-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	empty, err := Parse([]byte(header + "spec:\n  bootstrap: {enabled: false, groups: []}\n  keys: {ecdsa: {curves: []}}\n  approvalGuard: {allowedGroups: []}\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []*Effective{Default(), p, empty} {
		out, err := sigsyaml.Marshal(want.Source)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Parse(out)
		if err != nil {
			t.Fatalf("parse of\n%s\n: %v", out, err)
		}
		// Lists where empty and unset mean the same may come back nil.
		if got.Digest != want.Digest || len(got.Bootstrap.Groups) != len(want.Bootstrap.Groups) || len(got.Keys.ECDSACurves) != len(want.Keys.ECDSACurves) {
			t.Errorf("round trip changed the policy:\n%s", out)
		}
	}
}

var updateSeeds = flag.Bool("update-fuzz-seeds", false, "rewrite testdata/fuzz/FuzzParse")

// TestWriteFuzzSeeds rewrites FuzzParse's committed seed corpus: valid
// policies (the example, every field), and the shapes of broken files.
func TestWriteFuzzSeeds(t *testing.T) {
	if !*updateSeeds {
		t.Skip("run with -update-fuzz-seeds to rewrite testdata/fuzz/FuzzParse")
	}
	example, err := os.ReadFile("example-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	seeds := map[string]string{
		"example":             string(example),
		"empty-spec":          header,
		"allowed-names":       header + "spec:\n  nodeNames:\n    allowed: [\"a\"]\n",
		"token-binding":       header + "spec:\n  bootstrap:\n    tokenBindings:\n      - tokenID: abcdef\n        nodeNames: [x]\n        allowExistingNode: true\n",
		"recovery-users":      header + "spec:\n  bootstrap:\n    users: [kubelet]\n    recovery: {enabled: true, staleAfterSeconds: 600}\n",
		"alias-loop":          "a: &a [*a]\n",
		"unknown-field":       header + "spec:\n  keys:\n    rsa:\n      minbits: 2048\n",
		"wrong-type":          header + "spec:\n  limits:\n    maxPendingPerNode: lots\n",
		"duplicate-key":       header + "spec:\n  mode: DryRun\n  mode: Enforce\n",
		"two-documents":       header + "---\n" + header,
		"bad-pattern":         header + "spec:\n  nodeNames:\n    denied: [\"a)|(b\"]\n",
		"all-digit-token":     header + "spec:\n  bootstrap:\n    tokenBindings:\n      - tokenID: 123456\n        nodeNames: [x]\n",
		"stale-after-too-low": header + "spec:\n  bootstrap:\n    recovery: {staleAfterSeconds: 1}\n",
		"other-kind":          "apiVersion: v1\nkind: ConfigMap\n",
		"serving":             header + "spec:\n  serving:\n    enabled: true\n    ipCIDRs: [\"10.0.0.0/8\"]\n    dnsNames: [\"{node}.n.example\"]\n    resolveDNS: {enabled: true, timeoutSeconds: 1}\n",
		"serving-bad-cidr":    header + "spec:\n  serving:\n    ipCIDRs: [\"10.1.2.3/8\"]\n",
		"not-yaml":            "\t{[",
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzParse")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range seeds {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
