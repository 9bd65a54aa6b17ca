package chart_test

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chartutil"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"

	"github.com/nodecsr/nodecsr/cmd/nodecsr-controller/app"
	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/webhook"
)

const kubeletSigner = "kubernetes.io/kube-apiserver-client-kubelet"

// wantClusterRules is everything nodecsr-controller does cluster-wide, and
// nothing else.
var wantClusterRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"certificatesigningrequests"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"certificatesigningrequests/approval"}, Verbs: []string{"update"}},
	{APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"signers"}, ResourceNames: []string{kubeletSigner}, Verbs: []string{"approve"}},
	{APIGroups: []string{"authorization.k8s.io"}, Resources: []string{"subjectaccessreviews"}, Verbs: []string{"create"}},
	{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"list", "watch"}},
	wantInventoryRules[0], wantInventoryRules[1],
}

// wantInventoryRules: the NodeCertificate inventory (inventory.enabled),
// its status only through the status subresource.
var wantInventoryRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"nodecsr.io"}, Resources: []string{"nodecertificates"}, Verbs: []string{"get", "list", "watch", "create", "update", "delete"}},
	{APIGroups: []string{"nodecsr.io"}, Resources: []string{"nodecertificates/status"}, Verbs: []string{"update"}},
}

// wantOwnNamespaceRules: leader election and Events about its own Pod.
var wantOwnNamespaceRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update"}},
	{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create"}},
	{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
}

// wantHeartbeatRules: a node's heartbeat Lease, read one at a time (never
// listed or watched) for a bootstrap request for an existing Node.
var wantHeartbeatRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get"}},
}

// wantEventsNamespaceRules: the Events about CSRs.
var wantEventsNamespaceRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create"}},
}

