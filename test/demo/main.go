// Command demo shows nodecsr at work on a local control plane: it starts etcd,
// kube-apiserver and kube-controller-manager's signer, runs the real
// nodecsr-controller (default policy plus a denied control-plane name pattern,
// admission webhooks on) and the real nodecsr-request for a few nodes through
// bootstrap and renewal, lets an attacker try a takeover and a hostile CSR,
// prints what happened, and stops everything.
//
//	go run ./test/demo          # or: make demo
//	go run ./test/demo --keep   # leave the cluster running until Ctrl-C
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/webhook"
)

const demoPolicy = `apiVersion: nodecsr.io/v1alpha1
kind: Policy
spec:
  # The default policy, plus: nobody may claim a control-plane node's name.
  nodeNames:
    denied: ["control-plane-.*"]
`

func main() {
	keep := flag.Bool("keep", false, "leave the cluster running and print a kubeconfig until Ctrl-C")
	nodes := flag.Int("nodes", 3, "number of worker nodes to bootstrap and renew")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *keep, *nodes); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

type demo struct {
	c       *cluster.Cluster
	admin   kubernetes.Interface
	bin     string
	work    string
	results []result
	out     io.Writer
}

type result struct {
	who, asks, path, decision, reason, took, note string
}

func run(ctx context.Context, keep bool, nodes int) (err error) {
	start := time.Now()
	d := &demo{out: os.Stdout}
	step := func(format string, args ...any) { fmt.Fprintf(d.out, "· "+format+"\n", args...) }

	if d.work, err = os.MkdirTemp("", "nodecsr-demo-"); err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(d.work) }()
	d.bin = filepath.Join(d.work, "bin")
	step("building nodecsr-controller and nodecsr-request")
	if err := cluster.BuildBinaries(ctx, d.bin); err != nil {
		return err
	}

	step("starting etcd, kube-apiserver %s and kube-controller-manager (csrsigning only; its csrapproving is off)", cluster.KubeVersion)
	d.c, err = cluster.Start(ctx, cluster.Options{})
	if err != nil {
		return err
	}
	defer func() {
		step("stopping everything")
		if stopErr := d.c.Stop(); stopErr != nil && err == nil {
			err = stopErr
		}
	}()
	d.admin = d.c.AdminClient()
	if err := d.c.ApplyKubeadmRBAC(ctx); err != nil {
		return err
	}
	// nodecsr-controller's inventory (on by default) needs its CRD.
	if err := cluster.InstallInventoryCRD(ctx, d.c.AdminConfig()); err != nil {
		return err
	}

	controller, err := d.startController(ctx)
	if err != nil {
		return err
	}
	defer controller.stop()
	step("nodecsr-controller is ready (policy: default + control-plane-* denied; webhooks on %s)", controller.webhookURL)

	// An existing control-plane node: the target of the takeover attempt.
	if _, err := d.admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "control-plane-1"}}, metav1.CreateOptions{}); err != nil {
		return err
	}

	workers := make([]string, nodes)
	for i := range workers {
		workers[i] = fmt.Sprintf("worker-%d", i+1)
	}
	step("bootstrapping %d nodes with bootstrap tokens", nodes)
	for _, name := range workers {
		if err := d.bootstrap(ctx, name); err != nil {
			return err
		}
	}
	step("each node renews with its own certificate")
	for _, name := range workers {
		if err := d.renew(ctx, name); err != nil {
			return err
		}
	}
	step("an attacker with a bootstrap token tries to become control-plane-1, sends a hostile CSR, and tries again with the webhooks off")
	if err := d.attack(ctx); err != nil {
		return err
	}

	d.report()
	if err := d.events(ctx); err != nil {
		return err
	}
	if err := d.inventory(ctx, workers); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "\nDemo finished in %s.\n", time.Since(start).Round(100*time.Millisecond))

	if keep {
		fmt.Fprintf(d.out, "\nThe cluster keeps running. In another shell:\n\n  export KUBECONFIG=%s\n  kubectl get csr\n  kubectl get events -n default --field-selector involvedObject.kind=CertificateSigningRequest\n  kubectl get nodecertificates -o wide\n  curl -s http://%s/metrics | grep ^nodecsr_\n\nPress Ctrl-C to stop.\n",
			d.c.AdminKubeconfig(), controller.metricsAddr)
		<-ctx.Done()
	}
	return nil
}

type controllerProcess struct {
	cmd         *exec.Cmd
	done        chan struct{} // closed when the process has exited
	exitErr     error
	webhookURL  string
	metricsAddr string
	log         string
}

