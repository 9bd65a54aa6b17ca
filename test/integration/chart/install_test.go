package chart_test

import (
	"context"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/release"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nodecsrv1alpha1 "github.com/nodecsr/nodecsr/api/v1alpha1"
	"github.com/nodecsr/nodecsr/cmd/nodecsr-controller/app"
	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/env"
)

// TestInstallIntoRealAPIServer installs the chart with Helm's SDK, once with
// the defaults and once with non-default values, into namespaces that
// enforce the restricted Pod Security Standard: the API server accepts every
// object, the Pod Security admission has nothing to say about the pods, and
// the `helm test` Pod is admitted.
func TestInstallIntoRealAPIServer(t *testing.T) {
	restricted := map[string]string{
		"pod-security.kubernetes.io/enforce": "restricted",
		"pod-security.kubernetes.io/warn":    "restricted",
	}
	nondefault := readValuesFile(t, "values-nondefault.yaml")
	// No Prometheus Operator CRDs here: the monitoring objects are checked by
	// TestRenderNonDefaultValues.
	nondefault["serviceMonitor"].(map[string]any)["enabled"] = false
	nondefault["prometheusRule"].(map[string]any)["enabled"] = false
	nondefault["tests"] = map[string]any{"enabled": true}

	// Own names, so that these releases' cluster-scoped objects never meet
	// another test's.
	eventsNS := uniqueName("events")
	nondefault["controller"].(map[string]any)["eventsNamespace"] = eventsNS
	nondefault["fullnameOverride"] = uniqueName("csr-approver")

	cases := map[string]struct {
		values   map[string]any
		eventsNS string
	}{
		"defaults":   {values: nil, eventsNS: "default"},
		"nondefault": {values: nondefault, eventsNS: eventsNS},
	}
	for name, tcase := range cases {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := testutil.Context(t)
			defer cancel()
			ns := uniqueName("install-" + name)
			createNamespace(t, ns, restricted)
			if tcase.eventsNS != "default" {
				createNamespace(t, tcase.eventsNS, nil)
			}
			w := &testutil.Warnings{}
			rel := install(t, ns, ns, tcase.values, w)
			objs := decodeManifests(t, rel.Manifest)
			if len(objs) < 10 {
				t.Fatalf("only %d objects installed: %v", len(objs), kinds(objs))
			}
			getLive(ctx, t, objs)
			if pw := podSecurityWarnings(w); len(pw) > 0 {
				t.Errorf("Pod Security admission warns about the chart's pods: %q", pw)
			}

			// Pods are not scheduled here (no kubelet, no scheduler), so ask
			// the API server to admit them: the Deployment's pod template and
			// the helm test Pod, in a namespace that enforces "restricted".
			var d *appsv1.Deployment
			for _, o := range ofKind(objs, "Deployment") {
				d = convert[appsv1.Deployment](t, o)
			}
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "template-check", Namespace: ns, Labels: d.Spec.Template.Labels}, Spec: d.Spec.Template.Spec}
			if _, err := admin.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
				t.Errorf("the API server refuses the Deployment's pod in a restricted namespace: %v", err)
			}
			for _, h := range rel.Hooks {
				// Only the test hooks: the pre-delete hooks are copies of
				// the installed webhook configurations (same names).
				if !slices.Contains(h.Events, release.HookTest) {
					continue
				}
				for _, o := range decodeManifests(t, h.Manifest) {
					o.SetNamespace(ns)
					if err := kclient.Create(ctx, o, client.DryRunAll); err != nil {
						t.Errorf("the API server refuses the test hook %s: %v", describe(o), err)
					}
				}
			}
		})
	}
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// running is the real nodecsr-controller binary running as the installed
// chart's Deployment would run it.
type running struct {
	ctl *env.Controller
	// opts are its options, as the binary parses its args.
	opts *app.Options
}