// TestRenderDefaults renders the chart with its default values and checks
// every object against what nodecsr-controller, the webhook package and
// cert-manager expect.
func TestRenderDefaults(t *testing.T) {
	const rel, ns = "nodecsr", "nodecsr-system"
	r := mustRender(t, rel, ns, nil)
	fullname := "nodecsr" // the release name contains the chart name
	sa := "system:serviceaccount:" + ns + ":" + fullname

	want := []string{
		"ServiceAccount/" + ns + "/" + fullname,
		"ConfigMap/" + ns + "/" + fullname + "-policy",
		"ClusterRole/" + fullname,
		"ClusterRoleBinding/" + fullname,
		"Role/kube-node-lease/" + fullname + "-node-heartbeats",
		"RoleBinding/kube-node-lease/" + fullname + "-node-heartbeats",
		"Role/" + ns + "/" + fullname,
		"RoleBinding/" + ns + "/" + fullname,
		"Role/default/" + fullname + "-events",
		"RoleBinding/default/" + fullname + "-events",
		"Service/" + ns + "/" + fullname,
		"Deployment/" + ns + "/" + fullname,
		"PodDisruptionBudget/" + ns + "/" + fullname,
		"MutatingWebhookConfiguration/" + fullname,
		"ValidatingWebhookConfiguration/" + fullname,
		"Issuer/" + ns + "/" + fullname + "-selfsigned",
		"Certificate/" + ns + "/" + fullname + "-ca",
		"Issuer/" + ns + "/" + fullname + "-ca",
		"Certificate/" + ns + "/" + fullname + "-serving",
		"FlowSchema/" + fullname,
		"CustomResourceDefinition/" + inventoryCRD,
	}
	assertSameSet(t, "objects", kinds(r.objs), want)
	assertSameSet(t, "hooks", kinds(r.hooks), []string{
		"ConfigMap/" + ns + "/" + fullname + "-test", "Pod/" + ns + "/" + fullname + "-test",
		"MutatingWebhookConfiguration/" + fullname, "ValidatingWebhookConfiguration/" + fullname,
	})
	assertPreDeleteCopies(t, r)
	assertCommonLabels(t, r.objs, rel)

	// The policy is the default policy, and it loads.
	p := policyOf(t, r.objs, fullname)
	if got, want := p.Digest, config.Default().Digest; got != want {
		t.Errorf("default policy digest %s, want the built-in default's %s", got, want)
	}

	d := deploymentOf(t, r.objs, fullname)
	if *d.Spec.Replicas != 2 {
		t.Errorf("replicas = %d, want 2", *d.Spec.Replicas)
	}
	opts, fs := parseArgs(t, d)
	if !opts.LeaderElect || opts.LeaderElectionNamespace != ns || opts.LeaderElectionID != fullname {
		t.Errorf("leader election: elect %v, namespace %q, id %q; want true, %q, %q", opts.LeaderElect, opts.LeaderElectionNamespace, opts.LeaderElectionID, ns, fullname)
	}
	if opts.EventsNamespace != "default" {
		t.Errorf("--events-namespace = %q, want default", opts.EventsNamespace)
	}
	if err := opts.Validate(); err != nil {
		t.Errorf("the chart's flags do not validate: %v", err)
	}
	assertFlag(t, fs, "self-username", sa)
	assertFlag(t, fs, "webhook-cert-dir", "/etc/nodecsr/webhook-tls")
	assertFlag(t, fs, "webhook-port", "9443")
	assertPodSpec(t, d, opts, fs, fullname+"-serving-cert")

	pdb := convert[policyv1.PodDisruptionBudget](t, find(t, r.objs, "PodDisruptionBudget", fullname))
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 {
		t.Errorf("PodDisruptionBudget minAvailable = %v, want 1", pdb.Spec.MinAvailable)
	}
	if !equality.Semantic.DeepEqual(pdb.Spec.Selector.MatchLabels, d.Spec.Selector.MatchLabels) {
		t.Errorf("PodDisruptionBudget selects %v, the Deployment %v", pdb.Spec.Selector.MatchLabels, d.Spec.Selector.MatchLabels)
	}

	assertRBAC(t, r.objs, fullname, ns, "default")
	assertService(t, r.objs, fullname, d, true)
	assertWebhookConfigurations(t, r.objs, fullname, ns, sa, 3, admissionregistrationv1.Ignore, true)

	// cert-manager: self-signed Issuer → CA Certificate → CA Issuer → serving Certificate.
	ca := convert[cmapi.Certificate](t, find(t, r.objs, "Certificate", fullname+"-ca"))
	if !ca.Spec.IsCA || ca.Spec.IssuerRef.Name != fullname+"-selfsigned" || ca.Spec.SecretName != fullname+"-ca" {
		t.Errorf("CA Certificate: isCA %v, issuer %q, secret %q", ca.Spec.IsCA, ca.Spec.IssuerRef.Name, ca.Spec.SecretName)
	}
	if ca.Spec.PrivateKey == nil || ca.Spec.PrivateKey.RotationPolicy != cmapi.RotationPolicyNever {
		t.Error("the CA's key must be kept on renewal (rotationPolicy Never), or renewing it invalidates the serving certificate")
	}
	caIssuer := convert[cmapi.Issuer](t, find(t, r.objs, "Issuer", fullname+"-ca"))
	if caIssuer.Spec.CA == nil || caIssuer.Spec.CA.SecretName != ca.Spec.SecretName {
		t.Errorf("CA Issuer does not use the CA Certificate's Secret %q", ca.Spec.SecretName)
	}
	if ss := convert[cmapi.Issuer](t, find(t, r.objs, "Issuer", fullname+"-selfsigned")); ss.Spec.SelfSigned == nil {
		t.Error("the self-signed Issuer is not selfSigned")
	}
	serving := convert[cmapi.Certificate](t, find(t, r.objs, "Certificate", fullname+"-serving"))
	assertSameSet(t, "serving certificate DNS names", serving.Spec.DNSNames, []string{fullname + "." + ns + ".svc", fullname + "." + ns + ".svc.cluster.local"})
	if serving.Spec.IssuerRef.Name != fullname+"-ca" || serving.Spec.IssuerRef.Kind != "Issuer" {
		t.Errorf("serving certificate issuer = %+v, want Issuer %s-ca", serving.Spec.IssuerRef, fullname)
	}
	if serving.Spec.RenewBefore == nil || serving.Spec.Duration == nil || serving.Spec.RenewBefore.Duration >= serving.Spec.Duration.Duration {
		t.Errorf("serving certificate renewBefore %v must be set and shorter than duration %v", serving.Spec.RenewBefore, serving.Spec.Duration)
	}
	if serving.Spec.SecretName != fullname+"-serving-cert" {
		t.Errorf("serving certificate Secret %q, want %s-serving-cert (the Deployment mounts it)", serving.Spec.SecretName, fullname)
	}

	// NOTES.txt tells how to check the install and how to stop
	// kube-controller-manager's approver.
	for _, want := range []string{"kubectl get csr", "--field-selector reportingComponent=nodecsr", "/metrics", "helm test nodecsr -n " + ns,
		"--controllers=*,-csrapproving", "approvalGuard.mode: Enforce", "kubectl -n " + ns + " get lease " + fullname} {
		if !strings.Contains(r.notes, want) {
			t.Errorf("NOTES.txt does not mention %q:\n%s", want, r.notes)
		}
	}
	if testing.Verbose() {
		t.Logf("NOTES.txt:\n%s", r.notes)
	}

	// The helm test Pod: the same image, restricted, no API access.
	pod := convert[corev1.Pod](t, find(t, r.hooks, "Pod", fullname+"-test"))
	if pod.Annotations["helm.sh/hook"] != "test" {
		t.Errorf("the test Pod is not a test hook: %v", pod.Annotations)
	}
	if got := pod.Spec.Containers[0].Image; got != d.Spec.Template.Spec.Containers[0].Image {
		t.Errorf("the test Pod runs %s, the Deployment %s: no extra images", got, d.Spec.Template.Spec.Containers[0].Image)
	}
	if pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
		t.Error("the test Pod mounts a ServiceAccount token it does not need")
	}
	for k, v := range d.Spec.Selector.MatchLabels {
		if pod.Labels[k] != v {
			return
		}
	}
	t.Errorf("the test Pod's labels %v match the Deployment's selector: the Service and the PodDisruptionBudget would select it", pod.Labels)
}

