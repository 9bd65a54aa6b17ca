package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"

	yaml "go.yaml.in/yaml/v3"

	"github.com/nodecsr/nodecsr/internal/text"
)

// maxProblems caps how many problems one Error lists.
const maxProblems = 50

// Problem is one thing wrong with a policy file.
type Problem struct {
	// Line is the 1-based line the problem is on; 0 when it has no line
	// (the file as a whole, or a field that is not in the file).
	Line int
	// Field is the path of the field concerned (spec.keys.rsa.minBits), or
	// empty.
	Field string
	// Message says what is wrong.
	Message string
}

// Error is returned by Parse and Load when a policy file is rejected. It
// lists every problem found, each with its line where known.
type Error struct {
	// File is the policy file's path; empty for Parse.
	File string
	// Problems lists what is wrong, in file order where lines are known.
	Problems []Problem
	// Truncated counts problems left out of Problems.
	Truncated int
}

// Error renders one problem per line: "file:line: field: message".
func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		switch {
		case e.File != "" && p.Line > 0:
			fmt.Fprintf(&b, "%s:%d: ", e.File, p.Line)
		case e.File != "":
			fmt.Fprintf(&b, "%s: ", e.File)
		case p.Line > 0:
			fmt.Fprintf(&b, "line %d: ", p.Line)
		}
		if p.Field != "" {
			b.WriteString(p.Field)
			b.WriteString(": ")
		}
		b.WriteString(p.Message)
	}
	if e.Truncated > 0 {
		fmt.Fprintf(&b, "\n(%d more problems not shown)", e.Truncated)
	}
	return b.String()
}

// Load reads, decodes, defaults, validates and compiles the policy file at
// path. A rejected file yields an *Error naming the file.
func Load(path string) (*Effective, error) {
	data, err := readPolicyFile(path)
	if err != nil {
		return nil, err
	}
	return parseFile(path, data)
}

// readPolicyFile reads at most MaxFileBytes+1 bytes, following symlinks.
func readPolicyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("failed to read policy file: %w", err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("failed to read policy file %q: %w", path, err)
	}
	return data, nil
}

// Parse decodes a policy strictly, applies defaults, validates and compiles
// it. A rejected policy yields an *Error listing every problem.
func Parse(data []byte) (*Effective, error) {
	if len(data) > MaxFileBytes {
		return nil, wholeFile(fmt.Sprintf("policy file is larger than %d bytes", MaxFileBytes))
	}
	d := &decoder{lines: make(map[string]int)}
	root, err := d.document(data)
	if err != nil {
		return nil, err
	}

	// apiVersion and kind first: a file of another kind would otherwise
	// drown in unknown-field noise.
	if probs := d.header(root); len(probs) > 0 {
		return nil, &Error{Problems: probs}
	}

	tree := d.walk(root, policyType, "")
	if len(d.problems) > 0 {
		return nil, d.err()
	}

	raw, err := json.Marshal(tree)
	if err != nil {
		return nil, fmt.Errorf("failed to encode policy: %w", err)
	}
	p := &Policy{}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(p); err != nil {
		// The walk checked fields and types; this is a backstop.
		return nil, wholeFile(fmt.Sprintf("failed to decode policy: %v", err))
	}

	p.SetDefaults()
	if errs := p.Validate(); len(errs) > 0 {
		for _, fe := range errs {
			d.problems = append(d.problems, Problem{Line: d.lineOf(fe.Field), Field: fe.Field, Message: fe.ErrorBody()})
		}
		return nil, d.err()
	}
	e, err := compile(p)
	if err != nil {
		return nil, wholeFile(err.Error())
	}
	return e, nil
}

func wholeFile(msg string) *Error { return &Error{Problems: []Problem{{Message: msg}}} }

var policyType = reflect.TypeFor[Policy]()