// runInstalledController runs the nodecsr-controller binary exactly as the
// installed Deployment would run it (env.StartController): the
// Deployment's own args, the installed policy ConfigMap as the policy file,
// and the chart's ServiceAccount as its identity (impersonated). opts adds
// what only makes sense outside a pod (a webhook serving pair, args); the
// policy is reloaded every 200ms. It stops when the test ends.
func runInstalledController(t *testing.T, ns, fullname string, opts env.ControllerOptions) *running {
	t.Helper()
	ctx, cancel := testutil.Context(t)
	defer cancel()
	d, err := admin.AppsV1().Deployments(ns).Get(ctx, fullname, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	opts.Binary, opts.Deployment, opts.Admin, opts.AdminKubeconfig = controllerBinary, d, admin, tc.AdminKubeconfig()
	opts.PodName = fullname + "-test-0"
	args := map[string]string{"policy-reload-interval": "200ms"}
	for k, v := range opts.Args {
		args[k] = v
	}
	opts.Args = args
	ctl := env.StartController(ctx, t, opts)
	parsed := d.DeepCopy()
	parsed.Spec.Template.Spec.Containers[0].Args = ctl.Args
	o, _ := parseArgs(t, parsed)
	return &running{ctl: ctl, opts: o}
}

// checkNothingForbidden fails the test if the API server refused any of
// the controller's requests (403), as client-go in the controller counts
// them (rest_client_requests_total{code="403"}).
func (r *running) checkNothingForbidden(t *testing.T) {
	t.Helper()
	ctx, cancel := testutil.Context(t)
	defer cancel()
	all, err := r.ctl.MetricSum(ctx, "rest_client_requests_total", nil)
	if err != nil {
		t.Fatal(err)
	}
	if all == 0 {
		t.Fatal("nodecsr-controller counts no requests (rest_client_requests_total): a refused one would go unseen")
	}
	n, err := r.ctl.MetricSum(ctx, "rest_client_requests_total", map[string]string{"code": "403"})
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("the API server refused %v of nodecsr-controller's requests with the chart's RBAC; its log says:\n%s", n, linesWith(r.ctl.LogPath, "forbidden"))
	}
}

