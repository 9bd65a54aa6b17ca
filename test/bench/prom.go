package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"k8s.io/client-go/kubernetes"
)

// sample is one line of the Prometheus text format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

type samples []sample

// parseSamples reads the Prometheus text exposition format (comments and
// malformed lines are skipped). It handles what the API server and
// controller-runtime expose: quoted label values with escapes, no timestamps.
func parseSamples(data []byte) samples {
	var out samples
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		s, ok := parseLine(line)
		if ok {
			out = append(out, s)
		}
	}
	return out
}

func parseLine(line string) (sample, bool) {
	s := sample{labels: map[string]string{}}
	i := strings.IndexAny(line, "{ ")
	if i < 0 {
		return s, false
	}
	s.name = line[:i]
	rest := line[i:]
	if rest[0] == '{' {
		rest = rest[1:]
		for {
			rest = strings.TrimLeft(rest, ", ")
			if rest == "" {
				return s, false
			}
			if rest[0] == '}' {
				rest = rest[1:]
				break
			}
			eq := strings.IndexByte(rest, '=')
			if eq < 0 || eq+1 >= len(rest) || rest[eq+1] != '"' {
				return s, false
			}
			key := rest[:eq]
			rest = rest[eq+2:]
			var val strings.Builder
			j := 0
			for ; j < len(rest) && rest[j] != '"'; j++ {
				if rest[j] == '\\' && j+1 < len(rest) {
					j++
					switch rest[j] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(rest[j])
					}
					continue
				}
				val.WriteByte(rest[j])
			}
			if j >= len(rest) {
				return s, false
			}
			s.labels[key] = val.String()
			rest = rest[j+1:]
		}
	}
	fields := strings.Fields(rest)
	if len(fields) < 1 {
		return s, false
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, false
	}
	s.value = v
	return s, true
}

// sum adds the values of every sample called name whose labels match all of
// the given key=value pairs.
func (ss samples) sum(name string, match ...string) float64 {
	var total float64
	for _, s := range ss {
		if s.name != name || !s.matches(match) {
			continue
		}
		total += s.value
	}
	return total
}

func (s sample) matches(match []string) bool {
	for i := 0; i+1 < len(match); i += 2 {
		if s.labels[match[i]] != match[i+1] {
			return false
		}
	}
	return true
}

// apiServerMetrics scrapes kube-apiserver's /metrics with the admin client.
func apiServerMetrics(ctx context.Context, client kubernetes.Interface) (samples, error) {
	data, err := client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("failed to scrape kube-apiserver /metrics: %w", err)
	}
	return parseSamples(data), nil
}

// requestKey names one kind of API request: VERB resource[/subresource].
func requestKey(s sample) string {
	k := s.labels["verb"] + " " + s.labels["resource"]
	if k == s.labels["verb"]+" " {
		k = s.labels["verb"] + " (non-resource)"
	}
	if sub := s.labels["subresource"]; sub != "" {
		k += "/" + sub
	}
	return k
}

// requestCounts is apiserver_request_total by request kind.
func requestCounts(ss samples) map[string]float64 {
	out := map[string]float64{}
	for _, s := range ss {
		if s.name == "apiserver_request_total" {
			out[requestKey(s)] += s.value
		}
	}
	return out
}

// requestDurations is the sum and count of apiserver_request_duration_seconds by request kind.
func requestDurations(ss samples) map[string][2]float64 {
	out := map[string][2]float64{}
	for _, s := range ss {
		var i int
		switch s.name {
		case "apiserver_request_duration_seconds_sum":
			i = 0
		case "apiserver_request_duration_seconds_count":
			i = 1
		default:
			continue
		}
		k := requestKey(s)
		v := out[k]
		v[i] += s.value
		out[k] = v
	}
	return out
}

// requestDelta is what the API server served between two scrapes.
type requestDelta struct {
	// Total is the number of requests.
	Total float64 `json:"total"`
	// ByKind is the number of requests by kind, largest first.
	ByKind []requestKind `json:"byKind"`
}

type requestKind struct {
	Kind  string  `json:"kind"`
	Count float64 `json:"count"`
	// MeanServerMillis is the API server's mean time to serve one (apiserver_request_duration_seconds).
	MeanServerMillis float64 `json:"meanServerMillis,omitempty"`
}

func diffRequests(before, after samples) requestDelta {
	b, a := requestCounts(before), requestCounts(after)
	bd, ad := requestDurations(before), requestDurations(after)
	var d requestDelta
	for k, v := range a {
		n := v - b[k]
		if n <= 0 {
			continue
		}
		d.Total += n
		rk := requestKind{Kind: k, Count: n}
		if c := ad[k][1] - bd[k][1]; c > 0 {
			rk.MeanServerMillis = 1000 * (ad[k][0] - bd[k][0]) / c
		}
		d.ByKind = append(d.ByKind, rk)
	}
	sort.Slice(d.ByKind, func(i, j int) bool {
		if d.ByKind[i].Count != d.ByKind[j].Count {
			return d.ByKind[i].Count > d.ByKind[j].Count
		}
		return d.ByKind[i].Kind < d.ByKind[j].Kind
	})
	return d
}
