package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/config"
)

// maxManifestBytes bounds what explain reads from a file or stdin.
const maxManifestBytes = 32 << 20

type explainOptions struct {
	file       string
	policyFile string
	output     string
	kubeconfig string
	assume     map[string]string
	// For serving CSRs: the Node's addresses, other Nodes' addresses
	// (NODE=ADDRESS) and DNS answers (NAME=IP;IP).
	addresses  []string
	neighbours []string
	dns        []string
}

func newExplainCommand(stdout io.Writer) *cobra.Command {
	o := &explainOptions{output: "text"}
	cmd := &cobra.Command{
		Use:   "explain (-f FILE | --kubeconfig KUBECONFIG NAME...)",
		Short: "Show the decision nodecsr would make on CSRs, and why",
		Long: `explain runs nodecsr's decision engine on CertificateSigningRequests and prints the
decision, its reason code, its message and every check.

With -f it reads manifests as 'kubectl get csr NAME -o yaml' prints them (several
documents or a List are fine; -f - reads stdin) and, without cluster access, lists the
cluster facts it could not check (SubjectAccessReview, Node existence and heartbeat,
pending CSRs) as skipped: the decision is FactsIncomplete. --assume states what the
cluster would answer, so a policy can be tried on a CSR before it is rolled out:

  authorized=true|false        the SubjectAccessReview (nodeclient / selfnodeclient)
  node-exists=true|false       whether the Node exists
  heartbeat-age=DURATION       how long ago the existing Node last heartbeated (10s, 2h)
  newer-pending=true|false     whether a newer CSR for the node supersedes this one
  pending=N                    how many older CSRs for the node are pending

For a serving CSR (signer kubernetes.io/kubelet-serving, with serving.enabled in the
policy), --assume-address gives the Node's addresses, --assume-neighbour the addresses
other Nodes report, and --assume-dns what DNS names resolve to.

With --kubeconfig and CSR names it reads the CSRs from the cluster and gathers those
facts too (an assumed value overrides the cluster's answer; Node addresses are read
live, and every Node is listed to find the ones that share an address). The bootstrap rate
limit lives in the running controller's memory and is never checked here.

Exit status: 0 when every CSR could be evaluated (whatever the decision), 1 when the
input could not be read, 2 on wrong usage.`,
		Example: `  kubectl get csr node-csr-abc -o yaml | nodecsr-controller explain -f -
  nodecsr-controller explain -f csr.yaml --policy policy.yaml -o json
  nodecsr-controller explain -f csr.yaml --assume authorized=true,node-exists=true,heartbeat-age=2h
  nodecsr-controller explain --kubeconfig ~/.kube/config node-csr-abc
  nodecsr-controller explain -f serving-csr.yaml --policy serving.yaml --assume authorized=true,newer-pending=false \
      --assume-address 10.0.0.5 --assume-address worker-5 --assume-neighbour worker-6=10.0.0.6`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.validate(args); err != nil {
				return usageError{err}
			}
			return o.run(cmd.Context(), cmd.InOrStdin(), stdout, args)
		},
	}
	fs := cmd.Flags()
	fs.StringVarP(&o.file, "filename", "f", "", "CSR manifest file (YAML or JSON); - reads stdin.")
	fs.StringVar(&o.policyFile, "policy", "", "Policy file; empty uses the default policy.")
	fs.StringVarP(&o.output, "output", "o", o.output, "Output format: text or json (one object per CSR, one per line).")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Read the named CSRs from this cluster and gather the cluster facts.")
	fs.StringToStringVar(&o.assume, "assume", nil, "Cluster facts to assume: authorized, node-exists, heartbeat-age, newer-pending, pending (KEY=VALUE,...).")
	fs.StringArrayVar(&o.addresses, "assume-address", nil, "Serving CSRs: an address the Node reports (an IP as InternalIP, a name as Hostname); repeatable. Implies node-exists=true and, without --assume-neighbour, that no other Node reports any SAN.")
	fs.StringArrayVar(&o.neighbours, "assume-neighbour", nil, "Serving CSRs: another Node and an address it reports, NODE=ADDRESS; repeatable.")
	fs.StringArrayVar(&o.dns, "assume-dns", nil, "Serving CSRs with serving.resolveDNS: what a DNS name resolves to, NAME=IP[;IP...] (NAME= does not resolve); repeatable. A DNS SAN not listed does not resolve.")
	return cmd
}