// linesWith returns the lines of the file at path that contain s.
func linesWith(path, s string) string {
	data, _ := os.ReadFile(path)
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestChartRBACIsEnoughAndNoMore runs nodecsr-controller as the installed
// chart's ServiceAccount: it approves a bootstrap CSR (which
// kube-controller-manager then signs), denies a bad one, writes the Events,
// holds the Lease and reports a bad policy reload, with no request refused.
// Then SubjectAccessReviews show what the ServiceAccount cannot do.
func TestChartRBACIsEnoughAndNoMore(t *testing.T) {
	ctx, cancel := testutil.Context(t)
	defer cancel()
	ns := uniqueName("rbac")
	createNamespace(t, ns, nil)
	install(t, ns, ns, nil, nil)
	fullname := ns + "-nodecsr"
	sa := fullname

	// Without a certificate directory: the webhooks are tested in
	// TestCertManagerIssuesTheWebhookCertificate.
	r := runInstalledController(t, ns, fullname, env.ControllerOptions{Args: map[string]string{"webhook-cert-dir": ""}})

	bootstrap, tok := env.BootstrapClient(t, tc)
	node := uniqueName("rbac-worker")
	good := csrtest.Build(csrtest.WithName(uniqueName("rbac-good")), csrtest.WithNodeName(node))
	bad := csrtest.Build(csrtest.WithName(uniqueName("rbac-bad")), csrtest.WithNodeName(uniqueName("rbac-other")), csrtest.WithDNSSAN("evil.example.com"))
	for _, csr := range []*certificatesv1.CertificateSigningRequest{good, bad} {
		if _, err := bootstrap.CertificatesV1().CertificateSigningRequests().Create(ctx, csr, metav1.CreateOptions{}); err != nil {
			t.Fatalf("bootstrap token could not file %s: %v", csr.Name, err)
		}
		t.Cleanup(func() {
			_ = admin.CertificatesV1().CertificateSigningRequests().Delete(context.Background(), csr.Name, metav1.DeleteOptions{})
		})
	}

	t.Logf("bootstrap token %s filed %s (node %s) and %s (a DNS SAN)", tok.Username(), good.Name, node, bad.Name)
	approved := waitDecided(ctx, t, good.Name)
	if c := condition(approved, certificatesv1.CertificateApproved); c == nil {
		t.Fatalf("bootstrap CSR %s was not approved: %+v", good.Name, approved.Status.Conditions)
	}
	// kube-controller-manager's csrsigning signs what nodecsr approved.
	if err := waitUntil(ctx, func(ctx context.Context) (bool, error) {
		got, err := admin.CertificatesV1().CertificateSigningRequests().Get(ctx, good.Name, metav1.GetOptions{})
		return err == nil && len(got.Status.Certificate) > 0, err
	}); err != nil {
		t.Errorf("the approved CSR was not signed: %v", err)
	}
	// The inventory records the certificate (create and status writes as
	// the ServiceAccount).
	if err := waitUntil(ctx, func(ctx context.Context) (bool, error) {
		nc := &unstructured.Unstructured{}
		nc.SetGroupVersionKind(nodecsrv1alpha1.SchemeGroupVersion.WithKind(nodecsrv1alpha1.NodeCertificateKind))
		if err := kclient.Get(ctx, client.ObjectKey{Name: node}, nc); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		serial, _, _ := unstructured.NestedString(nc.Object, "status", "client", "serialNumber")
		return serial != "", nil
	}); err != nil {
		t.Errorf("no NodeCertificate %s with its client certificate: %v", node, err)
	}
	t.Logf("%s approved (%s) and signed by kube-controller-manager", good.Name, condition(approved, certificatesv1.CertificateApproved).Reason)
	denied := waitDecided(ctx, t, bad.Name)
	if c := condition(denied, certificatesv1.CertificateDenied); c == nil || c.Reason != "SANsNotAllowed" {
		t.Errorf("CSR with a DNS SAN: conditions %+v, want Denied SANsNotAllowed", denied.Status.Conditions)
	}

	// The Events about both CSRs, in the events namespace.
	for _, name := range []string{good.Name, bad.Name} {
		if _, err := env.WaitEvent(ctx, admin, r.opts.EventsNamespace, name, func(ev *eventsv1.Event) bool { return ev.ReportingController == "nodecsr" }); err != nil {
			t.Error(err)
		}
	}

	// The Lease in the release namespace.
	lease := &coordinationv1.Lease{}
	if err := kclient.Get(ctx, client.ObjectKey{Namespace: ns, Name: r.opts.LeaderElectionID}, lease); err != nil {
		t.Errorf("no leader Lease %s/%s: %v", ns, r.opts.LeaderElectionID, err)
	} else if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
		t.Errorf("Lease %s has no holder", lease.Name)
	}

	// A broken policy is reported with a Warning Event about the Pod, in the
	// release namespace.
	if err := r.ctl.WritePolicy([]byte("apiVersion: nodecsr.io/v1alpha1\nkind: Policy\nspec:\n  mode: Sometimes\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := env.WaitEvent(ctx, admin, ns, r.opts.PodName, func(ev *eventsv1.Event) bool { return ev.Reason == "PolicyReloadFailed" }); err != nil {
		t.Error(err)
	}

	t.Logf("%s denied (%s); Events written; Lease %s held by %s; policy reload failure reported", bad.Name, condition(denied, certificatesv1.CertificateDenied).Reason, r.opts.LeaderElectionID, ptrString(lease.Spec.HolderIdentity))
	r.checkNothingForbidden(t)

	// And what the ServiceAccount may not do.
	id := env.ServiceAccount(ns, sa)
	res := func(group, resource, sub, verb, name, namespace string) *authorizationv1.ResourceAttributes {
		return &authorizationv1.ResourceAttributes{Group: group, Resource: resource, Subresource: sub, Verb: verb, Name: name, Namespace: namespace}
	}
	cert := "certificates.k8s.io"
	mayNot := map[string]*authorizationv1.ResourceAttributes{
		"approve for kube-apiserver-client":         res(cert, "signers", "", "approve", "kubernetes.io/kube-apiserver-client", ""),
		"approve for legacy-unknown":                res(cert, "signers", "", "approve", "kubernetes.io/legacy-unknown", ""),
		"approve for kubelet-serving":               res(cert, "signers", "", "approve", "kubernetes.io/kubelet-serving", ""),
		"approve for every signer of the domain":    res(cert, "signers", "", "approve", "kubernetes.io/*", ""),
		"sign for the kubelet client signer":        res(cert, "signers", "", "sign", kubeletSigner, ""),
		"update CSR status (issue certificates)":    res(cert, "certificatesigningrequests", "status", "update", "", ""),
		"update CSRs":                               res(cert, "certificatesigningrequests", "", "update", "", ""),
		"create CSRs":                               res(cert, "certificatesigningrequests", "", "create", "", ""),
		"delete CSRs":                               res(cert, "certificatesigningrequests", "", "delete", "", ""),
		"get Secrets in its namespace":              res("", "secrets", "", "get", "", ns),
		"list Secrets in its namespace":             res("", "secrets", "", "list", "", ns),
		"list Secrets in kube-system":               res("", "secrets", "", "list", "", "kube-system"),
		"get Nodes":                                 res("", "nodes", "", "get", "", ""),
		"update Nodes":                              res("", "nodes", "", "update", "", ""),
		"create Pods":                               res("", "pods", "", "create", "", ns),
		"create Leases in kube-system":              res("coordination.k8s.io", "leases", "", "create", "", "kube-system"),
		"list node Leases":                          res("coordination.k8s.io", "leases", "", "list", "", "kube-node-lease"),
		"update a node's Lease":                     res("coordination.k8s.io", "leases", "", "update", "worker-1", "kube-node-lease"),
		"delete its Lease":                          res("coordination.k8s.io", "leases", "", "delete", r.opts.LeaderElectionID, ns),
		"create Events in kube-system":              res("events.k8s.io", "events", "", "create", "", "kube-system"),
		"delete Events":                             res("events.k8s.io", "events", "", "delete", "", r.opts.EventsNamespace),
		"create ClusterRoleBindings":                res("rbac.authorization.k8s.io", "clusterrolebindings", "", "create", "", ""),
		"escalate its ClusterRole":                  res("rbac.authorization.k8s.io", "clusterroles", "", "escalate", fullname, ""),
		"impersonate users":                         res("", "users", "", "impersonate", "system:admin", ""),
		"update webhook configurations":             res("admissionregistration.k8s.io", "validatingwebhookconfigurations", "", "update", fullname, ""),
		"create CSR nodeclient (request as a node)": res(cert, "certificatesigningrequests", "nodeclient", "create", "", ""),
	}
	may := map[string]*authorizationv1.ResourceAttributes{
		"approve for the kubelet client signer": res(cert, "signers", "", "approve", kubeletSigner, ""),
		"update the approval subresource":       res(cert, "certificatesigningrequests", "approval", "update", "", ""),
		"watch CSRs":                            res(cert, "certificatesigningrequests", "", "watch", "", ""),
		"create SubjectAccessReviews":           res("authorization.k8s.io", "subjectaccessreviews", "", "create", "", ""),
		"watch Nodes":                           res("", "nodes", "", "watch", "", ""),
		"update its Lease":                      res("coordination.k8s.io", "leases", "", "update", r.opts.LeaderElectionID, ns),
		"get a node's heartbeat Lease":          res("coordination.k8s.io", "leases", "", "get", "worker-1", "kube-node-lease"),
		"create Events about CSRs":              res("events.k8s.io", "events", "", "create", "", r.opts.EventsNamespace),
	}
	for what, attrs := range mayNot {
		if allowed, reason := sar(ctx, t, id, attrs); allowed {
			t.Errorf("the ServiceAccount may %s (%s)", what, reason)
		}
	}
	for what, attrs := range may {
		if allowed, reason := sar(ctx, t, id, attrs); !allowed {
			t.Errorf("the ServiceAccount may not %s: %s", what, reason)
		}
	}
}

func sar(ctx context.Context, t *testing.T, id rest.ImpersonationConfig, attrs *authorizationv1.ResourceAttributes) (bool, string) {
	t.Helper()
	review, err := admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: id.UserName, Groups: id.Groups, ResourceAttributes: attrs,
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SubjectAccessReview: %v", err)
	}
	return review.Status.Allowed, review.Status.Reason
}

// waitDecided waits until the CSR has an Approved or Denied condition.
func waitDecided(ctx context.Context, t *testing.T, name string) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	csr, err := env.WaitDecided(ctx, admin, name, 0)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func condition(csr *certificatesv1.CertificateSigningRequest, typ certificatesv1.RequestConditionType) *certificatesv1.CertificateSigningRequestCondition {
	return env.Condition(csr, typ)
}

func ptrString(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
