package node_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/releaseutil"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/internal/testpki"
	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/test/env"
	"github.com/nodecsr/nodecsr/webhook"
)

const (
	// instanceLabel is Helm's release label, which the chart puts on every
	// object it creates (and the Deployment on its pods).
	instanceLabel = "app.kubernetes.io/instance"
	// upgradeTagSuffix makes the second tag of the same image, which the
	// upgrade switches to.
	upgradeTagSuffix = "-upgrade"

	// The renewals filed during the upgrade and the disruption: by
	// streamNodes node identities, at most one pending per node (as a
	// kubelet files them), one every streamInterval, at most streamMax.
	streamNodes    = 40
	streamInterval = 100 * time.Millisecond
	streamMax      = 1500
	// streamSettle CSRs are decided before the upgrade starts, and again
	// after the drain, before the stream stops: the first and the last
	// leader each decide some.
	streamSettle   = 20
	streamPrefix   = "lifecycle-"
	streamNodeName = "lifecycle-node-"
)

// workloadControllers are what a cluster runs for the chart's Deployment,
// PodDisruptionBudget and Service and for Helm's uninstall (whose
// background deletion leaves ReplicaSets and pods to the garbage collector).
// The harness's own kube-controller-manager runs only csrsigning.
var workloadControllers = []string{
	"deployment-controller", "replicaset-controller", "disruption-controller",
	"endpointslice-controller", "garbage-collector-controller",
}

// TestChartLifecycle runs the chart's Deployment (two replicas with leader
// election and the PodDisruptionBudget) on the node with the real
// Deployment, ReplicaSet, disruption, EndpointSlice and garbage-collector
// controllers, and the API server calling the webhooks through the chart's
// Service. While node identities keep filing renewals it upgrades the
// release (values and image tag changed) and then evicts every pod as a
// drain would; every renewal gets exactly one decision and one decision
// Event. Then it uninstalls the release: the webhook configurations go
// first, CSRs are created and approved by hand afterwards, and nothing
// labelled with the release remains anywhere in the cluster.
//
// The node has only loopback, so two stand-ins do what a cluster's network
// does: a mutating admission webhook of the test gives each of the
// Deployment's pods the host network, the node (no scheduler runs) and its
// own ports (host-network pods on one node cannot share them; the chart's
// Service and probes name the ports, so they follow), and an HTTP CONNECT
// proxy on a unix socket, the API server's egress for the "cluster"
// network, routes a connection to a Service's cluster IP to a ready
// endpoint of its EndpointSlices at 127.0.0.1 (what kube-proxy does).
func TestChartLifecycle(t *testing.T) {
	requireNode(t)
	ctx, cancel := testContext(t)
	defer cancel()
	start := time.Now()

	var egressSocket string
	tn := startNode(ctx, t, nodeOptions{apiServerFlags: func(dir string) (map[string]string, error) {
		var cfg string
		var err error
		cfg, egressSocket, err = writeEgressConfig(dir)
		return map[string]string{"egress-selector-config-file": cfg}, err
	}})
	c, admin := tn.c, tn.admin

	kcm, err := c.StartExtraControllerManager(ctx, "kube-controller-manager-workloads", workloadControllers, nil)
	if err != nil {
		t.Fatal(err)
	}
	tn.cleanup("stop the workload controllers", kcm.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s, last lines:\n%s", kcm.LogPath(), env.Tail(kcm.LogPath(), 30))
			apiLog := filepath.Join(c.Dir(), "logs", "kube-apiserver.log")
			t.Logf("%s, last lines:\n%s", apiLog, env.Tail(apiLog, 30))
		}
	})
	proxy, err := startServiceProxy(egressSocket, admin, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	tn.cleanup("stop the Service proxy", proxy.close)
	apiURL, err := url.Parse(c.Host())
	if err != nil {
		t.Fatal(err)
	}
	adapter, err := startPodAdapter(ctx, admin, apiURL, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	tn.cleanup("stop the pod adapter", adapter.close)

	// The upgrade's image: the same image under a second tag.
	from, to := tn.repo+":"+tn.tag, tn.repo+":"+tn.tag+upgradeTagSuffix
	if _, err := tn.ctrd.Ctr(ctx, "images", "tag", from, to); err != nil {
		t.Fatal(err)
	}
	t.Logf("tagged %s as %s in containerd", from, to)

	caPEM := prepareNamespace(ctx, t, c, admin)
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := env.LoadChart(root)
	if err != nil {
		t.Fatal(err)
	}
	// Ports here are the chart's defaults; the adapter gives each pod its own.
	installVals := lifecycleValues(tn.repo, tn.tag, caPEM, false)
	upgradeVals := lifecycleValues(tn.repo, tn.tag+upgradeTagSuffix, caPEM, true)

	obs := startObserver(ctx, t, admin)
	if _, _, err := env.HelmInstall(ctx, c.AdminKubeconfig(), ch, release, namespace, installVals, nil); err != nil {
		t.Fatal(err)
	}
	pods := waitRollout(ctx, t, admin, obs, from)
	t.Logf("installed: %s run %s; %s leads", podNames(pods), from, obs.holder())

	nodes := createStreamNodes(ctx, t, c, admin)

	var manifest string
	t.Run("upgrade", func(t *testing.T) {
		stream := startCSRStream(ctx, t, admin, nodes)
		defer stream.stop()
		stream.waitDecided(ctx, t, 0, streamSettle)

		obs.setPhase("upgrade")
		t0 := time.Now()
		rel, err := env.HelmUpgrade(ctx, c.AdminKubeconfig(), ch, release, namespace, upgradeVals, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		manifest = rel.Manifest
		pods := waitRollout(ctx, t, admin, obs, to)
		t.Logf("helm upgrade --wait (revision %d) and the rollout took %s: %s run %s; %s leads",
			rel.Version, time.Since(t0).Round(100*time.Millisecond), podNames(pods), to, obs.holder())
		assertUpgraded(ctx, t, admin)

		// A drain: every pod evicted through the Eviction API, the leader
		// first, each retried while the PodDisruptionBudget refuses it.
		obs.setPhase("disruption")
		t1 := time.Now()
		evictAll(ctx, t, admin, obs, pods)
		pods = waitRollout(ctx, t, admin, obs, to)
		t.Logf("evicted every pod in %s: %s run %s; %s leads", time.Since(t1).Round(100*time.Millisecond), podNames(pods), to, obs.holder())
		obs.setPhase("settled")
		stream.waitDecided(ctx, t, stream.count(), streamSettle)

		stream.stop()
		stream.assertDecidedOnce(ctx, t, obs)
		obs.assertLeadership(t, pods)
		t.Logf("Service proxy: %s", proxy.summary())
		logFailedOpen(t, filepath.Join(c.Dir(), "logs", "kube-apiserver.log"))
	})
	if manifest == "" {
		t.Fatal("no upgraded release to uninstall")
	}

	t.Run("uninstall", func(t *testing.T) {
		uninstallAndCheck(ctx, t, c, admin, manifest, nodes[0])
	})

	obs.stop()
	tn.finish(t)
	t.Logf("TestChartLifecycle wall time: %s", time.Since(start).Round(100*time.Millisecond))
}

// lifecycleValues are the release's values: two replicas with leader
// election and the PodDisruptionBudget (the chart's defaults, spelled out).
// The upgrade changes the image tag, two controller settings that roll the
// pods, and the approval guard's failurePolicy to Fail, which makes a
// webhook left behind by the uninstall visible: a manual approval would fail.
func lifecycleValues(repo, tag string, caPEM []byte, upgraded bool) map[string]any {
	vals := chartValues(repo, tag, caPEM, 8080, 8081, 9443)
	vals["replicaCount"] = 2
	vals["podDisruptionBudget"] = map[string]any{"enabled": true, "minAvailable": 1}
	le := map[string]any{"enabled": true, "leaseDuration": "15s", "renewDeadline": "10s", "retryPeriod": "2s"}
	vals["leaderElection"] = le
	if upgraded {
		le["retryPeriod"] = "1s"
		vals["controller"] = map[string]any{"maxConcurrentReconciles": 32}
		vals["webhook"].(map[string]any)["approvalGuardFailurePolicy"] = "Fail"
	}
	return vals
}

// assertUpgraded checks that the upgraded values reached the objects.
func assertUpgraded(ctx context.Context, t *testing.T, admin kubernetes.Interface) {
	t.Helper()
	d, err := admin.AppsV1().Deployments(namespace).Get(ctx, fullname, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	args := d.Spec.Template.Spec.Containers[0].Args
	for _, want := range []string{"--leader-election-retry-period=1s", "--max-concurrent-reconciles=32"} {
		if !slices.Contains(args, want) {
			t.Errorf("the upgraded Deployment's args lack %s: %q", want, args)
		}
	}
	vwc, err := admin.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, fullname, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range vwc.Webhooks {
		if w.Name == "approval.csr.nodecsr.io" && (w.FailurePolicy == nil || *w.FailurePolicy != admissionregistrationv1.Fail) {
			t.Errorf("the upgraded approval guard's failurePolicy is %v, want Fail", w.FailurePolicy)
		}
	}
}

// writeEgressConfig writes the API server's egress selector configuration:
// the "cluster" network (webhooks and aggregated APIs named by a Service,
// and the kubelets) through an HTTP CONNECT proxy on a unix socket in dir.
func writeEgressConfig(dir string) (path, socket string, err error) {
	socket = filepath.Join(dir, "egress.sock")
	path = filepath.Join(dir, "egress-selector.yaml")
	cfg := fmt.Sprintf(`apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
  - name: cluster
    connection:
      proxyProtocol: HTTPConnect
      transport:
        uds:
          udsName: %s
`, socket)
	return path, socket, os.WriteFile(path, []byte(cfg), 0o600)
}

// serviceProxy is the API server's egress proxy for the "cluster" network,
// in place of kube-proxy: a CONNECT to a Service's cluster IP and port goes
// to a ready endpoint of the Service's EndpointSlices (round robin), at
// 127.0.0.1 and the endpoint's port. The endpoint's address is the pod's,
// which for a host-network pod is the node's own, non-loopback address: the
// suite never sends anything there, and the pod's sockets listen on
// loopback too.
type serviceProxy struct {
	ln    net.Listener
	cs    kubernetes.Interface
	logf  func(string, ...any)
	mu    sync.Mutex
	conns map[net.Conn]bool
	next  int
	// by counts connections per endpoint pod; refused those with no
	// ready endpoint.
	by      map[string]int
	refused int
	wg      sync.WaitGroup
}

func startServiceProxy(socket string, cs kubernetes.Interface, logf func(string, ...any)) (*serviceProxy, error) {
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return nil, err
	}
	p := &serviceProxy{ln: ln, cs: cs, logf: logf, conns: map[net.Conn]bool{}, by: map[string]int{}}
	p.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns[conn] = true
			p.mu.Unlock()
			p.wg.Go(func() {
				defer func() {
					p.mu.Lock()
					delete(p.conns, conn)
					p.mu.Unlock()
					conn.Close()
				}()
				p.handle(conn)
			})
		}
	})
	return p, nil
}

