"""Runs `fusion_fast.benchmarks.index`, which ships with the package (`fusion-fast bench` runs them all).
`python benches/bench_index.py --help` lists its options."""

from fusion_fast.benchmarks.index import main

if __name__ == "__main__":
    main()
