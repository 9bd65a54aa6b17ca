package chart_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/env"
)

// The suggested FlowSchemas and priority levels of kube-apiserver's API
// Priority and Fairness bootstrap configuration that the chart's FlowSchema
// is placed among (k8s.io/apiserver/pkg/apis/flowcontrol/bootstrap).
const (
	serviceAccountsFlowSchema  = "service-accounts" // every ServiceAccount, precedence 9000, workload-low
	serviceAccountsPrecedence  = 9000
	kubeControllerManagerFS    = "kube-controller-manager" // precedence 800, workload-high
	kubeControllerManagerPrec  = 800
	workloadHigh, workloadLow  = "workload-high", "workload-low"
	flowSchemaExempt           = flowcontrolv1.FlowSchemaNameExempt // system:masters
	priorityLevelGlobalDefault = "global-default"
)

// TestRenderFlowSchema: by default the chart ships a FlowSchema that puts
// every request of its own ServiceAccount, and nobody else's, at
// workload-high, between kube-controller-manager's FlowSchema and the
// service-accounts one; apf.enabled=false leaves it out; apf.priorityLevel
// and apf.matchingPrecedence are applied.
func TestRenderFlowSchema(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		const ns = "nodecsr-system"
		r := mustRender(t, "nodecsr", ns, nil)
		fs := convert[flowcontrolv1.FlowSchema](t, find(t, r.objs, "FlowSchema", "nodecsr"))
		assertFlowSchema(t, fs, deploymentOf(t, r.objs, "nodecsr"), ns, workloadHigh, 900)
		if p := fs.Spec.MatchingPrecedence; p <= kubeControllerManagerPrec || p >= serviceAccountsPrecedence {
			t.Errorf("matchingPrecedence %d: want it above kube-controller-manager's %d (never ahead of the system FlowSchemas) and below service-accounts' %d (or it never matches)",
				p, kubeControllerManagerPrec, serviceAccountsPrecedence)
		}
		if !strings.Contains(r.notes, "kubectl get flowschema nodecsr") {
			t.Errorf("NOTES.txt does not tell how to check the FlowSchema:\n%s", r.notes)
		}
	})

	t.Run("disabled", func(t *testing.T) {
		r := mustRender(t, "nodecsr", "nodecsr-system", readValues(t, "apf: {enabled: false}"))
		if got := ofKind(r.objs, "FlowSchema"); len(got) != 0 {
			t.Errorf("apf.enabled=false still renders %v", kinds(got))
		}
		if strings.Contains(r.notes, "flowschema") {
			t.Errorf("NOTES.txt mentions a FlowSchema that is not installed:\n%s", r.notes)
		}
	})

	t.Run("custom level, precedence and ServiceAccount", func(t *testing.T) {
		const ns = "platform"
		r := mustRender(t, "prod", ns, readValues(t, `
fullnameOverride: csr-approver
serviceAccount: {name: nodecsr-sa}
apf: {priorityLevel: nodecsr-critical, matchingPrecedence: 1500}
`))
		fs := convert[flowcontrolv1.FlowSchema](t, find(t, r.objs, "FlowSchema", "csr-approver"))
		assertFlowSchema(t, fs, deploymentOf(t, r.objs, "csr-approver"), ns, "nodecsr-critical", 1500)
	})

	t.Run("existing ServiceAccount", func(t *testing.T) {
		const ns = "nodecsr-system"
		r := mustRender(t, "nodecsr", ns, readValues(t, "serviceAccount: {create: false, name: existing}"))
		fs := convert[flowcontrolv1.FlowSchema](t, find(t, r.objs, "FlowSchema", "nodecsr"))
		assertFlowSchema(t, fs, deploymentOf(t, r.objs, "nodecsr"), ns, workloadHigh, 900)
	})

	t.Run("bad values", func(t *testing.T) {
		for values, want := range map[string][]string{
			"apf: {matchingPrecedence: 9000}":   {"/apf/matchingPrecedence", "maximum"},
			"apf: {matchingPrecedence: 0}":      {"/apf/matchingPrecedence", "minimum"},
			"apf: {matchingPrecedence: '900'}":  {"/apf/matchingPrecedence", "want integer"},
			"apf: {priorityLevel: ''}":          {"/apf/priorityLevel"},
			"apf: {priorityLevel: Workload_Hi}": {"/apf/priorityLevel"},
			"apf: {level: workload-high}":       {"/apf", "additional properties 'level' not allowed"},
		} {
			_, err := render(t, "nodecsr", "nodecsr-system", readValues(t, values))
			if err == nil {
				t.Errorf("values %q rendered; want an error", values)
				continue
			}
			for _, w := range want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("values %q: error does not say %q:\n%v", values, w, err)
				}
			}
		}
	})
}

