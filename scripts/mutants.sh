#!/usr/bin/env bash
# Mutation testing: change the product in small ways (mutants) and check that the tests notice.
# Not run in CI; run it after changing a module or its tests, and record survivors in docs/testing.md.
#
#   scripts/mutants.sh rust FILE [cargo-mutants args...]     e.g. rust rust/json.rs --re skip_whitespace
#   scripts/mutants.sh python MODULE TESTS [K [NAME...]]     e.g. python stage tests/test_mixture.py
#       K: a pytest -k expression ("" for all); NAME: mutmut mutant-name patterns (fnmatch) to run only
#       some functions' mutants, e.g. 'fusion_fast.stage.x_parse_strategy__mutmut_*'.
#
# rust:   cargo-mutants (`cargo install --locked cargo-mutants`) over one file, one job, at most
#         $MUTANTS_TIMEOUT (120) s per test run; it copies the tree itself (the first build there is a
#         full one). Results go under $MUTANTS_OUT (default /tmp/fusion-fast-mutants). Arguments after
#         `--` go to `cargo test`, e.g. `-- --lib --test scan_props`.
# python: mutmut 3 (`pip install mutmut`) over python/fusion_fast/MODULE.py with only the named test
#         files, in a copy of the committed tree (git archive HEAD) plus the built extension, so the
#         working tree is never touched. The survivors are listed at the end (`mutmut results`).
#
# Time on a 2-core machine: the Rust side is a build and a test run per mutant (about a minute each),
# so restrict it with --re / --file; the Python side runs the named tests once per mutant (mutmut
# forks a warmed-up pytest, a few seconds per mutant).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${MUTANTS_OUT:-/tmp/fusion-fast-mutants}
kind=${1:?usage: scripts/mutants.sh rust FILE [args] | python MODULE TESTS [K]}
shift
mkdir -p "$out"

case "$kind" in
rust)
    file=${1:?rust FILE}
    shift
    cd "$repo"
    exec cargo mutants --file "$file" --jobs 1 --timeout "${MUTANTS_TIMEOUT:-120}" --output "$out/rust-$(basename "$file" .rs)" "$@"
    ;;
python)
    module=${1:?python MODULE TESTS}
    tests=${2:?python MODULE TESTS}
    select=${3:-}
    shift 2
    [ $# -gt 0 ] && shift
    work="$out/python-$module"
    rm -rf "$work"
    mkdir -p "$work"
    git -C "$repo" archive HEAD python tests pyproject.toml | tar -x -C "$work"
    # mutmut names a mutant after its module path less a leading `src.`: give the copy a src/ layout so
    # that the names match the imported module (fusion_fast.stage).
    mv "$work/python" "$work/src"
    cp "$repo"/python/fusion_fast/_core*.so "$work/src/fusion_fast/"
    git -C "$work" init -q .
    {
        echo "[mutmut]"
        echo "source_paths=src/fusion_fast/$module.py"
        echo "pytest_add_cli_args_test_selection=$tests"
        echo "also_copy=src/fusion_fast/"
        # A mutant is a timeout when its tests use this many times the CPU they used unmutated; on a
        # loaded machine the default (15) flags slow but finished runs.
        echo "timeout_multiplier=${MUTMUT_TIMEOUT_MULTIPLIER:-15}"
        printf 'pytest_add_cli_args=\n    -p\n    no:cacheprovider\n    -q\n'
        if [ -n "$select" ]; then printf '    -k\n    %s\n' "$select"; fi
    } >"$work/setup.cfg"
    # mutmut reads [tool.mutmut] from pyproject.toml before setup.cfg: keep the copy's free of it.
    cd "$work"
    # The mutated copy must win over an installed (editable) fusion_fast. The folder must exist before
    # Python starts, or the import system caches its absence.
    mkdir -p "$work/mutants/src"
    PYTHONPATH="$work/mutants/src" mutmut run "$@" || true
    mutmut results
    ;;
*)
    echo "unknown kind $kind (rust or python)" >&2
    exit 2
    ;;
esac