func (p *serviceProxy) handle(conn net.Conn) {
	br := bufio.NewReader(conn)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	if req.Method != http.MethodConnect {
		fmt.Fprint(conn, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	backend, pod, err := p.resolve(ctx, req.Host)
	cancel()
	if err != nil {
		p.mu.Lock()
		p.refused++
		p.mu.Unlock()
		fmt.Fprintf(conn, "HTTP/1.1 503 Service Unavailable\r\n\r\n")
		return
	}
	up, err := net.DialTimeout("tcp", backend, 5*time.Second)
	if err != nil {
		p.mu.Lock()
		p.refused++
		p.mu.Unlock()
		fmt.Fprintf(conn, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		return
	}
	defer up.Close()
	p.mu.Lock()
	p.by[pod]++
	p.mu.Unlock()
	fmt.Fprint(conn, "HTTP/1.1 200 Connection established\r\n\r\n")
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, br); done <- struct{}{} }()
	go func() { _, _ = io.Copy(conn, up); done <- struct{}{} }()
	<-done // either side closed: close both (deferred)
}

// resolve finds the Service whose cluster IP and port hostPort names and
// picks one of its ready endpoints.
func (p *serviceProxy) resolve(ctx context.Context, hostPort string) (backend, pod string, err error) {
	host, portStr, err := net.SplitHostPort(hostPort)
	if err != nil {
		return "", "", err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return "", "", err
	}
	svcs, err := p.cs.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", "", err
	}
	for _, svc := range svcs.Items {
		if !slices.Contains(svc.Spec.ClusterIPs, host) && svc.Spec.ClusterIP != host {
			continue
		}
		for _, sp := range svc.Spec.Ports {
			if int(sp.Port) != port {
				continue
			}
			eps, err := p.cs.DiscoveryV1().EndpointSlices(svc.Namespace).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc.Name})
			if err != nil {
				return "", "", err
			}
			type candidate struct {
				pod  string
				port int32
			}
			var cands []candidate
			for _, s := range eps.Items {
				var epPort *int32
				for _, ep := range s.Ports {
					if ptr.Deref(ep.Name, "") == sp.Name {
						epPort = ep.Port
					}
				}
				if epPort == nil {
					continue
				}
				for _, ep := range s.Endpoints {
					if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
						continue
					}
					name := strings.Join(ep.Addresses, ",")
					if ep.TargetRef != nil {
						name = ep.TargetRef.Name
					}
					cands = append(cands, candidate{pod: name, port: *epPort})
				}
			}
			if len(cands) == 0 {
				return "", "", fmt.Errorf("service %s/%s port %s has no ready endpoint", svc.Namespace, svc.Name, sp.Name)
			}
			sort.Slice(cands, func(i, j int) bool { return cands[i].pod < cands[j].pod })
			p.mu.Lock()
			c := cands[p.next%len(cands)]
			p.next++
			p.mu.Unlock()
			return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(c.port))), c.pod, nil
		}
	}
	return "", "", fmt.Errorf("no Service has the cluster address %s", hostPort)
}

