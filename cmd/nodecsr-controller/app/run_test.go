package app

import (
	"bytes"
	"strings"
	"testing"

	"github.com/go-logr/logr/funcr"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/config"
)

// A reload that turns serving on, while the caches were set up without it,
// is logged as an error and recorded as a Warning Event on the Pod; one that
// turns it off is logged; one that changes nothing about serving is silent.
func TestServingChanged(t *testing.T) {
	on, err := config.Parse([]byte("apiVersion: nodecsr.io/v1alpha1\nkind: Policy\nspec:\n  serving:\n    enabled: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	off := config.Default()
	for name, tc := range map[string]struct {
		atStart bool
		p       *config.Effective
		log     string
		event   bool
	}{
		"turned on":  {atStart: false, p: on, log: "restart nodecsr-controller", event: true},
		"turned off": {atStart: true, p: off, log: "serving.enabled was turned off by a reload"},
		"stays on":   {atStart: true, p: on},
		"stays off":  {atStart: false, p: off},
	} {
		t.Run(name, func(t *testing.T) {
			scheme := runtime.NewScheme()
			if err := clientgoscheme.AddToScheme(scheme); err != nil {
				t.Fatal(err)
			}
			c := fake.NewClientBuilder().WithScheme(scheme).Build()
			events := &approver.EventRecorder{Client: c, Instance: "pod-0", Namespace: "default"}
			var logs bytes.Buffer
			log := funcr.New(func(prefix, args string) { logs.WriteString(args + "\n") }, funcr.Options{})
			self := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Name: "nodecsr-0", Namespace: "nodecsr-system"}}

			servingChanged(t.Context(), log, events, self, tc.atStart, tc.p)

			if tc.log == "" && logs.Len() != 0 || !strings.Contains(logs.String(), tc.log) {
				t.Errorf("logs %q, want %q", logs.String(), tc.log)
			}
			var list eventsv1.EventList
			if err := c.List(t.Context(), &list); err != nil {
				t.Fatal(err)
			}
			if got := len(list.Items); got != map[bool]int{true: 1, false: 0}[tc.event] {
				t.Fatalf("%d Events", got)
			}
			if tc.event {
				e := list.Items[0]
				if e.Reason != EventReasonServingNeedsRestart || e.Type != "Warning" || e.Regarding.Name != "nodecsr-0" || !strings.Contains(e.Note, on.Digest) {
					t.Errorf("Event %+v", e)
				}
			}
		})
	}
}
