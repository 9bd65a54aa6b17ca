package webhook

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
)

// patchOf is the JSON patch the webhook server sends for resp.
func patchOf(t *testing.T, resp admission.Response) []byte {
	t.Helper()
	b, err := json.Marshal(resp.Patches)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// onlyOursChanged checks that the patched CSR differs from the original only
// in nodecsr's labels and annotations and in spec.expirationSeconds.
func onlyOursChanged(t *testing.T, raw []byte, got *certificatesv1.CertificateSigningRequest) {
	t.Helper()
	want := &certificatesv1.CertificateSigningRequest{}
	if err := json.Unmarshal(raw, want); err != nil {
		t.Fatal(err)
	}
	norm := func(c *certificatesv1.CertificateSigningRequest) *certificatesv1.CertificateSigningRequest {
		c = c.DeepCopy()
		for _, k := range []string{LabelNodeName} {
			delete(c.Labels, k)
		}
		for _, k := range []string{AnnotationKeyAlgorithm, AnnotationPublicKeySHA256} {
			delete(c.Annotations, k)
		}
		if len(c.Labels) == 0 {
			c.Labels = nil
		}
		if len(c.Annotations) == 0 {
			c.Annotations = nil
		}
		c.Spec.ExpirationSeconds = nil
		return c
	}
	if a, b := norm(want), norm(got); !equality.Semantic.DeepEqual(a, b) {
		t.Errorf("the patch changed more than nodecsr's labels, annotations and expirationSeconds:\nbefore %+v\nafter  %+v", a, b)
	}
}

// applyPatch applies the response's JSON patch to the request's object, as
// the API server does, and decodes the result.
func applyPatch(t *testing.T, raw []byte, patch []byte) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatalf("invalid JSON patch %s: %v", patch, err)
	}
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("patch %s does not apply: %v", patch, err)
	}
	var csr certificatesv1.CertificateSigningRequest
	if err := json.Unmarshal(out, &csr); err != nil {
		t.Fatal(err)
	}
	return &csr
}

