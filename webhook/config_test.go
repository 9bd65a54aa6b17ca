package webhook

import (
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
)

func TestWebhookConfigurations(t *testing.T) {
	ca := []byte("-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n")
	opts := ConfigOptions{CABundle: ca, URL: "https://127.0.0.1:9443/", Self: self}
	mwc, err := MutatingWebhookConfiguration(opts)
	if err != nil {
		t.Fatal(err)
	}
	vwc, err := ValidatingWebhookConfiguration(opts)
	if err != nil {
		t.Fatal(err)
	}
	if mwc.Name != "nodecsr" || vwc.Name != "nodecsr" {
		t.Errorf("names %q, %q, want nodecsr", mwc.Name, vwc.Name)
	}
	if len(mwc.Webhooks) != 1 || len(vwc.Webhooks) != 2 {
		t.Fatalf("%d mutating and %d validating webhooks, want 1 and 2", len(mwc.Webhooks), len(vwc.Webhooks))
	}
	type hook struct {
		name, url    string
		failure      admissionregistrationv1.FailurePolicyType
		sideEffects  admissionregistrationv1.SideEffectClass
		clientConfig admissionregistrationv1.WebhookClientConfig
		rules        []admissionregistrationv1.RuleWithOperations
		timeout      *int32
		versions     []string
		match        []admissionregistrationv1.MatchCondition
	}
	m := mwc.Webhooks[0]
	got := []hook{{m.Name, *m.ClientConfig.URL, *m.FailurePolicy, *m.SideEffects, m.ClientConfig, m.Rules, m.TimeoutSeconds, m.AdmissionReviewVersions, m.MatchConditions}}
	for _, v := range vwc.Webhooks {
		got = append(got, hook{v.Name, *v.ClientConfig.URL, *v.FailurePolicy, *v.SideEffects, v.ClientConfig, v.Rules, v.TimeoutSeconds, v.AdmissionReviewVersions, v.MatchConditions})
	}
	want := []struct {
		name, url, resource string
		op                  admissionregistrationv1.OperationType
		sideEffects         admissionregistrationv1.SideEffectClass
		matches             int
	}{
		{WebhookNameMutate, "https://127.0.0.1:9443" + PathMutate, "certificatesigningrequests", admissionregistrationv1.Create, admissionregistrationv1.SideEffectClassNone, 1},
		{WebhookNameValidate, "https://127.0.0.1:9443" + PathValidate, "certificatesigningrequests", admissionregistrationv1.Create, admissionregistrationv1.SideEffectClassNone, 1},
		{WebhookNameApproval, "https://127.0.0.1:9443" + PathApproval, "certificatesigningrequests/approval", admissionregistrationv1.Update, admissionregistrationv1.SideEffectClassNoneOnDryRun, 2},
	}
	for i, w := range want {
		h := got[i]
		if h.name != w.name || h.url != w.url {
			t.Errorf("webhook %d: %s at %s, want %s at %s", i, h.name, h.url, w.name, w.url)
		}
		if h.failure != admissionregistrationv1.Ignore {
			t.Errorf("%s: failurePolicy %s, want Ignore", h.name, h.failure)
		}
		if h.sideEffects != w.sideEffects {
			t.Errorf("%s: sideEffects %s, want %s", h.name, h.sideEffects, w.sideEffects)
		}
		if string(h.clientConfig.CABundle) != string(ca) {
			t.Errorf("%s: caBundle not set", h.name)
		}
		if h.timeout == nil || *h.timeout < 1 || *h.timeout > 5 {
			t.Errorf("%s: timeoutSeconds %v, want 1..5", h.name, h.timeout)
		}
		if len(h.versions) != 1 || h.versions[0] != "v1" {
			t.Errorf("%s: admissionReviewVersions %v", h.name, h.versions)
		}
		if len(h.rules) != 1 || len(h.rules[0].Operations) != 1 || h.rules[0].Operations[0] != w.op ||
			len(h.rules[0].Resources) != 1 || h.rules[0].Resources[0] != w.resource || h.rules[0].APIGroups[0] != "certificates.k8s.io" {
			t.Errorf("%s: rules %+v, want %s %s", h.name, h.rules, w.op, w.resource)
		}
		if len(h.match) != w.matches || h.match[0].Expression != `object.spec.signerName == "kubernetes.io/kube-apiserver-client-kubelet"` {
			t.Errorf("%s: matchConditions %+v", h.name, h.match)
		}
	}
	if e := got[2].match[1].Expression; e != `request.userInfo.username != "`+self+`"` {
		t.Errorf("self match condition %q", e)
	}

	// A Service reference, a Fail guard, no Self.
	port := int32(443)
	vwc, err = ValidatingWebhookConfiguration(ConfigOptions{
		Name:                       "nodecsr-x",
		Service:                    &admissionregistrationv1.ServiceReference{Namespace: "nodecsr", Name: "nodecsr-webhook", Port: &port},
		ApprovalGuardFailurePolicy: admissionregistrationv1.Fail,
		TimeoutSeconds:             5,
	})
	if err != nil {
		t.Fatal(err)
	}
	v, g := vwc.Webhooks[0], vwc.Webhooks[1]
	if v.ClientConfig.URL != nil || *v.ClientConfig.Service.Path != PathValidate || *g.ClientConfig.Service.Path != PathApproval || g.ClientConfig.Service.Name != "nodecsr-webhook" {
		t.Errorf("service references %+v %+v", v.ClientConfig.Service, g.ClientConfig.Service)
	}
	if *v.FailurePolicy != admissionregistrationv1.Ignore || *g.FailurePolicy != admissionregistrationv1.Fail {
		t.Errorf("failure policies %s, %s; want Ignore, Fail", *v.FailurePolicy, *g.FailurePolicy)
	}
	if len(g.MatchConditions) != 1 {
		t.Errorf("match conditions %+v without Self", g.MatchConditions)
	}
}

func TestWebhookConfigurationErrors(t *testing.T) {
	svc := &admissionregistrationv1.ServiceReference{Namespace: "a", Name: "b"}
	for name, tc := range map[string]struct {
		opts ConfigOptions
		want string
	}{
		"nothing":        {ConfigOptions{}, "a URL or a Service is required"},
		"both":           {ConfigOptions{URL: "https://x", Service: svc}, "not both"},
		"http":           {ConfigOptions{URL: "http://x"}, "must be https"},
		"timeout":        {ConfigOptions{URL: "https://x", TimeoutSeconds: 30}, "between 1 and 5"},
		"failure policy": {ConfigOptions{URL: "https://x", ApprovalGuardFailurePolicy: "Maybe"}, "Ignore or Fail"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := MutatingWebhookConfiguration(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}
