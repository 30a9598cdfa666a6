#!/usr/bin/env bash
# A bounded soak of a release `herald serve --dev` (embedded memory engine), docs/benchmarks.md
# "Soak". For SOAK_SECONDS it runs, at the same time and in a loop:
#   - `herald bench churn`: real herald-client clients whose connections are cut at random (they
#     resume or recover; every segment must end with nothing lost or duplicated);
#   - `herald bench fanout` at a modest rate (its subscribers then drop their sockets without a
#     close frame, so every segment also leaves ~500 sessions waiting for resume);
#   - bench/soak.py abuse: ping, pong and fragment floods (close 1008), unknown-command floods
#     (4004), slow readers, half-open HTTP handshakes (closed after header_read_timeout), abrupt
#     closes (half of them resumed on a new connection), presence clients on a presence namespace.
# The server's RSS, fds, threads, CPU and the /metrics gauges herald_connections,
# herald_sessions_waiting and herald_channels are sampled every 5 s into target/soak/RUN/samples.csv.
# A warm-up of SOAK_WARMUP_SECONDS with the same load comes first; after it and after the soak the
# script waits for the resume grace (30 s) plus a margin, then compares: connections and waiting
# sessions must be back to 0, fds to the post-warm-up baseline (± SOAK_FD_TOLERANCE), presence empty,
# churn/fanout without loss, and the server alive. RSS is compared with the post-warm-up baseline
# (SOAK_RSS_TOLERANCE_PCT) and between the soak's two halves (the second half's peak within 5 % of
# the first's): reported, fatal only with SOAK_STRICT_RSS=1. The bounded journals and the 5-minute
# retention of idle streams take ~6 min of this load to fill, and the allocator keeps some of what it freed,
# so RSS rises well above the 1-minute warm-up's and stays there; the steadiness check is the leak
# signal, and it needs a run longer than ~12 min.
#
#   bench/soak.sh                      # 30 minutes
#   SOAK_SECONDS=300 bench/soak.sh     # short mode: 5 minutes (about 8 minutes in all)
#
# Other settings: SOAK_WARMUP_SECONDS [60], SOAK_SEGMENT_SECONDS [60] (length of one churn/fanout
# run), SOAK_DRAIN_SECONDS [50], SOAK_SWEEP_WAIT [0]: after the drain, wait this long more and
# sample again (the memory engine drops an idle channel's stream 5 min after its history expired;
# 330 shows RSS after that), SOAK_FD_TOLERANCE [4], SOAK_RSS_TOLERANCE_PCT [25], SOAK_STRICT_RSS
# [0], SOAK_PORT [8500], SOAK_DIR, HERALD (binary; built unless SKIP_BUILD=1), SOAK_NETNS [1]: run
# in a private network namespace whose loopback has MTU 1500 (as bench/slow-consumers.sh does:
# on the host loopback, MTU 65536, the kernel gives every server socket a ~3.9 MB send buffer and
# a slow reader takes minutes to push back; needs root; SOAK_NETNS=0 runs on the host loopback).
#
# Exit status: 0 when everything returned to baseline, 1 otherwise (see summary.md in the run dir).
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
SOAK_SECONDS=${SOAK_SECONDS:-1800}
WARMUP=${SOAK_WARMUP_SECONDS:-60}
SEGMENT=${SOAK_SEGMENT_SECONDS:-60}
GRACE=30 # session.resume_grace (default)
DRAIN=${SOAK_DRAIN_SECONDS:-$((GRACE + 20))}
PORT=${SOAK_PORT:-8500}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${HERALD:-}" ]; then
  cargo build --release -p herald >&2
fi
if [ "${SOAK_NETNS:-1}" = 1 ] && [ -z "${SOAK_IN_NETNS:-}" ]; then
  export SKIP_BUILD=1 SOAK_IN_NETNS=1
  exec unshare --net -- "$SELF" "$@"
