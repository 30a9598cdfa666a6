#!/usr/bin/env bash
# Slow-consumer isolation (docs/benchmarks.md, "Slow-consumer isolation"): the healthy subscribers'
# latency with and without STALLED % of the subscribers not reading (their sockets stay open with a
# 4 KiB receive buffer and are never read), in two fan-out shapes, RUNS times each, alternating
# baseline and stalled runs; prints the p99 ratio (stalled ÷ baseline) against the 1.5× goal.
# Every run gets a fresh `herald serve --dev --config bench/herald.toml` pinned to core 0; the load
# generator runs on core 1.
#
#   bench/slow-consumers.sh [OUT.jsonl]
#
# Environment (defaults in brackets):
#   DURATION [60s]   publishing time of each run: the stalled sockets fill within ~12 s and the
#                    server closes them (write_timeout, 10 s) 25–30 s in, so the run measures
#                    before, while and after they are closed
#   RUNS [3]         runs of each (scenario, variant)
#   STALLED [10]     percent of subscribers that stop reading
#   SC_NETNS [1]     run everything in a private network namespace whose loopback has MTU SC_MTU
#                    [1500], so that TCP buffers size themselves as on a real network. On the host
#                    loopback (MTU 65536) the kernel grows every server socket's send buffer to
#                    ~3.9 MB, so a stalled subscriber absorbs minutes of a channel's traffic before
#                    the server sees any backpressure (set SC_NETNS=0 to measure that). Needs root.
#   HERALD           the binary [$CARGO_TARGET_DIR/release/herald, built unless SKIP_BUILD=1]
#   SCENARIOS        "a b" [both]: a = 1 channel × 2 000 subscribers at 20 msg/s (100 B),
#                    b = 1 000 channels × 5 subscribers at 2 000 msg/s (2 000 B); the rates and
#                    sizes give each stalled socket 4–5 KB/s, so it fills within ~12 s
# The server runs with HERALD_CONNECTION__FRAMES_PER_SECOND=0: bench/herald.toml predates that
# limit (1 000 frames/s per connection), which otherwise cuts the publisher at 2 000 msg/s.
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
OUT=${1:-bench/results/slow-consumers-$(date -u +%Y-%m-%d).jsonl}
DURATION=${DURATION:-60s}
RUNS=${RUNS:-3}
STALLED=${STALLED:-10}
SC_NETNS=${SC_NETNS:-1}
SC_MTU=${SC_MTU:-1500}
SCENARIOS=${SCENARIOS:-a b}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

if [ "$SC_NETNS" = 1 ] && [ -z "${SC_IN_NETNS:-}" ]; then
  if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${HERALD:-}" ]; then
    cargo build --release -p herald >&2
  fi
  export SKIP_BUILD=1 SC_IN_NETNS=1
  exec unshare --net -- "$SELF" "$@"
fi
if [ -n "${SC_IN_NETNS:-}" ]; then
  ip link set lo mtu "$SC_MTU" up
fi
if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${HERALD:-}" ]; then
  cargo build --release -p herald >&2
fi
HERALD=${HERALD:-$TARGET_DIR/release/herald}
mkdir -p "$(dirname "$OUT")"
: > "$OUT"

. bench/lib.sh
PORT=8400

scenario_args() { # scenario_args a|b
  case "$1" in
    a) echo "--subscribers 2000 --channels 1 --rate 20 --payload 100" ;;
    b) echo "--subscribers 5000 --channels 1000 --rate 2000 --payload 2000" ;;
  esac
}

run() { # run SCENARIO VARIANT RUN STALLED_PERCENT
  local sc=$1 variant=$2 n=$3 pct=$4
  HERALD_CONNECTION__FRAMES_PER_SECOND=0 taskset -c 0 "$HERALD" serve --dev --config bench/herald.toml --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
  local pid=$!
  wait_port "$PORT"
  local load0; load0=$(cut -d' ' -f1-3 /proc/loadavg)
  local stat0; stat0=$(grep -E '^cpu[01] ' /proc/stat | tr '\n' ';')
  # shellcheck disable=SC2046
  echo "== $sc $variant run $n: herald bench fanout $(scenario_args "$sc") --stalled-percent $pct --duration $DURATION" >&2
  local result
  # shellcheck disable=SC2046
  result=$(taskset -c 1 "$HERALD" bench fanout $(scenario_args "$sc") --stalled-percent "$pct" \
    --duration "$DURATION" --timeline --url "ws://127.0.0.1:$PORT/ws" --pid "$pid" --json | tail -1)
  local load1; load1=$(cut -d' ' -f1-3 /proc/loadavg)
  local stat1; stat1=$(grep -E '^cpu[01] ' /proc/stat | tr '\n' ';')
  stop_server "$pid"
  python3 -c 'import json,sys
r=json.loads(sys.argv[1])
def cores(s):
    return {l.split()[0]: [int(x) for x in l.split()[1:]] for l in s.split(";") if l.strip()}
a, b = cores(sys.argv[8]), cores(sys.argv[9])
busy = {}
for c in a:
    d = [y - x for x, y in zip(a[c], b[c])]
    total = sum(d[:8]) or 1
    busy[c] = {"busy_pct": round(100 * (total - d[3] - d[4]) / total, 1), "steal_pct": round(100 * d[7] / total, 1)}
r.update(name=sys.argv[2], variant=sys.argv[3], run=int(sys.argv[4]), loadavg_before=sys.argv[5],
         loadavg_after=sys.argv[6], lo_mtu=sys.argv[7], cores=busy)
print(json.dumps(r))' "$result" "$sc" "$variant" "$n" "$load0" "$load1" \
    "$(ip -o link show lo | sed -n 's/.* mtu \([0-9]*\).*/\1/p')" "$stat0" "$stat1" >> "$OUT"
}

