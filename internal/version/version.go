// Package version carries the build's version, set with -ldflags at build time.
package version

// Version is the nodecsr version; `make build` sets it from git describe.
var Version = "dev"