func (p *serviceProxy) summary() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var parts []string
	for pod, n := range p.by {
		parts = append(parts, fmt.Sprintf("%s %d", pod, n))
	}
	sort.Strings(parts)
	return fmt.Sprintf("connections by endpoint: %s; refused (no ready endpoint): %d", strings.Join(parts, ", "), p.refused)
}

func (p *serviceProxy) close() error {
	err := p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// podAdapter is a mutating admission webhook of the test for the release's
// pods, in place of what this machine lacks: it applies adaptPodSpec (the
// node, the host network, the API server's loopback address, probes at
// 127.0.0.1) and gives each pod ports of its own, which two host-network
// pods on one node need. Nothing else of the chart's pod template changes.
type podAdapter struct {
	srv  *http.Server
	cs   kubernetes.Interface
	api  *url.URL
	logf func(string, ...any)
	mu   sync.Mutex
	used map[int]bool
}

const podAdapterName = "nodecsr-e2e-node-pod-adapter"

func startPodAdapter(ctx context.Context, cs kubernetes.Interface, api *url.URL, logf func(string, ...any)) (*podAdapter, error) {
	ca, err := testpki.NewCA("nodecsr-e2e-node-pod-adapter-ca")
	if err != nil {
		return nil, err
	}
	serving, err := ca.IssueServing("127.0.0.1")
	if err != nil {
		return nil, err
	}
	cert, err := tlsCertificate(serving.CertPEM, serving.KeyPEM)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	a := &podAdapter{cs: cs, api: api, logf: logf, used: map[int]bool{}}
	a.srv = &http.Server{Handler: a, TLSConfig: cert, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = a.srv.ServeTLS(ln, "", "") }()

	hookURL := "https://" + ln.Addr().String() + "/pods"
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: podAdapterName},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:         "pods.e2e-node.nodecsr.io",
			ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &hookURL, CABundle: ca.CertPEM},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule: admissionregistrationv1.Rule{
					APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"},
					Scope: ptr.To(admissionregistrationv1.NamespacedScope),
				},
			}},
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: namespace}},
			ObjectSelector:          &metav1.LabelSelector{MatchLabels: map[string]string{instanceLabel: release}},
			FailurePolicy:           ptr.To(admissionregistrationv1.Fail),
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          ptr.To[int32](10),
		}},
	}
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
		_ = a.srv.Close()
		return nil, err
	}
	return a, nil
}

func (a *podAdapter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var review admissionv1.AdmissionReview
	if err := json.NewDecoder(r.Body).Decode(&review); err != nil || review.Request == nil {
		http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
		return
	}
	resp := &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true}
	if patch, err := a.adapt(review.Request.Object.Raw); err != nil {
		resp.Allowed = false
		resp.Result = &metav1.Status{Message: "e2e pod adapter: " + err.Error()}
	} else {
		resp.Patch, resp.PatchType = patch, ptr.To(admissionv1.PatchTypeJSONPatch)
	}
	out := admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

func (a *podAdapter) adapt(raw []byte) ([]byte, error) {
	var pod corev1.Pod
	if err := json.Unmarshal(raw, &pod); err != nil {
		return nil, err
	}
	spec := pod.Spec.DeepCopy()
	adaptPodSpec(spec, a.api)
	ports, err := a.allocate(3)
	if err != nil {
		return nil, err
	}
	if err := setPodPorts(spec, map[string]int{"metrics": ports[0], "probes": ports[1], "webhook": ports[2]}); err != nil {
		return nil, err
	}
	a.logf("pod adapter: pod %s%s (%s) → node %s, host network, ports metrics %d, probes %d, webhook %d",
		pod.GenerateName, pod.Name, spec.Containers[0].Image, spec.NodeName, ports[0], ports[1], ports[2])
	return json.Marshal([]map[string]any{{"op": "replace", "path": "/spec", "value": spec}})
}

// allocate returns n ports free on 127.0.0.1 that no pod was given before.
func (a *podAdapter) allocate(n int) ([]int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []int
	for len(out) < n {
		p, err := cluster.FreePort()
		if err != nil {
			return nil, err
		}
		if !a.used[p] {
			a.used[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}

func (a *podAdapter) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return a.srv.Shutdown(ctx)
}

// portFlags are nodecsr-controller's flags for the chart's named ports.
var portFlags = map[string]struct{ flag, format string }{
	"metrics": {"--metrics-bind-address=", ":%d"},
	"probes":  {"--health-probe-bind-address=", ":%d"},
	"webhook": {"--webhook-port=", "%d"},
}

// setPodPorts moves the controller container's named ports (and the flags
// that bind them) to the given numbers; probes and the Service name the
// ports, so they follow. A host-network pod's host port is its container
// port.
func setPodPorts(spec *corev1.PodSpec, ports map[string]int) error {
	ctr := &spec.Containers[0]
	for name, port := range ports {
		f := portFlags[name]
		found := false
		for i, arg := range ctr.Args {
			if strings.HasPrefix(arg, f.flag) {
				ctr.Args[i] = f.flag + fmt.Sprintf(f.format, port)
				found = true
			}
		}
		if !found {
			return fmt.Errorf("container %s has no %s flag", ctr.Name, strings.TrimSuffix(f.flag, "="))
		}
		found = false
		for i := range ctr.Ports {
			if ctr.Ports[i].Name == name {
				ctr.Ports[i].ContainerPort, ctr.Ports[i].HostPort = int32(port), int32(port)
				found = true
			}
		}
		if !found {
			return fmt.Errorf("container %s has no port %s", ctr.Name, name)
		}
	}
	return nil
}

// observer follows the release's pods and the leader-election Lease.
type observer struct {
	mu    sync.Mutex
	phase string
	pods  map[string]*corev1.Pod
	// images is the image of every pod ever seen.
	images map[string]string
	// minReady is, per phase, the fewest pods Ready and not terminating.
	minReady map[string]int
	phases   []string
	leases   []leaseRecord
	stopCh   chan struct{}
	stopOnce sync.Once
}

type leaseRecord struct {
	at             time.Time
	holder         string
	acquire, renew time.Time
	transitions    int32
}

func startObserver(ctx context.Context, t *testing.T, admin kubernetes.Interface) *observer {
	t.Helper()
	o := &observer{phase: "install", pods: map[string]*corev1.Pod{}, images: map[string]string{}, minReady: map[string]int{}, phases: []string{"install"}, stopCh: make(chan struct{})}
	f := informers.NewSharedInformerFactoryWithOptions(admin, 0, informers.WithNamespace(namespace))
	podInf := f.Core().V1().Pods().Informer()
	_, err := podInf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { o.onPod(obj, false) },
		UpdateFunc: func(_, obj any) { o.onPod(obj, false) },
		DeleteFunc: func(obj any) { o.onPod(obj, true) },
	})
	if err != nil {
		t.Fatal(err)
	}
	leaseInf := f.Coordination().V1().Leases().Informer()
	_, err = leaseInf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    o.onLease,
		UpdateFunc: func(_, obj any) { o.onLease(obj) },
	})
	if err != nil {
		t.Fatal(err)
	}
	f.Start(o.stopCh)
	if !toolscache.WaitForCacheSync(ctx.Done(), podInf.HasSynced, leaseInf.HasSynced) {
		t.Fatal("the pod and Lease informers did not sync")
	}
	t.Cleanup(o.stop)
	return o
}

