"""Training integration: a torch `Dataset` over mixtures, batching, GPU prefetch and distributed indexing.

    from torch.utils.data import DataLoader
    from fusion_fast.torch import CudaPrefetcher, FusionDataset, collate, ensure_indexed, worker_context

    ensure_indexed("stage1.yaml")                       # under torchrun: each missing index built once
    ds = FusionDataset("stage1.yaml", image_folder="playground/train/images", transform=tokenize)
    loader = DataLoader(ds, batch_size=16, num_workers=4, collate_fn=collate, pin_memory=True,
                        multiprocessing_context=worker_context())   # cheaper hand-overs
    for batch in CudaPrefetcher(loader):                # copies batch k+1 while batch k trains
        ...

Everything here needs torch (`pip install fusion-fast[torch]`); Pillow only for `load_images=True`.
See docs/training.md.

The package's modules: `dataset` (FusionDataset and its bad-sample policy), `shipping` (what DataLoader
workers send to the main process), `collate`, `prefetch` (CudaPrefetcher) and `worker_context` (the
DataLoader's multiprocessing context). `ensure_indexed` and `distributed_share` live in the torch-free
`fusion_fast.distributed` and are re-exported here.
"""

from __future__ import annotations

from .._core import SOURCE_KEY
from ..distributed import distributed_share, ensure_indexed
from .collate import DEFAULT_PAD_VALUES, collate
from .dataset import IMAGE_KEY, PIXELS_KEY, FusionDataset
from .prefetch import CudaPrefetcher
from .shipping import SHIP_ENV, PackedBatch, PackedRecords, ships_tapes
from .worker_context import worker_context

__all__ = [
    "FusionDataset",
    "PackedRecords",
    "PackedBatch",
    "collate",
    "CudaPrefetcher",
    "ensure_indexed",
    "distributed_share",
    "worker_context",
    "SOURCE_KEY",
    "IMAGE_KEY",
    "PIXELS_KEY",
    "DEFAULT_PAD_VALUES",
    "SHIP_ENV",
    "ships_tapes",
]
