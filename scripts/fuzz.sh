#!/usr/bin/env bash
# Coverage-guided fuzzing of Herald's untrusted-input parsers with cargo-fuzz (libFuzzer), a
# bounded run: builds every target in fuzz/, then runs each for FUZZ_SECONDS (default 60) against
# its checked-in seeds in fuzz/corpus/<target>/. Exits non-zero when any target finds a crash
# (panic, failed assertion, sanitizer report, timeout or out-of-memory) and prints the file.
#
#   scripts/fuzz.sh                      # all targets, 60 s each (optimized, AddressSanitizer)
#   FUZZ_SECONDS=3600 scripts/fuzz.sh reader   # one target (or several), one hour
#   FUZZ_PROFILE=dev FUZZ_SANITIZER=none FUZZ_SECONDS=20 scripts/fuzz.sh   # the quick run of
#                                        # scripts/test.sh: builds in about half the time
#
# Only a stable toolchain is needed: cargo-fuzz passes nightly-only rustc flags (-Zsanitizer,
# sancov passes), which stable rustc accepts with RUSTC_BOOTSTRAP=1. cargo-fuzz is installed into
# target/tools when missing. New corpus entries go to target/fuzz-corpus/<target> (a scratch copy
# of the seeds), never into the checked-in corpus. See fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
# address (default; catches memory errors in the C parts and Rust's unsafe) or none (faster).
FUZZ_SANITIZER="${FUZZ_SANITIZER:-address}"
ALL_TARGETS=(reader decode server_frame handshake jwt)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL_TARGETS[@]}")

# Largest input (bytes) and memory limit (MB, RSS incl. sanitizer overhead) per target.
max_len() {
    case "$1" in
        reader) echo 16384 ;;  # room for 16-bit-length frames and several messages
        handshake) echo 2048 ;;
        *) echo 4096 ;;        # one command / server frame / token (max_token_size is 8 KiB)
    esac
}
RSS_LIMIT_MB="${FUZZ_RSS_LIMIT_MB:-2048}"
# No single allocation may exceed this (inputs are at most 16 KiB: a bigger one is amplification).
MALLOC_LIMIT_MB="${FUZZ_MALLOC_LIMIT_MB:-256}"
# FUZZ_KEEP_GOING=1: fork mode that keeps fuzzing after a crash (for long runs: collects every
# distinct crash in fuzz/artifacts/<target>/ instead of stopping at the first).
KEEP_GOING=()
if [ "${FUZZ_KEEP_GOING:-0}" = 1 ]; then
    KEEP_GOING=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
fi

TOOLS="$PWD/target/tools"
CARGO_FUZZ="$TOOLS/bin/cargo-fuzz"
if [ ! -x "$CARGO_FUZZ" ]; then
    echo "==> installing cargo-fuzz into target/tools"
    # --debug: it only drives cargo and runs the targets; an unoptimized build is twice as fast.
    cargo install --root "$TOOLS" cargo-fuzz --locked --debug
fi

export RUSTC_BOOTSTRAP=1
# The same flags for build and run, so `run` does not rebuild. -a: overflow checks and
# debug assertions on (they are what turns silent wrap-around into a finding).
# FUZZ_PROFILE=dev: unoptimized (much faster to build from scratch, slower per input).
case "${FUZZ_PROFILE:-release}" in
    release) BUILD_FLAGS=(--release --debug-assertions --sanitizer "$FUZZ_SANITIZER") ;;
    dev)
        BUILD_FLAGS=(--dev --sanitizer "$FUZZ_SANITIZER")
        # No debug info: a quicker build and link (crash inputs are saved; reproduce with symbols).
        export CARGO_PROFILE_DEV_DEBUG=0
        ;;
    *) echo "FUZZ_PROFILE must be release or dev" >&2; exit 2 ;;
esac

for t in "${TARGETS[@]}"; do
    [ -f "fuzz/fuzz_targets/$t.rs" ] || { echo "unknown fuzz target: $t" >&2; exit 2; }