// assertFlowSchema checks that fs sends every request of the Deployment's
// ServiceAccount, and no one else's, to level with the given precedence,
// one flow per user.
func assertFlowSchema(t *testing.T, fs *flowcontrolv1.FlowSchema, d *appsv1.Deployment, ns, level string, precedence int32) {
	t.Helper()
	if got := fs.Spec.PriorityLevelConfiguration.Name; got != level {
		t.Errorf("priority level %q, want %q", got, level)
	}
	if got := fs.Spec.MatchingPrecedence; got != precedence {
		t.Errorf("matchingPrecedence %d, want %d", got, precedence)
	}
	if dm := fs.Spec.DistinguisherMethod; dm == nil || dm.Type != flowcontrolv1.FlowDistinguisherMethodByUserType {
		t.Errorf("distinguisherMethod %+v, want ByUser", dm)
	}
	if len(fs.Spec.Rules) != 1 {
		t.Fatalf("%d rules, want 1:\n%s", len(fs.Spec.Rules), toYAML(fs.Spec.Rules))
	}
	rule := fs.Spec.Rules[0]
	sa := d.Spec.Template.Spec.ServiceAccountName
	wantSubjects := []flowcontrolv1.Subject{{Kind: flowcontrolv1.SubjectKindServiceAccount, ServiceAccount: &flowcontrolv1.ServiceAccountSubject{Namespace: ns, Name: sa}}}
	if !equalYAML(rule.Subjects, wantSubjects) {
		t.Errorf("subjects:\n%s\nwant only the Deployment's ServiceAccount %s/%s", toYAML(rule.Subjects), ns, sa)
	}
	// Every request of that identity, as kube-controller-manager's own
	// FlowSchema: a request it left out would fall back to workload-low.
	wantResources := []flowcontrolv1.ResourcePolicyRule{{Verbs: []string{"*"}, APIGroups: []string{"*"}, Resources: []string{"*"}, ClusterScope: true, Namespaces: []string{"*"}}}
	wantNonResources := []flowcontrolv1.NonResourcePolicyRule{{Verbs: []string{"*"}, NonResourceURLs: []string{"*"}}}
	if !equalYAML(rule.ResourceRules, wantResources) || !equalYAML(rule.NonResourceRules, wantNonResources) {
		t.Errorf("rules:\n%s\nwant every request", toYAML(rule))
	}
}

func equalYAML(a, b any) bool { return toYAML(a) == toYAML(b) }

// pfHeaders records the API Priority and Fairness classification that the
// API server reports on every response.
type pfHeaders struct {
	mu                        sync.Mutex
	flowSchema, priorityLevel types.UID
}

func (h *pfHeaders) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(req)
		if err == nil {
			h.mu.Lock()
			h.flowSchema = types.UID(resp.Header.Get(flowcontrolv1.ResponseHeaderMatchedFlowSchemaUID))
			h.priorityLevel = types.UID(resp.Header.Get(flowcontrolv1.ResponseHeaderMatchedPriorityLevelConfigurationUID))
			h.mu.Unlock()
		}
		return resp, err
	})
}

func (h *pfHeaders) last() (flowSchema, priorityLevel types.UID) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.flowSchema, h.priorityLevel
}