func spkiSHA256(t *testing.T, csr *certificatesv1.CertificateSigningRequest) string {
	t.Helper()
	blk, _ := pem.Decode(csr.Spec.Request)
	cr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(cr.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

func TestMutate(t *testing.T) {
	maxOneHour := func(s *config.Spec) { s.Lifetime.MaxExpirationSeconds = 3600 }
	defaultHalfHour := func(s *config.Spec) { s.Lifetime.DefaultExpirationSeconds = ptr[int32](1800) }
	tests := map[string]struct {
		opts        []csrtest.Option
		policy      func(*config.Spec)
		labels      map[string]string // on the request
		annotations map[string]string
		wantLabel   string // "" = no nodecsr.io/node-name label
		wantAlg     string // "" = no annotations
		wantExp     *int32
		wantReason  string
		wantWarning string
	}{
		"labels and annotations": {
			wantLabel: csrtest.DefaultNodeName, wantAlg: "ECDSA-P256", wantReason: reasonAnnotated,
		},
		"existing labels and annotations are kept": {
			labels: map[string]string{"team": "a"}, annotations: map[string]string{"note": "x"},
			wantLabel: csrtest.DefaultNodeName, wantAlg: "ECDSA-P256", wantReason: reasonAnnotated,
		},
		"spoofed values are replaced": {
			labels:      map[string]string{LabelNodeName: "control-plane-1"},
			annotations: map[string]string{AnnotationKeyAlgorithm: "RSA-4096", AnnotationPublicKeySHA256: "00"},
			wantLabel:   csrtest.DefaultNodeName, wantAlg: "ECDSA-P256", wantReason: reasonAnnotated,
		},
		"RSA key": {
			opts:      []csrtest.Option{csrtest.WithKey(csrtest.RSAKey(2048))},
			wantLabel: csrtest.DefaultNodeName, wantAlg: "RSA-2048", wantReason: reasonAnnotated,
		},
		"no label for an invalid node name, annotations still set": {
			opts:    []csrtest.Option{csrtest.WithCN("alice")},
			labels:  map[string]string{LabelNodeName: "worker-9"},
			wantAlg: "ECDSA-P256", wantReason: reasonAnnotated,
		},
		"no label for a node name too long for a label value": {
			opts:    []csrtest.Option{csrtest.WithNodeName(strings.Repeat("a", 70) + ".example.com")},
			wantAlg: "ECDSA-P256", wantReason: reasonAnnotated,
		},
		"unparseable: nothing, and spoofed values are removed": {
			opts:        []csrtest.Option{csrtest.NotPEM()},
			labels:      map[string]string{LabelNodeName: "control-plane-1", "team": "a"},
			annotations: map[string]string{AnnotationPublicKeySHA256: "00"},
			wantReason:  reasonAnnotated,
		},
		"cap to maxExpirationSeconds": {
			opts: []csrtest.Option{csrtest.WithExpiration(86400)}, policy: maxOneHour,
			wantLabel: csrtest.DefaultNodeName, wantAlg: "ECDSA-P256", wantExp: ptr[int32](3600), wantReason: reasonExpirationCapped,
		},
		"within maxExpirationSeconds: unchanged": {
			opts: []csrtest.Option{csrtest.WithExpiration(1200)}, policy: maxOneHour,
			wantLabel: csrtest.DefaultNodeName, wantAlg: "ECDSA-P256", wantExp: ptr[int32](1200), wantReason: reasonAnnotated,
		},
		"unset and no default: unchanged": {
			policy:    maxOneHour,
			wantLabel: csrtest.DefaultNodeName, wantAlg: "ECDSA-P256", wantReason: reasonAnnotated,
		},
		"default expirationSeconds": {
			policy:    func(s *config.Spec) { maxOneHour(s); defaultHalfHour(s) },
			wantLabel: csrtest.DefaultNodeName, wantAlg: "ECDSA-P256", wantExp: ptr[int32](1800), wantReason: reasonExpirationSet,
		},
		"DryRun: metadata only, and a warning about the cap": {
			opts:      []csrtest.Option{csrtest.WithExpiration(86400)},
			policy:    func(s *config.Spec) { maxOneHour(s); s.Mode = config.ModeDryRun },
			wantLabel: csrtest.DefaultNodeName, wantAlg: "ECDSA-P256", wantExp: ptr[int32](86400), wantReason: reasonAnnotated,
			wantWarning: "would cap spec.expirationSeconds from 86400 to lifetime.maxExpirationSeconds (3600)",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			hs, reg := testHandlers(t, newPolicy(t, tc.policy), nil)
			csr := csrtest.Build(tc.opts...)
			csr.Labels, csr.Annotations = tc.labels, tc.annotations
			req := createRequest(t, csr, userOf(csr))
			resp := hs.mutate.Handle(t.Context(), req)
			if !resp.Allowed {
				t.Fatalf("mutate rejected the request: %v", resp.Result)
			}
			if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
				t.Fatalf("no JSON patch (type %v)", resp.PatchType)
			}
			got := applyPatch(t, req.Object.Raw, patchOf(t, resp))
			onlyOursChanged(t, req.Object.Raw, got)

			if l, ok := got.Labels[LabelNodeName]; tc.wantLabel == "" && ok || l != tc.wantLabel {
				t.Errorf("label %s = %q (present %v), want %q", LabelNodeName, l, ok, tc.wantLabel)
			}
			alg, sum := got.Annotations[AnnotationKeyAlgorithm], got.Annotations[AnnotationPublicKeySHA256]
			if alg != tc.wantAlg {
				t.Errorf("annotation %s = %q, want %q", AnnotationKeyAlgorithm, alg, tc.wantAlg)
			}
			if tc.wantAlg == "" && sum != "" {
				t.Errorf("annotation %s = %q on an unparseable request", AnnotationPublicKeySHA256, sum)
			}
			if tc.wantAlg != "" && sum != spkiSHA256(t, csr) {
				t.Errorf("annotation %s = %q, want the SPKI hash %s", AnnotationPublicKeySHA256, sum, spkiSHA256(t, csr))
			}
			for k, v := range tc.labels {
				if k != LabelNodeName && got.Labels[k] != v {
					t.Errorf("label %s lost", k)
				}
			}
			for k, v := range tc.annotations {
				if !strings.HasPrefix(k, "nodecsr.io/") && got.Annotations[k] != v {
					t.Errorf("annotation %s lost", k)
				}
			}
			switch {
			case tc.wantExp == nil && got.Spec.ExpirationSeconds != nil:
				t.Errorf("expirationSeconds = %d, want unset", *got.Spec.ExpirationSeconds)
			case tc.wantExp != nil && (got.Spec.ExpirationSeconds == nil || *got.Spec.ExpirationSeconds != *tc.wantExp):
				t.Errorf("expirationSeconds = %v, want %d", got.Spec.ExpirationSeconds, *tc.wantExp)
			}
			if tc.wantWarning == "" && len(resp.Warnings) > 0 || tc.wantWarning != "" && (len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], tc.wantWarning)) {
				t.Errorf("warnings %q, want %q", resp.Warnings, tc.wantWarning)
			}
			if got := count(t, reg, opMutate, resultPatched, tc.wantReason); got != 1 {
				t.Errorf("nodecsr_admission_total{mutate,patched,%s} = %d, want 1", tc.wantReason, got)
			}
		})
	}
}

func TestMutateNoPatch(t *testing.T) {
	hs, _ := testHandlers(t, config.Default(), nil)
	// Unparseable and nothing to remove: no patch at all.
	csr := csrtest.Build(csrtest.NotPEM())
	resp := hs.mutate.Handle(t.Context(), createRequest(t, csr, userOf(csr)))
	if !resp.Allowed || len(resp.Patches) != 0 || resp.PatchType != nil {
		t.Fatalf("allowed=%v patch=%v, want allowed without a patch", resp.Allowed, resp.Patches)
	}
	// Already labelled and annotated as nodecsr would: no patch.
	csr = csrtest.Build()
	csr.Labels = map[string]string{LabelNodeName: csrtest.DefaultNodeName}
	csr.Annotations = map[string]string{AnnotationKeyAlgorithm: "ECDSA-P256", AnnotationPublicKeySHA256: spkiSHA256(t, csr)}
	if resp := hs.mutate.Handle(t.Context(), createRequest(t, csr, userOf(csr))); len(resp.Patches) != 0 {
		t.Errorf("patch %v for a CSR that needs none", resp.Patches)
	}
	// Another signer.
	csr = csrtest.Build(csrtest.WithSignerName("example.com/other"), csrtest.WithExpiration(999999))
	hs, _ = testHandlers(t, newPolicy(t, func(s *config.Spec) { s.Lifetime.MaxExpirationSeconds = 3600 }), nil)
	if resp := hs.mutate.Handle(t.Context(), createRequest(t, csr, userOf(csr))); !resp.Allowed || len(resp.Patches) != 0 {
		t.Errorf("another signer's CSR was patched: %v", resp.Patches)
	}
}
