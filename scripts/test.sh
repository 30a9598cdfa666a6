#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit + integration tests, WebSocket conformance, and
# the server API against its OpenAPI document. Installs what it needs (kosoku into target/venv,
# schemathesis into target/st-venv) when missing. Nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> cargo test"
cargo test --workspace
echo "==> Autobahn conformance (kosoku) against /echo"
scripts/autobahn.sh
echo "==> schemathesis: the server API against docs/openapi.json"
scripts/schemathesis.sh
echo "==> all checks passed"