// classify makes one request with cs (one nodecsr-controller makes: list
// CSRs) and returns the FlowSchema and priority level the API server put it
// in, and the request's error. APF classifies a request before it is
// authorized, so a refused request has them too.
func classify(ctx context.Context, cs kubernetes.Interface, h *pfHeaders) (flowSchema, priorityLevel types.UID, err error) {
	h.mu.Lock()
	h.flowSchema, h.priorityLevel = "", ""
	h.mu.Unlock()
	_, err = cs.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{Limit: 1})
	fs, pl := h.last()
	return fs, pl, err
}

// waitAPFBootstrap waits for the FlowSchemas and priority levels that
// kube-apiserver's APF bootstrap controller creates after it starts, and
// returns their UIDs by name.
func waitAPFBootstrap(ctx context.Context, t *testing.T) (flowSchemas, levels map[string]types.UID) {
	t.Helper()
	flowSchemas, levels = map[string]types.UID{}, map[string]types.UID{}
	fc := admin.FlowcontrolV1()
	err := poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
		for _, name := range []string{serviceAccountsFlowSchema, kubeControllerManagerFS, flowSchemaExempt} {
			fs, err := fc.FlowSchemas().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			flowSchemas[name] = fs.UID
		}
		for _, name := range []string{workloadHigh, workloadLow, priorityLevelGlobalDefault, flowcontrolv1.PriorityLevelConfigurationNameExempt} {
			pl, err := fc.PriorityLevelConfigurations().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			levels[name] = pl.UID
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("kube-apiserver's API Priority and Fairness bootstrap objects (FlowSchemas %s, %s; priority levels %s, %s) did not appear: %v",
			serviceAccountsFlowSchema, kubeControllerManagerFS, workloadHigh, workloadLow, err)
	}
	sa, _ := fc.FlowSchemas().Get(ctx, serviceAccountsFlowSchema, metav1.GetOptions{})
	kcm, _ := fc.FlowSchemas().Get(ctx, kubeControllerManagerFS, metav1.GetOptions{})
	if sa.Spec.PriorityLevelConfiguration.Name != workloadLow || sa.Spec.MatchingPrecedence != serviceAccountsPrecedence ||
		kcm.Spec.PriorityLevelConfiguration.Name != workloadHigh || kcm.Spec.MatchingPrecedence != kubeControllerManagerPrec {
		t.Fatalf("the API server's suggested FlowSchemas changed: %s at %s (%d), %s at %s (%d)",
			sa.Name, sa.Spec.PriorityLevelConfiguration.Name, sa.Spec.MatchingPrecedence, kcm.Name, kcm.Spec.PriorityLevelConfiguration.Name, kcm.Spec.MatchingPrecedence)
	}
	return flowSchemas, levels
}