func (o *observer) stop() { o.stopOnce.Do(func() { close(o.stopCh) }) }

func (o *observer) onPod(obj any, deleted bool) {
	if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Labels[instanceLabel] != release {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if deleted {
		delete(o.pods, p.Name)
	} else {
		o.pods[p.Name] = p
		if len(p.Spec.Containers) > 0 {
			o.images[p.Name] = p.Spec.Containers[0].Image
		}
	}
	o.noteReadyLocked()
}

// noteReadyLocked records the ready count in the phase's minimum. The
// install phase counts only once a first pod was ready.
func (o *observer) noteReadyLocked() {
	n := len(o.readyLocked())
	if low, ok := o.minReady[o.phase]; ok {
		o.minReady[o.phase] = min(low, n)
	} else if o.phase != "install" || n > 0 {
		o.minReady[o.phase] = n
	}
}

func (o *observer) readyLocked() []string {
	var out []string
	for name, p := range o.pods {
		if p.DeletionTimestamp == nil && podReady(p) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func (o *observer) setPhase(phase string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.phase = phase
	o.phases = append(o.phases, phase)
	o.noteReadyLocked()
}

func (o *observer) onLease(obj any) {
	l, ok := obj.(*coordinationv1.Lease)
	if !ok || l.Name != fullname {
		return
	}
	r := leaseRecord{at: time.Now(), holder: ptr.Deref(l.Spec.HolderIdentity, ""), transitions: ptr.Deref(l.Spec.LeaseTransitions, 0)}
	if l.Spec.AcquireTime != nil {
		r.acquire = l.Spec.AcquireTime.Time
	}
	if l.Spec.RenewTime != nil {
		r.renew = l.Spec.RenewTime.Time
	}
	o.mu.Lock()
	o.leases = append(o.leases, r)
	o.mu.Unlock()
}

// holder is the Lease's holder as last seen.
func (o *observer) holder() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.leases) == 0 {
		return ""
	}
	return o.leases[len(o.leases)-1].holder
}

func (o *observer) image(pod string) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.images[pod]
}

// leaderGap is a time without a leader: from the previous holder's release
// (or, when it did not release, its last renewal) to the next acquisition.
type leaderGap struct {
	from, to       string
	start, end     time.Time
	released       bool
	transitionsNow int32
}

func (o *observer) gaps() []leaderGap {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []leaderGap
	cur, prev := "", ""
	var lastRenew, releasedAt time.Time
	released := false
	for _, r := range o.leases {
		switch {
		case r.holder == "":
			if cur != "" {
				prev, cur, released, releasedAt = cur, "", true, r.renew
			}
		case r.holder != cur:
			if cur != "" || prev != "" {
				g := leaderGap{from: cmpOr(cur, prev), to: r.holder, end: r.acquire, released: released, transitionsNow: r.transitions}
				g.start = lastRenew
				if released {
					g.start = releasedAt
				}
				out = append(out, g)
			}
			cur, prev, released = r.holder, "", false
			lastRenew = r.renew
		default:
			lastRenew = r.renew
		}
	}
	return out
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// assertLeadership checks what the rolling update and the
// PodDisruptionBudget promise, by counts, not by time: the rolling update
// (maxUnavailable 0) kept both replicas ready, the drain (PDB minAvailable
// 1) kept one, every holder of the Lease was one of the release's pods, and
// one of the final pods leads. It logs every leaderless gap.
func (o *observer) assertLeadership(t *testing.T, final []corev1.Pod) {
	t.Helper()
	o.mu.Lock()
	minReady := maps2(o.minReady)
	var holders []string
	for _, r := range o.leases {
		if r.holder != "" && !slices.Contains(holders, r.holder) {
			holders = append(holders, r.holder)
		}
	}
	images := maps2(o.images)
	records := len(o.leases)
	o.mu.Unlock()

	t.Logf("fewest pods Ready and not terminating, per phase: upgrade %d, disruption %d", minReady["upgrade"], minReady["disruption"])
	if got := minReady["upgrade"]; got < 2 {
		t.Errorf("during the rolling update only %d pods were ready; the Deployment's maxUnavailable 0 promises 2", got)
	}
	if got := minReady["disruption"]; got < 1 {
		t.Errorf("during the evictions %d pods were ready; the PodDisruptionBudget's minAvailable 1 promises 1", got)
	}
	for _, h := range holders {
		if _, ok := images[h]; !ok {
			t.Errorf("the Lease was held by %q, not a pod of the release", h)
		}
	}
	gaps := o.gaps()
	for _, g := range gaps {
		how := "released it"
		if !g.released {
			how = "did not release it; from its last renewal"
		}
		t.Logf("leaderless gap: %s (%s) → %s (%s): %s (%s; leaseTransitions %d)", g.from, images[g.from], g.to, images[g.to],
			g.end.Sub(g.start).Round(time.Millisecond), how, g.transitionsNow)
	}
	t.Logf("Lease %s/%s: %d updates observed, %d holders (%s), %d handovers", namespace, fullname, records, len(holders), strings.Join(holders, ", "), len(gaps))
	last := o.holder()
	if !slices.ContainsFunc(final, func(p corev1.Pod) bool { return p.Name == last }) {
		t.Errorf("the Lease is held by %q, which is not one of the final pods %s", last, podNames(final))
	}
	if len(gaps) < 2 {
		t.Errorf("%d leader handovers; the upgrade and the drain each replace the leader", len(gaps))
	}
}

func maps2[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func podNames(pods []corev1.Pod) string {
	var names []string
	for _, p := range pods {
		names = append(names, p.Name)
	}
	return strings.Join(names, ", ")
}

// waitRollout waits until the Deployment has rolled out: its status says so
// for the current generation, its two pods run image and are Ready, no
// other pod of the release is left, and one of them holds the Lease.
func waitRollout(ctx context.Context, t *testing.T, admin kubernetes.Interface, obs *observer, image string) []corev1.Pod {
	t.Helper()
	var last string
	var pods []corev1.Pod
	err := wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		d, err := admin.AppsV1().Deployments(namespace).Get(ctx, fullname, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		s := d.Status
		last = fmt.Sprintf("generation %d observed %d; replicas %d updated %d ready %d available %d", d.Generation, s.ObservedGeneration, s.Replicas, s.UpdatedReplicas, s.ReadyReplicas, s.AvailableReplicas)
		if s.ObservedGeneration < d.Generation || s.Replicas != 2 || s.UpdatedReplicas != 2 || s.AvailableReplicas != 2 {
			return false, nil
		}
		list, err := admin.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: instanceLabel + "=" + release})
		if err != nil {
			return false, err
		}
		pods = nil
		for _, p := range list.Items {
			if p.DeletionTimestamp != nil || p.Spec.Containers[0].Image != image || !podReady(&p) {
				last += fmt.Sprintf("; pod %s: %s", p.Name, podSummary(&p))
				return false, nil
			}
			pods = append(pods, p)
		}
		h := obs.holder()
		if len(pods) != 2 || !slices.ContainsFunc(pods, func(p corev1.Pod) bool { return p.Name == h }) {
			last += fmt.Sprintf("; %d pods, Lease held by %q", len(pods), h)
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("the Deployment did not roll out %s: %v (last: %s)", image, err, last)
	}
	return pods
}

// evictAll evicts the pods as `kubectl drain` does, the Lease holder first:
// through the Eviction API, each retried while the PodDisruptionBudget
// refuses it (429).
func evictAll(ctx context.Context, t *testing.T, admin kubernetes.Interface, obs *observer, pods []corev1.Pod) {
	t.Helper()
	leader := obs.holder()
	slices.SortFunc(pods, func(a, b corev1.Pod) int {
		switch {
		case a.Name == leader:
			return -1
		case b.Name == leader:
			return 1
		}
		return strings.Compare(a.Name, b.Name)
	})
	for _, p := range pods {
		refused := 0
		err := wait.PollUntilContextCancel(ctx, 500*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			err := admin.CoreV1().Pods(namespace).EvictV1(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: namespace}})
			switch {
			case err == nil:
				return true, nil
			case apierrors.IsTooManyRequests(err):
				refused++
				return false, nil
			default:
				return false, err
			}
		})
		if err != nil {
			t.Fatalf("evicting %s: %v", p.Name, err)
		}
		role := "follower"
		if p.Name == leader {
			role = "leader"
		}
		t.Logf("evicted %s (the %s) after %d refusals by the PodDisruptionBudget", p.Name, role, refused)
	}
}

