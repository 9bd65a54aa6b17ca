// Package alerts_test runs the chart's PrometheusRule through Prometheus' own
// rule engine. It renders charts/nodecsr with Helm's SDK, writes the
// PrometheusRule's spec.groups as a Prometheus rule file, and runs promtool
// (built by `make assets` from the Prometheus release test/tools/prometheus
// pins): `promtool check rules` parses every expression and template, and
// `promtool test rules` evaluates the alerts on the synthetic series of
// testdata/*.test.yaml. Every alert of the chart must have a case where it
// fires and one where it stays quiet there, or the test fails.
//
// No control plane is started: the chart is rendered client-side.
package alerts_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chartutil"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/test/env"
)

const (
	// The release the unit tests are written for: the rules select
	// job="nodecsr", namespace="nodecsr-system".
	releaseName, namespace = "nodecsr", "nodecsr-system"
	// ruleFile is the name the unit tests' rule_files refer to.
	ruleFile = "nodecsr-rules.yaml"
	// valuesFile holds the values the unit tests' thresholds depend on.
	valuesFile = "values.yaml"
)

// TestAlertsCheck checks that every rule the chart renders parses and lints
// clean, with the unit tests' values and with other value sets that change
// the rules (thresholds, names, leader election off).
func TestAlertsCheck(t *testing.T) {
	promtool := findPromtool(t)
	singleReplica := map[string]any{"prometheusRule": map[string]any{"enabled": true}, "replicaCount": 1, "leaderElection": map[string]any{"enabled": false}}
	cases := []struct {
		name string
		vals map[string]any
	}{
		{"unit-test values", readValuesFile(t, filepath.Join("testdata", valuesFile))},
		{"chart defaults", map[string]any{"prometheusRule": map[string]any{"enabled": true}}},
		{"non-default", readValuesFile(t, filepath.Join("..", "chart", "testdata", "values-nondefault.yaml"))},
		{"single replica", singleReplica},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			groups := renderRuleGroups(t, c.vals)
			dir := t.TempDir()
			path := writeRuleFile(t, dir, groups)
			// --lint=all: duplicate rules are an error too.
			out, err := run(promtool, "check", "rules", "--lint=all", "--lint-fatal", path)
			if err != nil {
				t.Fatalf("promtool check rules: %v\n%s\nrule file:\n%s", err, out, readFile(t, path))
			}
			if want := fmt.Sprintf("SUCCESS: %d rules found", ruleCount(groups)); !strings.Contains(out, want) {
				t.Errorf("promtool check rules printed %q, want %q", out, want)
			}
		})
	}
	t.Run("single replica has no NodecsrNoLeader", func(t *testing.T) {
		names := alertNames(renderRuleGroups(t, singleReplica))
		if slices.Contains(names, "NodecsrNoLeader") {
			t.Errorf("NodecsrNoLeader is rendered without leader election: %v", names)
		}
	})
}

