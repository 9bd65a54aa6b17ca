package webhook

import (
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
)

// FuzzHandlers feeds arbitrary admission objects to the three handlers:
// none may panic, the mutating one never fails a request, and a patch it
// returns always applies.
//
//	go test -run '^$' -fuzz FuzzHandlers ./webhook/
func FuzzHandlers(f *testing.F) {
	for _, csr := range []any{
		csrtest.Build(),
		csrtest.Build(csrtest.Bootstrap(csrtest.DefaultTokenID), csrtest.WithExpiration(86400)),
		csrtest.Build(csrtest.NotPEM()),
		csrtest.Build(csrtest.WithDNSSAN("x"), csrtest.WithUsages(serverAuth...)),
	} {
		f.Add(mustJSON(f, csr), "system:node:worker-1", "system:nodes")
	}
	f.Add([]byte(`{"metadata":{"labels":{"nodecsr.io/node-name":"x"}},"spec":{"signerName":"kubernetes.io/kube-apiserver-client-kubelet","request":"LS0t"}}`), "u", "g")
	f.Add([]byte(`{"metadata":{"labels":null,"annotations":[]}}`), "", "")

	p := newPolicy(f, func(s *config.Spec) {
		s.Lifetime.MaxExpirationSeconds = 3600
		s.ApprovalGuard.Mode = config.GuardEnforce
	})
	hs, _ := testHandlers(f, p, func(o *Options) { o.Facts = gatherer(nodes("worker-1")) })
	f.Fuzz(func(t *testing.T, raw []byte, user, group string) {
		req := admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
			UID: "f", Operation: admissionv1.Create, Resource: csrResource,
			UserInfo: authenticationv1.UserInfo{Username: user, Groups: []string{group}},
			Object:   runtime.RawExtension{Raw: raw},
		}}
		_ = hs.validate.Handle(t.Context(), req)
		m := hs.mutate.Handle(t.Context(), req)
		if !m.Allowed {
			t.Fatalf("mutate failed a request: %v", m.Result)
		}
		if m.Patch != nil {
			_ = applyPatch(t, raw, m.Patch)
		}
		req.Operation, req.SubResource, req.OldObject = admissionv1.Update, "approval", runtime.RawExtension{Raw: raw}
		_ = hs.approval.Handle(t.Context(), req)
	})
}
