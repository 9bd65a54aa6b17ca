// Command bench measures nodecsr on a real local control plane (etcd,
// kube-apiserver, kube-controller-manager built by hack/build-assets.sh)
// against the approver it replaces, kube-controller-manager's csrapproving,
// and against a bare approval loop, all in one run on one API server so that
// the noise of a shared machine cancels out in the ratios.
//
//	go run ./test/bench approve   [-n 1000] [-incumbent-n 300] [-rounds 2] [-variant NAME=FLAGS]... [-patterns ...]
//	go run ./test/bench storm     [-storm-n 5000] [-storm-duration 30s]
//	go run ./test/bench memory    [-pending-n 10000] [-foreign-n 100000] [-memory-env 'GOMEMLIMIT=40MiB']...
//	go run ./test/bench webhook   [-webhook-n 200] [-webhook-rounds 3]
//	go run ./test/bench requester [-requester-runs 20]
//	go run ./test/bench all       [-markdown BENCHMARKS.md]
//	go run ./test/bench render    -in run.json [-markdown BENCHMARKS.md]
//
// Every subcommand takes -o text|json (json: one object on stdout) and
// -markdown FILE. Progress goes to stderr. The real binaries are measured:
// nodecsr-controller and nodecsr-request are built with `go build` into a
// temporary folder and run as child processes, which die with the bench
// (Pdeathsig), as does the control plane; SIGINT stops everything.
// Every request goes to loopback.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1
	exitUsage   = 2
	exitSignal  = 130
	forceExitIn = 20 * time.Second
)

var subcommands = []string{"approve", "storm", "memory", "webhook", "requester", "all", "render"}

// options are the flags; each subcommand reads the ones it needs.
type options struct {
	output   string
	markdown string
	quiet    bool

	n, incumbentN, bareWorkers int
	rounds                     int
	variants                   []variant
	noVariants                 bool
	patterns                   []pattern
	patternsFlag               string

	stormN, stormSenders int
	stormDuration        time.Duration

	pendingN, foreignN int
	memoryEnv          [][]string

	webhookN, webhookRounds int

	requesterRuns int

	goBench bool

	in string
}

func newFlags(o *options, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.output, "o", "text", "output: text or json (one JSON object on stdout)")
	fs.StringVar(&o.markdown, "markdown", "", "also write the results as Markdown to this file (e.g. BENCHMARKS.md)")
	fs.BoolVar(&o.quiet, "q", false, "no progress lines on stderr")
	fs.IntVar(&o.n, "n", 1000, "approve: pending CSRs (from as many nodes) per contender")
	fs.IntVar(&o.incumbentN, "incumbent-n", -1, "approve: CSRs for kube-controller-manager's csrapproving (default min(n, 300): it runs at ~10/s)")
	fs.IntVar(&o.rounds, "rounds", 2, "approve: rounds of N CSRs for every contender but the incumbent, in alternating order (figures are means)")
	fs.IntVar(&o.bareWorkers, "bare-workers", defaults.MaxConcurrentReconciles, "approve: concurrency of the bare loop (nodecsr's default --max-concurrent-reconciles)")
	fs.StringVar(&o.patternsFlag, "patterns", defaultPatterns, "approve: also run the bare loop with these request patterns per CSR, comma-separated ("+patternsHelpValidValues+"; none: no such runs)")
	fs.Func("variant", "approve: also run nodecsr-controller with other flags or environment variables, as NAME=FLAGS (repeatable; none: no variants), e.g. 'qps2000=--kube-api-qps=2000 --kube-api-burst=4000' (default: "+defaultVariantsHelp()+")", func(s string) error {
		if s == "none" {
			o.noVariants = true
			return nil
		}
		v, err := parseVariant(s)
		if err == nil {
			o.variants = append(o.variants, v)
		}
		return err
	})
	fs.IntVar(&o.stormN, "storm-n", 5000, "storm: CSRs (from as many nodes)")
	fs.DurationVar(&o.stormDuration, "storm-duration", 30*time.Second, "storm: the CSRs arrive at a steady rate over this long")
	fs.IntVar(&o.stormSenders, "storm-senders", 16, "storm: goroutines creating the CSRs")
	fs.IntVar(&o.pendingN, "pending-n", 10000, "memory: kubelet client CSRs kept pending")
	fs.IntVar(&o.foreignN, "foreign-n", 100000, "memory: CSRs of another signer (example.com/foo)")
	fs.Func("memory-env", "memory: also measure a fresh start with these environment variables (repeatable; space-separated NAME=value; default GOMEMLIMIT=40MiB; none: no such run)", func(s string) error {
		env := strings.Fields(s)
		if s == "none" {
			o.memoryEnv = [][]string{{"none"}}
			return nil
		}
		for _, kv := range env {
			if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
				return fmt.Errorf("-memory-env wants NAME=value pairs, got %q", kv)
			}
		}
		o.memoryEnv = append(o.memoryEnv, env)
		return nil
	})
	fs.IntVar(&o.webhookN, "webhook-n", 200, "webhook: CSR creates per block")
	fs.IntVar(&o.webhookRounds, "webhook-rounds", 3, "webhook: rounds of (without, with) blocks")
	fs.IntVar(&o.requesterRuns, "requester-runs", 20, "requester: runs of nodecsr-request (bootstrap path)")
	fs.StringVar(&o.in, "in", "", "render: the JSON a run printed with -o json, to render again as text or -markdown without running anything")
	fs.BoolVar(&o.goBench, "go-bench", true, "with -markdown: also run the Go benchmarks of approver/ and webhook/ and include their output")
	return fs
}