done

echo "==> building fuzz targets (${FUZZ_SANITIZER} sanitizer)"
"$CARGO_FUZZ" build "${BUILD_FLAGS[@]}"

LOGS="target/fuzz-logs"
mkdir -p "$LOGS"
# Two targets at a time (one per core of the CI machine; FUZZ_JOBS overrides).
JOBS="${FUZZ_JOBS:-2}"

run_target() {
    local t=$1 scratch="target/fuzz-corpus/$1"
    mkdir -p "$scratch" "fuzz/artifacts/$t"
    cp -n "fuzz/corpus/$t"/* "$scratch"/ 2>/dev/null || true
    ls "fuzz/artifacts/$t" | sort >"$LOGS/$t.before"
    set +e
    # The scratch dir comes first: libFuzzer writes new inputs into the first corpus dir only.
    "$CARGO_FUZZ" run "${BUILD_FLAGS[@]}" "$t" "$scratch" "fuzz/corpus/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -max_len="$(max_len "$t")" \
        -rss_limit_mb="$RSS_LIMIT_MB" -malloc_limit_mb="$MALLOC_LIMIT_MB" -timeout=10 -print_final_stats=1 ${KEEP_GOING[@]+"${KEEP_GOING[@]}"} \
        >"$LOGS/$t.log" 2>&1
    echo $? >"$LOGS/$t.rc"
}

echo "==> fuzzing ${TARGETS[*]} for ${FUZZ_SECONDS}s each, $JOBS at a time (rss ${RSS_LIMIT_MB} MB, malloc ${MALLOC_LIMIT_MB} MB)"
running=0
for t in "${TARGETS[@]}"; do
    if [ "$running" -ge "$JOBS" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    run_target "$t" &
    running=$((running + 1))
done
wait

failed=()
for t in "${TARGETS[@]}"; do
    scratch="target/fuzz-corpus/$t"
    rc=$(cat "$LOGS/$t.rc")
    # Coverage (cov: edges, ft: features) after the seeds, and at the end.
    { grep -m1 -E '^#[0-9]+.*INITED' "$LOGS/$t.log" || true; } | sed "s/^/    $t: /"
    { grep -E '^#[0-9]+.*cov:' "$LOGS/$t.log" | tail -1 || true; } | sed "s/^/    $t: /"
    { grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$LOGS/$t.log" || true; } | sed "s/^/    $t: /"
    echo "    $t: max_len $(max_len "$t"), corpus $(ls "$scratch" | wc -l) inputs (log: $LOGS/$t.log)"
    new=$(comm -13 "$LOGS/$t.before" <(ls "fuzz/artifacts/$t" | sort) | grep -v '^$' || true)
    if [ "$rc" -ne 0 ] || [ -n "$new" ]; then
        failed+=("$t")
        echo "!!! $t failed (exit $rc)"
        grep -E -A25 'panicked at|ERROR: (libFuzzer|AddressSanitizer)|SUMMARY:' "$LOGS/$t.log" | head -60 || tail -40 "$LOGS/$t.log"
        n=0
        for f in $new; do
            n=$((n + 1))
            [ "$n" -le 5 ] || { echo "    ... and $(($(echo "$new" | wc -l) - 5)) more in fuzz/artifacts/$t/"; break; }
            echo "!!! crash file: fuzz/artifacts/$t/$f"
            echo "    reproduce: RUSTC_BOOTSTRAP=1 $CARGO_FUZZ run ${BUILD_FLAGS[*]} $t fuzz/artifacts/$t/$f"
        done
    fi
done

if [ ${#failed[@]} -ne 0 ]; then
    echo "==> fuzzing found crashes in: ${failed[*]}"
    exit 1
fi
echo "==> fuzzing: no crashes in ${TARGETS[*]} (${FUZZ_SECONDS}s each)"