func (o *explainOptions) validate(args []string) error {
	var errs []error
	switch {
	case o.file == "" && len(args) == 0:
		errs = append(errs, errors.New("give -f FILE, or --kubeconfig and CSR names"))
	case o.file != "" && len(args) > 0:
		errs = append(errs, errors.New("-f and CSR names are exclusive"))
	case len(args) > 0 && o.kubeconfig == "":
		errs = append(errs, errors.New("CSR names need --kubeconfig"))
	}
	if o.output != "text" && o.output != "json" {
		errs = append(errs, fmt.Errorf("-o must be text or json, got %q", o.output))
	}
	if _, err := o.assumptions(time.Time{}); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// assumptions reads --assume and the serving --assume-* flags.
func (o *explainOptions) assumptions(now time.Time) (assumptions, error) {
	a, err := parseAssumptions(o.assume, now)
	errs := []error{err}
	if len(o.addresses) > 0 {
		var addrs []corev1.NodeAddress
		for _, v := range o.addresses {
			switch {
			case v == "":
				errs = append(errs, errors.New("--assume-address: want an IP address or a DNS name, got an empty value"))
			case isIP(v):
				addrs = append(addrs, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: v})
			default:
				addrs = append(addrs, corev1.NodeAddress{Type: corev1.NodeHostName, Address: v})
			}
		}
		a.facts.NodeAddresses = approver.NodeAddressesOf(addrs)
		if a.facts.NodeExists == nil {
			a.facts.NodeExists = ptr.To(true)
		}
		a.facts.Neighbours = map[string][]string{}
	}
	for _, v := range o.neighbours {
		node, addr, ok := strings.Cut(v, "=")
		if !ok || node == "" || addr == "" {
			errs = append(errs, fmt.Errorf("--assume-neighbour %q: want NODE=ADDRESS", v))
			continue
		}
		if a.facts.Neighbours == nil {
			a.facts.Neighbours = map[string][]string{}
		}
		key := approver.NodeAddressKey(addr)
		a.facts.Neighbours[key] = append(a.facts.Neighbours[key], node)
	}
	for _, v := range o.dns {
		name, ips, ok := strings.Cut(v, "=")
		if !ok || name == "" {
			errs = append(errs, fmt.Errorf("--assume-dns %q: want NAME=IP[;IP...] (NAME= for a name that does not resolve)", v))
			continue
		}
		if a.facts.Resolved == nil {
			a.facts.Resolved = map[string]approver.Resolution{}
		}
		var res approver.Resolution
		for _, s := range strings.Split(ips, ";") {
			if s == "" {
				continue
			}
			ip, err := netip.ParseAddr(s)
			if err != nil {
				errs = append(errs, fmt.Errorf("--assume-dns %q: %q is not an IP address", v, s))
				continue
			}
			res.IPs = append(res.IPs, ip.Unmap())
		}
		res.NotFound = len(res.IPs) == 0
		a.facts.Resolved[approver.NodeAddressKey(name)] = res
	}
	a.dnsAssumed = len(o.dns) > 0
	return a, errors.Join(errs...)
}

func isIP(s string) bool {
	_, err := netip.ParseAddr(s)
	return err == nil
}

// assumptions are the facts given with --assume and --assume-*.
type assumptions struct {
	facts approver.Facts
	// dnsAssumed: a DNS SAN not in facts.Resolved does not resolve.
	dnsAssumed bool
}

// parseAssumptions reads --assume; the heartbeat age is taken back from now.
func parseAssumptions(kv map[string]string, now time.Time) (assumptions, error) {
	var a assumptions
	a.facts.Now = now
	var errs []error
	boolean := func(k, v string) *bool {
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("--assume %s=%q: want true or false", k, v))
			return nil
		}
		return &b
	}
	for k, v := range kv {
		switch k {
		case "authorized":
			a.facts.Authorized = boolean(k, v)
		case "node-exists":
			a.facts.NodeExists = boolean(k, v)
		case "heartbeat-age":
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				errs = append(errs, fmt.Errorf("--assume heartbeat-age=%q: want a duration such as 30s or 2h", v))
				continue
			}
			hb := now.Add(-d)
			a.facts.NodeHeartbeat = &hb
		case "newer-pending":
			a.facts.NewerPendingForNode = boolean(k, v)
		case "pending":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				errs = append(errs, fmt.Errorf("--assume pending=%q: want a whole number, 0 or more", v))
				continue
			}
			a.facts.PendingForNode = &n
		default:
			errs = append(errs, fmt.Errorf("--assume %s: unknown fact; known: authorized, node-exists, heartbeat-age, newer-pending, pending", k))
		}
	}
	return a, errors.Join(errs...)
}