fi
[ -n "${SOAK_IN_NETNS:-}" ] && ip link set lo mtu 1500 up
HERALD=${HERALD:-$TARGET_DIR/release/herald}
RUN=${SOAK_DIR:-target/soak/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$RUN"
. bench/lib.sh

# Production limits stay on (command rate, frame rate, fragments, header timeout: the abuse must
# meet them); only the per-IP/per-user connection limits are lifted for the local load generator.
cat > "$RUN/herald.toml" <<'EOF'
[server]
max_connections = 100000
# The load generator opens many handshakes from few addresses.
max_http_connections_per_ip = 0

[limits]
publish_per_second_per_user = 0
connect_per_second_per_ip = 0
max_connections_per_ip = 0
max_connections_per_user = 0

# History for recovery, with a short TTL: every churn run uses new channel names, and a stream is
# dropped 5 min after its history expired, so RSS reaches a steady state within minutes.
[default_namespace]
join_leave = false
presence = false
history_size = 100
history_ttl = "60s"

# Presence and join/leave on (with --dev also anonymous use, subscribe and publish).
[namespaces.pres]
presence = true
join_leave = true
history_size = 100
history_ttl = "60s"
EOF

HERALD_LOG=${HERALD_LOG:-warn} taskset -c 0 "$HERALD" serve --dev --config "$RUN/herald.toml" \
  --listen "127.0.0.1:$PORT" > "$RUN/server.log" 2>&1 &
SERVER=$!
SAMPLER=
cleanup() {
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true
  kill "$SERVER" 2>/dev/null || true
}
trap cleanup EXIT
wait_port "$PORT"
URL=ws://127.0.0.1:$PORT/ws
phase() { echo "$1" > "$RUN/phase"; echo "== $(date -u +%H:%M:%S) $1" >&2; }
snap() { python3 bench/soak.py snapshot --pid "$SERVER" --port "$PORT"; }

phase start
sleep 2
snap > "$RUN/fresh.json"
python3 bench/soak.py sample --pid "$SERVER" --port "$PORT" --csv "$RUN/samples.csv" \
  --phase-file "$RUN/phase" --interval 5 &
SAMPLER=$!

loop_bench() { # loop_bench END_EPOCH OUT.jsonl SCENARIO ARGS...: back-to-back segments until END
  local end=$1 out=$2; shift 2
  while [ $(($(date +%s) + 15)) -lt "$end" ]; do
    local d=$((end - $(date +%s) - 12))
    [ "$d" -gt "$SEGMENT" ] && d=$SEGMENT
    local r
    if r=$(taskset -c 1 "$HERALD" bench "$@" --duration "${d}s" --url "$URL" --json 2> "$out.err.last"); then
      echo "$r" | tail -1 >> "$out"
    else
      echo "{\"scenario\":\"$1\",\"failed\":true,\"output\":$(echo "$r" | tail -1 | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))'),\"stderr\":$(tail -3 "$out.err.last" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}" >> "$out"
    fi
  done
}

load() { # load SECONDS TAG
  local end=$(($(date +%s) + $1))
  loop_bench "$end" "$RUN/churn-$2.jsonl" churn --clients 100 --channels 10 --rate 50 --cut-every 100ms &
  local churn=$!
  loop_bench "$end" "$RUN/fanout-$2.jsonl" fanout --subscribers 500 --channels 10 --rate 50 --prefix soakfan &
  local fan=$!
  taskset -c 1 python3 bench/soak.py abuse --port "$PORT" --seconds "$1" --out "$RUN/abuse-$2.json" > /dev/null &
  local abuse=$!
  wait "$churn" "$fan" "$abuse" || true
}

drain() { # drain TAG: wait for the resume grace + margin, then until idle (at most 60 s more)
  phase "drain-$1"
  sleep "$DRAIN"
  for _ in $(seq 1 12); do
    if python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s.get("connections")==0 and s.get("sessions_waiting")==0 else 1)' < <(snap); then
      break
    fi
    sleep 5
  done
  sleep 6 # one more sampler row at idle
  snap > "$RUN/idle-$1.json"
}

phase warmup
load "$WARMUP" warmup
drain warmup
phase soak
load "$SOAK_SECONDS" soak
drain soak
if [ "${SOAK_SWEEP_WAIT:-0}" -gt 0 ]; then
  phase sweep-wait
  sleep "$SOAK_SWEEP_WAIT"
  snap > "$RUN/idle-swept.json"
fi
phase done
python3 bench/soak.py presence-count --port "$PORT" > "$RUN/presence-after.txt" || echo "error" > "$RUN/presence-after.txt"
alive=1
kill -0 "$SERVER" 2>/dev/null || alive=0
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
SAMPLER=
python3 bench/soak.py summarize --dir "$RUN" --seconds "$SOAK_SECONDS" --alive "$alive" \
  --fd-tolerance "${SOAK_FD_TOLERANCE:-4}" --rss-tolerance-pct "${SOAK_RSS_TOLERANCE_PCT:-25}" \
  --strict-rss "${SOAK_STRICT_RSS:-0}"
