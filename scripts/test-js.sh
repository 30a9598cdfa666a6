#!/usr/bin/env bash
# The TypeScript client and the demo chat: unit tests, integration tests against the real binary,
# and browser end-to-end tests in Debian's Chromium (installed with apt when missing). Screenshots
# of the browser scenarios land in clients/js/e2e/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-chromium.sh
cargo build -p herald
cd clients/js
npm ci --no-audit --no-fund --loglevel=error
node demo/build.mjs --check
node admin/build.mjs --check
npm test
npm run test:e2e
