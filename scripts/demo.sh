#!/usr/bin/env bash
# make demo: a lab of 6 hosts in 2 clusters with 3 VMs each, then rolling maintenance of c1.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin
DIR=${KVMLAB_DIR:-$PWD/kvmlab}
kvmctl() { "$BIN/kvmctl" "$@"; }

if [ -f "$DIR/lab.json" ]; then
	echo "== an earlier demo lab is in $DIR: removing it"
	kvmctl lab down --purge --dir "$DIR"
fi
echo "== kvmctl lab up --hosts 6 --clusters 2 --vms 3 --dir $DIR"
kvmctl lab up --hosts 6 --clusters 2 --vms 3 --dir "$DIR"
export KVMCTL_STATE=$DIR/state.db

echo
echo "== kvmctl host status"
kvmctl host status
echo
echo "== kvmctl rolling start --cluster c1 --dry-run"
kvmctl rolling start --cluster c1 --dry-run
echo
echo "== kvmctl rolling start --cluster c1"
rc=0
kvmctl rolling start --cluster c1 || rc=$?
echo
echo "== kvmctl rolling status"
kvmctl rolling status
echo
echo "== kvmctl host status (c1's VMs moved while its hosts were patched; they do not move back)"
kvmctl host status
cat <<MSG

The lab is still up. Explore it:
  export KVMCTL_STATE=$DIR/state.db
  kvmctl host list; kvmctl rolling list; kvmctl maintenance enable h4; kvmctl lab kill-agent h5 --dir $DIR
  cat $DIR/hosts/h1/hooks.log        # what the sample stage scripts did
Stop it with: $BIN/kvmctl lab down --dir $DIR   (add --purge to delete it)
MSG
exit $rc
