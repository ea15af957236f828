#!/usr/bin/env bash
# Runs one coverage-guided fuzz target (cargo-fuzz, nightly Rust) for a number of seconds.
#
#   scripts/fuzz.sh TARGET [SECONDS]     TARGET: scan, tape, index_header,
#                                      image_store_build, or all (default 60 s each)
#
# The committed seeds (fuzz/corpus/TARGET) are read, never written: new inputs go to a scratch corpus
# under fuzz/target/corpus/TARGET that persists between runs. A crash or failed check stops the run
# and leaves the input in fuzz/artifacts/TARGET/; replay it with
#   cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...   (from fuzz/)
# and add a regression test in the normal cargo tests before fixing it.
# Exits 0 with "skipped: ..." where nightly Rust cannot be had (CI reaches only package registries).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

target=${1:?usage: scripts/fuzz.sh TARGET [SECONDS] (TARGET: scan, tape, index_header, image_store_build or all)}
seconds=${2:-60}

if ! rustup toolchain list 2>/dev/null | grep '^nightly' >/dev/null; then
    if ! rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
        echo "fuzz: skipped: no nightly toolchain (and it cannot be installed here)"
        exit 0
    fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

if [ "$target" = all ]; then
    targets=$(cargo +nightly fuzz list)
else
    targets=$target
fi
for t in $targets; do
    scratch=target/corpus/$t
    mkdir -p "$scratch"
    echo "fuzz: $t for ${seconds}s"
    log=target/fuzz-$t.log
    # -rss_limit_mb: a leak or a huge allocation fails the run too.
    rc=0
    cargo +nightly fuzz run "$t" "$scratch" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 >"$log" 2>&1 || rc=$?
    grep -E '^#[0-9]+ +DONE|^stat::(number_of_executed_units|peak_rss)' "$log" || true
    if [ "$rc" -ne 0 ]; then
        tail -n 40 "$log"
        echo "fuzz: $t FAILED (the input is in fuzz/artifacts/$t/; full log in fuzz/$log)"
        exit 1
    fi
done
