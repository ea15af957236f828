"""Runs `fusion_fast.benchmarks.dataloader`, which ships with the package (`fusion-fast bench` runs them all).
`python benches/bench_dataloader.py --help` lists its options."""

from fusion_fast.benchmarks.dataloader import main

if __name__ == "__main__":
    main()
