#!/usr/bin/env bash
# make bench: the numbers of the README's performance section, measured on labs of this machine.
#   1. kvmctl start-up: median wall time of 20 runs of `bin/kvmctl version`.
#   2. `kvmctl host status` over a 100-host lab: median wall time of 10 runs; agent RSS when idle.
#   3. rolling maintenance over a 30-host lab (3 clusters, no VMs, no-op scripts): orchestration
#      overhead per host, with --max-unavailable 1 and 3.
#   4. a no-op stage through the API of bin/kvmagent with each executor (the service executor
#      through bin/kvmagent-stage), side by side; script exit to kvmctl seeing it; the in-process
#      benchmarks of pkg/hooks.
# With BASE=DIR (a bin/ directory of an earlier build, e.g. `git worktree add ../old COMMIT &&
# make -C ../old build`), kvmctl start-up and the rolling runs are measured for both builds in
# turn, side by side in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin
WORK=$(mktemp -d)
cleanup() {
	local d
	for d in "$WORK"/lab100 "$WORK"/lab30.*/lab; do
		[ -d "$d" ] && "$BIN/kvmctl" lab down --purge --dir "$d" >/dev/null 2>&1 || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT
now_ms() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

BUILDS=("$BIN")
if [ -n "${BASE:-}" ]; then
	BASE=$(cd "$BASE" && pwd)
	[ -x "$BASE/kvmctl" ] && [ -x "$BASE/kvmagent" ] || { echo "bench: BASE=$BASE has no kvmctl and kvmagent" >&2; exit 2; }
	BUILDS=("$BASE" "$BIN")
fi
label() { if [ "$1" = "$BIN" ]; then echo "this build"; else echo "BASE ($("$1/kvmctl" version 2>/dev/null | head -1))"; fi; }
ms() { awk '{printf "%.1f", $1 / 1000}'; }

echo "== kvmctl start-up"
for b in "${BUILDS[@]}"; do "$b/kvmctl" version >/dev/null; done # warm up the page cache
declare -A startup
for i in $(seq 20); do
	for b in "${BUILDS[@]}"; do
		# bash's own clock in µs: reading it starts no process.
		t0=${EPOCHREALTIME//[.,]/}; "$b/kvmctl" version >/dev/null; t1=${EPOCHREALTIME//[.,]/}
		startup[$b]+="$((t1 - t0)) "
	done
done
for b in "${BUILDS[@]}"; do
	libs=$(ldd "$b/kvmctl" 2>&1 || true)
	case $libs in
	*"not a dynamic executable"*) libs="a static executable (ldd: not a dynamic executable)" ;;
	*) libs="$(echo "$libs" | wc -l) shared libraries" ;;
	esac
	times=(${startup[$b]})
	echo "$(label "$b"): kvmctl version wall time, median of 20: $(printf '%s\n' "${times[@]}" | median | ms) ms" \
		"(min $(printf '%s\n' "${times[@]}" | sort -n | head -1 | ms), max $(printf '%s\n' "${times[@]}" | sort -n | tail -1 | ms)); kvmctl is $libs"
done
echo

echo "== host status over a 100-host lab"
"$BIN/kvmctl" lab up --hosts 100 --clusters 10 --vms 3 --dir "$WORK/lab100" --timeout 120s >/dev/null 2>&1
export KVMCTL_STATE=$WORK/lab100/state.db
"$BIN/kvmctl" host status >/dev/null # warm up
times=()
for i in $(seq 10); do
	t0=$(now_ms); "$BIN/kvmctl" host status >/dev/null; t1=$(now_ms)
	times+=($((t1 - t0)))
done
up=$("$BIN/kvmctl" host status --json | grep -c '"connection": "Up"')
echo "hosts Up: $up/100"
echo "host status wall time, median of 10: $(printf '%s\n' "${times[@]}" | median) ms (min $(printf '%s\n' "${times[@]}" | sort -n | head -1), max $(printf '%s\n' "${times[@]}" | sort -n | tail -1))"
sleep 2
# The agents' pids: lab.json records the machines, lab status their agents.
pids=$("$BIN/kvmctl" lab status --json --dir "$WORK/lab100" | python3 -c "import json,sys;print(' '.join(str(h['pid']) for h in json.load(sys.stdin)['hosts']))")
rss=$(for pid in $pids; do awk '/^VmRSS/ {print $2}' /proc/$pid/status; done | median)
anon=$(for pid in $pids; do awk '/^RssAnon/ {print $2}' /proc/$pid/status; done | median)
pss=$(for pid in $pids; do awk '/^Pss:/ {print $2}' /proc/$pid/smaps_rollup; done | median)
echo "agent RSS when idle, median of 100 agents: $rss KiB ($((rss / 1024)) MiB); of it private (RssAnon) $anon KiB;"
echo "  PSS (shared libvirt/gnutls pages divided among the agents) $pss KiB"
"$BIN/kvmctl" lab down --purge --dir "$WORK/lab100" >/dev/null