func (p *controllerProcess) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (d *demo) startController(ctx context.Context) (*controllerProcess, error) {
	certDir := filepath.Join(d.work, "webhook-certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return nil, err
	}
	serving, err := d.c.ClusterCA().IssueServing("127.0.0.1")
	if err != nil {
		return nil, err
	}
	if _, _, err := serving.WriteFiles(certDir, "tls"); err != nil { // tls.crt, tls.key as a mounted Secret
		return nil, err
	}
	policy := filepath.Join(d.work, "policy.yaml")
	if err := os.WriteFile(policy, []byte(demoPolicy), 0o600); err != nil {
		return nil, err
	}
	ports := make([]int, 3)
	for i := range ports {
		if ports[i], err = cluster.FreePort(); err != nil {
			return nil, err
		}
	}
	p := &controllerProcess{
		webhookURL:  "https://127.0.0.1:" + strconv.Itoa(ports[0]),
		metricsAddr: "127.0.0.1:" + strconv.Itoa(ports[1]),
		log:         filepath.Join(d.c.Dir(), "logs", "nodecsr-controller.log"),
		done:        make(chan struct{}),
	}
	logFile, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(filepath.Join(d.bin, "nodecsr-controller"),
		"--kubeconfig", d.c.AdminKubeconfig(),
		"--policy", policy,
		"--webhook-cert-dir", certDir, "--webhook-host", "127.0.0.1", "--webhook-port", strconv.Itoa(ports[0]),
		"--metrics-bind-address", p.metricsAddr,
		"--health-probe-bind-address", "127.0.0.1:"+strconv.Itoa(ports[2]),
		// The inventory coalesces each node's writes; a short interval
		// shows the renewals' entries within the demo's few seconds.
		"--inventory-interval", "1s",
	)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := cluster.Spawn(p.cmd); err != nil {
		return nil, err
	}
	go func() {
		p.exitErr = p.cmd.Wait()
		_ = logFile.Close()
		close(p.done)
	}()

	ready := "http://127.0.0.1:" + strconv.Itoa(ports[2]) + "/readyz"
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 60*time.Second, true, func(context.Context) (bool, error) {
		select {
		case <-p.done:
			return false, fmt.Errorf("nodecsr-controller exited: %v", p.exitErr)
		default:
		}
		resp, err := http.Get(ready)
		if err != nil {
			return false, nil
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("nodecsr-controller did not become ready: %w\n%s", err, tailFile(p.log, 20))
	}
	cfgOpts := webhook.ConfigOptions{URL: p.webhookURL, CABundle: d.c.ClusterCA().CertPEM, Self: "nodecsr-test-admin"}
	mwc, err := webhook.MutatingWebhookConfiguration(cfgOpts)
	if err != nil {
		return nil, err
	}
	vwc, err := webhook.ValidatingWebhookConfiguration(cfgOpts)
	if err != nil {
		return nil, err
	}
	if _, err := d.admin.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	if _, err := d.admin.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, vwc, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	return p, nil
}

func tailFile(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// request runs nodecsr-request and returns how long it took, its stderr and its exit code.
// The files live in <work>/<home>/pki: each node's own, and the attacker's.
func (d *demo) request(ctx context.Context, home, node string, args ...string) (time.Duration, string, int, error) {
	args = append([]string{"--node-name", node, "--cert-dir", filepath.Join(d.work, home, "pki"), "--timeout", "60s"}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(d.bin, "nodecsr-request"), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	begin := time.Now()
	err := cmd.Run()
	took := time.Since(begin)
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return took, stderr.String(), exit.ExitCode(), nil
	}
	return took, stderr.String(), 0, err
}

func (d *demo) bootstrap(ctx context.Context, node string) error {
	tok, err := d.c.CreateBootstrapToken(ctx, time.Hour)
	if err != nil {
		return err
	}
	bootKubeconfig := filepath.Join(d.work, node, "bootstrap-kubelet.conf")
	if err := os.MkdirAll(filepath.Dir(bootKubeconfig), 0o700); err != nil {
		return err
	}
	if err := cluster.WriteKubeconfig(bootKubeconfig, d.c.BootstrapConfig(tok)); err != nil {
		return err
	}
	kubeletConf := filepath.Join(d.work, node, "kubelet.conf")
	took, stderr, code, err := d.request(ctx, node, node, "--bootstrap-kubeconfig", bootKubeconfig, "--write-kubeconfig", kubeletConf)
	if err != nil || code != 0 {
		return fmt.Errorf("bootstrap of %s failed (exit %d): %v\n%s", node, code, err, stderr)
	}
	if err := d.record(ctx, tok.Username(), node, took, ""); err != nil {
		return err
	}
	// Like a kubelet, register the Node with the new credentials.
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeletConf)
	if err != nil {
		return err
	}
	_, err = kubernetes.NewForConfigOrDie(cfg).CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{})
	return err
}

