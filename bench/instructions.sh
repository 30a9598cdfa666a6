#!/usr/bin/env bash
# Herald's own instructions per delivery, counted by callgrind: immune to the host's speed,
# which drifts by a third within minutes on shared machines (the deliveries-per-CPU-second rows
# of bench/run.sh are compared within one sitting for that reason). Runs the server under
# `valgrind --tool=callgrind` twice — one channel × SUBS subscribers at RATE publications/s for
# 10 s, then the same at 1/s — and prints (instructions − instructions at 1/s) / (deliveries −
# deliveries at 1/s): start-up and connecting cancel out. The figure moves by ±5 % between runs
# (how many frames a batch holds depends on timing); compare builds by alternating them.
# With CHANNELS > 1 the subscribers are spread over that many channels (subscriber i joins
# channel i mod CHANNELS) and RATE is over all of them: SUBS=1000 CHANNELS=100 RATE=200 is the
# shape of bench/run.sh's 1 000 × 10 row, where each publication's own work (parse, authorize,
# append, acknowledge, encode) is spread over 10 deliveries instead of SUBS.
#   [SUBS=500] [CHANNELS=1] [RATE=50] bench/instructions.sh [HERALD_BINARY]
# Needs valgrind (`apt-get install valgrind`).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/herald}
SUBS=${SUBS:-500}
CHANNELS=${CHANNELS:-1}
RATE=${RATE:-50}
PORT=${PORT:-8250}
. bench/lib.sh
[[ -x $BIN ]] || cargo build --release -p herald >&2
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

count() { # count RATE -> "deliveries instructions"
  require_free_port "$PORT"
  taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.out" \
    "$BIN" serve --dev --config bench/herald.toml --listen "127.0.0.1:$PORT" >/dev/null 2>"$OUT/vg.err" &
  local pid=$!
  for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
  local deliveries
  deliveries=$(taskset -c 1 "$BIN" bench fanout --subscribers "$SUBS" --channels "$CHANNELS" --rate "$1" --duration 10s \
    --url "ws://127.0.0.1:$PORT/ws" --json | tail -1 | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["lost"] == 0, d; print(d["deliveries"])')
  kill -INT "$pid"
  wait "$pid" || true
  echo "$deliveries $(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$OUT/vg.err")"
}

read -r d1 i1 < <(count 1)
read -r d i < <(count "$RATE")
python3 -c "import sys; d, i, d1, i1 = map(int, sys.argv[1:]); print(f'{(i - i1) / (d - d1):.0f} instructions per delivery ({d - d1} deliveries, {i - i1} instructions)')" "$d" "$i" "$d1" "$i1"