// TestRenderNonDefaultValues renders every optional object with values that
// differ from the defaults everywhere.
func TestRenderNonDefaultValues(t *testing.T) {
	const rel, ns = "prod", "platform"
	r := mustRender(t, rel, ns, readValuesFile(t, "values-nondefault.yaml"))
	fullname := "csr-approver"
	sa := "system:serviceaccount:" + ns + ":nodecsr-sa"

	want := []string{
		"ServiceAccount/" + ns + "/nodecsr-sa",
		"ConfigMap/" + ns + "/" + fullname + "-policy",
		"ClusterRole/" + fullname,
		"ClusterRoleBinding/" + fullname,
		"Role/kube-node-lease/" + fullname + "-node-heartbeats",
		"RoleBinding/kube-node-lease/" + fullname + "-node-heartbeats",
		"Role/" + ns + "/" + fullname,
		"RoleBinding/" + ns + "/" + fullname,
		"Role/nodecsr-events/" + fullname + "-events",
		"RoleBinding/nodecsr-events/" + fullname + "-events",
		"Service/" + ns + "/" + fullname,
		"Deployment/" + ns + "/" + fullname,
		"PodDisruptionBudget/" + ns + "/" + fullname,
		"MutatingWebhookConfiguration/" + fullname,
		"ValidatingWebhookConfiguration/" + fullname,
		"Certificate/" + ns + "/" + fullname + "-serving",
		"ServiceMonitor/" + ns + "/" + fullname,
		"PrometheusRule/" + ns + "/" + fullname,
		"NetworkPolicy/" + ns + "/" + fullname,
		"FlowSchema/" + fullname,
		"CustomResourceDefinition/" + inventoryCRD,
	}
	assertSameSet(t, "objects", kinds(r.objs), want)
	assertSameSet(t, "hooks (tests.enabled=false: the webhooks' pre-delete copies only)", kinds(r.hooks),
		[]string{"MutatingWebhookConfiguration/" + fullname, "ValidatingWebhookConfiguration/" + fullname})
	assertPreDeleteCopies(t, r)
	assertCommonLabels(t, r.objs, rel)

	// The strict policy loads, with the quoted all-digit token ID intact.
	p := policyOf(t, r.objs, fullname)
	if !p.Source.Spec.Keys.KeyEnciphermentRequiresRSA || p.Source.Spec.Lifetime.MaxExpirationSeconds != 2592000 {
		t.Errorf("policy lost values: %+v", p.Source.Spec)
	}
	if rule, bound := p.Bootstrap.TokenBindings["123456"]; !bound || !rule.Allows("gpu-a1") {
		t.Errorf("token binding 123456 → gpu-* lost: bound %v, rule %+v", bound, rule)
	}
	if pat, denied := p.NodeNameDenied("control-plane-1"); !denied {
		t.Errorf("control-plane-1 is not denied (pattern %q)", pat)
	}

	d := deploymentOf(t, r.objs, fullname)
	c := d.Spec.Template.Spec.Containers[0]
	if c.Image != "registry.example/nodecsr/nodecsr-controller@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" || c.ImagePullPolicy != corev1.PullAlways {
		t.Errorf("image %s (%s), want the digest reference, Always", c.Image, c.ImagePullPolicy)
	}
	opts, fs := parseArgs(t, d)
	if opts.MaxConcurrentReconciles != 32 || opts.KubeAPIQPS != 50.5 || opts.KubeAPIBurst != 100 || opts.EventsNamespace != "nodecsr-events" ||
		opts.LogFormat != "text" || opts.LogLevel != "2" || opts.MetricsBindAddress != ":9090" || opts.HealthProbeBindAddress != ":9091" {
		t.Errorf("options from the chart's flags: %+v", opts)
	}
	// extraArgs come last, so they override.
	if opts.LeaseDuration.String() != "31s" || opts.RenewDeadline.String() != "20s" || opts.RetryPeriod.String() != "4s" {
		t.Errorf("leader election timings %s/%s/%s, want 31s/20s/4s", opts.LeaseDuration, opts.RenewDeadline, opts.RetryPeriod)
	}
	if err := opts.Validate(); err != nil {
		t.Errorf("the chart's flags do not validate: %v", err)
	}
	assertFlag(t, fs, "self-username", sa)
	assertFlag(t, fs, "webhook-port", "10250")
	assertPodSpec(t, d, opts, fs, fullname+"-serving-cert")
	ps := d.Spec.Template.Spec
	if ps.PriorityClassName != "system-cluster-critical" || len(ps.Tolerations) != 1 || ps.Affinity == nil || ps.NodeSelector["node-role.kubernetes.io/control-plane"] != "" {
		t.Errorf("scheduling values not applied: %+v", ps)
	}
	if d.Spec.Template.Labels["team"] != "platform" || d.Spec.Template.Annotations["example.com/scrape"] != "true" {
		t.Errorf("pod labels/annotations not applied: %v %v", d.Spec.Template.Labels, d.Spec.Template.Annotations)
	}
	if len(ps.TopologySpreadConstraints) != 1 || ps.TopologySpreadConstraints[0].LabelSelector.MatchLabels["app.kubernetes.io/name"] != "nodecsr" ||
		len(ps.TopologySpreadConstraints[0].LabelSelector.MatchLabels) != 1 {
		t.Errorf("a given labelSelector must be kept as is: %+v", ps.TopologySpreadConstraints)
	}

	assertRBAC(t, r.objs, fullname, ns, "nodecsr-events")
	assertService(t, r.objs, fullname, d, true)
	assertWebhookConfigurations(t, r.objs, fullname, ns, sa, 5, admissionregistrationv1.Fail, true)

	serving := convert[cmapi.Certificate](t, find(t, r.objs, "Certificate", fullname+"-serving"))
	if serving.Spec.IssuerRef.Name != "corp-ca" || serving.Spec.IssuerRef.Kind != "ClusterIssuer" || serving.Spec.IssuerRef.Group != "cert-manager.io" {
		t.Errorf("serving certificate issuer = %+v, want ClusterIssuer corp-ca", serving.Spec.IssuerRef)
	}
	assertSameSet(t, "serving certificate DNS names", serving.Spec.DNSNames,
		[]string{fullname + "." + ns + ".svc", fullname + "." + ns + ".svc.k8s.example", "nodecsr.example.com"})
	assertSameSet(t, "serving certificate IP addresses", serving.Spec.IPAddresses, []string{"10.96.0.50"})

	pdb := convert[policyv1.PodDisruptionBudget](t, find(t, r.objs, "PodDisruptionBudget", fullname))
	if pdb.Spec.MinAvailable.IntValue() != 2 {
		t.Errorf("PodDisruptionBudget minAvailable = %v, want 2", pdb.Spec.MinAvailable)
	}

	// Monitoring: the ServiceMonitor scrapes the Service's metrics port, the
	// alerts select the job the ServiceMonitor produces.
	sm := find(t, r.objs, "ServiceMonitor", fullname)
	if got, _, _ := unstructured.NestedString(sm.Object, "metadata", "labels", "release"); got != "prometheus" {
		t.Errorf("ServiceMonitor labels %v lack release=prometheus", sm.GetLabels())
	}
	eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	if len(eps) != 1 || eps[0].(map[string]any)["port"] != "metrics" || eps[0].(map[string]any)["interval"] != "15s" {
		t.Errorf("ServiceMonitor endpoints %v", eps)
	}
	rules := alertRules(t, find(t, r.objs, "PrometheusRule", fullname))
	for _, name := range []string{"NodecsrDown", "NodecsrNoLeader", "NodecsrDenialsRising", "NodecsrCSRsPending", "NodecsrDecisionLatencyHigh", "NodecsrFactErrors", "NodecsrPolicyReloadFailing"} {
		expr, ok := rules[name]
		if !ok {
			t.Errorf("alert %s is missing", name)
			continue
		}
		if !strings.Contains(expr, `job="`+fullname+`", namespace="`+ns+`"`) {
			t.Errorf("alert %s does not select nodecsr's job: %s", name, expr)
		}
	}
	for name, substr := range map[string]string{
		"NodecsrDenialsRising":       `nodecsr_decisions_total{job="csr-approver", namespace="platform", decision="Deny"}[15m])) > 10`,
		"NodecsrCSRsPending":         `max by (signer) (nodecsr_pending_csrs{`,
		"NodecsrDecisionLatencyHigh": `histogram_quantile(0.99, sum by (le) (rate(nodecsr_decision_latency_seconds_bucket{`,
		"NodecsrPolicyReloadFailing": `increase(nodecsr_policy_reloads_total{job="csr-approver", namespace="platform", result="error"}[10m]) > 0`,
	} {
		if !strings.Contains(rules[name], substr) {
			t.Errorf("alert %s = %s, want it to contain %s", name, rules[name], substr)
		}
	}

	np := find(t, r.objs, "NetworkPolicy", fullname)
	npYAML, _ := yaml.Marshal(np.Object["spec"])
	for _, want := range []string{"port: webhook", "port: metrics", "app.kubernetes.io/name: prometheus", "cidr: 172.20.0.10/32", "port: 6443"} {
		if !strings.Contains(string(npYAML), want) {
			t.Errorf("NetworkPolicy lacks %q:\n%s", want, npYAML)
		}
	}
}