for n in $(seq 1 "$RUNS"); do
  for sc in $SCENARIOS; do
    run "$sc" baseline "$n" 0
    run "$sc" stalled "$n" "$STALLED"
  done
done

python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def sec_p99(r):  # robust to a few seconds of interference from other work on the machine
    t = [x["p99_ms"] for x in r.get("timeline_latency_by_publish_second", []) if x["samples"] > 0]
    return statistics.median(t) if t else float("nan")
names = {"a": "1 channel × 2 000 subscribers, 20 msg/s, 100 B",
         "b": "1 000 channels × 5 subscribers, 2 000 msg/s, 2 000 B"}
print(f"\nraw results: {sys.argv[1]} (loopback MTU {rows[0]['lo_mtu'] if rows else '?'})")
for sc in sorted({r["name"] for r in rows}):
    print(f"\n{names.get(sc, sc)}")
    print("| variant | run | healthy subs | p50 ms | p99 ms | median of per-second p99 ms | p999 ms | max ms | deliveries | lost | dup | stalled closed by server (how) | server CPU s | core 0 / 1 busy % | load avg |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | --- |")
    for r in [r for r in rows if r["name"] == sc]:
        l = r["latency"]
        e = r.get("stalled_end")
        c = r.get("server_counters_delta") or {}
        if e:
            how = ", ".join(f"close frame {k}: {v}" for k, v in e["close_frames"].items())
            how = "; ".join(x for x in [how, f"FIN {e['eof_without_close_frame']}" if e["eof_without_close_frame"] else "",
                                        f"reset {e['reset']}" if e["reset"] else "",
                                        f"open {e['still_open']}" if e["still_open"] else ""] if x)
            closed = f"{e['closed_by_server']}/{r['stalled_subscribers']} ({how}; 4003: {c.get('close_4003', 0):.0f}, 4001: {c.get('close_4001', 0):.0f}, slow_consumer_disconnects: {c.get('slow_consumer_disconnects', 0):.0f})"
        else:
            closed = "—"
        print(f"| {r['variant']} | {r['run']} | {r.get('healthy_subscribers', r['subscribers'])} | {l['p50_ms']:.2f} | {l['p99_ms']:.2f} | {sec_p99(r):.2f} | {l['p999_ms']:.2f} | {l['max_ms']:.1f} | {r['deliveries']:,} | {r['lost']} | {r['duplicates']} | {closed} | {r['server_cpu_seconds'] or 0:.2f} | {r['cores'].get('cpu0', {}).get('busy_pct')} / {r['cores'].get('cpu1', {}).get('busy_pct')} | {r['loadavg_before']} |")
    base = [r["latency"]["p99_ms"] for r in rows if r["name"] == sc and r["variant"] == "baseline"]
    stal = [r["latency"]["p99_ms"] for r in rows if r["name"] == sc and r["variant"] == "stalled"]
    if base and stal:
        ratio = statistics.mean(stal) / statistics.mean(base)
        pairs = ", ".join(f"{s / b:.2f}×" for b, s in zip(base, stal))
        verdict = "met" if ratio <= 1.5 else "MISSED"
        print(f"\np99 ratio (mean stalled ÷ mean baseline): {ratio:.2f}× (per run: {pairs}); goal ≤ 1.5×: {verdict}")
        mb = statistics.mean(sec_p99(r) for r in rows if r["name"] == sc and r["variant"] == "baseline")
        ms = statistics.mean(sec_p99(r) for r in rows if r["name"] == sc and r["variant"] == "stalled")
        print(f"median-of-per-second-p99 ratio: {ms / mb:.2f}×")
EOF
