package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/testutil"
)

var csrResource = metav1.GroupVersionResource{Group: "certificates.k8s.io", Version: "v1", Resource: "certificatesigningrequests"}

// userOf is the identity that files csr: its spec's requester, as the API
// server would fill it in.
func userOf(csr *certificatesv1.CertificateSigningRequest) authenticationv1.UserInfo {
	return authenticationv1.UserInfo{Username: csr.Spec.Username, UID: csr.Spec.UID, Groups: csr.Spec.Groups}
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// createRequest is the admission request for creating csr as user.
func createRequest(t testing.TB, csr *certificatesv1.CertificateSigningRequest, user authenticationv1.UserInfo) admission.Request {
	t.Helper()
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID:       "req-1",
		Kind:      metav1.GroupVersionKind{Group: "certificates.k8s.io", Version: "v1", Kind: "CertificateSigningRequest"},
		Resource:  csrResource,
		Name:      csr.Name,
		Operation: admissionv1.Create,
		UserInfo:  user,
		Object:    runtime.RawExtension{Raw: mustJSON(t, csr)},
	}}
}

// approvalRequest is the admission request for user's update of the
// approval subresource from old to cur.
func approvalRequest(t testing.TB, old, cur *certificatesv1.CertificateSigningRequest, user authenticationv1.UserInfo) admission.Request {
	t.Helper()
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID:         "req-2",
		Kind:        metav1.GroupVersionKind{Group: "certificates.k8s.io", Version: "v1", Kind: "CertificateSigningRequest"},
		Resource:    csrResource,
		SubResource: "approval",
		Name:        cur.Name,
		Operation:   admissionv1.Update,
		UserInfo:    user,
		Object:      runtime.RawExtension{Raw: mustJSON(t, cur)},
		OldObject:   runtime.RawExtension{Raw: mustJSON(t, old)},
	}}
}

// newPolicy is the compiled policy of the empty spec with mut applied.
func newPolicy(t testing.TB, mut func(*config.Spec)) *config.Effective {
	t.Helper()
	p := &config.Policy{APIVersion: config.APIVersion, Kind: config.Kind}
	if mut != nil {
		mut(&p.Spec)
	}
	e, err := config.Compile(p)
	if err != nil {
		t.Fatalf("invalid test policy: %v", err)
	}
	return e
}

func constPolicy(p *config.Effective) func() *config.Effective {
	return func() *config.Effective { return p }
}

// testHandlers builds the handlers with their own metrics registry.
func testHandlers(t testing.TB, p *config.Effective, mut func(*Options)) (*handlers, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts := Options{Policy: constPolicy(p), Registry: reg}
	if mut != nil {
		mut(&opts)
	}
	hs, err := newHandlers(opts)
	if err != nil {
		t.Fatal(err)
	}
	return hs, reg
}

// count reads one series of nodecsr_admission_total from reg.
func count(t testing.TB, reg prometheus.Gatherer, op, result, reason string) int {
	t.Helper()
	v, err := testutil.MetricSum(reg, "nodecsr_admission_total", map[string]string{"operation": op, "result": result, "reason": reason})
	if err != nil {
		t.Fatal(err)
	}
	return int(v)
}

// fakeNodes is a NodeLookup over a fixed set of names.
type fakeNodes struct {
	names map[string]bool
	err   error
}

func (f fakeNodes) NodeExists(_ context.Context, name string) (bool, error) {
	if f.err != nil {
		return false, f.err
	}
	return f.names[name], nil
}

// gatherer is a Nodes-only Gatherer over n (no heartbeat, SubjectAccessReview
// or pending-CSR source); nil when n is nil.
func gatherer(n approver.NodeLookup) approver.FactGatherer {
	if n == nil {
		return nil
	}
	return &approver.Gatherer{Nodes: n, Clock: clock.RealClock{}}
}

// fakeHeartbeats is a HeartbeatLookup answering one time (or one error) for
// every node.
type fakeHeartbeats struct {
	at  time.Time
	err error
}

func (f fakeHeartbeats) LastHeartbeat(context.Context, string) (time.Time, error) { return f.at, f.err }

func nodes(names ...string) fakeNodes {
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
	}
	return fakeNodes{names: m}
}

var errLookup = errors.New("cache not synced")

// recordedEvent is one Event a fake recorder received.
type recordedEvent struct {
	name, eventType, reason, action, note string
}

type fakeEvents struct{ ch chan recordedEvent }

func (f *fakeEvents) Event(_ context.Context, obj client.Object, _, _, eventType, reason, action, note string) error {
	f.ch <- recordedEvent{obj.GetName(), eventType, reason, action, note}
	return nil
}

func containsAll(s string, subs ...string) []string {
	var missing []string
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			missing = append(missing, sub)
		}
	}
	return missing
}