echo
echo "== rolling maintenance over a 30-host lab (3 clusters, no VMs, no-op scripts)"
# rolling30 BIN MU: ms per host of one run of rolling start --zone z1 over a fresh 30-host lab.
rolling30() {
	local b=$1 mu=$2 t0 t1 n lab
	# A fresh directory each time: a lab just taken down may still be going away.
	lab=$(mktemp -d "$WORK/lab30.XXXX")/lab
	if ! "$b/kvmctl" lab up --hosts 30 --clusters 3 --vms 0 --dir "$lab" --timeout 120s >"$lab.log" 2>&1; then
		echo "bench: $(label "$b"): lab up failed:" >&2; cat "$lab.log" >&2; exit 1
	fi
	for h in "$lab"/hosts/*/hooks; do
		for s in PreFlight PreMaintenance Maintenance PostMaintenance; do
			printf '#!/bin/sh\nexit 0\n' >"$h/$s.sh"
		done
	done
	export KVMCTL_STATE=$lab/state.db
	"$b/kvmctl" host status >/dev/null
	t0=$(now_ms)
	"$b/kvmctl" rolling start --zone z1 --max-unavailable "$mu" --no-tui >"$lab.run" 2>&1 || true
	t1=$(now_ms)
	n=$("$b/kvmctl" rolling status --json | grep -c '"step": "done"' || true)
	"$b/kvmctl" lab down --purge --dir "$lab" >/dev/null
	[ "$n" = 30 ] || { echo "bench: $(label "$b"): only $n/30 hosts updated:" >&2; tail -20 "$lab.run" >&2; exit 1; }
	echo $(((t1 - t0) / 30))
}
for mu in 1 3; do
	declare -A per=()
	# The builds take turns, three runs each: both see the machine's slow and fast moments.
	for i in 1 2 3; do
		for b in "${BUILDS[@]}"; do per[$b]+="$(rolling30 "$b" "$mu") "; done
	done
	for b in "${BUILDS[@]}"; do
		runs=(${per[$b]})
		echo "--max-unavailable $mu, $(label "$b"): $(printf '%s\n' "${runs[@]}" | median) ms per host, median of 3 runs (${runs[*]}) (each host: 4 stages, enter and cancel maintenance, every step journaled)"
	done
	if [ -n "${BASE:-}" ]; then
		awk -v o="$(printf '%s\n' ${per[$BASE]} | median)" -v n="$(printf '%s\n' ${per[$BIN]} | median)" \
			'BEGIN { printf "  this build / BASE: %.2f (goal: at most 0.5)\n", n / o }'
	fi
done

echo
echo "== stage API of bin/kvmagent (go test -bench, BENCH_BIN=bin: the built agent and runner)"
out=$(BENCH_BIN=$BIN go test -run '^$' -bench 'StageNoop|ExitToSeen' -benchtime 50x ./cmd/kvmagent/agentcli/ 2>&1) ||
	{ echo "$out"; exit 1; }
echo "$out" | grep -E '^(Benchmark|ok|goos)' || true
# NAME_median_ms of the BenchmarkStageNoop line: the median of agent NAME.
noop() { echo "$out" | awk -v m="$1_median_ms" '$1 ~ /^BenchmarkStageNoop(-[0-9]+)?$/ { for (i = 2; i < NF; i++) if ($(i+1) == m) print $i }'; }
svc=$(noop service) agt=$(noop agent) old=$(noop service-stage-exec)
if [ -z "$svc" ] || [ -z "$agt" ] || [ -z "$old" ]; then
	echo "bench: BenchmarkStageNoop printed no service, agent or service-stage-exec median" >&2
	exit 1
fi
echo
echo "no-op stage through the API, median of 50 (POST + long poll), the agents taking turns:"
printf '  %-56s %7s ms\n' "service executor (bin/kvmagent-stage)" "$svc" "agent executor (inside bin/kvmagent)" "$agt" \
	"service executor without a runner (kvmagent stage-exec)" "$old"
awk -v s="$svc" -v a="$agt" -v o="$old" 'BEGIN {
	r = s / a
	printf "  service / agent: %.2fx (goal: at most 2x: %s); stage-exec / runner: %.1fx\n", r, (r <= 2 ? "met" : "not met"), o / s
}'

echo
echo "== pkg/hooks in-process benchmarks (the executors alone, no HTTP)"
go test -run '^$' -bench 'Stage|ExitTo' -benchtime 50x ./pkg/hooks/ 2>&1 | grep -E '^(Benchmark|ok|goos)' || true
