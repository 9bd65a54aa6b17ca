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
	cases := map[string]struct {
		opts []csrtest.Option
		path Path
		want Verdict
	}{
		"ECDSA-P256 renewal":  {opts: []csrtest.Option{ecKey(elliptic.P256())}, path: PathRenewal, want: Approve},
		"ECDSA-P384 renewal":  {opts: []csrtest.Option{ecKey(elliptic.P384())}, path: PathRenewal, want: Approve},
		"RSA-2048 renewal":    {opts: []csrtest.Option{rsaKey(2048)}, path: PathRenewal, want: Approve},
		"RSA-4096 renewal":    {opts: []csrtest.Option{rsaKey(4096)}, path: PathRenewal, want: Approve},
		"ECDSA-P256 takeover": {opts: []csrtest.Option{bootstrap("abcdef")}, path: PathRenewal, want: Deny},
		"malformed":           {opts: []csrtest.Option{trailingGarbage()}, path: PathRenewal, want: Deny},
		"RSA-16384 refused":   {opts: []csrtest.Option{withRequest(readTestdata("rsa16384.csr")), withNodeName("huge-key")}, path: PathRenewal, want: Deny},
	}
	p := config.Default()
	for name, bc := range cases {
		csr, facts := newCSR(bc.opts...), goodFacts(bc.path)
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