// streamNode is a node identity that files renewals.
type streamNode struct {
	name   string
	client kubernetes.Interface
}

// createStreamNodes creates the Node objects of the stream's identities
// (renewal.requireNodeExists) and a client for each, authenticated by a
// client certificate as system:node:<name>.
func createStreamNodes(ctx context.Context, t *testing.T, c *cluster.Cluster, admin kubernetes.Interface) []streamNode {
	t.Helper()
	var nodes []streamNode
	for i := range streamNodes {
		name := fmt.Sprintf("%s%02d", streamNodeName, i)
		if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		cfg, err := c.NodeConfig(name)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, streamNode{name: name, client: kubernetes.NewForConfigOrDie(cfg)})
	}
	return nodes
}

// csrStream files renewals while the release is upgraded and disrupted:
// one every streamInterval, by the next node identity with no CSR pending
// (a kubelet has at most one in flight), at most streamMax.
type csrStream struct {
	admin    kubernetes.Interface
	nodes    []streamNode
	mu       sync.Mutex
	filed    []filedCSR
	pending  map[string]string // node → its undecided CSR
	decided  map[string]bool
	errs     []string
	skipped  int
	informer chan struct{}
	stopCh   chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

type filedCSR struct {
	name, node string
	uid        string
	at         time.Time
}

func startCSRStream(ctx context.Context, t *testing.T, admin kubernetes.Interface, nodes []streamNode) *csrStream {
	t.Helper()
	s := &csrStream{admin: admin, nodes: nodes, pending: map[string]string{}, decided: map[string]bool{},
		informer: make(chan struct{}), stopCh: make(chan struct{}), done: make(chan struct{})}
	f := informers.NewSharedInformerFactory(admin, 0)
	inf := f.Certificates().V1().CertificateSigningRequests().Informer()
	_, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    s.onCSR,
		UpdateFunc: func(_, obj any) { s.onCSR(obj) },
	})
	if err != nil {
		t.Fatal(err)
	}
	f.Start(s.informer)
	if !toolscache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("the CSR informer did not sync")
	}
	go s.run(ctx)
	t.Cleanup(func() { s.stop(); close(s.informer) })
	return s
}

func (s *csrStream) onCSR(obj any) {
	csr, ok := obj.(*certificatesv1.CertificateSigningRequest)
	if !ok || !strings.HasPrefix(csr.Name, streamPrefix) || env.Decision(csr) == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.decided[csr.Name] = true
	for node, name := range s.pending {
		if name == csr.Name {
			delete(s.pending, node)
		}
	}
}

func (s *csrStream) run(ctx context.Context) {
	defer close(s.done)
	tick := time.NewTicker(streamInterval)
	defer tick.Stop()
	next := 0
	for seq := 0; seq < streamMax; {
		select {
		case <-s.stopCh:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s.mu.Lock()
		var node *streamNode
		for i := range s.nodes {
			cand := &s.nodes[(next+i)%len(s.nodes)]
			if _, busy := s.pending[cand.name]; !busy {
				node, next = cand, (next+i+1)%len(s.nodes)
				break
			}
		}
		if node == nil {
			s.skipped++
			s.mu.Unlock()
			continue
		}
		name := fmt.Sprintf("%s%04d", streamPrefix, seq)
		seq++
		s.pending[node.name] = name
		s.mu.Unlock()

		csr := csrtest.Build(csrtest.WithNodeName(node.name), csrtest.WithName(name))
		csr.CreationTimestamp = metav1.Time{}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		created, err := node.client.CertificatesV1().CertificateSigningRequests().Create(cctx, csr, metav1.CreateOptions{})
		cancel()
		s.mu.Lock()
		if err != nil {
			s.errs = append(s.errs, fmt.Sprintf("%s by %s: %v", name, node.name, err))
			delete(s.pending, node.name)
		} else {
			s.filed = append(s.filed, filedCSR{name: name, node: node.name, uid: string(created.UID), at: time.Now()})
			if s.decided[name] {
				delete(s.pending, node.name) // decided before Create returned
			}
		}
		s.mu.Unlock()
	}
}

// count is the number of CSRs filed so far.
func (s *csrStream) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.filed)
}

// waitDecided waits until n CSRs filed after the first since are decided.
func (s *csrStream) waitDecided(ctx context.Context, t *testing.T, since, n int) {
	t.Helper()
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(context.Context) (bool, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		done := 0
		for _, f := range s.filed[min(since, len(s.filed)):] {
			if s.decided[f.name] {
				done++
			}
		}
		return done >= n, nil
	})
	if err != nil {
		t.Fatalf("%d CSRs filed after the first %d were not decided: %v", n, since, err)
	}
}

func (s *csrStream) stop() {
	s.stopOnce.Do(func() { close(s.stopCh) })
	<-s.done
}

