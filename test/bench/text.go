package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
)

// renderText is the human-readable summary printed with -o text.
func renderText(r *report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "nodecsr benchmarks — %s\n%d cores (%s), %d GiB, %s, %s, Kubernetes %s\n\n",
		r.Date, r.Machine.Cores, r.Machine.CPU, r.Machine.MemoryGiB, r.Machine.Kernel, r.Machine.GoVersion, r.Machine.Kubernetes)
	if a := r.Approve; a != nil {
		b.WriteString(approveTable(a, false) + "\n" + approveAnalysis(a) + "\n")
	}
	if s := r.Storm; s != nil {
		b.WriteString(stormTable(s, false) + "\n" + stormInventoryTable(s, false) + "\n" + stormAnalysis(r) + "\n")
	}
	if q := r.Requester; q != nil {
		b.WriteString(requesterTable(q, false) + "\n" + requesterAnalysis(q) + "\n")
	}
	if w := r.Webhook; w != nil {
		b.WriteString(webhookTable(w, false) + "\n")
		if w.Skipped == "" {
			b.WriteString(webhookAnalysis(w) + "\n")
		}
	}
	if a := r.APF; a != nil {
		b.WriteString(apfTable(a, false) + "\n")
	}
	if m := r.Memory; m != nil {
		b.WriteString(memoryTable(m, false) + "\n" + memoryAnalysis(m) + "\n")
	}
	if len(r.Targets) > 0 {
		b.WriteString(targetsTable(r.Targets, false))
		b.WriteString("\n")
	}
	for _, e := range r.Errors {
		fmt.Fprintf(&b, "ERROR: %s\n", e)
	}
	fmt.Fprintf(&b, "wall time: %.0f s; load average before: %s, after: %s\n", r.WallSeconds, r.LoadBefore, r.LoadAfter)
	return b.String()
}

// table renders rows as a Markdown table or as aligned text.
func table(md bool, header []string, rows [][]string) string {
	var b strings.Builder
	if md {
		b.WriteString("| " + strings.Join(header, " | ") + " |\n|")
		for range header {
			b.WriteString(" --- |")
		}
		b.WriteString("\n")
		for _, r := range rows {
			b.WriteString("| " + strings.Join(r, " | ") + " |\n")
		}
		return b.String()
	}
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	_ = tw.Flush()
	return b.String()
}

func ms(seconds float64) string { return fmt.Sprintf("%.1f ms", 1000*seconds) }
func secs(seconds float64) string {
	if seconds < 1 {
		return ms(seconds)
	}
	return fmt.Sprintf("%.2f s", seconds)
}
func mibs(bytes int64) string { return fmt.Sprintf("%.1f MiB", float64(bytes)/mib) }

func approveTable(a *approveResult, md bool) string {
	header := []string{"contender", "N", "decisions/s first→last (rounds)", "decisions/s (from start)", "decisions/s (2nd half)", "first decision after", "p50 / p99 create→approved", "p50 / p99 start→approved", "API requests per decision", "CPU cores: contender / apiserver / etcd / bench / others"}
	var rows [][]string
	all := []contenderResult{a.Incumbent, a.Nodecsr, a.Bare}
	all = append(all, a.Patterns...)
	all = append(all, a.Variants...)
	for _, c := range all {
		rows = append(rows, []string{
			c.Name, fmt.Sprint(c.N),
			rateCell(c), fmt.Sprintf("%.1f", c.RateFromStartPerSecond), fmt.Sprintf("%.1f", c.SecondHalfRatePerSecond),
			secs(c.FirstDecisionSeconds),
			secs(c.CreateToDecision.P50) + " / " + secs(c.CreateToDecision.P99),
			secs(c.StartToDecision.P50) + " / " + secs(c.StartToDecision.P99),
			fmt.Sprintf("%.2f", c.RequestsPerDecision),
			cpuCell(c),
		})
	}
	title := fmt.Sprintf("approve: %d pending kubelet client CSRs (renewal path, one per node) per contender and round, %d rounds (incumbent: %d, one round)\n", a.N, a.Rounds, a.IncumbentN)
	if md {
		title = ""
	}
	out := title + table(md, header, rows)
	if !md {
		out += fmt.Sprintf("\nAPI requests per decision by kind (mean server time), background %.1f requests/s subtracted in the total above:\n", a.BackgroundRequestsPerSecond)
		for _, c := range all {
			out += fmt.Sprintf("  %s: %s\n", c.Name, requestBreakdown(c, c.N))
			if c.ReconcileMeanMillis > 0 {
				out += fmt.Sprintf("    reconcile mean %.1f ms, queue wait mean %.0f ms, client requests per decision %.2f, %.0f Go GC cycles from start to the last decision, %.2f ms of CPU per decision\n", c.ReconcileMeanMillis, c.QueueWaitMeanMillis, c.ClientRequestsPerDecision, c.GCCycles, perDecisionMillis(c.CPU.Contender, c))
			}
			if c.EventsTrailSeconds != nil {
				out += fmt.Sprintf("    every decision Event written %.2f s after the last decision (the longest of the rounds)\n", *c.EventsTrailSeconds)
			}
		}
	}
	out += fmt.Sprintf("\nnodecsr / kube-controller-manager: %.1fx (from start: %.1fx)\nnodecsr / bare loop: %.0f%% (from start: %.0f%%)\n",
		a.NodecsrVsIncumbent, a.NodecsrVsIncumbentFromStart, 100*a.NodecsrVsBare, 100*a.NodecsrVsBareFromStart)
	return out
}

