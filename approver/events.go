package approver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
	now := time.Now()
	name := fmt.Sprintf("%s.%x.%s", truncateName(obj.GetName(), 200), now.UnixNano(), rand.String(5))
	return r.create(ctx, obj, name, now, kind, apiVersion, eventType, reason, action, note)
}

// Record is Event with a name derived from the object's UID and key, so
// recording the same key again finds the Event there and creates nothing
// (created is false). A decision recorded once per CSR this way survives a
// crash between the decision and its Event: the next leader records it again
// without doubling it.
func (r *EventRecorder) Record(ctx context.Context, obj client.Object, key, kind, apiVersion, eventType, reason, action, note string) (created bool, err error) {
	sum := sha256.Sum256([]byte(string(obj.GetUID()) + "\x00" + obj.GetName() + "\x00" + key))
	name := truncateName(obj.GetName(), 200) + "." + hex.EncodeToString(sum[:8])
	err = r.create(ctx, obj, name, time.Now(), kind, apiVersion, eventType, reason, action, note)
	if apierrors.IsAlreadyExists(err) {
		return false, nil
	}
	return err == nil, err
}

func (r *EventRecorder) create(ctx context.Context, obj client.Object, name string, now time.Time, kind, apiVersion, eventType, reason, action, note string) error {
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
	ev := &eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{Name: name, Namespace: ns},
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
		if apierrors.IsAlreadyExists(err) {
			return err
		}
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
