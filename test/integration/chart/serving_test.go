package chart_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/nodecsr/nodecsr/webhook"
)

const servingSigner = "kubernetes.io/kubelet-serving"

// approveServing is the one rule serving.enabled adds.
var approveServing = rbacv1.PolicyRule{APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"signers"}, ResourceNames: []string{servingSigner}, Verbs: []string{"approve"}}

// TestRenderServing: serving.enabled sets the policy's serving.enabled,
// grants approve on the serving signer (only then), sends serving CSRs to
// the webhooks as webhook.ConfigOptions{Serving: true} does, and marks the
// pod template so that turning it on or off rolls the pods.
func TestRenderServing(t *testing.T) {
	const rel, ns = "nodecsr", "nodecsr-system"
	for _, tc := range []struct {
		name   string
		values string
		on     bool
	}{
		{"default", "", false},
		{"explicitly off", "serving: {enabled: false}", false},
		{"on", "serving: {enabled: true}", true},
		{"on with policy fields", "serving: {enabled: true}\npolicy: {serving: {ipCIDRs: [10.0.0.0/8], dnsNames: ['{node}.nodes.example'], maxSANs: 4}}", true},
		{"on, policy agrees", "serving: {enabled: true}\npolicy: {serving: {enabled: true}}", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRender(t, rel, ns, readValues(t, tc.values))
			p := policyOf(t, r.objs, rel)
			if p.Serving.Enabled != tc.on {
				t.Errorf("policy serving.enabled = %v, want %v", p.Serving.Enabled, tc.on)
			}
			if strings.Contains(tc.values, "ipCIDRs") && (len(p.Serving.IPCIDRs) != 1 || p.Serving.IPCIDRs[0] != netip.MustParsePrefix("10.0.0.0/8") || p.Serving.MaxSANs != 4) {
				t.Errorf("policy serving fields lost: %+v", p.Serving)
			}

			cr := convert[rbacv1.ClusterRole](t, find(t, r.objs, "ClusterRole", rel))
			want := slices.Clone(wantClusterRules)
			if tc.on {
				want = slices.Insert(want, 3, approveServing)
			}
			if !equality.Semantic.DeepEqual(cr.Rules, want) {
				t.Errorf("ClusterRole rules:\n%s\nwant exactly:\n%s", toYAML(cr.Rules), toYAML(want))
			}

			d := deploymentOf(t, r.objs, rel)
			if got, has := d.Spec.Template.Annotations["nodecsr.io/serving-enabled"]; has != tc.on || tc.on && got != "true" {
				t.Errorf("pod template annotations %v", d.Spec.Template.Annotations)
			}

			opts := webhook.ConfigOptions{
				Name: rel, Service: &admissionregistrationv1.ServiceReference{Namespace: ns, Name: rel, Port: ptr(int32(443))},
				Self: "system:serviceaccount:" + ns + ":" + rel, Serving: tc.on,
			}
			wantM, err := webhook.MutatingWebhookConfiguration(opts)
			if err != nil {
				t.Fatal(err)
			}
			wantV, err := webhook.ValidatingWebhookConfiguration(opts)
			if err != nil {
				t.Fatal(err)
			}
			gotM := convert[admissionregistrationv1.MutatingWebhookConfiguration](t, find(t, r.objs, "MutatingWebhookConfiguration", rel))
			gotV := convert[admissionregistrationv1.ValidatingWebhookConfiguration](t, find(t, r.objs, "ValidatingWebhookConfiguration", rel))
			if !equality.Semantic.DeepEqual(gotM.Webhooks[0].MatchConditions, wantM.Webhooks[0].MatchConditions) {
				t.Errorf("mutating match conditions %+v, want %+v", gotM.Webhooks[0].MatchConditions, wantM.Webhooks[0].MatchConditions)
			}
			for i := range wantV.Webhooks {
				if !equality.Semantic.DeepEqual(gotV.Webhooks[i].MatchConditions, wantV.Webhooks[i].MatchConditions) {
					t.Errorf("%s match conditions %+v, want %+v", wantV.Webhooks[i].Name, gotV.Webhooks[i].MatchConditions, wantV.Webhooks[i].MatchConditions)
				}
			}
			if on := strings.Contains(toYAML(gotV.Webhooks), servingSigner); on != tc.on {
				t.Errorf("webhooks mention %s: %v, want %v", servingSigner, on, tc.on)
			}
		})
	}
}

func TestRenderServingRejectsBadValues(t *testing.T) {
	for name, tc := range map[string]struct {
		values string
		want   []string
	}{
		"policy.serving.enabled without serving.enabled": {
			values: "policy: {serving: {enabled: true}}",
			want:   []string{"policy.serving.enabled is true but serving.enabled is false", "set serving.enabled only"},
		},
		"policy.serving.enabled false under serving.enabled": {
			values: "serving: {enabled: true}\npolicy: {serving: {enabled: false}}",
			want:   []string{"policy.serving.enabled is false but serving.enabled is true"},
		},
		"unknown serving key": {
			values: "serving: {enable: true}",
			want:   []string{"/serving", "additional properties 'enable' not allowed"},
		},
		"DNS template without {node}": {
			values: "policy: {serving: {dnsNames: [metrics.example]}}",
			want:   []string{"/policy/serving/dnsNames/0"},
		},
		"unknown subresource": {
			values: "policy: {serving: {subresource: nodeclient}}",
			want:   []string{"/policy/serving/subresource", "value must be one of"},
		},
		"maxSANs too large": {
			values: "policy: {serving: {maxSANs: 1000}}",
			want:   []string{"/policy/serving/maxSANs", "maximum"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := render(t, "nodecsr", "nodecsr-system", readValues(t, tc.values))
			if err == nil {
				t.Fatalf("values %q rendered; want an error", tc.values)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
		})
	}
}