// decoder walks a yaml.Node tree against the Go types, checking field names,
// duplicate keys and scalar types, recording the line of every field, and
// producing a JSON-shaped tree for encoding/json to decode.
type decoder struct {
	problems []Problem
	lines    map[string]int
}

func (d *decoder) add(line int, fieldPath, format string, args ...any) {
	d.problems = append(d.problems, Problem{Line: line, Field: fieldPath, Message: fmt.Sprintf(format, args...)})
}

func (d *decoder) err() *Error {
	probs := d.problems
	sort.SliceStable(probs, func(i, j int) bool {
		// Problems with lines in file order; those without last.
		li, lj := probs[i].Line, probs[j].Line
		if li == 0 || lj == 0 {
			return li != 0 && lj == 0
		}
		return li < lj
	})
	e := &Error{Problems: probs}
	if len(probs) > maxProblems {
		e.Problems, e.Truncated = probs[:maxProblems], len(probs)-maxProblems
	}
	return e
}

// lineOf finds the line of a field path, or of its nearest parent in the
// file.
func (d *decoder) lineOf(path string) int {
	for path != "" {
		if l, ok := d.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
}

// document decodes exactly one YAML document and returns its root node.
func (d *decoder) document(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, wholeFile("policy file is empty")
		}
		return nil, yamlError(err)
	}
	for {
		var next yaml.Node
		err := dec.Decode(&next)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, yamlError(err)
		}
		if !isEmptyDocument(&next) {
			return nil, &Error{Problems: []Problem{{Line: next.Line, Message: "a policy file holds exactly one YAML document; found another"}}}
		}
	}
	if isEmptyDocument(&doc) {
		return nil, wholeFile("policy file is empty")
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, &Error{Problems: []Problem{{Line: root.Line, Message: "a policy must be a YAML mapping with apiVersion, kind and spec"}}}
	}
	return root, nil
}

func isEmptyDocument(doc *yaml.Node) bool {
	return len(doc.Content) == 0 || (doc.Content[0].Kind == yaml.ScalarNode && doc.Content[0].ShortTag() == "!!null")
}

// yamlError turns a YAML syntax error ("yaml: line 3: ...") into an *Error.
func yamlError(err error) *Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if i := strings.IndexByte(rest, ':'); i > 0 {
			if n, convErr := strconv.Atoi(rest[:i]); convErr == nil {
				line, msg = n, strings.TrimSpace(rest[i+1:])
			}
		}
	}
	return &Error{Problems: []Problem{{Line: line, Message: "invalid YAML: " + msg}}}
}

// header checks apiVersion and kind.
func (d *decoder) header(root *yaml.Node) []Problem {
	var probs []Problem
	check := func(key, want string) {
		for i := 0; i+1 < len(root.Content); i += 2 {
			k, v := root.Content[i], root.Content[i+1]
			if k.Value != key || k.Kind != yaml.ScalarNode {
				continue
			}
			if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!str" || v.Value != want {
				probs = append(probs, Problem{Line: v.Line, Field: key, Message: fmt.Sprintf("unsupported %s %s (want %q)", key, describe(v), want)})
			}
			return
		}
		probs = append(probs, Problem{Line: root.Line, Field: key, Message: fmt.Sprintf("required (want %q)", want)})
	}
	check("apiVersion", APIVersion)
	check("kind", Kind)
	return probs
}

// describe quotes a node's value for a message, bounded.
func describe(n *yaml.Node) string {
	if n.Kind != yaml.ScalarNode {
		return "(not a string)"
	}
	v := n.Value
	if len(v) > 64 {
		v = v[:64] + "…"
	}
	return strconv.Quote(v)
}

// structFields maps the JSON names of a struct type's fields to their types.
type structFields struct {
	byName map[string]reflect.Type
	names  []string
}

var fieldCache sync.Map // reflect.Type → *structFields

