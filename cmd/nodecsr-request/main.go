// Command nodecsr-request obtains and renews a node's kubelet client
// certificate; see docs/nodecsr-request.md.
package main

import (
	"os"

	"github.com/nodecsr/nodecsr/internal/requester"
)

func main() { os.Exit(requester.Main()) }