// forRequest completes the DNS assumptions for r: with --assume-dns, a DNS
// SAN it does not list does not resolve.
func (a assumptions) forRequest(r *approver.Request) assumptions {
	if !a.dnsAssumed {
		return a
	}
	resolved := make(map[string]approver.Resolution, len(r.DNSNames))
	for k, v := range a.facts.Resolved {
		resolved[k] = v
	}
	for _, n := range r.DNSNames {
		if _, ok := resolved[approver.NodeAddressKey(n)]; !ok {
			resolved[approver.NodeAddressKey(n)] = approver.Resolution{NotFound: true}
		}
	}
	a.facts.Resolved = resolved
	return a
}

// over lays the assumed facts over gathered ones.
func (a assumptions) over(f approver.Facts) approver.Facts {
	if a.facts.Authorized != nil {
		f.Authorized = a.facts.Authorized
	}
	if a.facts.NodeExists != nil {
		f.NodeExists = a.facts.NodeExists
	}
	if a.facts.NodeHeartbeat != nil {
		f.NodeHeartbeat = a.facts.NodeHeartbeat
	}
	if a.facts.NewerPendingForNode != nil {
		f.NewerPendingForNode = a.facts.NewerPendingForNode
	}
	if a.facts.PendingForNode != nil {
		f.PendingForNode = a.facts.PendingForNode
	}
	if a.facts.NodeAddresses != nil {
		f.NodeAddresses = a.facts.NodeAddresses
	}
	if a.facts.Neighbours != nil {
		f.Neighbours = a.facts.Neighbours
	}
	if a.facts.Resolved != nil {
		f.Resolved = a.facts.Resolved
	}
	if f.Now.IsZero() {
		f.Now = a.facts.Now
	}
	return f
}

// Explanation is explain's JSON output for one CSR.
type Explanation struct {
	Name     string           `json:"name"`
	Decision approver.Verdict `json:"decision"`
	Reason   string           `json:"reason"`
	Message  string           `json:"message"`
	Path     approver.Path    `json:"path,omitempty"`
	// Signer is client or serving ("other" for a CSR nodecsr does not decide).
	Signer     string        `json:"signer"`
	Node       string        `json:"node,omitempty"`
	Requester  string        `json:"requester,omitempty"`
	Policy     string        `json:"policy"`
	Checks     []CheckResult `json:"checks"`
	Violations []string      `json:"violations"`
	Skipped    []string      `json:"skipped"`
}

// CheckResult is one check in explain's output.
type CheckResult struct {
	Name    string               `json:"name"`
	Result  approver.CheckResult `json:"result"`
	Reason  string               `json:"reason,omitempty"`
	Message string               `json:"message,omitempty"`
}

func (o *explainOptions) run(ctx context.Context, stdin io.Reader, stdout io.Writer, names []string) error {
	policy := config.Default()
	if o.policyFile != "" {
		p, err := config.Load(o.policyFile)
		if err != nil {
			return err
		}
		policy = p
	}
	var csrs []*certificatesv1.CertificateSigningRequest
	var c client.Client
	if o.file != "" {
		data, err := readInput(o.file, stdin)
		if err != nil {
			return err
		}
		if csrs, err = decodeCSRs(data); err != nil {
			return fmt.Errorf("failed to read CSRs from %s: %w", o.file, err)
		}
	} else {
		cfg, err := restConfig(&Options{Kubeconfig: o.kubeconfig, KubeAPIQPS: 50, KubeAPIBurst: 100})
		if err != nil {
			return err
		}
		scheme := runtime.NewScheme()
		if err := clientgoscheme.AddToScheme(scheme); err != nil {
			return err
		}
		if c, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
			return fmt.Errorf("failed to create a client: %w", err)
		}
		for _, name := range names {
			csr := &certificatesv1.CertificateSigningRequest{}
			if err := c.Get(ctx, client.ObjectKey{Name: name}, csr); err != nil {
				return fmt.Errorf("failed to get CSR %q: %w", name, err)
			}
			csrs = append(csrs, csr)
		}
	}
	assumed, err := o.assumptions(time.Now())
	if err != nil {
		return usageError{err}
	}
	// The live gatherer asks the API server what the controller reads from
	// its caches.
	var live approver.FactGatherer
	if c != nil {
		live = &approver.Gatherer{
			Authorizer: approver.SARAuthorizer{Client: c},
			Nodes:      approver.CachedNodes{Reader: c},
			Heartbeats: approver.LeaseHeartbeats{Leases: c, Nodes: c},
			Pending:    approver.ListedPending{Reader: c},
			Addresses:  approver.ListedNodeAddresses{Reader: c},
			Resolver:   net.DefaultResolver,
			Clock:      clock.RealClock{},
		}
	}
	for _, csr := range csrs {
		r := approver.Inspect(policy, csr)
		d := approver.Decide(policy, r, assumed.forRequest(r).over(approver.Facts{}))
		// Gather what is missing; an assumption still wins over the
		// cluster's answer.
		if d.Needs != 0 && live != nil {
			facts, err := live.Gather(ctx, r, d.Needs)
			if err != nil {
				return err
			}
			d = approver.Decide(policy, r, assumed.forRequest(r).over(facts))
		}
		if err := render(stdout, o.output, explanation(csr, policy, d)); err != nil {
			return err
		}
	}
	return nil
}