// TestRenderWithOwnTLSAndNoWebhook covers the two other TLS set-ups: an
// existing Secret with its CA bundle, and no webhook at all.
func TestRenderWithOwnTLSAndNoWebhook(t *testing.T) {
	const ns = "kube-system"
	own := mustRender(t, "nodecsr", ns, readValues(t, `
webhook:
  certManager: {enabled: false}
  tls: {secretName: my-tls, caBundle: Y2EK}
replicaCount: 1
leaderElection: {enabled: false}
`))
	if len(ofKind(own.objs, "Certificate"))+len(ofKind(own.objs, "Issuer")) != 0 {
		t.Errorf("cert-manager objects rendered without cert-manager: %v", kinds(own.objs))
	}
	if len(ofKind(own.objs, "PodDisruptionBudget")) != 0 {
		t.Error("a PodDisruptionBudget with one replica would block every drain")
	}
	d := deploymentOf(t, own.objs, "nodecsr")
	opts, fs := parseArgs(t, d)
	if opts.LeaderElect {
		t.Error("--leader-elect with leaderElection.enabled=false")
	}
	assertPodSpec(t, d, opts, fs, "my-tls")
	for _, kind := range []string{"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"} {
		o := find(t, own.objs, kind, "nodecsr")
		if _, ok := o.GetAnnotations()["cert-manager.io/inject-ca-from"]; ok {
			t.Errorf("%s asks cert-manager to inject a CA without cert-manager", kind)
		}
		hooks, _, _ := unstructured.NestedSlice(o.Object, "webhooks")
		for _, h := range hooks {
			if got, _, _ := unstructured.NestedString(h.(map[string]any), "clientConfig", "caBundle"); got != "Y2EK" {
				t.Errorf("%s caBundle = %q, want webhook.tls.caBundle", kind, got)
			}
		}
	}

	none := mustRender(t, "nodecsr", ns, readValues(t, "webhook: {enabled: false}"))
	for _, kind := range []string{"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "Certificate", "Issuer"} {
		if got := ofKind(none.objs, kind); len(got) != 0 {
			t.Errorf("webhook.enabled=false still renders %s", kind)
		}
	}
	d = deploymentOf(t, none.objs, "nodecsr")
	_, fs = parseArgs(t, d)
	if f := fs.Lookup("webhook-cert-dir"); f.Changed {
		t.Errorf("webhook.enabled=false still passes --webhook-cert-dir=%s, which turns the webhooks on", f.Value)
	}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == "webhook-tls" {
			t.Error("webhook.enabled=false still mounts the webhook certificate")
		}
	}
	assertService(t, none.objs, "nodecsr", d, false)
}

