#!/usr/bin/env bash
# Waiting-session storms under heaptrack (docs/reliability.md, "Known limits"): three times, 10 000
# connections subscribe and drop without a close frame (each session waits 30 s for a resume),
# then expire. RSS is sampled from /proc; heaptrack records the heap in use over time and what is
# still allocated at exit (after a graceful shutdown). Needs Debian's heaptrack.
#   bench/storms.sh            # a release build of HEAD (cargo build --release -p herald first)
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
BIN=${HERALD:-target/release/herald}
OUT=${STORMS_DIR:-target/storms}
mkdir -p "$OUT"
rm -f "$OUT"/heaptrack.* "$OUT"/massif.out
. bench/lib.sh
heaptrack -o $OUT/heaptrack.herald $BIN serve --dev --config bench/herald.toml --listen 127.0.0.1:8300 > $OUT/server.log 2>&1 &
HT=$!
wait_port 8300 || { sleep 5; wait_port 8300; }
PID=$(pgrep -x herald | head -1)
rss() { awk '/VmRSS/{print $2}' /proc/$PID/status; }
waiting() { curl -s http://127.0.0.1:8300/metrics | awk '/^herald_sessions_waiting /{print $2}'; }
echo "pid $PID baseline rss $(rss) KiB"
for i in 1 2 3; do
  $BIN bench idle --connections 10000 --channels 100 --duration 2s --url ws://127.0.0.1:8300/ws > /dev/null 2>&1 || true
  echo "storm $i: right after, rss $(rss) KiB, waiting $(waiting)"
  sleep 40
  echo "storm $i: after the grace, rss $(rss) KiB, waiting $(waiting)"
done
kill -INT $PID || true
wait $HT || true
heaptrack_print $OUT/heaptrack.herald.zst 2>/dev/null | grep -E "^(peak heap memory|peak RSS|total memory leaked)" || true
# Heap in use over time, per 5 s: the largest and the last value of each interval.
heaptrack_print $OUT/heaptrack.herald.zst -M $OUT/massif.out >/dev/null 2>&1 || true
grep -E "^(time|mem_heap_B)=" $OUT/massif.out | paste -d' ' - - | awk '{split($1,a,"="); split($2,b,"="); t=a[2]; m=b[2]/1e6; k=int(t/5); last[k]=m; if (!(k in mx) || m>mx[k]) mx[k]=m; if (k>n) n=k} END {for (k=0;k<=n;k++) if (k in last) printf "%3ds heap max %5.1f MB, last %5.1f MB\n", k*5, mx[k], last[k]}'