func (d *demo) renew(ctx context.Context, node string) error {
	kubeletConf := filepath.Join(d.work, node, "kubelet.conf")
	took, stderr, code, err := d.request(ctx, node, node, "--kubeconfig", kubeletConf)
	if err != nil || code != 0 {
		return fmt.Errorf("renewal of %s failed (exit %d): %v\n%s", node, code, err, stderr)
	}
	return d.record(ctx, "system:node:"+node, node, took, "")
}

// record looks up the newest CSR for the node by the label nodecsr's
// mutating webhook puts on it, and notes its decision.
func (d *demo) record(ctx context.Context, who, node string, took time.Duration, note string) error {
	list, err := d.admin.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{LabelSelector: webhook.LabelNodeName + "=" + node})
	if err != nil {
		return err
	}
	sort.Slice(list.Items, func(i, j int) bool {
		return list.Items[j].CreationTimestamp.Before(&list.Items[i].CreationTimestamp) ||
			list.Items[i].CreationTimestamp.Equal(&list.Items[j].CreationTimestamp) && list.Items[i].Name > list.Items[j].Name
	})
	var newest *certificatesv1.CertificateSigningRequest
	for i := range list.Items {
		if list.Items[i].Spec.Username == who {
			newest = &list.Items[i]
			break
		}
	}
	r := result{who: who, asks: "system:node:" + node, took: took.Round(10 * time.Millisecond).String(), note: note}
	if newest == nil {
		r.decision = "-"
	} else {
		for _, c := range newest.Status.Conditions {
			if c.Type == certificatesv1.CertificateApproved || c.Type == certificatesv1.CertificateDenied {
				r.decision, r.reason = string(c.Type), c.Reason
			}
		}
		r.path = "Bootstrap"
		if who == "system:node:"+node {
			r.path = "Renewal"
		}
		if len(newest.Status.Certificate) == 0 {
			r.took = "no certificate"
		}
	}
	d.results = append(d.results, r)
	return nil
}

func (d *demo) attack(ctx context.Context) error {
	tok, err := d.c.CreateBootstrapToken(ctx, time.Hour)
	if err != nil {
		return err
	}
	dir := filepath.Join(d.work, "attacker")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	boot := filepath.Join(dir, "bootstrap-kubelet.conf")
	if err := cluster.WriteKubeconfig(boot, d.c.BootstrapConfig(tok)); err != nil {
		return err
	}
	// 1. Claim an existing control-plane node's name with nodecsr-request.
	took, stderr, code, err := d.request(ctx, "attacker", "control-plane-1", "--bootstrap-kubeconfig", boot, "--timeout", "10s")
	if err != nil {
		return err
	}
	if code == 0 {
		return errors.New("the takeover of control-plane-1 succeeded: nodecsr failed to stop it")
	}
	d.results = append(d.results, result{
		who: tok.Username(), asks: "system:node:control-plane-1", path: "Bootstrap", decision: "Rejected",
		reason: "at creation", took: took.Round(10 * time.Millisecond).String(),
		note: fmt.Sprintf("exit %d: %s", code, firstLine(webhookMessage(stderr))),
	})

	// 2. A hand-made CSR with a SAN, an extra organization and server auth.
	hostile := csrtest.Build(csrtest.WithNodeName("worker-9"), csrtest.WithOrg("system:nodes", "system:masters"),
		csrtest.WithDNSSAN("kubernetes.default.svc"),
		csrtest.WithUsages(certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageServerAuth))
	hostile.Name, hostile.Spec.Username, hostile.Spec.Groups = "hostile-1", "", nil
	begin := time.Now()
	_, err = kubernetes.NewForConfigOrDie(d.c.BootstrapConfig(tok)).CertificatesV1().CertificateSigningRequests().Create(ctx, hostile, metav1.CreateOptions{})
	if err == nil {
		return errors.New("the hostile CSR was admitted: the webhook is not working")
	}
	d.results = append(d.results, result{
		who: tok.Username(), asks: "system:node:worker-9 +system:masters +SAN", path: "Bootstrap", decision: "Rejected",
		reason: "at creation", took: time.Since(begin).Round(10 * time.Millisecond).String(), note: firstLine(webhookMessage(err.Error())),
	})

	// 3. With the webhooks gone (down, or fail-open), the approver is still
	// the boundary: the takeover of a worker is created, and denied.
	if err := d.admin.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(ctx, "nodecsr", metav1.DeleteOptions{}); err != nil {
		return err
	}
	if err := d.admin.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, "nodecsr", metav1.DeleteOptions{}); err != nil {
		return err
	}
	took, stderr, code, err = d.request(ctx, "attacker", "worker-1", "--bootstrap-kubeconfig", boot, "--timeout", "10s")
	if err != nil {
		return err
	}
	if code == 0 {
		return errors.New("the takeover of worker-1 succeeded: nodecsr failed to stop it")
	}
	list, err := d.admin.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	r := result{who: tok.Username(), asks: "system:node:worker-1 (webhooks off)", path: "Bootstrap",
		took: took.Round(10 * time.Millisecond).String(), note: fmt.Sprintf("exit %d: %s", code, firstLine(lastLine(stderr)))}
	for _, csr := range list.Items {
		if csr.Spec.Username != tok.Username() {
			continue
		}
		for _, c := range csr.Status.Conditions {
			r.decision, r.reason = string(c.Type), c.Reason
		}
	}
	d.results = append(d.results, r)
	return nil
}

