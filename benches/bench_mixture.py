"""Runs `fusion_fast.benchmarks.mixture`, which ships with the package (`fusion-fast bench` runs them all).
`python benches/bench_mixture.py --help` lists its options."""

from fusion_fast.benchmarks.mixture import main

if __name__ == "__main__":
    main()
