package approver

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Component is the Event source and the owner of the approval conditions.
const Component = "nodecsr"

// EventRecorder writes one events.k8s.io/v1 Event per call, synchronously,
// so that a decision's Event is written (or its failure counted) before the
// reconcile ends; client-go's asynchronous recorders drop Events when their
// queue is full, which is exactly when a renewal storm needs them.
type EventRecorder struct {
	Client client.Client
	// Instance identifies this replica (the pod name).
	Instance string
	// Namespace receives Events about cluster-scoped objects ("default").
	Namespace string
}

// Event records one Event about obj. eventType is corev1.EventTypeNormal or
// corev1.EventTypeWarning; reason is a reason code, action what was done.
func (r *EventRecorder) Event(ctx context.Context, obj client.Object, kind, apiVersion, eventType, reason, action, note string) error {
	ns := obj.GetNamespace()
	if ns == "" {
		ns = r.Namespace
	}
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	const maxNote = 1024 // the API server's limit for events.k8s.io notes
	if len(note) > maxNote {
		note = note[:maxNote-3] + "..."
	}
	now := time.Now()
	ev := &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      fmt.Sprintf("%s.%x.%s", truncateName(obj.GetName(), 200), now.UnixNano(), rand.String(5)),
			Namespace: ns,
		},
		EventTime:           metav1.NewMicroTime(now),
		ReportingController: Component,
		ReportingInstance:   r.Instance,
		Action:              action,
		Reason:              reason,
		Regarding: corev1.ObjectReference{
			Kind: kind, APIVersion: apiVersion, Name: obj.GetName(), Namespace: obj.GetNamespace(),
			UID: obj.GetUID(), ResourceVersion: obj.GetResourceVersion(),
		},
		Note: note,
		Type: eventType,
	}
	if err := r.Client.Create(ctx, ev); err != nil {
		return fmt.Errorf("failed to record %s event %s on %s: %w", eventType, reason, obj.GetName(), err)
	}
	return nil
}

// truncateName turns an object name into the start of a DNS-1123 subdomain
// (CSR names may hold upper case and underscores; Event names may not).
func truncateName(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.':
			return r
		case r >= 'A' && r <= 'Z':
			return r + ('a' - 'A')
		default:
			return '-'
		}
	}, s)
	if len(s) > n {
		s = s[:n]
	}
	s = strings.Trim(s, "-.")
	if s == "" {
		s = "object"
	}
	return s
}