// assertDecidedOnce checks every CSR the stream filed: it was decided
// (Approved, RenewalApproved), with exactly one Approved or Denied
// condition, and exactly one decision Event by nodecsr. It logs who decided
// them and how many went through the mutating webhook (label).
func (s *csrStream) assertDecidedOnce(ctx context.Context, t *testing.T, obs *observer) {
	t.Helper()
	s.mu.Lock()
	filed := slices.Clone(s.filed)
	errs := slices.Clone(s.errs)
	skipped := s.skipped
	s.mu.Unlock()
	if len(filed) == 0 {
		t.Fatal("the stream filed no CSR")
	}
	for _, e := range errs {
		t.Errorf("creating a CSR failed (a webhook outage must never block CSRs): %s", e)
	}
	span := filed[len(filed)-1].at.Sub(filed[0].at)
	t.Logf("stream: %d renewals filed by %d node identities in %s (%d ticks skipped: every node had one pending)",
		len(filed), len(s.nodes), span.Round(100*time.Millisecond), skipped)

	// Every CSR decided.
	byName := map[string]*certificatesv1.CertificateSigningRequest{}
	var undecided []string
	err := wait.PollUntilContextCancel(ctx, 500*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		list, err := s.admin.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		clear(byName)
		for i := range list.Items {
			byName[list.Items[i].Name] = &list.Items[i]
		}
		undecided = undecided[:0]
		for _, f := range filed {
			if csr := byName[f.name]; csr == nil || env.Decision(csr) == nil {
				undecided = append(undecided, f.name)
			}
		}
		return len(undecided) == 0, nil
	})
	if err != nil {
		t.Fatalf("%d of %d CSRs were never decided (%v): %s", len(undecided), len(filed), err, strings.Join(undecided, " "))
	}

	// Exactly one decision each, the right one.
	labelled := 0
	var unlabelled []string
	for _, f := range filed {
		csr := byName[f.name]
		if string(csr.UID) != f.uid {
			t.Errorf("CSR %s: UID %s, filed as %s", f.name, csr.UID, f.uid)
		}
		var decisions []string
		for _, c := range csr.Status.Conditions {
			if c.Type == certificatesv1.CertificateApproved || c.Type == certificatesv1.CertificateDenied {
				decisions = append(decisions, string(c.Type)+"/"+c.Reason)
			}
		}
		if len(decisions) != 1 || decisions[0] != string(certificatesv1.CertificateApproved)+"/"+approver.ReasonRenewalApproved {
			t.Errorf("CSR %s by %s: decisions %v, want exactly [Approved/%s]", f.name, f.node, decisions, approver.ReasonRenewalApproved)
		}
		if csr.Labels[webhook.LabelNodeName] == f.node {
			labelled++
		} else {
			unlabelled = append(unlabelled, f.name)
		}
	}

	// Exactly one decision Event each. The Event writer and a new
	// leader's repair pass may write an Event after the condition: wait
	// until each CSR has one, then count.
	uids := map[string]string{}
	for _, f := range filed {
		uids[f.uid] = f.name
	}
	var perCSR map[string][]string // name → reporting instances
	var missing []string
	err = wait.PollUntilContextCancel(ctx, 500*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		evs, err := s.admin.EventsV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		perCSR = map[string][]string{}
		for _, ev := range evs.Items {
			name, ours := uids[string(ev.Regarding.UID)]
			if !ours || ev.ReportingController != approver.Component || (ev.Action != "Approved" && ev.Action != "Denied") {
				continue
			}
			perCSR[name] = append(perCSR[name], ev.ReportingInstance)
		}
		missing = missing[:0]
		for _, f := range filed {
			if len(perCSR[f.name]) == 0 {
				missing = append(missing, f.name)
			}
		}
		return len(missing) == 0, nil
	})
	if err != nil {
		t.Errorf("%d CSRs have no decision Event (%v): %s", len(missing), err, strings.Join(missing, " "))
	}
	byInstance := map[string]int{}
	for _, f := range filed {
		instances := perCSR[f.name]
		if len(instances) > 1 {
			t.Errorf("CSR %s has %d decision Events (by %v), want 1", f.name, len(instances), instances)
		}
		for _, in := range instances {
			byInstance[in]++
		}
	}
	var parts []string
	for in, n := range byInstance {
		parts = append(parts, fmt.Sprintf("%s (%s) %d", in, obs.image(in), n))
	}
	sort.Strings(parts)
	t.Logf("decisions: all %d Approved/%s exactly once, one decision Event each; by instance: %s", len(filed), approver.ReasonRenewalApproved, strings.Join(parts, ", "))
	t.Logf("%d of %d CSRs carry the %s label of the mutating webhook, reached through the chart's Service; without it (the webhook failed open): %v",
		labelled, len(filed), webhook.LabelNodeName, unlabelled)
	if labelled == 0 {
		t.Errorf("no CSR went through the mutating webhook: the API server never reached the chart's Service")
	}
	if len(byInstance) < 2 {
		t.Errorf("every decision came from %v: no handover happened while CSRs were filed", byInstance)
	}
}

// releaseObject is one object of a release's manifest.
type releaseObject struct {
	gvr            schema.GroupVersionResource
	kind, ns, name string
	namespaced     bool
	// kept: annotated helm.sh/resource-policy=keep (the inventory's CRD
	// with crds.keep), so helm uninstall leaves it on purpose.
	kept bool
}

func (o releaseObject) String() string {
	if o.ns == "" {
		return o.kind + "/" + o.name
	}
	return o.kind + "/" + o.ns + "/" + o.name
}

// get reads the object from the API server (only its error matters here).
func (o releaseObject) get(ctx context.Context, dyn dynamic.Interface) error {
	ri := dyn.Resource(o.gvr)
	var err error
	if o.namespaced {
		_, err = ri.Namespace(o.ns).Get(ctx, o.name, metav1.GetOptions{})
	} else {
		_, err = ri.Get(ctx, o.name, metav1.GetOptions{})
	}
	return err
}

// manifestObjects parses a release manifest into its objects.
func manifestObjects(t *testing.T, mapper meta.RESTMapper, manifest string) []releaseObject {
	t.Helper()
	var out []releaseObject
	for _, doc := range releaseutil.SplitManifests(manifest) {
		var u unstructured.Unstructured
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatal(err)
		}
		if len(u.Object) == 0 {
			continue
		}
		gvk := u.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s: %v", gvk, err)
		}
		o := releaseObject{gvr: m.Resource, kind: gvk.Kind, name: u.GetName(), namespaced: m.Scope.Name() == meta.RESTScopeNameNamespace,
			kept: u.GetAnnotations()["helm.sh/resource-policy"] == "keep"}
		if o.namespaced {
			o.ns = cmpOr(u.GetNamespace(), namespace)
		}
		out = append(out, o)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// objectEvent is one watch event of a release object, with the
// resourceVersion the API server gave the change.
type objectEvent struct {
	rv   int64
	typ  watch.EventType
	what string // kind/ns/name
	kind string
	at   time.Time
}

