"""Runs `fusion_fast.benchmarks.gpu`, which ships with the package (`fusion-fast bench` runs them all).
`python benches/bench_gpu.py --help` lists its options."""

from fusion_fast.benchmarks.gpu import main

if __name__ == "__main__":
    main()
