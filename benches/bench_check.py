"""Runs `fusion_fast.benchmarks.check`, which ships with the package (`fusion-fast bench` runs them all).
`python benches/bench_check.py --help` lists its options."""

from fusion_fast.benchmarks.check import main

if __name__ == "__main__":
    main()
