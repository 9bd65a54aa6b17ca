package config

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// Serving is off by default; its defaults compile to plain values.
func TestServingDefaults(t *testing.T) {
	s := Default().Serving
	if s.Enabled || s.ResolveDNS {
		t.Errorf("serving or DNS resolution is on by default: %+v", s)
	}
	want := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	if !slices.Equal(s.IPCIDRs, want) || s.MaxSANs != 16 || s.ResolveTimeout != 2*time.Second || s.Subresource != SubresourceSelfNodeClient || len(s.DNSNames) != 0 {
		t.Errorf("serving defaults %+v", s)
	}
	for _, ip := range []string{"10.1.2.3", "192.0.2.1", "2001:db8::1", "::ffff:10.0.0.1"} {
		if !s.IPAllowed(netip.MustParseAddr(ip)) {
			t.Errorf("the default CIDRs refuse %s", ip)
		}
	}
}

func TestParseServing(t *testing.T) {
	p, err := Parse([]byte(header + `spec:
  serving:
    enabled: true
    ipCIDRs: ["10.0.0.0/8", "fd00::/8"]
    dnsNames: ["{node}.nodes.example.internal", "{node}"]
    maxSANs: 4
    resolveDNS: {enabled: true, timeoutSeconds: 1}
    subresource: selfnodeserver
`))
	if err != nil {
		t.Fatal(err)
	}
	s := p.Serving
	if !s.Enabled || !s.ResolveDNS || s.ResolveTimeout != time.Second || s.MaxSANs != 4 || s.Subresource != SubresourceSelfNodeServer {
		t.Errorf("compiled serving %+v", s)
	}
	for ip, want := range map[string]bool{"10.9.8.7": true, "11.0.0.1": false, "fd00::5": true, "2001:db8::1": false, "::ffff:10.0.0.1": true} {
		if got := s.IPAllowed(netip.MustParseAddr(ip)); got != want {
			t.Errorf("IPAllowed(%s) = %v, want %v", ip, got, want)
		}
	}
	for _, c := range []struct {
		node, name, template string
		ok                   bool
	}{
		{"worker-1", "worker-1.nodes.example.internal", "{node}.nodes.example.internal", true},
		{"worker-1", "worker-1", "{node}", true},
		{"worker-1", "worker-2.nodes.example.internal", "", false},
		{"worker-1", "nodes.example.internal", "", false},
		{"a.b", "a.b.nodes.example.internal", "{node}.nodes.example.internal", true},
	} {
		tmpl, ok := s.DNSNameTemplate(c.node, c.name)
		if ok != c.ok || tmpl != c.template {
			t.Errorf("DNSNameTemplate(%q, %q) = %q, %v; want %q, %v", c.node, c.name, tmpl, ok, c.template, c.ok)
		}
	}

	// An explicit empty list allows no IP SAN.
	p, err = Parse([]byte(header + "spec:\n  serving:\n    ipCIDRs: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Serving.IPCIDRs) != 0 || p.Serving.IPAllowed(netip.MustParseAddr("10.0.0.1")) {
		t.Errorf("ipCIDRs: [] allows %v", p.Serving.IPCIDRs)
	}
	// The digest tells serving on from off.
	if p.Digest == Default().Digest {
		t.Error("ipCIDRs: [] has the default digest")
	}
}

func TestParseServingErrors(t *testing.T) {
	cases := map[string]struct {
		in   string
		want []string
		line int
	}{
		"unknown field": {
			in:   "spec:\n  serving:\n    enable: true\n",
			want: []string{"spec.serving", `unknown field "enable"`, `did you mean "enabled"?`},
			line: 5,
		},
		"unknown field in resolveDNS": {
			in:   "spec:\n  serving:\n    resolveDNS:\n      timeout: 2s\n",
			want: []string{"spec.serving.resolveDNS", `unknown field "timeout"`},
			line: 6,
		},
		"not a CIDR": {
			in:   "spec:\n  serving:\n    ipCIDRs: [\"10.0.0.0/8\", \"10.0.0.0\"]\n",
			want: []string{"spec.serving.ipCIDRs[1]", `"10.0.0.0"`, "not a CIDR"},
			line: 5,
		},
		"CIDR with host bits": {
			in:   "spec:\n  serving:\n    ipCIDRs: [\"10.1.2.3/8\"]\n",
			want: []string{"spec.serving.ipCIDRs[0]", "host bits set; the network is 10.0.0.0/8"},
			line: 5,
		},
		"duplicate CIDR": {
			in:   "spec:\n  serving:\n    ipCIDRs: [\"fd00::/8\", \"fd00::/8\"]\n",
			want: []string{"spec.serving.ipCIDRs[1]", "Duplicate value"},
		},
		"DNS template without {node}": {
			in:   "spec:\n  serving:\n    dnsNames: [\"metrics.example.internal\"]\n",
			want: []string{"spec.serving.dnsNames[0]", "must contain {node}"},
			line: 5,
		},
		"wildcard DNS template": {
			in:   "spec:\n  serving:\n    dnsNames: [\"*.{node}.example\"]\n",
			want: []string{"spec.serving.dnsNames[0]", "must not contain a wildcard"},
		},
		"DNS template that is not a DNS name": {
			in:   "spec:\n  serving:\n    dnsNames: [\"{node}.Example_Internal\"]\n",
			want: []string{"spec.serving.dnsNames[0]", "is not a DNS name once {node} is replaced"},
		},
		"maxSANs too large": {
			in:   "spec:\n  serving:\n    maxSANs: 1000\n",
			want: []string{"spec.serving.maxSANs", "must be between 1 and 100"},
		},
		"negative maxSANs": {
			in:   "spec:\n  serving:\n    maxSANs: -1\n",
			want: []string{"spec.serving.maxSANs", "must be between 1 and 100"},
		},
		"resolve timeout too long": {
			in:   "spec:\n  serving:\n    resolveDNS: {enabled: true, timeoutSeconds: 60}\n",
			want: []string{"spec.serving.resolveDNS.timeoutSeconds", "must be between 1 and 10"},
		},
		"resolve timeout as a duration": {
			in:   "spec:\n  serving:\n    resolveDNS: {timeoutSeconds: 2s}\n",
			want: []string{"spec.serving.resolveDNS.timeoutSeconds", "expected an integer"},
		},
		"unknown subresource": {
			in:   "spec:\n  serving:\n    subresource: nodeclient\n",
			want: []string{"spec.serving.subresource", `Unsupported value: "nodeclient"`, `"selfnodeclient"`, `"selfnodeserver"`},
		},
		"enabled not a boolean": {
			in:   "spec:\n  serving:\n    enabled: \"true\"\n",
			want: []string{"spec.serving.enabled", "expected true or false"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(header + tc.in))
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("error %v, want an *Error", err)
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