// webhookMessage keeps what follows the API server's "denied the request:".
func webhookMessage(s string) string {
	if _, after, ok := strings.Cut(s, "denied the request: "); ok {
		return after
	}
	return s
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 160 {
		s = s[:157] + "..."
	}
	return s
}

func (d *demo) report() {
	fmt.Fprintln(d.out, "\nWho asked for what, and what nodecsr decided:")
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  REQUESTER\tASKS FOR\tPATH\tDECISION\tREASON\tTIME TO CERT")
	for _, r := range d.results {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", r.who, r.asks, r.path, r.decision, r.reason, r.took)
	}
	_ = tw.Flush()
	for _, r := range d.results {
		if r.note != "" {
			fmt.Fprintf(d.out, "  %s → %s\n", r.asks, r.note)
		}
	}
}

func (d *demo) events(ctx context.Context) error {
	sel := fields.OneTermEqualSelector("involvedObject.kind", "CertificateSigningRequest").String()
	list, err := d.admin.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		return err
	}
	perCSR := map[string]int{}
	fmt.Fprintln(d.out, "\nkubectl get events -n default --field-selector involvedObject.kind=CertificateSigningRequest:")
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  TYPE\tREASON\tOBJECT\tMESSAGE")
	for _, e := range list.Items {
		perCSR[e.InvolvedObject.Name]++
		fmt.Fprintf(tw, "  %s\t%s\tcsr/%s\t%s\n", e.Type, e.Reason, e.InvolvedObject.Name, firstLine(e.Message))
	}
	_ = tw.Flush()
	for name, n := range perCSR {
		if n != 1 {
			return fmt.Errorf("CSR %s has %d decision Events, want 1", name, n)
		}
	}
	return nil
}

// inventory waits until the NodeCertificate of every node records the
// certificate of its renewal, then prints them as kubectl get
// nodecertificates does: the Table the API server renders from the CRD's
// printer columns.
func (d *demo) inventory(ctx context.Context, nodes []string) error {
	// The inventory writes within a second or two; a demo that waits
	// minutes says what it waited for instead of hanging.
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var table metav1.Table
	var last error
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		raw, err := d.admin.Discovery().RESTClient().Get().AbsPath("/apis/nodecsr.io/v1alpha1/nodecertificates").Param("includeObject", "Object").
			SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").Do(ctx).Raw()
		if err != nil {
			if ctx.Err() == nil {
				last = err
			}
			return false, nil
		}
		table = metav1.Table{}
		if err := json.Unmarshal(raw, &table); err != nil {
			return false, err
		}
		renewed := map[string]bool{}
		for _, row := range table.Rows {
			// The renewal is the newest certificate: its path is Renewal.
			var nc struct {
				Metadata metav1.ObjectMeta `json:"metadata"`
				Status   struct {
					Client *struct {
						Path string `json:"path"`
					} `json:"client"`
				} `json:"status"`
			}
			if err := json.Unmarshal(row.Object.Raw, &nc); err == nil && nc.Status.Client != nil && nc.Status.Client.Path == "Renewal" {
				renewed[nc.Metadata.Name] = true
			}
		}
		for _, n := range nodes {
			if !renewed[n] {
				last = fmt.Errorf("node %s has no entry for its renewal yet", n)
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("the inventory did not record every renewal: %v (last: %v)", err, last)
	}
	fmt.Fprintln(d.out, "\nkubectl get nodecertificates (the inventory: one entry per node, kept when the CSRs are gone):")
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	var cols []int
	var head []string
	for i, c := range table.ColumnDefinitions {
		if c.Priority == 0 {
			cols = append(cols, i)
			head = append(head, strings.ToUpper(c.Name))
		}
	}
	fmt.Fprintln(tw, "  "+strings.Join(head, "\t"))
	for _, row := range table.Rows {
		cells := make([]string, 0, len(cols))
		for _, i := range cols {
			if i < len(row.Cells) {
				cells = append(cells, fmt.Sprint(row.Cells[i]))
			}
		}
		fmt.Fprintln(tw, "  "+strings.Join(cells, "\t"))
	}
	return tw.Flush()
}
