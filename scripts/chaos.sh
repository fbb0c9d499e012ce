#!/usr/bin/env bash
# make chaos: rolling maintenance on a lab while kvmctl and agents are killed at random moments,
# then resumed or aborted; after each round the fleet must be whole again: no host left in
# maintenance, the cluster enabled, every agent Up, and every VM running exactly once.
# Usage: scripts/chaos.sh [ROUNDS] (default 10). Prints one line per round; exits 1 on a breach.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin
ROUNDS=${1:-10}
DIR=$(mktemp -d)/lab
K() { "$BIN/kvmctl" "$@"; }
trap 'K lab down --purge --dir "$DIR" >/dev/null 2>&1' EXIT
K lab up --hosts 4 --clusters 1 --vms 2 --dir "$DIR" >/dev/null 2>&1 || { echo "lab up failed"; exit 1; }
export KVMCTL_STATE=$DIR/state.db
K config set kvm.rolling.maintenance.ping.interval 1 >/dev/null
for h in "$DIR"/hosts/*/hooks; do
	printf '#!/bin/sh\nsleep $(( $(od -An -N1 -tu1 /dev/urandom) %% 3 ))\n' >"$h/Maintenance.sh"
	chmod 755 "$h/Maintenance.sh"
done
want=$(K host status --json | python3 -c 'import json,sys; print(sum(1 for h in json.load(sys.stdin) for v in h["vms"] if v["state"]=="running"))')
breaches=0
for round in $(seq "$ROUNDS"); do
	mu=$((RANDOM % 2 + 1))
	"$BIN/kvmctl" rolling start --cluster c1 --timeout 20 --max-unavailable "$mu" --no-tui >/dev/null 2>&1 &
	pid=$!
	sleep "0.$((RANDOM % 10))$((RANDOM % 10))"
	action=$((RANDOM % 4))
	victim=h$((RANDOM % 4 + 1))
	case $action in
	0) kill -9 "$pid" 2>/dev/null; what="killed kvmctl" ;;
	1) K lab kill-agent "$victim" --dir "$DIR" >/dev/null 2>&1; sleep 1; K lab start-agent "$victim" --dir "$DIR" >/dev/null 2>&1; what="restarted agent $victim" ;;
	2) kill -9 "$pid" 2>/dev/null; K lab kill-agent "$victim" --dir "$DIR" >/dev/null 2>&1; sleep 1; K lab start-agent "$victim" --dir "$DIR" >/dev/null 2>&1; what="killed kvmctl and agent $victim" ;;
	*) what="no fault" ;;
	esac
	wait "$pid" 2>/dev/null
	run=$(K rolling list --json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r[0]["run_id"] if r else "")')
	log=""
	state=$(K rolling status "$run" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["run"]["state"])')
	if [ "$state" = running ]; then
		if ((RANDOM % 2)); then log+=$(K rolling resume "$run" --no-tui 2>&1); what="$what, resumed"; else log+=$(K rolling abort "$run" 2>&1); what="$what, aborted"; fi
	fi
	# A run that could not restore everything is aborted again once every agent answers.
	for h in h1 h2 h3 h4; do K lab start-agent "$h" --dir "$DIR" >/dev/null 2>&1; done
	if K rolling status "$run" --json | grep -q '"needs_restore": true'; then log+=$(K rolling abort "$run" 2>&1); what="$what, restored"; fi
	state=$(K rolling status "$run" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["run"]["state"])')
	verdict=$(K host status --json 2>/dev/null | python3 -c '
import json, sys, collections
want = int(sys.argv[1])
hosts = json.load(sys.stdin)
bad = []
for h in hosts:
    if h["resource_state"] != "Enabled": bad.append(h["name"] + " " + h["resource_state"])
    if h.get("connection") != "Up" or h.get("agent_state") != "Up": bad.append(h["name"] + " agent " + str(h.get("connection")) + "/" + str(h.get("agent_state")))
names = collections.Counter(v["name"] for h in hosts for v in h["vms"] if v["state"] == "running")
dups = [n for n, c in names.items() if c > 1]
if dups: bad.append("running twice: " + ",".join(sorted(dups)))
if sum(names.values()) - sum(c - 1 for c in names.values()) != want: bad.append("%d distinct VMs running, want %d" % (len(names), want))
print("; ".join(bad) if bad else "ok")' "$want")
	cl=$(K cluster list | cut -f4)
	[ "$cl" = Enabled ] || verdict="$verdict; cluster $cl"
	printf 'round %2d: mu %d, %-42s run %-9s fleet %s\n' "$round" "$mu" "$what" "$state" "$verdict"
	if [ "$verdict" != ok ]; then
		breaches=$((breaches + 1))
		printf '%s\n' "$log" | tail -5 | sed 's/^/    /'
		K rolling status "$run" | sed 's/^/    /'
		break
	fi
done
echo "$breaches breaches in $ROUNDS rounds"
[ "$breaches" = 0 ]