func usage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: go run ./test/bench {%s} [flags]\n\nflags:\n", strings.Join(subcommands, "|"))
	fs.PrintDefaults()
}

func run(args []string, stdout, stderr io.Writer) int {
	o := &options{}
	fs := newFlags(o, stderr)
	if len(args) == 0 || !contains(subcommands, args[0]) {
		usage(stderr, fs)
		return exitUsage
	}
	sub := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return exitUsage
	}
	if err := o.validate(fs); err != nil {
		fmt.Fprintln(stderr, "Error:", err)
		return exitUsage
	}

	if sub == "render" {
		return render(o, stdout, stderr)
	}
	logf := func(format string, a ...any) {
		if !o.quiet {
			fmt.Fprintf(stderr, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, a...))
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var (
		cleanupMu sync.Mutex
		cleanup   func()
	)
	// A second signal, or a first one the run does not honour within
	// forceExitIn, stops every child and the control plane and exits.
	finished := make(chan struct{})
	defer close(finished)
	go func() {
		select {
		case <-finished:
			return
		case <-ctx.Done():
		}
		fmt.Fprintln(stderr, "interrupted: stopping the control plane and every process the bench started")
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
		select {
		case <-finished:
			return
		case <-sigs:
		case <-time.After(forceExitIn):
		}
		cleanupMu.Lock()
		if cleanup != nil {
			cleanup()
		}
		live.killAll()
		os.Exit(exitSignal)
	}()

	started := time.Now()
	rep := &report{Command: "go run ./test/bench " + strings.Join(args, " "), Date: started.UTC().Format(time.RFC3339), Machine: describeMachine(), LoadBefore: loadAverage()}
	e, cl, err := setupEnv(ctx, logf)
	if err != nil {
		fmt.Fprintln(stderr, "Error:", err)
		return exitFailed
	}
	cleanupMu.Lock()
	cleanup = cl
	cleanupMu.Unlock()

	failed := false
	step := func(name string, f func() error) {
		if ctx.Err() != nil {
			return
		}
		t := time.Now()
		logf("=== %s", name)
		if err := f(); err != nil {
			failed = true
			msg := fmt.Sprintf("%s: %v", name, err)
			rep.Errors = append(rep.Errors, msg)
			logf("FAILED %s", msg)
			return
		}
		logf("=== %s done in %s", name, time.Since(t).Round(time.Second))
	}
	want := func(name string) bool { return sub == name || sub == "all" }
	if want("approve") {
		step("approve", func() (err error) { rep.Approve, err = e.runApprove(ctx, o); return err })
	}
	if want("storm") {
		step("storm", func() (err error) { rep.Storm, err = e.runStorm(ctx, o); return err })
	}
	if want("requester") {
		step("requester", func() (err error) { rep.Requester, err = e.runRequester(ctx, o); return err })
	}
	if want("webhook") {
		step("webhook", func() (err error) { rep.Webhook, err = e.runWebhook(ctx, o); return err })
	}
	apfPart(ctx, want, step, e, o, rep)
	// Last: it leaves 100,000 objects behind, which go with the control plane.
	if want("memory") {
		step("memory", func() (err error) { rep.Memory, err = e.runMemory(ctx, o); return err })
	}
	cleanupMu.Lock()
	cl()
	cleanup = nil
	cleanupMu.Unlock()
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "interrupted")
		return exitSignal
	}
	rep.WallSeconds = time.Since(started).Seconds()
	rep.LoadAfter = loadAverage()
	rep.Targets = checkTargets(rep)

	if o.markdown != "" {
		if o.goBench {
			rep.GoBenchmarks = goBenchmarks(ctx, logf)
		}
		if err := os.WriteFile(o.markdown, []byte(renderMarkdown(rep, o)), 0o644); err != nil {
			fmt.Fprintln(stderr, "Error:", err)
			return exitFailed
		}
		logf("wrote %s", o.markdown)
	}
	switch o.output {
	case "json":
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(stderr, "Error:", err)
			return exitFailed
		}
	default:
		fmt.Fprint(stdout, renderText(rep))
	}
	if failed {
		return exitFailed
	}
	return exitOK
}