// TestRenderRejectsBadValues: unknown keys, wrong types and impossible
// combinations fail the render with a message that names what to change.
func TestRenderRejectsBadValues(t *testing.T) {
	cases := map[string]struct {
		values string
		want   []string
	}{
		"unknown top-level key": {
			values: "replicas: 3",
			want:   []string{"additional properties 'replicas' not allowed"},
		},
		"unknown nested key": {
			values: "webhook: {certManager: {issuer: my-ca}}",
			want:   []string{"/webhook/certManager", "additional properties 'issuer' not allowed"},
		},
		"unknown policy field": {
			values: "policy: {keys: {rsa: {minbits: 2048}}}",
			want:   []string{"/policy/keys/rsa", "additional properties 'minbits' not allowed"},
		},
		"wrong type": {
			values: "replicaCount: two",
			want:   []string{"/replicaCount", "got string, want integer"},
		},
		"unquoted all-digit token ID": {
			values: "policy: {bootstrap: {tokenBindings: [{tokenID: 123456, nodeNames: [a]}]}}",
			want:   []string{"/policy/bootstrap/tokenBindings/0/tokenID", "got number, want string"},
		},
		"policy mode not in the enum": {
			values: "policy: {mode: Audit}",
			want:   []string{"/policy/mode", "value must be one of 'Enforce', 'DryRun'"},
		},
		"webhook timeout above 5s": {
			values: "webhook: {timeoutSeconds: 10}",
			want:   []string{"/webhook/timeoutSeconds", "maximum"},
		},
		"several replicas without leader election": {
			values: "leaderElection: {enabled: false}",
			want:   []string{"replicaCount is 2 but leaderElection.enabled is false", "set leaderElection.enabled=true or replicaCount=1"},
		},
		"webhook without a TLS source": {
			values: "webhook: {certManager: {enabled: false}}",
			want:   []string{"webhook.enabled is true but the webhook has no TLS source", "webhook.tls.secretName", "webhook.certManager.enabled=true"},
		},
		"webhook with a Secret but no CA bundle": {
			values: "webhook: {certManager: {enabled: false}, tls: {secretName: my-tls}}",
			want:   []string{"no TLS source", "webhook.tls.caBundle"},
		},
		"two TLS sources": {
			values: "webhook: {tls: {secretName: my-tls, caBundle: Y2EK}}",
			want:   []string{"webhook TLS: give one source"},
		},
		"PodDisruptionBudget that blocks every drain": {
			values: "podDisruptionBudget: {minAvailable: 2}",
			want:   []string{"podDisruptionBudget.minAvailable (2) must be lower than replicaCount (2)"},
		},
		"existing ServiceAccount without a name": {
			values: "serviceAccount: {create: false}",
			want:   []string{"serviceAccount.create is false, so serviceAccount.name must name an existing ServiceAccount"},
		},
		"port clash": {
			values: "webhook: {port: 8080}",
			want:   []string{"metrics.port, healthProbe.port and webhook.port must differ"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := render(t, "nodecsr", "nodecsr-system", readValues(t, tc.values))
			if err == nil {
				t.Fatalf("values %q rendered; want an error", tc.values)
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not say %q:\n%v", want, err)
				}
			}
		})
	}
}

// TestPolicySchemaMatchesConfig: the schema of values.policy and
// the policy file's fields (config.Spec's JSON names) are the same set, so
// neither can drift from the other.
func TestPolicySchemaMatchesConfig(t *testing.T) {
	schema := loadSchema(t)
	policy := schema.Properties["policy"]
	if policy == nil {
		t.Fatal("values.schema.json has no policy")
	}
	got := schemaPaths(policy, "policy")
	want := jsonPaths(reflectType[config.Spec](), "policy")
	assertSameSet(t, "policy fields (schema vs config.Spec)", got, want)
}

// --- helpers ---

func assertSameSet(t *testing.T, what string, got, want []string) {
	t.Helper()
	g, w := slices.Clone(got), slices.Clone(want)
	slices.Sort(g)
	slices.Sort(w)
	if !slices.Equal(g, w) {
		var missing, extra []string
		for _, s := range w {
			if !slices.Contains(g, s) {
				missing = append(missing, s)
			}
		}
		for _, s := range g {
			if !slices.Contains(w, s) {
				extra = append(extra, s)
			}
		}
		t.Errorf("%s: missing %q, unexpected %q", what, missing, extra)
	}
}

func assertCommonLabels(t *testing.T, objs []*unstructured.Unstructured, release string) {
	t.Helper()
	for _, o := range objs {
		l := o.GetLabels()
		if o.GetKind() == "CustomResourceDefinition" {
			// Kept after uninstall (crds.keep), it is no release's
			// object: no instance label (TestRenderInventory).
			continue
		}
		if l["app.kubernetes.io/instance"] != release || l["app.kubernetes.io/name"] != "nodecsr" || l["helm.sh/chart"] != "nodecsr-0.1.0" || l["app.kubernetes.io/managed-by"] != "Helm" {
			t.Errorf("%s lacks the chart's labels: %v", describe(o), l)
		}
	}
}

func policyOf(t *testing.T, objs []*unstructured.Unstructured, fullname string) *config.Effective {
	t.Helper()
	cm := convert[corev1.ConfigMap](t, find(t, objs, "ConfigMap", fullname+"-policy"))
	p, err := config.Parse([]byte(cm.Data["policy.yaml"]))
	if err != nil {
		t.Fatalf("the rendered policy does not load in nodecsr-controller: %v\n%s", err, cm.Data["policy.yaml"])
	}
	return p
}

func deploymentOf(t *testing.T, objs []*unstructured.Unstructured, name string) *appsv1.Deployment {
	t.Helper()
	return convert[appsv1.Deployment](t, find(t, objs, "Deployment", name))
}

