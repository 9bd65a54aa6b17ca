#!/usr/bin/env bash
# Runs the kubelet e2e suite (bootstrap and rotation) once per supported kubelet
# version against the pinned control plane, and prints one markdown table of what
# each kubelet sent and what nodecsr decided (docs/compatibility.md shows one).
#
#   hack/compat.sh          # or: make compat
#
# Upstream supports kubelets up to three minor versions older than the API
# server. The older kubelets are built from the Go module proxy by
# hack/build-kubelet.sh (one at a time, only when missing; ~10 min each cold);
# the control plane's own kubelet comes from hack/build-assets.sh.
#
#   COMPAT_KUBELETS   older kubelets to run (default: v1.34.4 v1.35.4 v1.36.3)
#   COMPAT_RUN        go test -run pattern (default: TestKubelet/(Bootstrap|Rotation))
#   COMPAT_OUT        folder for the reports, logs and table (default: .cache/compat)
#   TEST_TIMEOUT      bounds each go test run (default: 20m)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
kubelets=${COMPAT_KUBELETS:-v1.34.4 v1.35.4 v1.36.3}
run=${COMPAT_RUN:-TestKubelet/(Bootstrap|Rotation)}
out=${COMPAT_OUT:-$root/.cache/compat}
timeout=${TEST_TIMEOUT:-20m}
# The control plane's release, as hack/build-assets.sh and test/cluster pin it.
control_plane=${KUBE_VERSION:-v1.37.2}
start=$SECONDS

mkdir -p "$out"
out=$(cd "$out" && pwd)

"$root/hack/build-assets.sh" >/dev/null
declare -A binary=([$control_plane]="")
for v in $kubelets; do
	binary[$v]=$("$root/hack/build-kubelet.sh" "$v")
done

failed=()
reports=()
for v in "$control_plane" $kubelets; do
	report=$out/kubelet-$v.jsonl
	log=$out/kubelet-$v.log
	rm -f "$report"
	echo ">> kubelet $v: go test -run '$run' ./e2e/kubelet/ (log: $log)" >&2
	t=$SECONDS
	# Without NODECSR_KUBELET_BINARY the suite runs the control plane's kubelet.
	env=(NODECSR_KUBELET_REPORT="$report")
	if [ -n "${binary[$v]}" ]; then
		env+=(NODECSR_KUBELET_BINARY="${binary[$v]}")
	fi
	if (cd "$root/test" && unset NODECSR_KUBELET_BINARY && env "${env[@]}" \
		go test -count=1 -timeout "$timeout" -run "$run" -v ./e2e/kubelet/) >"$log" 2>&1; then
		echo ">> kubelet $v: passed in $((SECONDS - t))s" >&2
	else
		echo ">> kubelet $v: FAILED in $((SECONDS - t))s; the failures:" >&2
		grep -E -e '^\s*--- FAIL' -e '^(FAIL|panic:)' "$log" | head -n 20 >&2 || true
		failed+=("$v")
	fi
	if [ -s "$report" ]; then
		reports+=("$report")
	else
		echo ">> kubelet $v: the suite reported no CSR" >&2
	fi
done

if [ ${#reports[@]} -gt 0 ]; then
	(cd "$root/test" && go run ./compatreport "${reports[@]}") >"$out/compatibility.md"
	cat "$out/compatibility.md"
fi
echo ">> compat: control plane $control_plane, kubelets $control_plane $kubelets, $((SECONDS - start))s; table in $out/compatibility.md" >&2

if [ ${#failed[@]} -gt 0 ]; then
	echo ">> compat: the suite failed for kubelet ${failed[*]}" >&2
	exit 1
fi
