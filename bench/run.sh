#!/usr/bin/env bash
# Reproduce docs/benchmarks.md: Herald and three baselines (Node `ws`, uWebSockets.js, a bare tokio
# fan-out server: the limit), same scenarios, same session.
# Each scenario gets a fresh server pinned to core 0; the load generator runs on core 1.
#   [ROUNDS=3] [SERVERS="herald node uws bare"] bench/run.sh [OUT.jsonl]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/$(date -u +%Y-%m-%d).jsonl}
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
cargo build --release -p herald -p herald-bench-bare >&2
(cd bench/node-ws && npm ci --no-audit --no-fund >&2)
(cd bench/uws && npm ci --no-audit --no-fund >&2)
HERALD=target/release/herald

. bench/lib.sh

start() { # start SERVER -> prints pid
  case "$1" in
    herald) taskset -c 0 "$HERALD" serve --dev --config bench/herald.toml --listen 127.0.0.1:8200 >/dev/null 2>&1 & echo $! ;;
    node) PORT=8100 taskset -c 0 node bench/node-ws/server.js >/dev/null 2>&1 & echo $! ;;
    uws) PORT=8300 taskset -c 0 node bench/uws/server.js >/dev/null 2>&1 & echo $! ;;
    bare) PORT=8400 taskset -c 0 target/release/herald-bench-bare >/dev/null 2>&1 & echo $! ;;
  esac
}

port() { case "$1" in herald) echo 8200 ;; node) echo 8100 ;; uws) echo 8300 ;; bare) echo 8400 ;; esac; }

run() { # run SERVER NAME SCENARIO ARGS...
  local server=$1 name=$2; shift 2
  require_free_port "$(port "$server")"
  local pid; pid=$(start "$server")
  wait_port "$(port "$server")"
  echo "== $server $name: herald bench $*" >&2
  local result
  result=$(taskset -c 1 "$HERALD" bench "$@" --url "ws://127.0.0.1:$(port "$server")/ws" --pid "$pid" --json | tail -1)
  stop_server "$pid"
  python3 -c 'import json,sys; r=json.loads(sys.argv[3]); r.update(server=sys.argv[1], name=sys.argv[2]); print(json.dumps(r))' \
    "$server" "$name" "$result" >> "$OUT"
}

SERVERS=${SERVERS:-herald node uws bare}
# The per-delivery rows are compared across servers, and this host's speed drifts by a third
# within minutes (the same build read 101 k and 141 k deliveries per CPU second three minutes
# apart): each scenario runs on every server back to back, ROUNDS times over, and
# bench/summarize.py reports each server's median round (every round is in the file).
for round in $(seq "${ROUNDS:-3}"); do
  for server in $SERVERS; do
    run $server fanout-1x1000-100hz fanout --subscribers 1000 --channels 1 --rate 100 --duration 10s
  done
  for server in $SERVERS; do
    run $server fanout-1000x10-2000hz fanout --subscribers 10000 --channels 1000 --rate 2000 --duration 10s
  done
  for server in $SERVERS; do
    run $server idle-10000 idle --connections 10000 --channels 100 --duration 3s
  done
done
for server in $SERVERS; do
  run $server fanout-1x5000-max fanout --subscribers 5000 --channels 1 --rate 0 --duration 10s
  run $server connect-5000 connect --connections 5000
done
run herald churn-200 churn --clients 200 --channels 10 --rate 200 --duration 10s
# Herald's subscribers on the one-way SSE feed instead of WebSockets (publishers stay on ws).
if [[ " $SERVERS " == *" herald "* ]]; then
  run herald sse-fanout-1x1000-100hz fanout --transport sse --subscribers 1000 --channels 1 --rate 100 --duration 10s
  run herald sse-fanout-1000x10-2000hz fanout --transport sse --subscribers 10000 --channels 1000 --rate 2000 --duration 10s
  run herald sse-idle-10000 idle --transport sse --connections 10000 --channels 100 --duration 3s
fi
python3 bench/summarize.py "$OUT"