// contenderCores is the contender's CPU use; the bare loop runs inside the bench.
func contenderCores(c contenderResult) float64 {
	if c.CPU.Contender == 0 {
		return c.CPU.Bench
	}
	return c.CPU.Contender
}

func requestBreakdown(c contenderResult, n int) string {
	var parts []string
	for i, k := range c.APIRequests.ByKind {
		if i == 6 {
			break
		}
		parts = append(parts, fmt.Sprintf("%s %.2f (%.1f ms)", k.Kind, k.Count/float64(n), k.MeanServerMillis))
	}
	return strings.Join(parts, ", ")
}

func stormTable(s *stormResult, md bool) string {
	rows := [][]string{
		{"CSRs (one per node, renewal path)", fmt.Sprint(s.N)},
		{"arrival (target / actual)", fmt.Sprintf("%.0f s / %.1f s (%.0f/s, %d senders)", s.TargetSeconds, s.ArrivalSeconds, s.ArrivalsPerSec, s.Senders)},
		{"decided (approved / denied)", fmt.Sprintf("%d (%d / %d)", s.Decided, s.Approved, s.Denied)},
		{"signed by csrsigning when the last was decided", fmt.Sprint(s.Issued)},
		{"first create → last decision", secs(s.AllDecidedAfter)},
		{"last create → last decision (drain)", secs(s.DrainSeconds)},
		{"create→decision p50 / p99 / max", secs(s.CreateToDecision.P50) + " / " + secs(s.CreateToDecision.P99) + " / " + secs(s.CreateToDecision.Max)},
		{"create call p50 / p99 (new TLS connection each)", secs(s.CreateCall.P50) + " / " + secs(s.CreateCall.P99)},
		{"nodecsr-controller peak RSS (VmHWM) / RSS at end", mibs(s.ControllerPeakRSS) + " / " + mibs(s.ControllerRSS)},
		{"CPU: nodecsr / apiserver / etcd / machine (cores)", fmt.Sprintf("%.2f / %.2f / %.2f / %.2f of %d", s.CPU.Contender, s.CPU.APIServer, s.CPU.Etcd, s.CPU.Machine, s.CPU.Cores)},
		{"API requests per decision (all clients, incl. creates and signing)", fmt.Sprintf("%.2f", s.RequestsPerDecision)},
	}
	title := "storm: CSRs arriving at a steady rate while nodecsr-controller (defaults) and csrsigning run\n"
	if md {
		title = ""
	}
	return title + table(md, []string{"storm", "value"}, rows)
}

func requesterTable(q *requesterResult, md bool) string {
	row := func(name string, l latency) []string {
		return []string{name, secs(l.P50), secs(l.P90), secs(l.Max)}
	}
	rows := [][]string{
		row("nodecsr-request start → certificate on disk (exit)", q.Total),
		row("  start → CSR created (process start, key, create)", q.StartToCreated),
		row("  created → approved (nodecsr-controller)", q.CreatedToApproved),
		row("  approved → signed (kube-controller-manager csrsigning)", q.ApprovedToIssued),
		row("  signed → exit (watch, files written)", q.IssuedToExit),
	}
	title := fmt.Sprintf("requester: %d runs of nodecsr-request, bootstrap path (%d failed)\n", q.Runs, q.Failures)
	if md {
		title = ""
	}
	return title + table(md, []string{"requester", "p50", "p90", "max"}, rows)
}

