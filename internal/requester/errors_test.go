package requester

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestExitCode(t *testing.T) {
	tests := map[string]struct {
		err  error
		want int
	}{
		"nil":                 {nil, 0},
		"plain error":         {errors.New("connection refused"), 1},
		"context canceled":    {context.Canceled, 1},
		"usage":               {usageErrorf("--timeout must be > 0"), 2},
		"wrapped usage":       {fmt.Errorf("outer: %w", &UsageError{Err: errors.New("x")}), 2},
		"denied":              {&DeniedError{CSR: "c", Reason: "NodeAlreadyExists", Message: "m"}, 3},
		"wrapped denied":      {fmt.Errorf("outer: %w", &DeniedError{}), 3},
		"failed":              {&FailedError{CSR: "c"}, 4},
		"timed out":           {&TimeoutError{CSR: "c", Waited: time.Second}, 5},
		"status missing":      {&CertificateStateError{State: StateMissing}, 6},
		"status expired":      {&CertificateStateError{State: StateExpired}, 7},
		"status not yet":      {&CertificateStateError{State: StateNotYetValid}, 7},
		"status overdue":      {&CertificateStateError{State: StateRotationOverdue}, 8},
		"status key mismatch": {&CertificateStateError{State: StateKeyMismatch}, 9},
		"status unknown":      {&CertificateStateError{State: "weird"}, 1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := ExitCode(tc.err); got != tc.want {
				t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.want)
			}
		})
	}
}

func TestErrorMessages(t *testing.T) {
	tests := map[string]struct {
		err  error
		want string
	}{
		"denied": {
			&DeniedError{CSR: "node-csr-abc", Reason: "NodeAlreadyExists", Message: "node n1 is already registered"},
			"denied: NodeAlreadyExists: node n1 is already registered (CSR node-csr-abc)",
		},
		"denied without reason": {&DeniedError{CSR: "c", Message: "no"}, "denied: (no reason given): no (CSR c)"},
		"failed":                {&FailedError{CSR: "c", Reason: "SignerValidationFailure", Message: "bad"}, "failed: SignerValidationFailure: bad (CSR c)"},
		"timed out": {
			&TimeoutError{CSR: "node-csr-abc", Waited: 3 * time.Second, State: "still pending"},
			"timed out after 3s waiting for CSR node-csr-abc to be issued (still pending)",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := tc.err.Error(); got != tc.want {
				t.Errorf("Error() = %q, want %q", got, tc.want)
			}
		})
	}
	// Every exit code in the help text, in order.
	for code := 0; code <= 9; code++ {
		if !strings.Contains(exitCodeHelp, fmt.Sprintf("\n  %d  ", code)) {
			t.Errorf("exit code %d is not in the help text", code)
		}
	}
}