func fieldsOf(t reflect.Type) *structFields {
	if v, ok := fieldCache.Load(t); ok {
		return v.(*structFields)
	}
	sf := &structFields{byName: make(map[string]reflect.Type)}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		sf.byName[name] = f.Type
		sf.names = append(sf.names, name)
	}
	fieldCache.Store(t, sf)
	return sf
}

func join(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}

// walk checks n against t and returns a JSON-shaped value (nil for null).
func (d *decoder) walk(n *yaml.Node, t reflect.Type, path string) any {
	if n.Kind == yaml.AliasNode {
		d.add(n.Line, path, "YAML aliases are not supported in a policy file")
		return nil
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return nil
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			d.add(n.Line, path, "expected a mapping, got %s", kindOf(n))
			return nil
		}
		sf := fieldsOf(t)
		out := make(map[string]any, len(n.Content)/2)
		seen := make(map[string]int, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
				d.add(k.Line, path, "field names must be strings, got %s", kindOf(k))
				continue
			}
			if first, dup := seen[k.Value]; dup {
				d.add(k.Line, path, "field %q is set twice (first at line %d)", k.Value, first)
				continue
			}
			seen[k.Value] = k.Line
			ft, ok := sf.byName[k.Value]
			if !ok {
				d.add(k.Line, path, "unknown field %s%s", describe(k), suggest(k.Value, sf.names))
				continue
			}
			fp := join(path, k.Value)
			d.lines[fp] = k.Line
			if val := d.walk(v, ft, fp); val != nil {
				out[k.Value] = val
			}
		}
		return out
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.add(n.Line, path, "expected a list, got %s", kindOf(n))
			return nil
		}
		out := make([]any, 0, len(n.Content))
		for i, e := range n.Content {
			ep := fmt.Sprintf("%s[%d]", path, i)
			d.lines[ep] = e.Line
			val := d.walk(e, t.Elem(), ep)
			if val == nil && t.Elem().Kind() != reflect.Pointer {
				if e.Kind == yaml.ScalarNode && e.ShortTag() == "!!null" {
					d.add(e.Line, ep, "list entries must not be empty")
				}
			}
			out = append(out, val)
		}
		return out
	case reflect.String:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
			hint := ""
			if n.Kind == yaml.ScalarNode {
				hint = fmt.Sprintf(" (quote it: %q)", truncate(n.Value))
			}
			d.add(n.Line, path, "expected a string, got %s%s", kindOf(n), hint)
			return nil
		}
		return n.Value
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
			d.add(n.Line, path, "expected true or false, got %s", kindOf(n))
			return nil
		}
		return b
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		var i int64
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&i) != nil {
			d.add(n.Line, path, "expected an integer, got %s", kindOf(n))
			return nil
		}
		lim := int64(math.MaxInt64) >> (64 - t.Bits())
		if i > lim || i < -lim-1 {
			d.add(n.Line, path, "%d is out of range", i)
			return nil
		}
		return i
	default:
		d.add(n.Line, path, "unsupported field type %s", t)
		return nil
	}
}

// kindOf names what a node holds, for messages.
func kindOf(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str":
			return "a string " + describe(n)
		case "!!int":
			return "an integer " + truncate(n.Value)
		case "!!float":
			return "a number " + truncate(n.Value)
		case "!!bool":
			return "a boolean " + truncate(n.Value)
		case "!!null":
			return "null"
		default:
			return fmt.Sprintf("a %s value", truncate(n.ShortTag()))
		}
	}
	return "nothing"
}

// truncate bounds a value from the file for a message, on a rune boundary.
func truncate(s string) string { return text.Truncate(s, 64) }

// suggest proposes a known field that differs from name only in case, or
// by one edit.
func suggest(name string, known []string) string {
	for _, k := range known {
		if strings.EqualFold(k, name) || (len(name) < 64 && editDistance(k, name) <= 2) {
			return fmt.Sprintf(" (did you mean %q?)", k)
		}
	}
	return ""
}

// editDistance is the Levenshtein distance of two short ASCII strings.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
