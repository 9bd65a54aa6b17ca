package approver

import (
	"crypto/elliptic"
	"testing"

	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
)

// BenchmarkEvaluate measures one full decision: parse, key and signature
// checks, subject, usages, policy and facts.
//
//	go test ./approver/ -run '^$' -bench Evaluate -benchmem
func BenchmarkEvaluate(b *testing.B) {
	serving := config.Default().Source
	serving.Spec.Serving.Enabled = true
	sp, err := config.Compile(&serving)
	if err != nil {
		b.Fatal(err)
	}
	cases := map[string]struct {
		opts []csrtest.Option
		path Path
		want Verdict
		// serving decides with serving.enabled.
		serving bool
	}{
		// Serving CSRs: a stock kubelet's (hostname and InternalIP), one
		// for every address of a dual-stack node, and a node asking for
		// its neighbour's IP.
		"serving ECDSA-P256 2 SANs":        {opts: []csrtest.Option{withServing("worker-1", "10.0.0.1")}, path: PathServing, want: Approve, serving: true},
		"serving ECDSA-P256 5 SANs":        {opts: []csrtest.Option{withServing("worker-1", "worker-1.cluster.internal", "10.0.0.1", "203.0.113.10", "fd00::1")}, path: PathServing, want: Approve, serving: true},
		"serving RSA-2048 2 SANs":          {opts: []csrtest.Option{withServing("worker-1", "10.0.0.1"), rsaKey(2048)}, path: PathServing, want: Approve, serving: true},
		"serving neighbour's IP (refused)": {opts: []csrtest.Option{withServing("worker-1", "10.0.0.2")}, path: PathServing, want: Deny, serving: true},
		"ECDSA-P256 renewal":               {opts: []csrtest.Option{ecKey(elliptic.P256())}, path: PathRenewal, want: Approve},
		"ECDSA-P384 renewal":               {opts: []csrtest.Option{ecKey(elliptic.P384())}, path: PathRenewal, want: Approve},
		"RSA-2048 renewal":                 {opts: []csrtest.Option{rsaKey(2048)}, path: PathRenewal, want: Approve},
		"RSA-4096 renewal":                 {opts: []csrtest.Option{rsaKey(4096)}, path: PathRenewal, want: Approve},
		"ECDSA-P256 takeover":              {opts: []csrtest.Option{bootstrap("abcdef")}, path: PathRenewal, want: Deny},
		"malformed":                        {opts: []csrtest.Option{trailingGarbage()}, path: PathRenewal, want: Deny},
		"RSA-16384 refused":                {opts: []csrtest.Option{withRequest(readTestdata("rsa16384.csr")), withNodeName("huge-key")}, path: PathRenewal, want: Deny},
	}
	for name, bc := range cases {
		p := config.Default()
		if bc.serving {
			p = sp
		}
		csr, facts := newCSR(bc.opts...), goodFacts(bc.path)
		if bc.want == Deny && bc.serving {
			facts.Neighbours = map[string][]string{"10.0.0.2": {"worker-2"}}
		}
		// A live heartbeat: the takeover of a live node is refused.
		facts.NodeHeartbeat, facts.Now = ptr(now), now
		if d := evaluate(p, csr, facts); d.Verdict != bc.want {
			b.Fatalf("%s: %s %s", name, d.Verdict, d.Message)
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Decide(p, Inspect(p, csr), facts)
			}
		})
	}
}

// BenchmarkNodeNameOf measures the cheap indexing path.
func BenchmarkNodeNameOf(b *testing.B) {
	csr := newCSR()
	b.ReportAllocs()
	for b.Loop() {
		NodeNameOf(csr)
	}
}

// BenchmarkInspect measures the one parse of a renewal.
func BenchmarkInspect(b *testing.B) {
	csr, p := newCSR(), config.Default()
	b.ReportAllocs()
	for b.Loop() {
		Inspect(p, csr)
	}
}
