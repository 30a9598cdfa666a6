#!/usr/bin/env bash
# The cluster figures of docs/benchmarks.md: `herald bench fanout` with subscribers on node A and
# the publisher on node B (every publication crosses Redis, or NATS JetStream), next to one
# memory-engine node in the same session. Nodes are pinned to core 0 (Redis and NATS run unpinned,
# as installed), the load generator to core 1. Needs Redis at $REDIS_URL and NATS with JetStream
# at $NATS_URL (defaults: the local ones).
#   bench/cluster.sh [OUT.jsonl]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/cluster-$(date -u +%Y-%m-%d).jsonl}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
cargo build --release -p herald >&2
HERALD=target/release/herald

. bench/lib.sh

node() { # node PORT [redis|nats] -> prints pid
  if [ "${2:-}" = redis ]; then
    HERALD_ENGINE__TYPE=redis HERALD_REDIS__URL="$REDIS_URL" HERALD_REDIS__PREFIX="bench-$$" \
      taskset -c 0 "$HERALD" serve --dev --config bench/herald.toml --listen "127.0.0.1:$1" >/dev/null 2>&1 &
  elif [ "${2:-}" = nats ]; then
    HERALD_ENGINE__TYPE=nats HERALD_NATS__URL="$NATS_URL" HERALD_NATS__PREFIX="bench-$$" \
      HERALD_NATS__STREAM="BENCH_$$" HERALD_NATS__STORAGE=memory \
      taskset -c 0 "$HERALD" serve --dev --config bench/herald.toml --listen "127.0.0.1:$1" >/dev/null 2>&1 &
  else
    taskset -c 0 "$HERALD" serve --dev --config bench/herald.toml --listen "127.0.0.1:$1" >/dev/null 2>&1 &
  fi
  echo $!
}

record() { # record NAME RESULT
  python3 -c 'import json,sys; r=json.loads(sys.argv[2]); r.update(server="herald", name=sys.argv[1]); print(json.dumps(r))' \
    "$1" "$2" >> "$OUT"
}

single() { # single NAME ARGS...
  local name=$1; shift
  local pid; pid=$(node 8300)
  wait_port 8300
  echo "== 1 node (memory) $name: herald bench $*" >&2
  record "$name" "$(taskset -c 1 "$HERALD" bench "$@" --url ws://127.0.0.1:8300/ws --pid "$pid" --json | tail -1)"
  stop_server "$pid"
}

pair() { # pair ENGINE NAME ARGS...
  local engine=$1 name=$2; shift 2
  local a b; a=$(node 8301 "$engine"); b=$(node 8302 "$engine")
  wait_port 8301; wait_port 8302
  echo "== 2 nodes ($engine) $name: herald bench $*" >&2
  record "$name" "$(taskset -c 1 "$HERALD" bench "$@" --url ws://127.0.0.1:8301/ws \
    --publish-url ws://127.0.0.1:8302/ws --pid "$a" --pid "$b" --json | tail -1)"
  kill "$a" "$b"; wait "$a" "$b" 2>/dev/null || true
}

single 1node-1x1000-100hz fanout --subscribers 1000 --channels 1 --rate 100 --duration 10s
pair redis 2nodes-redis-1x1000-100hz fanout --subscribers 1000 --channels 1 --rate 100 --duration 10s
pair nats 2nodes-nats-1x1000-100hz fanout --subscribers 1000 --channels 1 --rate 100 --duration 10s
single 1node-1x5000-max fanout --subscribers 5000 --channels 1 --rate 0 --duration 10s
pair redis 2nodes-redis-1x5000-max fanout --subscribers 5000 --channels 1 --rate 0 --duration 10s
pair nats 2nodes-nats-1x5000-max fanout --subscribers 5000 --channels 1 --rate 0 --duration 10s
pair redis 2nodes-redis-1000x10-2000hz fanout --subscribers 10000 --channels 1000 --rate 2000 --duration 10s
pair nats 2nodes-nats-1000x10-2000hz fanout --subscribers 10000 --channels 1000 --rate 2000 --duration 10s
python3 bench/summarize.py "$OUT"
