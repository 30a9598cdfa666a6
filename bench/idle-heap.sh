#!/usr/bin/env bash
# Where an idle connection's bytes go (issue 14): a release build under heaptrack, N idle
# connections (each subscribed to one of 100 channels, heartbeats on) held for a while, then the
# heap's peak per allocation site divided by N. Needs Debian's heaptrack.
#   bench/idle-heap.sh [N]     # default 2000; a release build of HEAD first
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
N=${1:-2000}
BIN=${HERALD:-target/release/herald}
OUT=${IDLE_HEAP_DIR:-target/idle-heap}
mkdir -p "$OUT"
rm -f "$OUT"/heaptrack.*
. bench/lib.sh
heaptrack -o "$OUT/heaptrack.herald" "$BIN" serve --dev --config bench/herald.toml --listen 127.0.0.1:8310 > "$OUT/server.log" 2>&1 &
HT=$!
wait_port 8310 || { sleep 5; wait_port 8310; }
PID=$(pgrep -x herald | head -1)
"$BIN" bench idle --connections "$N" --channels 100 --duration 6s --url ws://127.0.0.1:8310/ws --pid "$PID" --json | tail -1 > "$OUT/idle.json"
kill -INT "$PID" || true
wait $HT || true
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("RSS per connection: %.0f B over %d connections" % (r["server_bytes_per_connection"], r["connections"]))' "$OUT/idle.json"
heaptrack_print "$OUT/heaptrack.herald.zst" --print-peaks --peak-limit 40 --print-allocators 0 --print-leaks 0 --print-temporary 0 --print-histogram 0 --print-flamegraph 0 --print-massif 0 2>/dev/null > "$OUT/peaks.txt" || true
grep -E "^peak heap memory|^[0-9.]+[KMG]?B? peak memory consumed" "$OUT/peaks.txt" | head -3 || true
echo "per-site peaks: $OUT/peaks.txt (divide by $N)"
