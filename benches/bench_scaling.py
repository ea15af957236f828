"""Runs `fusion_fast.benchmarks.scaling`, which ships with the package (`fusion-fast bench` runs them all).
`python benches/bench_scaling.py --help` lists its options."""

from fusion_fast.benchmarks.scaling import main

if __name__ == "__main__":
    main()