// releaseWatch records every change of the release's objects (and of
// anything else labelled with the release, like Helm's hook objects) from
// now on.
type releaseWatch struct {
	mu     sync.Mutex
	events []objectEvent
	errs   []error
	wg     sync.WaitGroup
	cancel context.CancelFunc
}

func watchRelease(ctx context.Context, t *testing.T, dyn dynamic.Interface, objs []releaseObject) *releaseWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	w := &releaseWatch{cancel: cancel}
	seen := map[schema.GroupVersionResource]string{}
	for _, o := range objs {
		seen[o.gvr] = o.kind
	}
	for gvr, kind := range seen {
		ri := dyn.Resource(gvr)
		list, err := ri.List(ctx, metav1.ListOptions{LabelSelector: instanceLabel + "=" + release})
		if err != nil {
			t.Fatalf("list %s: %v", gvr, err)
		}
		wi, err := ri.Watch(ctx, metav1.ListOptions{LabelSelector: instanceLabel + "=" + release, ResourceVersion: list.GetResourceVersion()})
		if err != nil {
			t.Fatalf("watch %s: %v", gvr, err)
		}
		w.wg.Go(func() {
			defer wi.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case ev, ok := <-wi.ResultChan():
					if !ok {
						if ctx.Err() == nil {
							w.mu.Lock()
							w.errs = append(w.errs, fmt.Errorf("the watch of %s ended", gvr))
							w.mu.Unlock()
						}
						return
					}
					u, ok := ev.Object.(*unstructured.Unstructured)
					if !ok {
						continue
					}
					rv, _ := strconv.ParseInt(u.GetResourceVersion(), 10, 64)
					what := kind + "/" + u.GetName()
					if u.GetNamespace() != "" {
						what = kind + "/" + u.GetNamespace() + "/" + u.GetName()
					}
					w.mu.Lock()
					w.events = append(w.events, objectEvent{rv: rv, typ: ev.Type, what: what, kind: kind, at: time.Now()})
					w.mu.Unlock()
				}
			}
		})
	}
	return w
}

func (w *releaseWatch) stop() { w.cancel(); w.wg.Wait() }

// sorted is the events in the API server's order. A resourceVersion is
// opaque to clients in general; with etcd, as here, it is etcd's global
// revision of the change, which orders changes across every kind.
func (w *releaseWatch) sorted() []objectEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := slices.Clone(w.events)
	sort.SliceStable(out, func(i, j int) bool { return out[i].rv < out[j].rv })
	return out
}

// uninstallAndCheck uninstalls the release and checks the order of the
// deletions (the webhook configurations first), that CSRs are still
// created and manually approved afterwards, and that nothing labelled with
// the release remains anywhere.
func uninstallAndCheck(ctx context.Context, t *testing.T, c *cluster.Cluster, admin kubernetes.Interface, manifest string, node streamNode) {
	t.Helper()
	cfg := c.AdminConfig()
	// The leftover check lists deprecated kinds too (v1 Endpoints,
	// ComponentStatus): not worth a warning.
	cfg.WarningHandler = rest.NoWarnings{}
	dyn := dynamic.NewForConfigOrDie(cfg)
	groups, err := restmapper.GetAPIGroupResources(admin.Discovery())
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	// What Helm keeps on purpose (resource-policy keep) must stay; every
	// other object of the release must go.
	var objs, kept []releaseObject
	var names []string
	for _, o := range manifestObjects(t, mapper, manifest) {
		names = append(names, o.String())
		if o.kept {
			kept = append(kept, o)
			continue
		}
		objs = append(objs, o)
	}
	t.Logf("the release has %d objects, %d of them kept on uninstall: %s", len(names), len(kept), strings.Join(names, ", "))

	w := watchRelease(ctx, t, dyn, objs)
	defer w.stop()
	t0 := time.Now()
	var helmLog []string
	var logMu sync.Mutex
	res, err := env.HelmUninstall(ctx, c.AdminKubeconfig(), release, namespace, func(format string, args ...any) {
		logMu.Lock()
		helmLog = append(helmLog, fmt.Sprintf(format, args...))
		logMu.Unlock()
	})
	took := time.Since(t0)
	logMu.Lock()
	t.Logf("helm uninstall --debug:\n  %s", strings.Join(helmLog, "\n  "))
	logMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("helm uninstall returned in %s: %s", took.Round(time.Millisecond), cmpOr(res.Info, "(nothing kept)"))

	// Right away: no object of the manifest is left (none has a
	// finalizer; the Deployment goes with background propagation).
	var still []string
	for _, o := range objs {
		err := o.get(ctx, dyn)
		if !apierrors.IsNotFound(err) {
			still = append(still, fmt.Sprintf("%s (%v)", o, err))
		}
	}
	if len(still) > 0 {
		t.Errorf("after helm uninstall returned, these objects of the release remain: %s", strings.Join(still, ", "))
	}
	for _, o := range kept {
		err := o.get(ctx, dyn)
		if err != nil {
			t.Errorf("%s is annotated helm.sh/resource-policy=keep but is gone after helm uninstall: %v", o, err)
		}
	}

	// The order of the deletions, as the API server made them.
	err = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(context.Context) (bool, error) {
		deleted := map[string]bool{}
		for _, e := range w.sorted() {
			if e.typ == watch.Deleted {
				deleted[e.what] = true
			}
		}
		for _, o := range objs {
			if !deleted[o.String()] {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Errorf("the watches did not see every object of the release deleted: %v", err)
	}
	w.stop()
	for _, e := range w.errs {
		t.Error(e)
	}
	assertUninstallOrder(t, objs, w.sorted())

	// CSRs still work: a kubelet client CSR is created (no webhook is
	// called: it carries no label of the mutating webhook), and an
	// administrator approves it by hand through the approval subresource,
	// which the approval guard (failurePolicy Fail since the upgrade) would
	// refuse if its configuration had outlived its Service.
	csr := csrtest.Build(csrtest.WithNodeName(node.name), csrtest.WithName("after-uninstall"))
	csr.CreationTimestamp = metav1.Time{}
	created, err := node.client.CertificatesV1().CertificateSigningRequests().Create(ctx, csr, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating a kubelet client CSR after the uninstall: %v", err)
	}
	if v, ok := created.Labels[webhook.LabelNodeName]; ok {
		t.Errorf("CSR %s created after the uninstall carries %s=%s: a mutating webhook still ran", created.Name, webhook.LabelNodeName, v)
	}
	created.Status.Conditions = append(created.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
		Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue,
		Reason: "AdminApproved", Message: "approved by hand after nodecsr was uninstalled",
	})
	if _, err := admin.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, created.Name, created, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("approving CSR %s by hand after the uninstall: %v", created.Name, err)
	}
	signed, err := env.WaitDecided(ctx, admin, created.Name, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		signed, err = admin.CertificatesV1().CertificateSigningRequests().Get(ctx, created.Name, metav1.GetOptions{})
		return err == nil && len(signed.Status.Certificate) > 0, err
	})
	if err != nil {
		t.Fatalf("CSR %s approved by hand was not signed: %v", created.Name, err)
	}
	t.Logf("after the uninstall: CSR %s created without any webhook, approved by hand through the approval subresource, and signed", created.Name)

	assertNothingLabelled(ctx, t, admin, dyn, objs)
}

