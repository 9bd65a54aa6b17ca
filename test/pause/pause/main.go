// Command pause is the sandbox ("pause") process of the test node's pods: it
// holds the pod's namespaces, reaps the zombies of a shared PID namespace and
// exits 0 on SIGTERM or SIGINT, like registry.k8s.io/pause. test/pause packs
// it into an image; it must be built statically (CGO_ENABLED=0).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every exited child (PID 1 of a pod with a shared PID
// namespace inherits the orphans).
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
