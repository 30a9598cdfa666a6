#!/usr/bin/env bash
# Run the Autobahn TestSuite cases (via PyPI `kosoku`) against Herald's /echo endpoint.
# Every case, the compression ones (12.*, 13.*: permessage-deflate) included: `--dev` turns
# `connection.compression` on.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${CARGO_TARGET_DIR:-target}/venv"
if [ ! -x "$VENV/bin/kosoku" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check kosoku
fi

cargo build --quiet -p herald
LOG=$(mktemp)
"${CARGO_TARGET_DIR:-target}/debug/herald" serve --dev --listen 127.0.0.1:0 >"$LOG" 2>/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 100); do
  ADDR=$(sed -n 's|^herald listening on http://\([^ ]*\) .*|\1|p' "$LOG")
  [ -n "$ADDR" ] && break
  sleep 0.1
done
if [ -z "${ADDR:-}" ]; then
  echo "herald did not start" >&2
  exit 1
fi
"$VENV/bin/kosoku" "ws://$ADDR/echo" -p 2 -o target/autobahn-report