// parseArgs parses the container's args with nodecsr-controller's own flag
// set: a flag the binary does not have fails the test.
func parseArgs(t *testing.T, d *appsv1.Deployment) (*app.Options, *pflag.FlagSet) {
	t.Helper()
	o := app.NewOptions()
	fs := pflag.NewFlagSet("nodecsr-controller", pflag.ContinueOnError)
	o.AddFlags(fs)
	args := d.Spec.Template.Spec.Containers[0].Args
	var unknown []string
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if fs.Lookup(name) == nil {
			unknown = append(unknown, "--"+name)
		}
	}
	if len(unknown) > 0 {
		t.Fatalf("the chart passes flags that nodecsr-controller does not have: %s", strings.Join(unknown, ", "))
	}
	if err := fs.Parse(args); err != nil {
		t.Fatalf("nodecsr-controller refuses the chart's args %q: %v", args, err)
	}
	if fs.NArg() != 0 {
		t.Fatalf("stray arguments %q", fs.Args())
	}
	return o, fs
}

func assertFlag(t *testing.T, fs *pflag.FlagSet, name, want string) {
	t.Helper()
	f := fs.Lookup(name)
	if f == nil {
		t.Errorf("nodecsr-controller has no --%s", name)
		return
	}
	if !f.Changed {
		t.Errorf("the chart does not pass --%s (want %q)", name, want)
		return
	}
	if got := f.Value.String(); got != want {
		t.Errorf("--%s = %q, want %q", name, got, want)
	}
}

// assertPodSpec checks the pod template against the flags it passes: the
// restricted security context, probes on the probe port, the downward API,
// the policy and certificate mounts.
func assertPodSpec(t *testing.T, d *appsv1.Deployment, o *app.Options, fs *pflag.FlagSet, tlsSecret string) {
	t.Helper()
	ps := d.Spec.Template.Spec
	if len(ps.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(ps.Containers))
	}
	c := ps.Containers[0]
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Fatal("no container securityContext")
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot, sc.RunAsUser == nil || *sc.RunAsUser != 65532,
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem,
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation,
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0,
		sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("container securityContext is not restricted: %+v", sc)
	}
	if psc := ps.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil {
		t.Errorf("pod securityContext is not restricted: %+v", psc)
	}
	if _, ok := d.Spec.Template.Annotations["checksum/config"]; ok {
		t.Error("a policy checksum annotation would restart the pods on every policy change; the policy hot-reloads")
	}

	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if want := ":" + fmt.Sprint(ports["probes"]); o.HealthProbeBindAddress != want {
		t.Errorf("--health-probe-bind-address %q, container port probes %d", o.HealthProbeBindAddress, ports["probes"])
	}
	if want := ":" + fmt.Sprint(ports["metrics"]); o.MetricsBindAddress != want {
		t.Errorf("--metrics-bind-address %q, container port metrics %d", o.MetricsBindAddress, ports["metrics"])
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" || c.LivenessProbe.HTTPGet.Port.String() != "probes" {
		t.Errorf("liveness probe %+v, want /healthz on probes", c.LivenessProbe)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.ReadinessProbe.HTTPGet.Port.String() != "probes" {
		t.Errorf("readiness probe %+v, want /readyz on probes", c.ReadinessProbe)
	}
	if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v lack memory requests and limits", c.Resources)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if env["POD_NAME"] != "metadata.name" || env["POD_NAMESPACE"] != "metadata.namespace" {
		t.Errorf("POD_NAME/POD_NAMESPACE not from the downward API: %v", env)
	}

	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		if !m.ReadOnly {
			t.Errorf("volume %s is mounted read-write", m.Name)
		}
		if m.SubPath != "" {
			t.Errorf("volume %s uses subPath, which the kubelet never updates", m.Name)
		}
		mounts[m.Name] = m.MountPath
	}
	vols := map[string]corev1.Volume{}
	for _, v := range ps.Volumes {
		vols[v.Name] = v
	}
	if path.Dir(o.PolicyFile) != mounts["policy"] || vols["policy"].ConfigMap == nil || vols["policy"].ConfigMap.Name != d.Name+"-policy" {
		t.Errorf("--policy %s is not in the policy ConfigMap's mount %s (%+v)", o.PolicyFile, mounts["policy"], vols["policy"])
	}
	if f := fs.Lookup("webhook-cert-dir"); f != nil && f.Changed {
		if ports["webhook"] == 0 {
			t.Error("no webhook container port")
		}
		assertFlag(t, fs, "webhook-port", fmt.Sprint(ports["webhook"]))
		assertFlag(t, fs, "webhook-cert-dir", mounts["webhook-tls"])
		if v := vols["webhook-tls"]; v.Secret == nil || v.Secret.SecretName != tlsSecret {
			t.Errorf("webhook-tls volume %+v, want Secret %s", v, tlsSecret)
		}
	}
}

