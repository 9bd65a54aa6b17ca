// Command nodecsr-controller decides kubelet client certificate requests and
// serves nodecsr's admission webhooks.
package main

import (
	"os"

	"github.com/nodecsr/nodecsr/cmd/nodecsr-controller/app"
)

func main() {
	os.Exit(app.Main(os.Args[1:]))
}
