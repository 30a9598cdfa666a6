#!/usr/bin/env bash
# Two Herald binaries, the same scenarios, interleaved in one sitting: A B A B. The A–A and B–B
# differences are the noise of this machine; an A–B difference beyond them is the change. Each
# scenario gets a fresh server pinned to core 0; the load generator (B's `herald bench`) runs on
# core 1.
#   bench/compare.sh BEFORE_BINARY AFTER_BINARY [OUT.jsonl]
# e.g. build the old commit in a worktree (`git worktree add /tmp/before REV`, then
# `CARGO_TARGET_DIR=/tmp/before-target cargo build --release -p herald` there).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bench/compare.sh BEFORE_BINARY AFTER_BINARY [OUT.jsonl]" >&2; exit 2; }
BEFORE=$1 AFTER=$2
OUT=${3:-bench/results/compare-$(date -u +%Y-%m-%d).jsonl}
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
. bench/lib.sh

run() { # run LABEL BINARY NAME SCENARIO ARGS...
  local label=$1 bin=$2 name=$3; shift 3
  taskset -c 0 "$bin" serve --dev --config bench/herald.toml --listen 127.0.0.1:8200 >/dev/null 2>&1 &
  local pid=$!
  wait_port 8200
  echo "== $label $name: herald bench $*" >&2
  local result
  result=$(taskset -c 1 "$AFTER" bench "$@" --url "ws://127.0.0.1:8200/ws" --pid "$pid" --json | tail -1)
  stop_server "$pid"
  python3 -c 'import json,sys; r=json.loads(sys.argv[3]); r.update(server=sys.argv[1], name=sys.argv[2]); print(json.dumps(r))' \
    "$label" "$name" "$result" >> "$OUT"
}

for round in 1 2; do
  for side in before after; do
    bin=$BEFORE; [ "$side" = after ] && bin=$AFTER
    run "$side-$round" "$bin" fanout-1x1000-100hz fanout --subscribers 1000 --channels 1 --rate 100 --duration 10s
    run "$side-$round" "$bin" fanout-1x5000-max fanout --subscribers 5000 --channels 1 --rate 0 --duration 10s
    run "$side-$round" "$bin" fanout-1000x10-2000hz fanout --subscribers 10000 --channels 1000 --rate 2000 --duration 10s
    run "$side-$round" "$bin" idle-10000 idle --connections 10000 --channels 100 --duration 3s
  done
done
python3 bench/compare_summary.py "$OUT"
