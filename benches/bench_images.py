"""Runs `fusion_fast.benchmarks.images`, which ships with the package (`fusion-fast bench` runs them all).
`python benches/bench_images.py --help` lists its options."""

from fusion_fast.benchmarks.images import main

if __name__ == "__main__":
    main()
