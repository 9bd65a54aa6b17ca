package inventory_test

import (
	"reflect"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nodecsrv1alpha1 "github.com/nodecsr/nodecsr/api/v1alpha1"
	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/env"
)

// TestNodeCertificateRoundTrip writes a status with every field set through
// the real API server and reads it back unchanged: the hand-written types and
// the CRD's schema agree (the API server prunes what the schema does not
// declare, and rejects what it does not allow).
func TestNodeCertificateRoundTrip(t *testing.T) {
	ctx, cancel := testutil.Context(t)
	defer cancel()
	at := func(d time.Duration) metav1.Time {
		return metav1.NewTime(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).Add(d))
	}
	record := func(signer, serial, path string) *nodecsrv1alpha1.CertificateRecord {
		return &nodecsrv1alpha1.CertificateRecord{
			SignerName: signer, SerialNumber: serial,
			NotBefore: at(0), NotAfter: at(100 * time.Hour), RenewAfter: at(70 * time.Hour), RenewBefore: at(90 * time.Hour),
			PublicKeySHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
			CSRName:         "csr-" + serial, Path: path, Requester: "system:node:n", ObservedTime: at(time.Minute),
		}
	}
	lastRenewal, observed := at(30*time.Second), at(2*time.Minute)
	want := nodecsrv1alpha1.NodeCertificateStatus{
		Client:         record("kubernetes.io/kube-apiserver-client-kubelet", "0A1B", nodecsrv1alpha1.PathRenewal),
		Serving:        record("kubernetes.io/kubelet-serving", "FF", nodecsrv1alpha1.PathBootstrap),
		ClientResidual: "4d", LastRenewal: &lastRenewal, ObservedTime: &observed,
	}
	assertAllSet(t, reflect.ValueOf(want), "status")

	name := env.UniqueName("roundtrip")
	nc := &nodecsrv1alpha1.NodeCertificate{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := kclient.Create(ctx, nc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := testutil.CleanupContext(t)
		defer cancel()
		_ = kclient.Delete(ctx, &nodecsrv1alpha1.NodeCertificate{ObjectMeta: metav1.ObjectMeta{Name: name}})
	})
	nc.Status = want
	if err := kclient.Status().Update(ctx, nc); err != nil {
		t.Fatal(err)
	}
	got := &nodecsrv1alpha1.NodeCertificate{}
	if err := kclient.Get(ctx, client.ObjectKey{Name: name}, got); err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(got.Status, want) {
		t.Fatalf("status after the round trip:\n%+v\nwant:\n%+v", got.Status, want)
	}

	// The schema refuses what the controller never writes.
	for what, mutate := range map[string]func(*nodecsrv1alpha1.NodeCertificateStatus){
		"a path that is neither Bootstrap nor Renewal": func(s *nodecsrv1alpha1.NodeCertificateStatus) { s.Client.Path = "Sideways" },
		"a lower-case serial":                          func(s *nodecsrv1alpha1.NodeCertificateStatus) { s.Client.SerialNumber = "0a1b" },
		"a short key digest":                           func(s *nodecsrv1alpha1.NodeCertificateStatus) { s.Serving.PublicKeySHA256 = "abc" },
	} {
		bad := got.DeepCopy()
		mutate(&bad.Status)
		if err := kclient.Status().Update(ctx, bad); err == nil {
			t.Errorf("the API server accepts %s", what)
		}
	}
}

// assertAllSet fails for every zero field under v, so that a field added to
// the types without a test value (and maybe without a schema entry) shows.
func assertAllSet(t *testing.T, v reflect.Value, path string) {
	t.Helper()
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			t.Errorf("%s is not set in the round-trip fixture", path)
			return
		}
		assertAllSet(t, v.Elem(), path)
	case reflect.Struct:
		if v.Type() == reflect.TypeOf(metav1.Time{}) {
			if tm := v.Interface().(metav1.Time); tm.IsZero() {
				t.Errorf("%s is not set in the round-trip fixture", path)
			}
			return
		}
		for i := range v.NumField() {
			assertAllSet(t, v.Field(i), path+"."+v.Type().Field(i).Name)
		}
	default:
		if v.IsZero() {
			t.Errorf("%s is not set in the round-trip fixture", path)
		}
	}
}