// TestFlowSchemaClassifiesNodecsr installs the chart into the real API
// server and makes a request as the chart's ServiceAccount (the admin
// impersonating it, as the in-process controller runs): the API server's
// X-Kubernetes-PF-* response headers name the chart's FlowSchema and the
// workload-high priority level; with apf.enabled=false, the service-accounts
// FlowSchema and workload-low, where every other ServiceAccount is; with a
// custom level, that level. The admin itself (system:masters, as the
// benchmarks ran) is exempt.
func TestFlowSchemaClassifiesNodecsr(t *testing.T) {
	ctx, cancel := testutil.Context(t)
	defer cancel()
	flowSchemas, levels := waitAPFBootstrap(ctx, t)

	t.Run("admin is exempt", func(t *testing.T) {
		h := &pfHeaders{}
		cfg := tc.AdminConfig()
		cfg.WrapTransport = h.wrap
		cs := kubernetes.NewForConfigOrDie(cfg)
		fs, pl, err := classify(ctx, cs, h)
		if err != nil {
			t.Fatal(err)
		}
		if fs != flowSchemas[flowSchemaExempt] || pl != levels[flowcontrolv1.PriorityLevelConfigurationNameExempt] {
			t.Errorf("system:masters request: FlowSchema %s, priority level %s; want exempt (%s, %s)", fs, pl, flowSchemas[flowSchemaExempt], levels[flowcontrolv1.PriorityLevelConfigurationNameExempt])
		}
	})

	cases := map[string]struct {
		values string
		// wantOwn: the chart's FlowSchema classifies the request (else service-accounts).
		wantOwn bool
		level   string
	}{
		"defaults":     {values: "", wantOwn: true, level: workloadHigh},
		"disabled":     {values: "apf: {enabled: false}", wantOwn: false, level: workloadLow},
		"custom level": {values: "apf: {priorityLevel: " + priorityLevelGlobalDefault + ", matchingPrecedence: 1000}", wantOwn: true, level: priorityLevelGlobalDefault},
	}
	for name, tcase := range cases {
		t.Run(name, func(t *testing.T) {
			ns := uniqueName("apf")
			createNamespace(t, ns, nil)
			var vals map[string]any
			if tcase.values != "" {
				vals = readValues(t, tcase.values)
			}
			rel := install(t, ns, ns, vals, nil)
			fullname := ns + "-nodecsr"
			var d *appsv1.Deployment
			for _, o := range ofKind(decodeManifests(t, rel.Manifest), "Deployment") {
				d = convert[appsv1.Deployment](t, o)
			}
			sa := d.Spec.Template.Spec.ServiceAccountName

			wantFS, wantFSName := flowSchemas[serviceAccountsFlowSchema], serviceAccountsFlowSchema
			if tcase.wantOwn {
				own, err := admin.FlowcontrolV1().FlowSchemas().Get(ctx, fullname, metav1.GetOptions{})
				if err != nil {
					t.Fatalf("the chart's FlowSchema: %v", err)
				}
				wantFS, wantFSName = own.UID, own.Name
			} else if _, err := admin.FlowcontrolV1().FlowSchemas().Get(ctx, fullname, metav1.GetOptions{}); err == nil {
				t.Errorf("FlowSchema %s installed with apf.enabled=false", fullname)
			}
			wantPL := levels[tcase.level]

			h := &pfHeaders{}
			cfg := tc.AdminConfig()
			cfg.Impersonate = env.ServiceAccount(ns, sa)
			cfg.WrapTransport = h.wrap
			cs := kubernetes.NewForConfigOrDie(cfg)
			// The API server's APF configuration controller applies a new
			// FlowSchema from its informer, a moment after the create.
			var gotFS, gotPL types.UID
			err := poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
				var err error
				gotFS, gotPL, err = classify(ctx, cs, h)
				if err != nil {
					return false, err
				}
				return gotFS == wantFS && gotPL == wantPL, nil
			})
			if err != nil {
				t.Fatalf("a request as %s was classified as FlowSchema %s, priority level %s; want %s (%s) at %s (%s): %v",
					cfg.Impersonate.UserName, gotFS, gotPL, wantFSName, wantFS, tcase.level, wantPL, err)
			}
			t.Logf("a request as %s: FlowSchema %s, priority level %s", cfg.Impersonate.UserName, wantFSName, tcase.level)

			if tcase.wantOwn {
				// The API server resolved the FlowSchema's level.
				err := poll(ctx, 30*time.Second, func(ctx context.Context) (bool, error) {
					fs, err := admin.FlowcontrolV1().FlowSchemas().Get(ctx, fullname, metav1.GetOptions{})
					if err != nil {
						return false, err
					}
					for _, c := range fs.Status.Conditions {
						if c.Type == flowcontrolv1.FlowSchemaConditionDangling {
							return c.Status == flowcontrolv1.ConditionFalse, nil
						}
					}
					return false, nil
				})
				if err != nil {
					t.Errorf("FlowSchema %s is not marked Dangling=False: %v", fullname, err)
				}
			}

			// Another ServiceAccount of the same namespace stays where it was
			// (its list is refused, after APF classified it).
			other := &pfHeaders{}
			ocfg := tc.AdminConfig()
			ocfg.Impersonate = env.ServiceAccount(ns, "default")
			ocfg.WrapTransport = other.wrap
			ofs, opl, _ := classify(ctx, kubernetes.NewForConfigOrDie(ocfg), other)
			if ofs != flowSchemas[serviceAccountsFlowSchema] || opl != levels[workloadLow] {
				t.Errorf("a request as %s: FlowSchema %s, priority level %s; want service-accounts at workload-low", ocfg.Impersonate.UserName, ofs, opl)
			}
		})
	}
}
