#!/usr/bin/env bash
# The whole test suite: formatting, lints, module cycles, unit + integration tests, the TypeScript
# client and the demo chat in Chromium, WebSocket conformance, the server API against its OpenAPI
# document, and a bounded coverage-guided fuzzing run of the parsers of untrusted input.
# Installs what it needs (npm packages, Debian's chromium, kosoku into target/venv, schemathesis
# into target/st-venv; promtool, systemd-analyze and hadolint for the deploy/ checks through
# scripts/install-ops-tools.sh) when missing. Nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> no module import cycles (scripts/module-cycles.py)"
python3 scripts/module-cycles.py
echo "==> tools the deploy/ checks use (promtool, systemd-analyze, hadolint)"
scripts/install-ops-tools.sh
echo "==> cargo test"
cargo test --workspace
echo "==> TypeScript client, demo chat and browser tests"
scripts/test-js.sh
echo "==> Autobahn conformance (kosoku) against /echo"
scripts/autobahn.sh
echo "==> schemathesis: the server API against docs/openapi.json"
scripts/schemathesis.sh
echo "==> coverage-guided fuzzing, a bounded run (longer runs: fuzz/README.md)"
FUZZ_PROFILE=dev FUZZ_SANITIZER=none FUZZ_SECONDS="${FUZZ_SECONDS:-20}" scripts/fuzz.sh
echo "==> all checks passed"