// TestAlertsUnit runs promtool's rule unit tests in testdata on the rules
// rendered with testdata/values.yaml, one subtest per test file, after
// checking that every alert is covered both ways.
func TestAlertsUnit(t *testing.T) {
	promtool := findPromtool(t)
	groups := renderRuleGroups(t, readValuesFile(t, filepath.Join("testdata", valuesFile)))
	dir := t.TempDir()
	writeRuleFile(t, dir, groups)

	files, err := filepath.Glob(filepath.Join("testdata", "*.test.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata/*.test.yaml: %v", err)
	}
	cov := map[string]*coverage{}
	for _, f := range files {
		data := readFile(t, f)
		readCoverage(t, f, data, cov)
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// Every alert of the chart is tested firing and quiet; every alert the
	// tests name exists.
	rendered := alertNames(groups)
	for _, name := range rendered {
		c := cov[name]
		switch {
		case c == nil:
			t.Errorf("alert %s has no unit test: add alert_rule_test cases to testdata/*.test.yaml where it fires and where it stays quiet", name)
		case c.fires == 0:
			t.Errorf("alert %s has no unit test case where it fires (exp_alerts not empty)", name)
		case c.quiet == 0:
			t.Errorf("alert %s has no unit test case where it stays quiet (exp_alerts: [])", name)
		}
	}
	for name, c := range cov {
		if !slices.Contains(rendered, name) {
			t.Errorf("%s tests alert %s, which the chart does not render (alerts: %s)", strings.Join(c.files, ", "), name, strings.Join(rendered, ", "))
		}
	}

	for _, f := range files {
		base := filepath.Base(f)
		t.Run(strings.TrimSuffix(base, ".test.yaml"), func(t *testing.T) {
			out, err := run(promtool, "test", "rules", filepath.Join(dir, base))
			if err != nil {
				t.Fatalf("promtool test rules %s: %v\n%s", f, err, out)
			}
			if testing.Verbose() {
				t.Logf("promtool test rules %s:\n%s", f, out)
			}
		})
	}
}

// coverage counts an alert's unit test cases.
type coverage struct {
	fires, quiet int
	files        []string
}

// unitTestFile is the part of promtool's unit test format the coverage
// check reads.
type unitTestFile struct {
	RuleFiles []string `json:"rule_files"`
	Tests     []struct {
		Name           string `json:"name"`
		AlertRuleTests []struct {
			Alertname string `json:"alertname"`
			ExpAlerts []any  `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

func readCoverage(t *testing.T, path string, data []byte, cov map[string]*coverage) {
	t.Helper()
	var f unitTestFile
	if err := yaml.Unmarshal(data, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if !slices.Equal(f.RuleFiles, []string{ruleFile}) {
		t.Errorf("%s: rule_files %v, want [%s] (the rule file the chart renders)", path, f.RuleFiles, ruleFile)
	}
	for _, tg := range f.Tests {
		if tg.Name == "" {
			t.Errorf("%s: a test group has no name", path)
		}
		for _, a := range tg.AlertRuleTests {
			c := cov[a.Alertname]
			if c == nil {
				c = &coverage{}
				cov[a.Alertname] = c
			}
			if !slices.Contains(c.files, path) {
				c.files = append(c.files, path)
			}
			if len(a.ExpAlerts) > 0 {
				c.fires++
			} else {
				c.quiet++
			}
		}
	}
}

// findPromtool returns the promtool hack/build-promtool.sh builds, at the
// version test/tools/prometheus/go.mod pins.
func findPromtool(t *testing.T) string {
	t.Helper()
	version := prometheusVersion(t)
	cache, err := cluster.AssetsCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(cache, "promtool-"+version, "promtool")
	if fi, err := os.Stat(path); err != nil || fi.Mode()&0o111 == 0 {
		t.Fatalf("promtool %s is missing at %s: run `make assets` (hack/build-promtool.sh builds it from the Go module proxy)", version, path)
	}
	return path
}

// prometheusVersion is the github.com/prometheus/prometheus version the
// tools module requires.
func prometheusVersion(t *testing.T) string {
	t.Helper()
	gomod := filepath.Join(repoRoot(t), "test", "tools", "prometheus", "go.mod")
	const mod = "github.com/prometheus/prometheus"
	for _, line := range strings.Split(string(readFile(t, gomod)), "\n") {
		fields := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
		if len(fields) >= 2 && fields[0] == mod {
			return fields[1]
		}
	}
	t.Fatalf("%s does not require %s", gomod, mod)
	return ""
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func readValuesFile(t *testing.T, path string) map[string]any {
	t.Helper()
	v, err := chartutil.ReadValuesFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return v.AsMap()
}

// renderRuleGroups renders the chart client-side, as `helm template` does,
// and returns the spec.groups of its one PrometheusRule.
func renderRuleGroups(t *testing.T, vals map[string]any) []any {
	t.Helper()
	ch, err := env.LoadChart(repoRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	inst := action.NewInstall(&action.Configuration{Log: func(string, ...any) {}})
	inst.DryRun, inst.ClientOnly, inst.Replace = true, true, true
	inst.ReleaseName, inst.Namespace = releaseName, namespace
	inst.KubeVersion = &chartutil.KubeVersion{Version: cluster.KubeVersion, Major: "1", Minor: "37"}
	rel, err := inst.Run(ch, vals)
	if err != nil {
		t.Fatalf("the chart does not render: %v", err)
	}
	var rules []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(rel.Manifest), 4096)
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); err != nil {
			if err == io.EOF {
				break
			}
			t.Fatalf("the rendered manifest does not decode: %v", err)
		}
		if obj.GetKind() == "PrometheusRule" {
			rules = append(rules, obj)
		}
	}
	if len(rules) != 1 {
		t.Fatalf("%d PrometheusRules rendered, want 1 (is prometheusRule.enabled set?)", len(rules))
	}
	groups, found, err := unstructured.NestedSlice(rules[0].Object, "spec", "groups")
	if err != nil || !found || len(groups) == 0 {
		t.Fatalf("the PrometheusRule has no spec.groups (%v)", err)
	}
	return groups
}

// writeRuleFile writes groups as a Prometheus rule file into dir.
func writeRuleFile(t *testing.T, dir string, groups []any) string {
	t.Helper()
	data, err := yaml.Marshal(map[string]any{"groups": groups})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, ruleFile)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// ruleCount counts the rules of groups, alerting and recording.
func ruleCount(groups []any) int {
	n := 0
	for _, g := range groups {
		rules, _, _ := unstructured.NestedSlice(g.(map[string]any), "rules")
		n += len(rules)
	}
	return n
}

// alertNames lists the alerts of groups in order; recording rules have none.
func alertNames(groups []any) []string {
	var out []string
	for _, g := range groups {
		rules, _, _ := unstructured.NestedSlice(g.(map[string]any), "rules")
		for _, r := range rules {
			if name, _ := r.(map[string]any)["alert"].(string); name != "" {
				out = append(out, name)
			}
		}
	}
	return out
}

// run runs promtool and returns what it printed.
func run(promtool string, args ...string) (string, error) {
	// No deadline of its own: go test -timeout bounds the test.
	var out bytes.Buffer
	cmd := exec.Command(promtool, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}
