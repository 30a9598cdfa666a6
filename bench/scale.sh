#!/usr/bin/env bash
# Idle connections at growing scale on one node (issue 14): a fresh release server per size,
# N idle subscribed connections (100 channels), server RSS per connection. The largest size is
# the file-descriptor ceiling of this machine's kind (`ulimit -n` 20 000 per process: the
# server needs one descriptor per connection plus a few dozen of its own).
#   bench/scale.sh [SIZES...]      # default: 1000 5000 10000 19000
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p herald >&2
HERALD=target/release/herald
. bench/lib.sh
echo "| connections | server RSS before (MB) | after (MB) | bytes / connection | failed |"
echo "| ---: | ---: | ---: | ---: | ---: |"
for n in ${@:-1000 5000 10000 19000}; do
  taskset -c 0 "$HERALD" serve --dev --config bench/herald.toml --listen 127.0.0.1:8500 >/dev/null 2>&1 &
  pid=$!
  wait_port 8500
  r=$(taskset -c 1 "$HERALD" bench idle --connections "$n" --channels 100 --duration 3s \
    --url ws://127.0.0.1:8500/ws --pid "$pid" --json | tail -1)
  stop_server "$pid"
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("| {:,} | {:.1f} | {:.1f} | {:,.0f} | {} |".format(r["connections"], r["server_rss_before_bytes"]/1e6, r["server_rss_after_bytes"]/1e6, r["server_bytes_per_connection"], r["failed"]))' "$r"
done
