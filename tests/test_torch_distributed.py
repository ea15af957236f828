"""`torchrun --nproc_per_node=2` (gloo, CPU) on a generated stage: each missing index built exactly once
(`ensure_indexed`, `fusion-fast index`), identical mixtures on both ranks, disjoint covering sampler
shards, and an epoch resumed from a checkpoint continuing exactly. The ranks run tests/torchrun_worker.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import fusion_fast as ff  # noqa: E402
from fusion_fast import synth  # noqa: E402
from fusion_fast.mixture import Mixture  # noqa: E402

from .torchrun_worker import BATCH, MIXTURE_SEED, RESUME_AFTER  # noqa: E402

WORKER = Path(__file__).resolve().parent / "torchrun_worker.py"

#: (file, records, strategy, repeat): different sizes so that the byte-balanced split is exercised.
STAGE_A = [
    ("alpha.json", 900, "random:40%", None),
    ("beta.jsonl", 400, "random:123", None),
    ("gamma.json", 250, "all", 1.5),
    ("delta.jsonl", 600, "end:100", None),
    ("epsilon.json", 150, "first:50%", None),
]
STAGE_B = [("zeta.jsonl", 300, "all", None), ("eta.json", 120, "all", None), ("theta.jsonl", 80, "all", None)]


def write_stage(folder: Path, name: str, entries, seed: int) -> Path:
    lines = ["datasets:"]
    for k, (file, records, strategy, repeat) in enumerate(entries):
        synth.write_file(folder / file, records=records, seed=seed + k, indent=None if k % 2 else 2)
        lines += [f"  - json_path: {folder / file}", f'    sampling_strategy: "{strategy}"']
        if repeat is not None:
            lines.append(f"    repeat: {repeat}")
    yaml = folder / name
    yaml.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return yaml


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torchrun")
    stage_a = write_stage(folder, "stage-a.yaml", STAGE_A, seed=1)
    stage_b = write_stage(folder, "stage-b.yaml", STAGE_B, seed=50)
    out = folder / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        env.pop(key, None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(WORKER),
            str(stage_a),
            str(stage_b),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=folder,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return {"ranks": ranks, "stage_a": stage_a, "stage_b": stage_b, "stdout": proc.stdout}


def test_each_missing_index_is_built_exactly_once(run):
    r0, r1 = run["ranks"]
    built = np.array([r0["built"], r1["built"]])
    assert built.shape == (2, len(STAGE_A))
    assert built.sum(axis=0).tolist() == [1] * len(STAGE_A)  # every file by exactly one rank
    assert built[0].any() and built[1].any()  # and the work was shared
    assert not any(r0["built_again"]) and not any(r1["built_again"])  # already valid: nobody rebuilds


def test_cli_index_under_torchrun(run):
    r0, r1 = run["ranks"]
    assert r0["cli_exit"] == r1["cli_exit"] == 0
    assert not r0["initialised_after_cli"] and not r1["initialised_after_cli"]  # its group was released
    for file, records, _, _ in STAGE_B:
        assert len(ff.open(run["stage_b"].parent / file, rebuild="never")) == records
    # each rank's table lists only its own share: every file appears once in the combined output
    rows = [line.split()[1] for line in run["stdout"].splitlines() if line.startswith("│")]
    assert sorted(rows) == sorted(file for file, _, _, _ in STAGE_B), run["stdout"]


def test_both_ranks_resolve_the_same_mixture(run):
    r0, r1 = run["ranks"]
    assert r0["mixture"] == r1["mixture"]
    mix = Mixture.from_yaml(run["stage_a"], seed=MIXTURE_SEED)  # and so does a third process
    datasets, records = mix.locate(np.arange(len(mix)))
    assert r0["mixture"] == [
        [mix.datasets[d].name, r] for d, r in zip(datasets.tolist(), records.tolist(), strict=True)
    ]
    assert len(r0["mixture"]) == 360 + 123 + 375 + 100 + 75


def test_sampler_shards_are_disjoint_and_cover(run):
    r0, r1 = run["ranks"]
    n = len(r0["mixture"])
    assert len(r0["shard"]) == len(r1["shard"]) == (n + 1) // 2
    assert set(r0["shard"]) | set(r1["shard"]) == set(range(n))
    assert len(set(r0["shard"]) & set(r1["shard"])) == (n % 2)  # only DistributedSampler's padding repeats
    a, b = set(r0["shard_drop_last"]), set(r1["shard_drop_last"])
    assert not a & b and len(a) == len(b) == n // 2


def test_resume_from_checkpoint_continues_exactly(run):
    for report in run["ranks"]:
        full, resumed = report["full"], report["resumed"]
        assert len(full) > RESUME_AFTER * BATCH
        assert resumed == full
    assert run["ranks"][0]["full"] != run["ranks"][1]["full"]
