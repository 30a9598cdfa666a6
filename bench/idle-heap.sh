#!/usr/bin/env bash
# Where an idle connection's bytes go (issue 14): a release build under heaptrack, N idle
# connections (each subscribed to one of 100 channels, heartbeats on); once all are connected and
# subscribed the server is killed, so what heaptrack reports as "leaked" is exactly what the idle
# connections held. Per-site bytes per connection: bench/heap_sites.py. Needs Debian's heaptrack.
#   bench/idle-heap.sh [N]     # default 2000; a release build of HEAD first
#   TRANSPORT=sse bench/idle-heap.sh   # the same for one-way SSE feeds
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
N=${1:-2000}
# heaptrack sees malloc calls, not jemalloc's (the binary's allocator): a build without the
# `jemalloc` feature, in its own target directory (its first build takes a few minutes).
if [ -z "${HERALD:-}" ]; then
  cargo build --release -p herald --no-default-features --target-dir target/heap >&2
fi
BIN=${HERALD:-target/heap/release/herald}
OUT=${IDLE_HEAP_DIR:-target/idle-heap}
mkdir -p "$OUT"
rm -f "$OUT"/heaptrack.*
. bench/lib.sh
heaptrack -o "$OUT/heaptrack.herald" "$BIN" serve --dev --config bench/herald.toml --listen 127.0.0.1:8310 > "$OUT/server.log" 2>&1 &
HT=$!
wait_port 8310 || { sleep 5; wait_port 8310; }
PID=$(pgrep -x herald | head -1)
"$BIN" bench idle --transport "${TRANSPORT:-ws}" --connections "$N" --channels 100 --duration 30s --url ws://127.0.0.1:8310/ws --pid "$PID" --json > "$OUT/idle.json" 2>&1 &
BENCH=$!
# Wait until every connection is subscribed (the subscriptions gauge), then a little longer for
# the replies to be written, and kill the server while the connections are idle.
for _ in $(seq 1 600); do
  subs=$(curl -s http://127.0.0.1:8310/metrics | awk '/^herald_subscriptions /{print int($2)}')
  [ "${subs:-0}" -ge "$N" ] && break
  sleep 0.1
done
sleep 2
kill -KILL "$PID"
wait $HT || true
kill "$BENCH" 2>/dev/null || true
wait "$BENCH" 2>/dev/null || true
heaptrack_print "$OUT/heaptrack.herald.zst" --print-peaks 0 --print-allocators 0 --print-leaks 1 --print-temporary 0 2>/dev/null > "$OUT/live.txt" || true
python3 bench/heap_sites.py "$OUT/live.txt" "$N"
