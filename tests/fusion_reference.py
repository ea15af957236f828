"""FUSION's own definitions (`LazySupervisedDataset.lengths` / `.modality_lengths`, verbatim in
substance), the reference the tests compare against. One copy: it ships with the benchmark suite, which
compares against the same code, and it calls nothing of fusion-fast's."""

from __future__ import annotations

from fusion_fast.benchmarks.common import fusion_lengths, fusion_modality_lengths

__all__ = ["fusion_lengths", "fusion_modality_lengths"]
