// Command compatreport renders the kubelet CSR reports of the e2e kubelet suite
// (one JSON object per line, written through NODECSR_KUBELET_REPORT) as one
// markdown table: kubelet version, case, request path, the shape of the CSR and
// the decision nodecsr recorded. hack/compat.sh (make compat) runs it.
//
//	cd test && go run ./compatreport REPORT.jsonl...
//
// A record without a kubelet version takes it from its file name
// (kubelet-v1.34.4.jsonl). Rows are ordered by kubelet version, newest first,
// keeping the suite's order within one version.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// columns are the table's columns: header and the record field they show.
var columns = []struct{ header, field string }{
	{"kubelet", "kubelet"},
	{"case", "case"},
	{"path", "path"},
	{"requester", "requester"},
	{"usages", "usages"},
	{"key", "keyAlgorithm"},
	{"expirationSeconds", "expirationSeconds"},
	{"name style", "nameStyle"},
	{"decision reason", "reason"},
}

var (
	versionInName = regexp.MustCompile(`v\d+\.\d+\.\d+`)
	bootstrapID   = regexp.MustCompile(`^system:bootstrap:[a-z0-9]{6}$`)
)

type row struct {
	version [3]int
	seq     int
	cells   []string
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: compatreport REPORT.jsonl...")
		os.Exit(2)
	}
	var rows []row
	for _, file := range os.Args[1:] {
		got, err := read(file, len(rows))
		if err != nil {
			fmt.Fprintln(os.Stderr, "compatreport:", err)
			os.Exit(1)
		}
		rows = append(rows, got...)
	}
	sort.SliceStable(rows, func(i, j int) bool {
		a, b := rows[i].version, rows[j].version
		if a != b {
			return a[0] > b[0] || a[0] == b[0] && (a[1] > b[1] || a[1] == b[1] && a[2] > b[2])
		}
		return rows[i].seq < rows[j].seq
	})

	var b strings.Builder
	b.WriteString("|")
	for _, c := range columns {
		b.WriteString(" " + c.header + " |")
	}
	b.WriteString("\n|")
	for range columns {
		b.WriteString(" --- |")
	}
	b.WriteString("\n")
	for _, r := range rows {
		b.WriteString("|")
		for _, c := range r.cells {
			b.WriteString(" " + strings.ReplaceAll(c, "|", `\|`) + " |")
		}
		b.WriteString("\n")
	}
	fmt.Print(b.String())
}

func read(file string, seq int) ([]row, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	fallback := versionInName.FindString(filepath.Base(file))

	var rows []row
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var rec map[string]any
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.UseNumber()
		if err := dec.Decode(&rec); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", file, n, err)
		}
		r := row{seq: seq + len(rows)}
		for _, c := range columns {
			r.cells = append(r.cells, cell(rec[c.field]))
		}
		kubelet := strings.TrimPrefix(r.cells[0], "Kubernetes ")
		if kubelet == "" || kubelet == "—" {
			kubelet = fallback
		}
		r.cells[0] = kubelet
		// Bootstrap token IDs are random per run; the table compares shapes.
		if req := bootstrapID.ReplaceAllString(r.cells[3], "system:bootstrap:<token-id>"); req != "—" {
			r.cells[3] = "`" + req + "`"
		}
		r.version = parseVersion(kubelet)
		rows = append(rows, r)
	}
	return rows, sc.Err()
}

// cell formats one JSON value: lists joined with ", ", absent or null as "—".
func cell(v any) string {
	switch v := v.(type) {
	case nil:
		return "—"
	case string:
		if v == "" {
			return "—"
		}
		return v
	case []any:
		if len(v) == 0 {
			return "—"
		}
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = cell(e)
		}
		return strings.Join(parts, ", ")
	case json.Number:
		return v.String()
	case bool:
		return strconv.FormatBool(v)
	default:
		data, err := json.Marshal(v)
		if err != nil {
			return fmt.Sprint(v)
		}
		return string(data)
	}
}

func parseVersion(s string) [3]int {
	var v [3]int
	m := versionInName.FindString(s)
	for i, p := range strings.SplitN(strings.TrimPrefix(m, "v"), ".", 3) {
		v[i], _ = strconv.Atoi(p)
	}
	return v
}
