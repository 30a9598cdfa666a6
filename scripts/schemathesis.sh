#!/usr/bin/env bash
# Check the live server API against docs/openapi.json with schemathesis (installed from PyPI into
# ${CARGO_TARGET_DIR:-target}/st-venv). Uses the debug binary that `cargo test` built.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
VENV="$TARGET/st-venv"
if [ ! -x "$VENV/bin/st" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'schemathesis==4.32.5'
fi
cargo build --quiet -p herald
KEY=schemathesis-api-key-0123456789
ADMIN_SECRET=schemathesis-admin-secret-0123456789
WORK=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
printf '[auth]\napi_keys = ["%s"]\n[limits]\nconnect_per_second_per_ip = 0\n[admin]\nsecret = "%s"\n' "$KEY" "$ADMIN_SECRET" > "$WORK/herald.toml"
"$TARGET/debug/herald" serve --dev --config "$WORK/herald.toml" --listen 127.0.0.1:0 > "$WORK/out" 2> "$WORK/err" &
PID=$!
for _ in $(seq 1 200); do
  grep -q 'listening on' "$WORK/out" 2>/dev/null && break
  sleep 0.05
done
ADDR=$(sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$WORK/out" | head -1)
[ -n "$ADDR" ] || { echo "herald did not start" >&2; cat "$WORK/err" >&2; exit 1; }
# The served document must be the one in the repository.
python3 - "$ADDR" <<'PY' || { echo "/api/openapi.json differs from docs/openapi.json" >&2; exit 1; }
import sys, urllib.request
served = urllib.request.urlopen(f"http://{sys.argv[1]}/api/openapi.json").read()
sys.exit(0 if served == open("docs/openapi.json", "rb").read() else 1)
PY
# The admin API (docs/openapi.json, security scheme adminSession) is exercised with a logged-in
# session; /admin/logout is left out (it would end that session for the rest of the run).
HERALD_ADMIN_SESSION=$(python3 - "$ADDR" "$ADMIN_SECRET" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(
    f"http://{sys.argv[1]}/admin/login",
    data=json.dumps({"secret": sys.argv[2]}).encode(),
    headers={"Content-Type": "application/json", "X-Herald-Admin": "1"},
    method="POST",
)
cookie = urllib.request.urlopen(req).headers["Set-Cookie"]
print(cookie.split(";")[0].split("=", 1)[1])
PY
)
export HERALD_ADMIN_SESSION
"$VENV/bin/st" --config-file scripts/schemathesis.toml run docs/openapi.json \
  --url "http://$ADDR" \
  --header "Authorization: apikey $KEY" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection,ignored_auth,unsupported_method \
  --exclude-path /admin/logout \
  --max-examples 25 --seed 20261124 --no-color
