package cluster

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"
)

// RunTests is the body of an integration package's TestMain: it starts one
// control plane for the package, hands it to use, runs the tests and stops the
// control plane, also on SIGINT or SIGTERM. A control plane that cannot start
// fails the package (it is never skipped).
//
//	func TestMain(m *testing.M) { os.Exit(cluster.RunTests(m, cluster.Options{}, func(c *cluster.Cluster) { testCluster = c })) }
func RunTests(m *testing.M, opts Options, use func(*Cluster) error) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	c, err := Start(ctx, opts)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: could not start the test control plane: %v\n", err)
		return 1
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "received %v: stopping the test control plane\n", s)
		_ = c.Stop()
		os.Exit(1)
	}()
	defer signal.Stop(sigs)
	defer func() { _ = c.Stop() }()
	if use != nil {
		if err := use(c); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: could not prepare the test control plane: %v\n", err)
			return 1
		}
	}
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "control-plane logs were in %s/logs (set NODECSR_KEEP_CLUSTER_DIR=1 to keep them)\n", c.Dir())
	}
	return code
}
