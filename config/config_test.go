package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation/field"
	sigsyaml "sigs.k8s.io/yaml"
)

const header = "apiVersion: nodecsr.io/v1alpha1\nkind: Policy\n"

func TestParseExample(t *testing.T) {
	p, err := Load("example-policy.yaml")
	if err != nil {
		t.Fatalf("example policy: %v", err)
	}
	if got := p.Spec.NodeNames.Denied; !slices.Equal(got, []string{"control-plane-.*"}) {
		t.Errorf("denied = %v", got)
	}
	if p.Spec.ApprovalGuard.Mode != GuardOff {
		t.Errorf("approvalGuard.mode = %q", p.Spec.ApprovalGuard.Mode)
	}
	if p.Spec.Lifetime.MaxExpirationSeconds != 2592000 || *p.Spec.Lifetime.DefaultExpirationSeconds != 604800 {
		t.Errorf("lifetime = %+v", p.Spec.Lifetime)
	}
	if bound, ok := p.TokenAllowsNodeName("abcdef", "gpu-a1"); !bound || !ok {
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
	s := p.Spec
	want := Spec{
		Mode:        ModeEnforce,
		OnViolation: ViolationDeny,
		Bootstrap: Bootstrap{
			Enabled:   ptrTo(true),
			Groups:    []string{"system:bootstrappers"},
			RateLimit: RateLimit{PerMinute: ptrTo[int32](60), Burst: ptrTo[int32](20)},
		},
		Renewal: Renewal{RequireNodeExists: ptrTo(true)},
		Keys: Keys{
			ECDSA:           ECDSAKeys{Curves: []Curve{CurveP256, CurveP384}},
			RSA:             RSAKeys{Enabled: ptrTo(true), MinBits: 2048, MaxBits: 4096},
			MaxRequestBytes: 16384,
		},
		Limits:        Limits{MaxPendingPerNode: ptrTo[int32](3), CollapseDuplicates: ptrTo(true)},
		ApprovalGuard: ApprovalGuard{Mode: GuardOff, AllowedGroups: []string{"system:masters"}},
	}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", s, want)
	}
	if s.Keys.Ed25519 || s.Keys.KeyEnciphermentRequiresRSA || s.Bootstrap.AllowExistingNode || s.Bootstrap.RequireTokenBinding {
		t.Error("opt-in strictness is on by default")
	}

	// The empty policy file is the default policy.
	parsed, err := Parse([]byte(header))
	if err != nil {
		t.Fatal(err)
	}
	if parsed.Digest() != p.Digest() || len(p.Digest()) != 12 {
		t.Errorf("digest %q of the empty file, %q of Default()", parsed.Digest(), p.Digest())
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
	if len(p.ECDSACurves()) != 0 || p.CurveAllowed(CurveP256) {
		t.Errorf("curves: [] should allow no curve, got %v", p.ECDSACurves())
	}
	if p.Spec.ApprovalGuard.AllowedGroups == nil || len(p.Spec.ApprovalGuard.AllowedGroups) != 0 {
		t.Errorf("allowedGroups: [] should stay empty, got %v", p.Spec.ApprovalGuard.AllowedGroups)
	}
	// null means unset.
	p, err = Parse([]byte(header + "spec:\n  keys:\n    ecdsa:\n      curves: null\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !p.CurveAllowed(CurveP256) {
		t.Error("curves: null should be the default")
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
		if string(p.Spec.ApprovalGuard.Mode) != strings.Trim(v, `"`) {
			t.Errorf("mode %s parsed as %q", v, p.Spec.ApprovalGuard.Mode)
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
				s.Lifetime.DefaultExpirationSeconds = ptrTo[int32](7200)
			},
			want: field.ErrorTypeInvalid, field: "spec.lifetime.defaultExpirationSeconds",
		},
		"burst zero with a rate": {
			mutate: func(s *Spec) { s.Bootstrap.RateLimit.Burst = ptrTo[int32](0) },
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
		"pattern too long": {
			mutate: func(s *Spec) { s.NodeNames.Allowed = []string{strings.Repeat("a", 2000)} },
			want:   field.ErrorTypeInvalid, field: "spec.nodeNames.allowed[0]",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p := Default()
			tc.mutate(&p.Spec)
			errs := p.Validate()
			if len(errs) != 1 || errs[0].Type != tc.want || errs[0].Field != tc.field {
				t.Errorf("errors %v, want one %s at %s", errs, tc.want, tc.field)
			}
			if p.Complete() == nil {
				t.Error("Complete accepted an invalid policy")
			}
		})
	}

	// Valid boundaries.
	p := Default()
	p.Spec.Bootstrap.Enabled = ptrTo(false)
	p.Spec.Bootstrap.Groups = []string{}
	p.Spec.Bootstrap.RateLimit = RateLimit{PerMinute: ptrTo[int32](0), Burst: ptrTo[int32](0)}
	p.Spec.Keys.RSA.MinBits, p.Spec.Keys.RSA.MaxBits = 8192, 8192
	p.Spec.Lifetime.MaxExpirationSeconds = 600
	p.Spec.Lifetime.DefaultExpirationSeconds = ptrTo[int32](600)
	p.Spec.Limits.MaxPendingPerNode = ptrTo[int32](0)
	if errs := p.Validate(); len(errs) > 0 {
		t.Errorf("valid boundaries rejected: %v", errs)
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
	if a.Digest() != b.Digest() {
		t.Errorf("equivalent policies have digests %s and %s", a.Digest(), b.Digest())
	}
	if a.Digest() == c.Digest() {
		t.Error("different policies share a digest")
	}
}

func TestAccessorsOnUncompletedPolicy(t *testing.T) {
	p := &Policy{}
	if !p.BootstrapEnabled() || !p.RequireNodeExists() || !p.CollapseDuplicates() || !p.RSAEnabled() {
		t.Error("boolean defaults")
	}
	if p.MaxPendingPerNode() != 3 || p.MaxRequestBytes() != 16384 {
		t.Error("integer defaults")
	}
	if lo, hi := p.RSABits(); lo != 2048 || hi != 4096 {
		t.Error("RSA defaults")
	}
	if pm, b := p.RateLimit(); pm != 60 || b != 20 {
		t.Error("rate limit defaults")
	}
	if !p.IsBootstrapGroup("system:bootstrappers") || !p.CurveAllowed(CurveP256) || p.CurveAllowed(CurveP521) {
		t.Error("group or curve defaults")
	}
	if p.EffectiveMode() != ModeEnforce || p.EffectiveOnViolation() != ViolationDeny {
		t.Error("mode defaults")
	}
	if p.Ready() != nil {
		t.Error("not ready")
	}
	p.Spec.NodeNames.Denied = []string{"("}
	if p.Ready() == nil {
		t.Error("a policy with a bad pattern is ready")
	}
	if _, denied := p.NodeNameDenied("anything"); !denied {
		t.Error("a bad denied pattern must deny everything")
	}
	var nilPolicy *Policy
	if nilPolicy.Ready() == nil {
		t.Error("nil policy is ready")
	}
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

func FuzzParse(f *testing.F) {
	f.Add([]byte(header))
	f.Add([]byte(header + "spec:\n  nodeNames:\n    allowed: [\"a\"]\n"))
	f.Add([]byte(header + "spec:\n  bootstrap:\n    tokenBindings:\n      - tokenID: abcdef\n        nodeNames: [x]\n"))
	f.Add([]byte("a: &a [*a]\n"))
	if data, err := os.ReadFile("example-policy.yaml"); err == nil {
		f.Add(data)
	}
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
		if errs := p.Validate(); len(errs) > 0 {
			t.Fatalf("parsed policy does not validate: %v", errs)
		}
		if p.Ready() != nil || len(p.Digest()) != 12 {
			t.Fatal("parsed policy not ready")
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
	for _, want := range []*Policy{Default(), p, empty} {
		out, err := sigsyaml.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Parse(out)
		if err != nil {
			t.Fatalf("parse of\n%s\n: %v", out, err)
		}
		// Lists where empty and unset mean the same may come back nil.
		if got.Digest() != want.Digest() || len(got.BootstrapGroups()) != len(want.BootstrapGroups()) || len(got.ECDSACurves()) != len(want.ECDSACurves()) {
			t.Errorf("round trip changed the policy:\n%s", out)
		}
	}
}
