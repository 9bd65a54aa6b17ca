package chart_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	yamlv3 "go.yaml.in/yaml/v3"
)

// opaqueValues are documented, commented and schema-checked as one value
// each (their keys are Kubernetes' own).
var opaqueValues = []string{"policy", "resources", "affinity"}

type schemaNode struct {
	Type       any                    `json:"type"`
	Properties map[string]*schemaNode `json:"properties"`
	Items      *schemaNode            `json:"items"`
}

func loadSchema(t *testing.T) *schemaNode {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(chartDir(t), "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	s := &schemaNode{}
	if err := json.Unmarshal(data, s); err != nil {
		t.Fatalf("values.schema.json: %v", err)
	}
	return s
}

// schemaPaths lists the leaf paths under s: a.b, a.list[].c.
func schemaPaths(s *schemaNode, prefix string) []string {
	var out []string
	for name, p := range s.Properties {
		path := join(prefix, name)
		switch {
		case len(p.Properties) > 0 && !slices.Contains(opaqueValues, path):
			out = append(out, schemaPaths(p, path)...)
		case p.Items != nil && len(p.Items.Properties) > 0 && strings.HasPrefix(path, "policy"):
			out = append(out, schemaPaths(p.Items, path+"[]")...)
		default:
			out = append(out, path)
		}
	}
	return out
}

// jsonPaths lists the leaf JSON field paths of t, the same way.
func jsonPaths(t reflect.Type, prefix string) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		path := join(prefix, name)
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.Struct:
			out = append(out, jsonPaths(ft, path)...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			out = append(out, jsonPaths(ft.Elem(), path+"[]")...)
		default:
			out = append(out, path)
		}
	}
	return out
}

func reflectType[T any]() reflect.Type { return reflect.TypeFor[T]() }

func join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// valueLeaves walks values.yaml and returns each value's path with its
// comment (head or line comment of its key, or of its enclosing key for the
// first key of a group).
func valueLeaves(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(chartDir(t), "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc yamlv3.Node
	if err := yamlv3.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	var walk func(n *yamlv3.Node, prefix string)
	walk = func(n *yamlv3.Node, prefix string) {
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			path := join(prefix, k.Value)
			if v.Kind == yamlv3.MappingNode && len(v.Content) > 0 && !slices.Contains(opaqueValues, path) {
				walk(v, path)
				continue
			}
			out[path] = strings.TrimSpace(k.HeadComment + " " + k.LineComment)
		}
	}
	walk(doc.Content[0], "")
	return out
}

// TestValuesAreDocumented: every value has a comment in values.yaml, a row
// in README.md's values table, and a schema entry; neither the README nor
// the schema lists a value that does not exist.
func TestValuesAreDocumented(t *testing.T) {
	leaves := valueLeaves(t)
	var paths []string
	for p, comment := range leaves {
		paths = append(paths, p)
		if comment == "" {
			t.Errorf("values.yaml: %s has no comment", p)
		}
	}

	readme, err := os.ReadFile(filepath.Join(chartDir(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([^`]+)` \\| ([^|]+) \\| (.*) \\| (.*) \\|$")
	var documented []string
	for _, m := range row.FindAllStringSubmatch(string(readme), -1) {
		documented = append(documented, m[1])
		if strings.TrimSpace(m[4]) == "" {
			t.Errorf("README.md: %s has no description", m[1])
		}
	}
	assertSameSet(t, "README.md values table vs values.yaml", documented, paths)

	schema := schemaPaths(loadSchema(t), "")
	schema = slices.DeleteFunc(schema, func(p string) bool { return p == "global" })
	assertSameSet(t, "values.schema.json vs values.yaml", schema, paths)
}
