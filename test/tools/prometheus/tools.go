//go:build tools

// Package tools pins the Prometheus release whose promtool the alert tests
// (test/integration/alerts) run: `promtool check rules` and `promtool test
// rules` use Prometheus' own PromQL engine and rule evaluation.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
