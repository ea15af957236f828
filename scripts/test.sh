#!/usr/bin/env bash
# Install the package with its test dependencies, then run every test: the Rust core (cargo test) and
# the Python API, CLI and integration tests (pytest). This is the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test,torch]"
cargo test --quiet
python -m pytest -q
