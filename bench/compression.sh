#!/usr/bin/env bash
# Bytes on the wire and server CPU per delivery: plain, permessage-deflate and delta updates (issue 17),
# for a ~3 KB dashboard object of which a few fields change per message and for ~100-byte chat
# messages: 1 channel × 1 000 subscribers at 100 publications/s. The server runs with
# `connection.compression` on (`--dev`) and the default namespace compressing (`--dev`); a run
# without `--compress` is the uncompressed baseline (its subscribers do not offer the extension).
# Server pinned to core 0, load generator to core 1.
#   bench/compression.sh [OUT.jsonl]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/compression-$(date -u +%Y-%m-%d).jsonl}
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
cargo build --release -p herald >&2
HERALD="${CARGO_TARGET_DIR:-target}/release/herald"
. bench/lib.sh

# The `delta` namespace: Fossil delta updates, open like `--dev`'s default namespace, without
# presence and join/leave (like the default namespace in bench/herald.toml).
DELTA_ENV=(HERALD_NAMESPACES__DELTA__DELTA=fossil HERALD_NAMESPACES__DELTA__ANONYMOUS=true
  HERALD_NAMESPACES__DELTA__ALLOW_SUBSCRIBE=true HERALD_NAMESPACES__DELTA__ALLOW_PUBLISH=true)

run() { # run NAME ARGS...
  local name=$1; shift
  env "${DELTA_ENV[@]}" taskset -c 0 "$HERALD" serve --dev --config bench/herald.toml --listen 127.0.0.1:8200 >/dev/null 2>&1 &
  local pid=$!
  wait_port 8200
  echo "== $name: herald bench $*" >&2
  local result
  result=$(taskset -c 1 "$HERALD" bench "$@" --url "ws://127.0.0.1:8200/ws" --pid "$pid" --json | tail -1)
  stop_server "$pid"
  python3 -c 'import json,sys; r=json.loads(sys.argv[2]); r.update(server="herald", name=sys.argv[1]); print(json.dumps(r))' \
    "$name" "$result" >> "$OUT"
}

for shape in dashboard chat; do
  for mode in plain deflate delta; do
    flag=""
    [ "$mode" = deflate ] && flag="--compress"
    # Channels are `<prefix>:<k>`: the `delta` namespace. (The load generator does not apply
    # deltas, so these runs report no latency.)
    [ "$mode" = delta ] && flag="--prefix delta"
    run "$shape-$mode" fanout --shape "$shape" $flag --subscribers 1000 --channels 1 --rate 100 --duration 10s
  done
done
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'run':<20} {'bytes/delivery':>15} {'deliveries/CPU s':>17} {'p99 ms':>8} {'lost':>5}")
for r in rows:
    lat = r.get('latency') or {}
    p99 = lat.get('p99_ms', lat.get('p99'))
    print(f"{r['name']:<20} {r.get('wire_bytes_per_delivery') or 0:>15.1f} "
          f"{r.get('deliveries_per_server_cpu_second') or 0:>17.0f} {p99 if p99 is not None else '-':>8} {r.get('lost'):>5}")
PY