// render prints (and with -markdown writes) a report saved with -o json.
func render(o *options, stdout, stderr io.Writer) int {
	if o.in == "" {
		fmt.Fprintln(stderr, "Error: render needs -in FILE (the output of -o json)")
		return exitUsage
	}
	data, err := os.ReadFile(o.in)
	if err != nil {
		fmt.Fprintln(stderr, "Error:", err)
		return exitFailed
	}
	rep := &report{}
	if err := json.Unmarshal(data, rep); err != nil {
		fmt.Fprintf(stderr, "Error: %s: %v\n", o.in, err)
		return exitFailed
	}
	rep.Targets = checkTargets(rep)
	if o.markdown != "" {
		if err := os.WriteFile(o.markdown, []byte(renderMarkdown(rep, o)), 0o644); err != nil {
			fmt.Fprintln(stderr, "Error:", err)
			return exitFailed
		}
	}
	if o.output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
		return exitOK
	}
	fmt.Fprint(stdout, renderText(rep))
	return exitOK
}

func (o *options) validate(fs *flag.FlagSet) error {
	var errs []error
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " ")))
	}
	if o.output != "text" && o.output != "json" {
		errs = append(errs, fmt.Errorf("-o must be text or json, got %q", o.output))
	}
	if o.n < 2 {
		errs = append(errs, fmt.Errorf("-n must be >= 2, got %d", o.n))
	}
	if o.incumbentN < 0 {
		o.incumbentN = min(o.n, 300)
	}
	if o.incumbentN < 2 {
		errs = append(errs, fmt.Errorf("-incumbent-n must be >= 2, got %d", o.incumbentN))
	}
	if o.rounds < 1 {
		errs = append(errs, fmt.Errorf("-rounds must be >= 1, got %d", o.rounds))
	}
	if o.bareWorkers < 1 {
		errs = append(errs, fmt.Errorf("-bare-workers must be >= 1, got %d", o.bareWorkers))
	}
	if o.stormN < 1 || o.stormSenders < 1 || o.stormDuration <= 0 {
		errs = append(errs, errors.New("-storm-n, -storm-senders and -storm-duration must be positive"))
	}
	if o.pendingN < 1 || o.foreignN < 0 {
		errs = append(errs, errors.New("-pending-n must be >= 1 and -foreign-n >= 0"))
	}
	if o.webhookN < 10 || o.webhookRounds < 1 {
		errs = append(errs, errors.New("-webhook-n must be >= 10 and -webhook-rounds >= 1"))
	}
	var err error
	if o.patterns, err = parsePatterns(o.patternsFlag); err != nil {
		errs = append(errs, err)
	}
	switch {
	case o.noVariants:
		o.variants = nil
	case o.variants == nil:
		o.variants = defaultVariants()
	}
	if o.memoryEnv == nil {
		o.memoryEnv = [][]string{{"GOMEMLIMIT=40MiB"}}
	}
	if len(o.memoryEnv) == 1 && len(o.memoryEnv[0]) == 1 && o.memoryEnv[0][0] == "none" {
		o.memoryEnv = nil
	}
	if o.requesterRuns < 1 {
		errs = append(errs, fmt.Errorf("-requester-runs must be >= 1, got %d", o.requesterRuns))
	}
	return errors.Join(errs...)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func numCPU() int { return runtime.NumCPU() }
