#!/usr/bin/env bash
# make bench-ha: crash → fence and crash → VMs running elsewhere, over N lab crashes (default 20)
# with HA's default settings (health every 1 s, Suspect after 3 s, checks every 2 s, 3 INACTIVE
# in a row), one `kvmctl ha watch` running throughout. Only the guards that would stop a
# benchmark of crashes one after another are opened: the rate cap (kvm.ha.fence.max.count),
# the per-host quiet time, and the startup grace (the watch is started before the first crash).
#
# Each round: crash a host (`lab crash`: power lost, nothing written any more), wait until the
# watch has it Recovered, read the times from its HA journal (`ha show --history --json`), then
# power it on and cancel its maintenance so that it is Available for a later round. The hosts
# take turns. Times are measured from the crash command's return to the journal's events
# (both this machine's clock).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin
ROUNDS=${ROUNDS:-20}
WORK=$(mktemp -d)
LAB=$WORK/lab
WATCH_PID=
cleanup() {
	[ -n "$WATCH_PID" ] && kill "$WATCH_PID" 2>/dev/null && wait "$WATCH_PID" 2>/dev/null || true
	"$BIN/kvmctl" lab down --purge --dir "$LAB" >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT
command -v jq >/dev/null || { echo "bench-ha: needs jq (apt-get install jq)" >&2; exit 2; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ms_of() { date -d "$1" +%s%3N; }

export KVMCTL_STATE=$LAB/state.db
kvmctl() { "$BIN/kvmctl" "$@"; }
kvmctl lab up --hosts 5 --clusters 1 --vms 2 --dir "$LAB" >/dev/null
kvmctl host status >/dev/null # kvmctl keeps the VMs' definitions
kvmctl ha enable --cluster c1 >/dev/null 2>&1
kvmctl config set kvm.ha.fence.max.count 1000 >/dev/null
kvmctl config set kvm.ha.fence.quiet.time 0 >/dev/null
kvmctl config set kvm.ha.fence.startup.grace 0 >/dev/null
kvmctl ha watch >"$WORK/watch.log" 2>&1 &
WATCH_PID=$!
sleep 3

state_of() { kvmctl --json ha status "$1" | jq -r '.hosts[0].state'; }
wait_state() { # HOST STATE SECONDS
	local i
	for i in $(seq $(($3 * 10))); do
		[ "$(state_of "$1")" = "$2" ] && return 0
		sleep 0.1
	done
	echo "bench-ha: $1 not $2 after $3 s" >&2
	tail -20 "$WORK/watch.log" >&2
	exit 1
}

fence_ms=() vms_ms=() suspect_ms=()
hosts=(h1 h2 h3 h4 h5)
for round in $(seq "$ROUNDS"); do
	h=${hosts[$(((round - 1) % ${#hosts[@]}))]}
	wait_state "$h" Available 60
	kvmctl lab crash "$h" --dir "$LAB" >/dev/null
	t0=$(date +%s%3N)
	wait_state "$h" Recovered 120
	hist=$(kvmctl --json ha show "$h" --history)
	since() { echo "$hist" | jq -r --arg t "$1" --arg after "$(date -u -d "@$((t0 / 1000))" +%FT%TZ)" \
		'[.history[] | select(.type == $t and .time >= $after)] | first | .time'; }
	ts=$(since ha.suspect) tf=$(since ha.fenced) tr=$(since ha.recovered)
	suspect_ms+=($(($(ms_of "$ts") - t0)))
	fence_ms+=($(($(ms_of "$tf") - t0)))
	vms_ms+=($(($(ms_of "$tr") - t0)))
	printf 'round %2d %s: suspect %5d ms, fenced %5d ms, VMs running %5d ms\n' "$round" "$h" \
		"${suspect_ms[-1]}" "${fence_ms[-1]}" "${vms_ms[-1]}"
	kvmctl lab power-on "$h" --dir "$LAB" >/dev/null
	kvmctl maintenance cancel "$h" >/dev/null 2>&1
	# Its VMs stay where HA started them: a host's later crash takes whatever it runs then.
done

stats() { # NAME VALUES...
	local name=$1
	shift
	printf '%s over %d crashes: median %s ms, max %s ms\n' "$name" "$#" "$(printf '%s\n' "$@" | median)" "$(printf '%s\n' "$@" | sort -n | tail -1)"
}
echo
stats "crash -> Suspect" "${suspect_ms[@]}"
stats "crash -> fence confirmed" "${fence_ms[@]}"
stats "crash -> every VM running elsewhere" "${vms_ms[@]}"
twice=$(kvmctl --json host status 2>/dev/null | jq -r '[.[].vms[]? | select(.state == "running") | .uuid] | group_by(.) | map(select(length > 1)) | length')
echo "VMs running twice at the end: $twice"