func assertRBAC(t *testing.T, objs []*unstructured.Unstructured, fullname, ns, eventsNS string) {
	t.Helper()
	cr := convert[rbacv1.ClusterRole](t, find(t, objs, "ClusterRole", fullname))
	if !equality.Semantic.DeepEqual(cr.Rules, wantClusterRules) {
		t.Errorf("ClusterRole rules:\n%s\nwant exactly:\n%s", toYAML(cr.Rules), toYAML(wantClusterRules))
	}
	var roles []*rbacv1.Role
	for _, o := range ofKind(objs, "Role") {
		roles = append(roles, convert[rbacv1.Role](t, o))
	}
	for _, r := range roles {
		var want []rbacv1.PolicyRule
		switch {
		case r.Name == fullname && r.Namespace == ns:
			want = wantOwnNamespaceRules
		case r.Name == fullname+"-events" && r.Namespace == eventsNS:
			want = wantEventsNamespaceRules
		case r.Name == fullname+"-node-heartbeats" && r.Namespace == "kube-node-lease":
			want = wantHeartbeatRules
		default:
			t.Errorf("unexpected Role %s/%s", r.Namespace, r.Name)
			continue
		}
		if !equality.Semantic.DeepEqual(r.Rules, want) {
			t.Errorf("Role %s/%s rules:\n%s\nwant exactly:\n%s", r.Namespace, r.Name, toYAML(r.Rules), toYAML(want))
		}
	}
	// No wildcard, no Secrets, no delete anywhere but nodecsr's own
	// NodeCertificates (a name that never registered a Node).
	all := slices.Clone(cr.Rules)
	for _, r := range roles {
		all = append(all, r.Rules...)
	}
	for _, rule := range all {
		for _, s := range slices.Concat(rule.Verbs, rule.Resources, rule.APIGroups) {
			if strings.Contains(s, "*") {
				t.Errorf("wildcard in rule %+v", rule)
			}
		}
		ownInventory := slices.Equal(rule.APIGroups, []string{"nodecsr.io"}) && slices.Equal(rule.Resources, []string{"nodecertificates"})
		if slices.Contains(rule.Resources, "secrets") || slices.Contains(rule.Verbs, "delete") && !ownInventory || slices.Contains(rule.Verbs, "deletecollection") {
			t.Errorf("rule %+v grants Secrets or deletes", rule)
		}
	}
	for _, kind := range []string{"ClusterRoleBinding", "RoleBinding"} {
		for _, o := range ofKind(objs, kind) {
			subjects, _, _ := unstructured.NestedSlice(o.Object, "subjects")
			if len(subjects) != 1 {
				t.Errorf("%s binds %d subjects", describe(o), len(subjects))
				continue
			}
			s := subjects[0].(map[string]any)
			if s["kind"] != "ServiceAccount" || s["namespace"] != ns {
				t.Errorf("%s binds %v, want the release's ServiceAccount", describe(o), s)
			}
		}
	}
}

func assertService(t *testing.T, objs []*unstructured.Unstructured, name string, d *appsv1.Deployment, webhookOn bool) {
	t.Helper()
	svc := convert[corev1.Service](t, find(t, objs, "Service", name))
	if !equality.Semantic.DeepEqual(svc.Spec.Selector, d.Spec.Selector.MatchLabels) {
		t.Errorf("Service selects %v, the Deployment's pods carry %v", svc.Spec.Selector, d.Spec.Selector.MatchLabels)
	}
	ports := map[string]corev1.ServicePort{}
	for _, p := range svc.Spec.Ports {
		ports[p.Name] = p
	}
	if p, ok := ports["metrics"]; !ok || p.TargetPort.String() != "metrics" {
		t.Errorf("Service metrics port %+v", p)
	}
	p, ok := ports["webhook"]
	switch {
	case webhookOn && (!ok || p.Port != 443 || p.TargetPort.String() != "webhook"):
		t.Errorf("Service webhook port %+v, want 443 → webhook", p)
	case !webhookOn && ok:
		t.Error("Service exposes a webhook port without webhooks")
	}
}

// assertWebhookConfigurations compares the chart's webhook configurations
// with what the webhook package builds for the same Service.
func assertWebhookConfigurations(t *testing.T, objs []*unstructured.Unstructured, fullname, ns, self string, timeout int32, guard admissionregistrationv1.FailurePolicyType, certManager bool) {
	t.Helper()
	opts := webhook.ConfigOptions{
		Name:                       fullname,
		Service:                    &admissionregistrationv1.ServiceReference{Namespace: ns, Name: fullname, Port: ptr(int32(443))},
		Self:                       self,
		TimeoutSeconds:             timeout,
		ApprovalGuardFailurePolicy: guard,
	}
	wantM, err := webhook.MutatingWebhookConfiguration(opts)
	if err != nil {
		t.Fatal(err)
	}
	wantV, err := webhook.ValidatingWebhookConfiguration(opts)
	if err != nil {
		t.Fatal(err)
	}
	gotM := convert[admissionregistrationv1.MutatingWebhookConfiguration](t, find(t, objs, "MutatingWebhookConfiguration", fullname))
	gotV := convert[admissionregistrationv1.ValidatingWebhookConfiguration](t, find(t, objs, "ValidatingWebhookConfiguration", fullname))
	for i := range wantM.Webhooks {
		wantM.Webhooks[i].ClientConfig.CABundle = nil
	}
	for i := range wantV.Webhooks {
		wantV.Webhooks[i].ClientConfig.CABundle = nil
	}
	if !equality.Semantic.DeepEqual(gotM.Webhooks, wantM.Webhooks) {
		t.Errorf("MutatingWebhookConfiguration differs from webhook.MutatingWebhookConfiguration:\nchart:\n%s\nwebhook package:\n%s", toYAML(gotM.Webhooks), toYAML(wantM.Webhooks))
	}
	if !equality.Semantic.DeepEqual(gotV.Webhooks, wantV.Webhooks) {
		t.Errorf("ValidatingWebhookConfiguration differs from webhook.ValidatingWebhookConfiguration:\nchart:\n%s\nwebhook package:\n%s", toYAML(gotV.Webhooks), toYAML(wantV.Webhooks))
	}
	if certManager {
		want := ns + "/" + fullname + "-serving"
		for _, meta := range []map[string]string{gotM.Annotations, gotV.Annotations} {
			if meta["cert-manager.io/inject-ca-from"] != want {
				t.Errorf("inject-ca-from = %q, want %q", meta["cert-manager.io/inject-ca-from"], want)
			}
		}
	}
}