// assertUninstallOrder checks that no webhook configuration of the release
// existed any more when its Service or its Deployment was deleted: the API
// server never called a webhook whose Service or pods were already gone.
func assertUninstallOrder(t *testing.T, objs []releaseObject, events []objectEvent) {
	t.Helper()
	isWebhookKind := func(kind string) bool {
		return kind == "MutatingWebhookConfiguration" || kind == "ValidatingWebhookConfiguration"
	}
	var lines []string
	var lastWebhook, service, deployment int64 = 0, -1, -1
	// Before the uninstall every configuration of the manifest existed.
	live := map[string]bool{}
	for _, o := range objs {
		if isWebhookKind(o.kind) {
			live[o.String()] = true
		}
	}
	var liveAtService []string
	for _, e := range events {
		lines = append(lines, fmt.Sprintf("rv %d %s %s", e.rv, e.typ, e.what))
		isWebhook := isWebhookKind(e.kind)
		switch {
		case isWebhook && e.typ == watch.Deleted:
			lastWebhook = e.rv
			delete(live, e.what)
		case isWebhook:
			lastWebhook = e.rv
			live[e.what] = true
		case e.kind == "Service" && e.typ == watch.Deleted && service < 0:
			service = e.rv
			for k := range live {
				liveAtService = append(liveAtService, k)
			}
			sort.Strings(liveAtService)
		case e.kind == "Deployment" && e.typ == watch.Deleted && deployment < 0:
			deployment = e.rv
		}
	}
	t.Logf("changes of the release's objects during the uninstall, in the API server's order:\n  %s", strings.Join(lines, "\n  "))
	if service < 0 || deployment < 0 {
		t.Errorf("the Service (rv %d) or the Deployment (rv %d) was not seen deleted", service, deployment)
		return
	}
	if lastWebhook == 0 {
		t.Errorf("no change of a webhook configuration was seen")
		return
	}
	if lastWebhook > service || lastWebhook > deployment {
		t.Errorf("the webhook configurations were deleted after the Service (rv %d) or the Deployment (rv %d): their last change is rv %d; webhooks pointed at a Service that no longer existed (live at the Service's deletion: %v)",
			service, deployment, lastWebhook, liveAtService)
	} else {
		t.Logf("uninstall order: the last webhook configuration was gone at rv %d, before the Service (rv %d) and the Deployment (rv %d)", lastWebhook, service, deployment)
	}
}

// assertNothingLabelled lists every listable resource of every API group
// cluster-wide for objects labelled with the release until none is left
// (the pods stop through the kubelet, the garbage collector removes the
// ReplicaSets and EndpointSlices), and checks that Helm's release records
// are gone.
func assertNothingLabelled(ctx context.Context, t *testing.T, admin kubernetes.Interface, dyn dynamic.Interface, objs []releaseObject) {
	t.Helper()
	lists, err := admin.Discovery().ServerPreferredResources()
	if err != nil && !discovery.IsGroupDiscoveryFailedError(err) {
		t.Fatal(err)
	}
	var gvrs []schema.GroupVersionResource
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range l.APIResources {
			if slices.Contains(r.Verbs, "list") && !strings.Contains(r.Name, "/") {
				gvrs = append(gvrs, gv.WithResource(r.Name))
			}
		}
	}
	t0 := time.Now()
	firstSeen := map[string]time.Duration{}
	lastSeen := map[string]time.Duration{}
	var left []string
	err = wait.PollUntilContextCancel(ctx, 500*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		left = left[:0]
		for _, gvr := range gvrs {
			list, err := dyn.Resource(gvr).List(ctx, metav1.ListOptions{LabelSelector: instanceLabel + "=" + release})
			if err != nil {
				if apierrors.IsNotFound(err) || apierrors.IsMethodNotSupported(err) {
					continue
				}
				return false, fmt.Errorf("list %s: %w", gvr, err)
			}
			for _, u := range list.Items {
				what := gvr.Resource + "/" + u.GetName()
				if u.GetNamespace() != "" {
					what = gvr.Resource + "/" + u.GetNamespace() + "/" + u.GetName()
				}
				left = append(left, what)
				if _, ok := firstSeen[what]; !ok {
					firstSeen[what] = time.Since(t0)
				}
				lastSeen[what] = time.Since(t0)
			}
		}
		return len(left) == 0, nil
	})
	if err != nil {
		t.Errorf("objects labelled %s=%s remain (%v): %s", instanceLabel, release, err, strings.Join(left, ", "))
	}
	var lingered []string
	for what, d := range lastSeen {
		lingered = append(lingered, fmt.Sprintf("%s (gone after %s)", what, d.Round(100*time.Millisecond)))
	}
	sort.Strings(lingered)
	t.Logf("leftover check: %d listable resource types searched cluster-wide for %s=%s; what the controllers still removed after Helm returned: %s",
		len(gvrs), instanceLabel, release, cmpOr(strings.Join(lingered, ", "), "nothing"))
	for _, o := range objs {
		if _, ok := firstSeen[o.String()]; ok {
			t.Errorf("%s of the release was still there after helm uninstall returned", o)
		}
	}
	secrets, err := admin.CoreV1().Secrets(namespace).List(ctx, metav1.ListOptions{LabelSelector: "owner=helm,name=" + release})
	if err != nil {
		t.Fatal(err)
	}
	if len(secrets.Items) > 0 {
		t.Errorf("Helm's release records remain: %d Secrets", len(secrets.Items))
	}
	// What remains and is not the release's: the controller's own Lease
	// and the Events it wrote (no release label; they go with the
	// namespace), and what the test itself created.
	if l, err := admin.CoordinationV1().Leases(namespace).Get(ctx, fullname, metav1.GetOptions{}); err == nil {
		t.Logf("not the release's and left in place: Lease %s/%s (holder %q, written by nodecsr-controller's leader election)", namespace, l.Name, ptr.Deref(l.Spec.HolderIdentity, ""))
	}
}

// logFailedOpen logs the API server's account of webhook calls that failed
// and were ignored (failurePolicy Ignore).
func logFailedOpen(t *testing.T, apiLog string) {
	t.Helper()
	data, err := os.ReadFile(apiLog)
	if err != nil {
		t.Log(err)
		return
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, "failing open") || strings.Contains(l, "Failed calling webhook") {
			lines = append(lines, l)
		}
	}
	sample := ""
	if len(lines) > 0 {
		sample = ":\n  " + strings.Join(lines[:min(len(lines), 10)], "\n  ")
	}
	t.Logf("the API server logged %d webhook calls that failed open%s", len(lines), sample)
}

// tlsCertificate is a server TLS configuration with the given key pair.
func tlsCertificate(certPEM, keyPEM []byte) (*tls.Config, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