func readInput(file string, stdin io.Reader) ([]byte, error) {
	r := stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("failed to open %s: %w", file, err)
		}
		defer func() { _ = f.Close() }()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxManifestBytes+1))
	if err != nil {
		return nil, fmt.Errorf("failed to read %s: %w", file, err)
	}
	if len(data) > maxManifestBytes {
		return nil, fmt.Errorf("%s is larger than %d MiB", file, maxManifestBytes>>20)
	}
	return data, nil
}

// decodeCSRs reads CertificateSigningRequests from YAML or JSON documents,
// also inside a List as kubectl prints several objects.
func decodeCSRs(data []byte) ([]*certificatesv1.CertificateSigningRequest, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	decoder := serializer.NewCodecFactory(scheme).UniversalDeserializer()
	var out []*certificatesv1.CertificateSigningRequest
	var add func(raw []byte, doc int) error
	add = func(raw []byte, doc int) error {
		var meta struct {
			Kind  string            `json:"kind"`
			Items []json.RawMessage `json:"items"`
		}
		if err := json.Unmarshal(raw, &meta); err != nil {
			return fmt.Errorf("document %d: %w", doc, err)
		}
		if meta.Kind == "List" || strings.HasSuffix(meta.Kind, "List") {
			for _, item := range meta.Items {
				if err := add(item, doc); err != nil {
					return err
				}
			}
			return nil
		}
		obj, _, err := decoder.Decode(raw, nil, nil)
		if err != nil {
			return fmt.Errorf("document %d: %w", doc, err)
		}
		csr, ok := obj.(*certificatesv1.CertificateSigningRequest)
		if !ok {
			return fmt.Errorf("document %d is a %T, not a certificates.k8s.io/v1 CertificateSigningRequest", doc, obj)
		}
		out = append(out, csr)
		return nil
	}
	reader := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for doc := 1; ; doc++ {
		var raw json.RawMessage
		if err := reader.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("document %d: %w", doc, err)
		}
		if len(bytes.TrimSpace(raw)) == 0 || string(raw) == "null" {
			continue
		}
		if err := add(raw, doc); err != nil {
			return nil, err
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no CertificateSigningRequest found")
	}
	return out, nil
}

func explanation(csr *certificatesv1.CertificateSigningRequest, policy *config.Effective, d approver.Decision) Explanation {
	e := Explanation{
		Name: csr.Name, Decision: d.Verdict, Reason: d.Reason, Message: d.Message, Path: d.Path, Signer: approver.SignerOf(csr.Spec.SignerName).String(),
		Node: d.NodeName, Requester: csr.Spec.Username, Policy: policy.Digest,
		Checks: []CheckResult{}, Violations: []string{}, Skipped: []string{},
	}
	for _, c := range d.Checks {
		e.Checks = append(e.Checks, CheckResult{Name: c.Name, Result: c.Result, Reason: c.Reason, Message: c.Message})
	}
	for _, v := range d.Violations {
		e.Violations = append(e.Violations, v.Reason)
	}
	e.Skipped = append(e.Skipped, d.Skipped...)
	return e
}

func render(w io.Writer, format string, e Explanation) error {
	if format == "json" {
		data, err := json.Marshal(e)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", data)
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s (%s)\n", e.Name, e.Decision, e.Reason)
	fmt.Fprintf(&b, "  %s\n", e.Message)
	if e.Path != "" || e.Node != "" {
		fmt.Fprintf(&b, "  path: %s  node: %s  requester: %s  policy: %s\n", orDash(string(e.Path)), orDash(e.Node), orDash(e.Requester), e.Policy)
	}
	b.WriteString("  checks:\n")
	for _, c := range e.Checks {
		mark := map[approver.CheckResult]string{approver.Pass: "pass", approver.Fail: "FAIL", approver.Wait: "wait", approver.Skipped: "skip"}[c.Result]
		line := c.Message
		if c.Reason != "" {
			line = c.Reason + ": " + line
		}
		fmt.Fprintf(&b, "    %-4s %-22s %s\n", mark, c.Name, line)
	}
	if len(e.Skipped) > 0 {
		fmt.Fprintf(&b, "  not checked: %s\n", strings.Join(e.Skipped, ", "))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
