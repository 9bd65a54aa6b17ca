package cluster

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/nodecsr/nodecsr/internal/testutil"
)

// RunTests is the body of an integration package's TestMain: it starts one
// control plane for the package, hands it to use, runs the tests and stops the
// control plane, also on SIGINT or SIGTERM. A control plane that cannot start
// fails the package (it is never skipped).
//
//	func TestMain(m *testing.M) { os.Exit(cluster.RunTests(m, cluster.Options{}, func(c *cluster.Cluster) { testCluster = c })) }
func RunTests(m *testing.M, opts Options, use func(*Cluster) error) int {
	return RunSuite(m, opts, func(c *Cluster) (func(code int) int, error) {
		if use == nil {
			return nil, nil
		}
		return nil, use(c)
	})
}

// RunSuite is RunTests where setup may also return a teardown, which runs
// after the tests, before the control plane stops, with the tests' exit
// code, and returns the package's. Starting the control plane may take
// until testutil.MainContext ends (a margin before -test.timeout).
func RunSuite(m *testing.M, opts Options, setup func(*Cluster) (teardown func(code int) int, err error)) int {
	ctx, cancel := testutil.MainContext()
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
	var teardown func(int) int
	if setup != nil {
		if teardown, err = setup(c); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: could not prepare the test control plane: %v\n", err)
			return 1
		}
	}
	code := m.Run()
	if teardown != nil {
		code = teardown(code)
	}
	if code != 0 {
		fmt.Fprintf(os.Stderr, "control-plane logs were in %s/logs (set NODECSR_KEEP_CLUSTER_DIR=1 to keep them)\n", c.Dir())
	}
	return code
}
