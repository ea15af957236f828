"""One rank of tests/test_torch_distributed.py, launched with `torchrun --nproc_per_node=2`.

    torchrun --standalone --nproc_per_node=2 tests/torchrun_worker.py STAGE_A.yaml STAGE_B.yaml OUT_DIR

In order: `fusion-fast index STAGE_B.yaml` (sets up its own gloo group from torchrun's environment),
`ensure_indexed(STAGE_A.yaml)` before and after the training code's own `init_process_group`, then the
mixture, sampler shards and a resumed epoch. Writes what it saw to OUT_DIR/rank<R>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from torchdata.stateful_dataloader import StatefulDataLoader

from fusion_fast.cli import main as cli_main
from fusion_fast.mixture import Mixture
from fusion_fast.samplers import DistributedMixtureSampler
from fusion_fast.torch import FusionDataset, ensure_indexed

MIXTURE_SEED = 7
SAMPLER_SEED = 11
BATCH = 4
#: Batches consumed before the checkpoint.
RESUME_AFTER = 3


def make_loader(mix: Mixture, state: dict[str, Any] | None = None) -> StatefulDataLoader:
    """Epoch 1 of this rank's shard through torchdata's StatefulDataLoader (2 workers), resumed from the
    loader's own checkpoint when `state` is given. torchdata is required (test extras): no fallback."""
    sampler = DistributedMixtureSampler(mix, shuffle=True, seed=SAMPLER_SEED)
    sampler.set_epoch(1)
    loader = StatefulDataLoader(
        FusionDataset(mix), batch_size=BATCH, sampler=sampler, num_workers=2, collate_fn=list
    )
    if state is not None:
        loader.load_state_dict(state)
    return loader


def sources(batches: list[list[dict[str, Any]]]) -> list[list[Any]]:
    return [[item["_source"]["dataset"], item["_source"]["index"]] for batch in batches for item in batch]


def main() -> None:
    stage_a, stage_b, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    report: dict[str, Any] = {}

    # 1. The CLI, before anything set up torch.distributed.
    report["cli_exit"] = cli_main(["index", str(stage_b)])
    report["initialised_after_cli"] = dist.is_initialized()

    # 2. ensure_indexed from torchrun's environment, then again beside the training code's own group.
    report["built"] = [index.built for index in ensure_indexed(stage_a)]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    report["rank"] = rank
    report["built_again"] = [index.built for index in ensure_indexed(stage_a)]

    # 3. The mixture every rank resolves.
    mix = Mixture.from_yaml(stage_a, seed=MIXTURE_SEED)
    datasets, records = mix.locate(np.arange(len(mix)))
    report["mixture"] = [
        [mix.datasets[d].name, int(r)] for d, r in zip(datasets.tolist(), records.tolist(), strict=True)
    ]

    # 4. Sampler shards.
    report["shard"] = DistributedMixtureSampler(mix, seed=SAMPLER_SEED).order(0).tolist()
    report["shard_drop_last"] = (
        DistributedMixtureSampler(mix, seed=SAMPLER_SEED, drop_last=True).order(0).tolist()
    )

    # 5. An epoch without interruption, and one stopped after a few steps and resumed from a checkpoint.
    report["full"] = sources(list(make_loader(mix)))
    loader = make_loader(mix)
    batches = iter(loader)
    first = [next(batches) for _ in range(RESUME_AFTER)]
    checkpoint = loader.state_dict()
    del batches
    resumed = make_loader(mix, checkpoint)
    report["resumed_after"] = sources(list(resumed))
    report["resumed"] = sources(first) + report["resumed_after"]
    report["loader"] = type(resumed).__module__ + "." + type(resumed).__name__
    report["checkpoint_step"] = checkpoint["_snapshot"]["_snapshot_step"]

    (out / f"rank{rank}.json").write_text(json.dumps(report), encoding="utf-8")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
