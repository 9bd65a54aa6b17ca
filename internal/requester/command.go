// Package requester is nodecsr-request, the node-side program that obtains
// and renews a kubelet client certificate the way kubelet does: it files a
// CertificateSigningRequest for CN=system:node:<name>, O=system:nodes with the
// signer kubernetes.io/kube-apiserver-client-kubelet, waits until it is
// approved and signed, and stores the key and certificate in kubelet's file
// layout.
package requester

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"
	"k8s.io/utils/clock"

	"github.com/nodecsr/nodecsr/internal/version"
)

// Main runs nodecsr-request with the process's arguments and returns its exit
// code. SIGINT and SIGTERM cancel the run.
func Main() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
}

// Execute runs the command tree with args and returns the exit code; errors
// are printed to stderr.
func Execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := NewCommand(stdout, stderr)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		var usage *UsageError
		if errors.As(err, &usage) {
			fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.Name())
		}
	}
	return ExitCode(err)
}

// NewCommand builds the command tree: the request command and its status and
// version subcommands.
func NewCommand(stdout, stderr io.Writer) *cobra.Command {
	o := NewOptions()
	root := &cobra.Command{
		Use:   "nodecsr-request",
		Short: "Obtain and renew a node's kubelet client certificate",
		Long: `nodecsr-request obtains a kubelet client certificate for a node the way kubelet's
TLS bootstrap does, and with --rotate keeps renewing it.

It authenticates with the valid certificate in --cert-dir (renewal, as
system:node:<node-name>), else with --kubeconfig, else with
--bootstrap-kubeconfig (bootstrap), and files a CertificateSigningRequest for
CN=system:node:<node-name>, O=system:nodes with the signer
kubernetes.io/kube-apiserver-client-kubelet. Once it is approved and signed it
writes <cert-dir>/kubelet-client-<timestamp>.pem and points
<cert-dir>/kubelet-client-current.pem at it.

The private key is stored in <cert-dir>/kubelet-client.key.tmp before the CSR
is created and the CSR is named after it, so a run that is interrupted and
started again picks up its own pending CSR.

` + exitCodeHelp,
		Example: `  # Bootstrap, then write a kubeconfig that uses the new certificate:
  nodecsr-request --bootstrap-kubeconfig /etc/kubernetes/bootstrap-kubelet.conf \
    --write-kubeconfig /etc/kubernetes/kubelet.conf

  # Keep renewing with the current certificate:
  nodecsr-request --kubeconfig /etc/kubernetes/kubelet.conf --rotate

  # Inspect the current certificate:
  nodecsr-request status -o json`,
		Args:          noArgs,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if o.Verbosity < 0 {
				return usageErrorf("-v must be >= 0, got %d", o.Verbosity)
			}
			logger := textlogger.NewLogger(textlogger.NewConfig(textlogger.Verbosity(o.Verbosity), textlogger.Output(stderr)))
			klog.SetLogger(logger)
			cmd.SetContext(klog.NewContext(cmd.Context(), logger))
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Complete()
			if err := o.Validate(); err != nil {
				return err
			}
			r := NewRequester(o, clock.RealClock{}, rand.Float64, stdout)
			if o.Rotate {
				return r.Rotate(cmd.Context())
			}
			_, err := r.RequestOnce(cmd.Context())
			return err
		},
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &UsageError{Err: err} })
	root.PersistentFlags().IntVarP(&o.Verbosity, "v", "v", o.Verbosity, "log verbosity (0: progress and warnings, 1: decisions, 2 and up: client-go details); logs go to stderr")
	o.addRequestFlags(root.Flags())

	status := &cobra.Command{
		Use:   "status",
		Short: "Show the current certificate and whether it needs attention",
		Long: `status shows the certificate <cert-dir>/kubelet-client-current.pem points at: subject,
issuer, validity, remaining lifetime, rotation window (70% to 90% of the
lifetime) and whether the private key matches it. It changes nothing.

States: ok, rotation-window (exit 0); missing (6); expired, not-yet-valid (7);
rotation-overdue (8, at least 90% of the lifetime elapsed); key-mismatch (9).

` + exitCodeHelp,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Complete()
			if err := o.validateStatus(); err != nil {
				return err
			}
			st := Status(NewStore(o.CertDir, clock.RealClock{}.Now), clock.RealClock{}.Now())
			if err := st.Write(stdout, o.Output); err != nil {
				return err
			}
			return st.Err()
		},
	}
	status.SetFlagErrorFunc(root.FlagErrorFunc())
	o.addStatusFlags(status.Flags())

	versionCmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprintf(stdout, "nodecsr-request %s (%s, %s/%s)\n", version.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return err
		},
	}
	root.AddCommand(status, versionCmd)
	return root
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("unexpected argument %q for %q", args[0], cmd.CommandPath())
	}
	return nil
}
