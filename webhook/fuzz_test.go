package webhook

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
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
// returns always applies and changes nothing but nodecsr's labels,
// annotations and spec.expirationSeconds.
//
//	go test -run '^$' -fuzz FuzzHandlers ./webhook/
//
// Its seed corpus is committed in testdata/fuzz/FuzzHandlers (rewrite it with
// go test ./webhook/ -run TestWriteFuzzSeeds -update-fuzz-seeds).
func FuzzHandlers(f *testing.F) {
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
		if len(m.Patches) > 0 {
			onlyOursChanged(t, raw, applyPatch(t, raw, patchOf(t, m)))
		}
		req.Operation, req.SubResource, req.OldObject = admissionv1.Update, "approval", runtime.RawExtension{Raw: raw}
		_ = hs.approval.Handle(t.Context(), req)
	})
}

var updateSeeds = flag.Bool("update-fuzz-seeds", false, "rewrite testdata/fuzz/FuzzHandlers")

// TestWriteFuzzSeeds rewrites FuzzHandlers' committed seed corpus.
func TestWriteFuzzSeeds(t *testing.T) {
	if !*updateSeeds {
		t.Skip("run with -update-fuzz-seeds to rewrite testdata/fuzz/FuzzHandlers")
	}
	node, nodes := "system:node:worker-1", "system:nodes"
	seeds := map[string]struct {
		raw         []byte
		user, group string
	}{
		"renewal":                 {mustJSON(t, csrtest.Build()), node, nodes},
		"bootstrap-long-lifetime": {mustJSON(t, csrtest.Build(csrtest.Bootstrap(csrtest.DefaultTokenID), csrtest.WithExpiration(86400))), "system:bootstrap:" + csrtest.DefaultTokenID, "system:bootstrappers"},
		"not-pem":                 {mustJSON(t, csrtest.Build(csrtest.NotPEM())), node, nodes},
		"dns-san-server-auth":     {mustJSON(t, csrtest.Build(csrtest.WithDNSSAN("x"), csrtest.WithUsages(serverAuth...))), node, nodes},
		"rsa-key-encipherment":    {mustJSON(t, csrtest.Build(csrtest.WithKey(csrtest.RSAKey(2048)), csrtest.WithUsages(csrtest.KeyEnciphermentUsages()...))), node, nodes},
		"bootstrap-existing-node": {mustJSON(t, csrtest.Build(csrtest.Bootstrap(csrtest.DefaultTokenID), csrtest.WithNodeName("worker-1"))), "system:bootstrap:" + csrtest.DefaultTokenID, "system:bootstrappers"},
		"other-signer":            {mustJSON(t, csrtest.Build(csrtest.WithSignerName("example.com/other"))), "alice", "devs"},
		"approved":                {mustJSON(t, csrtest.Build(csrtest.WithCondition("Approved"))), "alice", "system:masters"},
		"own-label-bad-request":   {[]byte(`{"metadata":{"labels":{"nodecsr.io/node-name":"x"}},"spec":{"signerName":"kubernetes.io/kube-apiserver-client-kubelet","request":"LS0t"}}`), "u", "g"},
		"labels-null-annotations": {[]byte(`{"metadata":{"labels":null,"annotations":[]}}`), "", ""},
		"wrong-api-version":       {[]byte(`{"apiVersion":"certificates.k8s.io/v1beta1","kind":"CertificateSigningRequest"}`), "", ""},
		"not-json":                {[]byte("{"), "", ""},
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzHandlers")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, s := range seeds {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nstring(%q)\nstring(%q)\n", s.raw, s.user, s.group)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