func webhookTable(w *webhookResult, md bool) string {
	if w.Skipped != "" {
		return "webhook: SKIPPED — " + w.Skipped + "\n"
	}
	rows := [][]string{
		{"without webhooks", fmt.Sprint(w.Without.N), ms(w.Without.P50), ms(w.Without.P90), ms(w.Without.P99), ms(w.Without.Mean)},
		{"with nodecsr's webhooks", fmt.Sprint(w.With.N), ms(w.With.P50), ms(w.With.P90), ms(w.With.P99), ms(w.With.Mean)},
		{"ratio", "", fmt.Sprintf("%.2fx", w.RatioP50), fmt.Sprintf("%.2fx", ratio(w.With.P90, w.Without.P90)), fmt.Sprintf("%.2fx", ratio(w.With.P99, w.Without.P99)), fmt.Sprintf("%.2fx", w.RatioMean)},
	}
	title := fmt.Sprintf("webhook: CSR create latency through kube-apiserver, %d rounds of %d sequential creates each way\n", w.Rounds, w.PerBlock)
	if md {
		title = ""
	}
	out := title + table(md, []string{"create", "n", "p50", "p90", "p99", "mean"}, rows)
	var calls []string
	for k, v := range w.WebhookCallMillis {
		calls = append(calls, fmt.Sprintf("%s %.2f ms", k, v))
	}
	var handlers []string
	for k, v := range w.HandlerMillis {
		handlers = append(handlers, fmt.Sprintf("%s %.3f ms", k, v))
	}
	out += fmt.Sprintf("\nper-round p50 ratios: %v; API server's mean webhook call: %s; nodecsr's mean handler time: %s\n",
		fmtFloats(w.RoundRatiosP50), strings.Join(calls, ", "), strings.Join(handlers, ", "))
	return out
}

func fmtFloats(fs []float64) string {
	var s []string
	for _, f := range fs {
		s = append(s, fmt.Sprintf("%.2fx", f))
	}
	return strings.Join(s, ", ")
}

func memoryTable(m *memoryResult, md bool) string {
	row := func(name string, s memSample) []string {
		return []string{name, mibs(s.RSS), mibs(s.HWM), mibs(s.HeapInuse), fmt.Sprint(s.CachedPending)}
	}
	rows := [][]string{row("idle (fresh start, no CSRs)", m.Idle)}
	if m.ForeignN > 0 {
		rows = append(rows,
			row(fmt.Sprintf("+ %d CSRs of example.com/foo (same process)", m.ForeignN), m.Foreign),
			row(fmt.Sprintf("  fresh start with them present (%.0f%% of idle)", 100*m.ForeignFreshRatio), m.ForeignFresh))
	}
	rows = append(rows,
		row(fmt.Sprintf("+ %d kubelet client CSRs left pending (same process)", m.PendingN), m.Pending),
		row("  fresh start with all of them present", m.PendingFresh))
	for _, v := range m.EnvVariants {
		rows = append(rows, row("  fresh start with all of them present, "+strings.Join(v.Env, " "), v.Sample))
	}
	title := "memory: nodecsr-controller (policy leaves the bench's CSRs pending)\n"
	if md {
		title = ""
	}
	return title + table(md, []string{"state", "RSS (VmRSS)", "peak (VmHWM)", "Go heap in use", "pending in cache"}, rows)
}

func targetsTable(ts []target, md bool) string {
	var rows [][]string
	for _, t := range ts {
		met := "MISSED"
		if t.Met {
			met = "met"
		}
		rows = append(rows, []string{t.Name, t.Goal, t.Measured, met})
	}
	title := "targets\n"
	if md {
		title = ""
	}
	return title + table(md, []string{"target", "goal", "measured", "result"}, rows)
}

// cpuCell is the CPU use of each process in cores; "others" is the rest of
// the machine (other people's builds on a shared machine).
func cpuCell(c contenderResult) string {
	u := c.CPU
	bench := u.Bench
	if u.Contender == 0 {
		bench = 0 // the contender runs inside the bench
	}
	return fmt.Sprintf("%.2f / %.2f / %.2f / %.2f / %.2f (of %d)", contenderCores(c), u.APIServer, u.Etcd, bench, othersCores(c), u.Cores)
}

// othersCores is the CPU that processes other than the contender, the
// control plane and the bench used during the run (other people's work).
func othersCores(c contenderResult) float64 {
	u := c.CPU
	bench := u.Bench
	if u.Contender == 0 {
		bench = 0 // the contender runs inside the bench
	}
	return max(0, u.Machine-contenderCores(c)-u.APIServer-u.Etcd-bench)
}

// rateCell is the mean decision rate, with each round's in parentheses.
func rateCell(c contenderResult) string {
	out := fmt.Sprintf("%.1f", c.RatePerSecond)
	if len(c.RoundRates) > 1 {
		var rs []string
		for _, r := range c.RoundRates {
			rs = append(rs, fmt.Sprintf("%.0f", r))
		}
		out += " (" + strings.Join(rs, ", ") + ")"
	}
	return out
}

// roundsCell is each round's rate with the cores others used meanwhile.
func roundsCell(c contenderResult) string {
	var rs []string
	for i, r := range c.RoundRates {
		if i < len(c.RoundOthers) {
			rs = append(rs, fmt.Sprintf("%.0f/s (others %.2f cores)", r, c.RoundOthers[i]))
		}
	}
	return strings.Join(rs, ", ")
}