func alertRules(t *testing.T, rule *unstructured.Unstructured) map[string]string {
	t.Helper()
	out := map[string]string{}
	groups, _, _ := unstructured.NestedSlice(rule.Object, "spec", "groups")
	for _, g := range groups {
		rules, _, _ := unstructured.NestedSlice(g.(map[string]any), "rules")
		for _, r := range rules {
			m := r.(map[string]any)
			name, _ := m["alert"].(string)
			expr, _ := m["expr"].(string)
			out[name] = expr
		}
	}
	return out
}

func toYAML(v any) string {
	out, err := yaml.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%+v", v)
	}
	return string(out)
}

func ptr[T any](v T) *T { return &v }

// TestHelmTestPodPasses runs the `helm test` Pod's command in-process, with
// its two ConfigMaps as files where the Pod mounts them: it must succeed on
// the default and on a strict policy.
func TestHelmTestPodPasses(t *testing.T) {
	strict := readValuesFile(t, "values-nondefault.yaml")
	strict["tests"] = map[string]any{"enabled": true}
	for name, vals := range map[string]map[string]any{"defaults": nil, "nondefault": strict} {
		t.Run(name, func(t *testing.T) {
			r := mustRender(t, "nodecsr", "nodecsr-system", vals)
			var pod *corev1.Pod
			configMaps := map[string]*corev1.ConfigMap{}
			for _, o := range append(slices.Clone(r.objs), r.hooks...) {
				switch o.GetKind() {
				case "Pod":
					pod = convert[corev1.Pod](t, o)
				case "ConfigMap":
					configMaps[o.GetName()] = convert[corev1.ConfigMap](t, o)
				}
			}
			if pod == nil {
				t.Fatal("no test Pod")
			}
			// Each mounted ConfigMap becomes a folder; the args' paths move there.
			root := t.TempDir()
			c := pod.Spec.Containers[0]
			args := slices.Clone(c.Args)
			for _, m := range c.VolumeMounts {
				var cmName string
				for _, v := range pod.Spec.Volumes {
					if v.Name == m.Name && v.ConfigMap != nil {
						cmName = v.ConfigMap.Name
					}
				}
				cm := configMaps[cmName]
				if cm == nil {
					t.Fatalf("the test Pod mounts ConfigMap %q, which the chart does not create", cmName)
				}
				dir := filepath.Join(root, m.Name)
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				for k, v := range cm.Data {
					if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o600); err != nil {
						t.Fatal(err)
					}
				}
				for i := range args {
					args[i] = strings.ReplaceAll(args[i], m.MountPath, dir)
				}
			}
			var stdout, stderr bytes.Buffer
			cmd := app.NewCommand(&stdout, &stderr)
			cmd.SetArgs(args)
			if err := cmd.Execute(); err != nil {
				t.Fatalf("nodecsr-controller %s: %v\n%s", strings.Join(c.Args, " "), err, stderr.String())
			}
			if !strings.Contains(stdout.String(), "nodecsr-helm-test") {
				t.Errorf("explain printed nothing about the sample CSR:\n%s", stdout.String())
			}
			t.Logf("nodecsr-controller %s:\n%s", strings.Join(c.Args, " "), stdout.String())
		})
	}
}

// GitOps tools render offline: `helm template` without --kube-version
// (Helm assumes Kubernetes v1.20.0 and its own client's APIs) renders the
// chart; a cluster older than 1.30 is refused with its version.
func TestRenderOffline(t *testing.T) {
	r, err := renderWith(t, "nodecsr", "nodecsr-system", nil, nil)
	if err != nil {
		t.Fatalf("the chart does not render offline: %v", err)
	}
	if len(ofKind(r.objs, "Deployment")) != 1 {
		t.Errorf("offline render has no Deployment: %v", kinds(r.objs))
	}
	_, err = renderWith(t, "nodecsr", "nodecsr-system", nil, func(inst *action.Install) {
		inst.KubeVersion = &chartutil.KubeVersion{Version: "v1.29.9", Major: "1", Minor: "29"}
	})
	if err == nil || !strings.Contains(err.Error(), "nodecsr needs Kubernetes 1.30 or later") {
		t.Errorf("an old cluster: got %v, want the 1.30 message", err)
	}
}

// assertPreDeleteCopies checks the webhook configurations' pre-delete hooks
// (webhook.yaml): each is the release's configuration of that kind and
// name, identical but for the hook annotations, so that `helm uninstall`
// removes the configurations first and `helm template | kubectl apply`
// applies the same object twice.
func assertPreDeleteCopies(t *testing.T, r *rendered) {
	t.Helper()
	for _, kind := range []string{"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"} {
		objs, hooks := ofKind(r.objs, kind), ofKind(r.hooks, kind)
		if len(objs) != 1 || len(hooks) != 1 {
			t.Errorf("%d %s objects and %d hooks, want one each", len(objs), kind, len(hooks))
			continue
		}
		hook := hooks[0].DeepCopy()
		ann := hook.GetAnnotations()
		if ann["helm.sh/hook"] != "pre-delete" || ann["helm.sh/hook-delete-policy"] != "before-hook-creation,hook-succeeded" {
			t.Errorf("%s hook annotations %v, want pre-delete with before-hook-creation,hook-succeeded", kind, ann)
		}
		delete(ann, "helm.sh/hook")
		delete(ann, "helm.sh/hook-delete-policy")
		if len(ann) == 0 {
			ann = nil
		}
		hook.SetAnnotations(ann)
		if !equality.Semantic.DeepEqual(hook.Object, objs[0].Object) {
			want, _ := yaml.Marshal(objs[0].Object)
			got, _ := yaml.Marshal(hook.Object)
			t.Errorf("the pre-delete copy of %s differs from the release's:\n%s\nwant:\n%s", kind, got, want)
		}
	}
}
