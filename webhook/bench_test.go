package webhook

import (
	"testing"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
)

// The handlers' cost over approver.Inspect and approver.Decide's own:
// decoding the admission object, the node lookup, the response. Compare
// with BenchmarkEvaluateBaseline.
//
//	go test -run '^$' -bench . -benchmem ./webhook/

func BenchmarkValidate(b *testing.B) {
	csr := csrtest.Build(csrtest.Bootstrap(csrtest.DefaultTokenID))
	hs, _ := testHandlers(b, config.Default(), func(o *Options) { o.Facts = gatherer(nodes("other")) })
	req := createRequest(b, csr, userOf(csr))
	b.ReportAllocs()
	for b.Loop() {
		if resp := hs.validate.Handle(b.Context(), req); !resp.Allowed {
			b.Fatal(resp.Result.Message)
		}
	}
}

func BenchmarkValidateReject(b *testing.B) {
	csr := csrtest.Build(csrtest.Bootstrap(csrtest.DefaultTokenID), csrtest.WithDNSSAN("x.example.com"), csrtest.WithUsages(serverAuth...))
	hs, _ := testHandlers(b, config.Default(), func(o *Options) { o.Facts = gatherer(nodes("other")) })
	req := createRequest(b, csr, userOf(csr))
	b.ReportAllocs()
	for b.Loop() {
		if resp := hs.validate.Handle(b.Context(), req); resp.Allowed {
			b.Fatal("admitted")
		}
	}
}

func BenchmarkMutate(b *testing.B) {
	csr := csrtest.Build(csrtest.WithExpiration(86400))
	hs, _ := testHandlers(b, newPolicy(b, func(s *config.Spec) { s.Lifetime.MaxExpirationSeconds = 3600 }), nil)
	req := createRequest(b, csr, userOf(csr))
	b.ReportAllocs()
	for b.Loop() {
		// The handler returns JSON patch operations; the server encodes them.
		if resp := hs.mutate.Handle(b.Context(), req); len(resp.Patches) == 0 {
			b.Fatalf("no patch: %+v", resp.Result)
		}
	}
}

func BenchmarkApprovalGuard(b *testing.B) {
	pending := csrtest.Build()
	hs, _ := testHandlers(b, newPolicy(b, func(s *config.Spec) { s.ApprovalGuard.Mode = config.GuardEnforce }), nil)
	req := approvalRequest(b, pending, withDecision(pending, "Approved", "Manual"), userOf(csrtest.Build(csrtest.WithUsername("admin"), csrtest.WithGroups("system:masters"))))
	b.ReportAllocs()
	for b.Loop() {
		if resp := hs.approval.Handle(b.Context(), req); !resp.Allowed {
			b.Fatal(resp.Result.Message)
		}
	}
}

// BenchmarkEvaluateBaseline is approver.Inspect and approver.Decide alone on
// the same CSR, with the facts the validator has, for comparison.
func BenchmarkEvaluateBaseline(b *testing.B) {
	csr := csrtest.Build(csrtest.Bootstrap(csrtest.DefaultTokenID))
	p := config.Default()
	b.ReportAllocs()
	for b.Loop() {
		_ = approver.Decide(p, approver.Inspect(p, csr), approver.Facts{NodeExists: ptr(false)})
	}
}
