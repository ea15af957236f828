#!/usr/bin/env bash
# Runs the unit tests of the modules with `unsafe` code (SIMD scanning, the tape's string search, the
# shuffle) under miri, which reports undefined behaviour: reads out of bounds, misaligned or invalid
# values, data races. Needs nightly Rust with the miri and rust-src components.
#
#   scripts/miri.sh [TEST FILTER...]     (default: tape json shuffle words scan chunk_shape)
#
# Property tests run few cases under miri (it is ~1000 times slower). Not covered: the memory maps of
# store.rs (miri cannot map files) and the Python builder (to_python.rs, python.rs: miri cannot run
# CPython); the tape reader those rely on is covered here and by fuzz/.
# Exits 0 with "skipped: ..." where miri cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo +nightly miri --version >/dev/null 2>&1; then
    if ! rustup +nightly component add miri rust-src >/dev/null 2>&1; then
        echo "miri: skipped: nightly Rust with miri cannot be installed here"
        exit 0
    fi
fi
filters=("$@")
if [ ${#filters[@]} -eq 0 ]; then
    filters=(tape json shuffle words scan chunk_shape)
fi
export PROPTEST_CASES=${PROPTEST_CASES:-3}
# Isolation off: the tests create temporary files; SIMD paths chosen at run time see no AVX-512 here.
export MIRIFLAGS=${MIRIFLAGS:--Zmiri-disable-isolation}
for f in "${filters[@]}"; do
    echo "miri: $f"
    flags=$MIRIFLAGS
    if [ "$f" = scan ]; then
        # The parallel scan runs on rayon, whose crossbeam-epoch breaks Stacked Borrows' rules in a way
        # crossbeam documents as sound under Tree Borrows (crossbeam-rs/crossbeam#545), the model its
        # own miri runs use. Its worker threads outlive the tests (ignore-leaks).
        flags="$flags -Zmiri-tree-borrows -Zmiri-permissive-provenance -Zmiri-ignore-leaks"
    fi
    MIRIFLAGS=$flags cargo +nightly miri test --quiet --lib -- "$f::"
done
