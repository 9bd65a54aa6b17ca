package env

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// CSREvents lists the Events about CSRs by CSR name, as
// `kubectl get events -n default --field-selector involvedObject.kind=CertificateSigningRequest`
// shows them.
func CSREvents(ctx context.Context, cs kubernetes.Interface) (map[string][]corev1.Event, error) {
	sel := fields.OneTermEqualSelector("involvedObject.kind", "CertificateSigningRequest").String()
	list, err := cs.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		return nil, err
	}
	out := map[string][]corev1.Event{}
	for _, e := range list.Items {
		out[e.InvolvedObject.Name] = append(out[e.InvolvedObject.Name], e)
	}
	return out, nil
}

// WaitEvent waits until ctx ends for an Event in namespace about the object
// called regarding for which match is true, and returns it.
func WaitEvent(ctx context.Context, cs kubernetes.Interface, namespace, regarding string, match func(*eventsv1.Event) bool) (*eventsv1.Event, error) {
	var found *eventsv1.Event
	sel := fields.OneTermEqualSelector("regarding.name", regarding).String()
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		evs, err := cs.EventsV1().Events(namespace).List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			return false, err
		}
		for i := range evs.Items {
			if match(&evs.Items[i]) {
				found = &evs.Items[i]
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("no such Event about %s in %s: %w", regarding, namespace, err)
	}
	return found, nil
}
