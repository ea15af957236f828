"""A complete, minimal vision-language training loop on fusion-fast, runnable on a CPU in seconds.

    python examples/train_minimal.py                       # one process, CPU or GPU
    torchrun --nproc_per_node=2 examples/train_minimal.py  # data-parallel (gloo on CPU, nccl on GPU)

It writes the demo playground (three small datasets with images and a FUSION stage YAML), indexes it
(once per file across ranks), and trains a toy model on it with FUSION's ingredients: a `FusionDataset`
over the stage YAML (images opened with Pillow in the workers), a tokenising transform that masks the
human turns in `labels`, FUSION's modality-length-grouped order, `collate` padding `input_ids` with 0 and
`labels` with -100, and `CudaPrefetcher` overlapping host-to-GPU copies with compute when there is a GPU.
Each step prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import zlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from fusion_fast.demo import LAUNCH_DIR, STAGE_YAML, write_playground
from fusion_fast.samplers import LengthGroupedSampler
from fusion_fast.torch import CudaPrefetcher, FusionDataset, collate, ensure_indexed, worker_context

VOCAB = 4096
MAX_TOKENS = 96
IMAGE_SIZE = 8
BOS = 1


def tokenize(text: str) -> list[int]:
    """A stand-in for a real tokenizer: one id per word (0 is padding, 1 is BOS)."""
    return [zlib.crc32(word.encode()) % (VOCAB - 2) + 2 for word in text.split()]


class Preprocess:
    """FUSION-style preprocessing: tokens for every turn, loss only on the answers, one image as pixels.
    A class (not a lambda) so that spawned DataLoader workers can unpickle it."""

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        ids, labels = [BOS], [-100]
        for turn in item["conversations"]:
            tokens = tokenize(turn["value"].replace("<image>", " "))
            ids += tokens
            labels += tokens if turn["from"] == "gpt" else [-100] * len(tokens)
        pixels = torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE)
        image = item.get("_image")
        if image is not None:
            first = image[0] if isinstance(image, list) else image
            rgb = bytearray(first.resize((IMAGE_SIZE, IMAGE_SIZE)).tobytes())
            pixels = torch.frombuffer(rgb, dtype=torch.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE, 3)
            pixels = pixels.permute(2, 0, 1).float() / 255
        return {
            "input_ids": torch.tensor(ids[:MAX_TOKENS]),
            "labels": torch.tensor(labels[:MAX_TOKENS]),
            "pixel_values": pixels,
            "id": item["id"],
        }


class TinyVLM(nn.Module):
    """Token embeddings plus a projected image, a GRU, and a next-token head."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.vision = nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, width)
        self.rnn = nn.GRU(width, width, batch_first=True)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids) + self.vision(pixel_values.flatten(1))[:, None]
        hidden, _ = self.rnn(x)
        return self.head(hidden)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default="fusion-fast-example", help="where the demo playground goes")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))

    workdir = Path(args.workdir)
    playground, yaml, launch_dir = workdir / "playground", workdir / STAGE_YAML, workdir / LAUNCH_DIR
    if rank == 0 and not yaml.exists():
        write_playground(workdir, seed=args.seed)
    if distributed:
        dist.barrier()
    # The YAML's paths read ../../playground/..., relative to scripts/train/ as in FUSION.
    ensure_indexed(yaml, root=launch_dir)  # under torchrun each missing index is built by one rank

    dataset = FusionDataset(
        yaml,
        image_folder=playground / "train" / "images",
        load_images=True,
        transform=Preprocess(),
        root=launch_dir,
        seed=args.seed,
    )
    # FUSION's `group_by_modality_length`: image and text-only batches, similar lengths together.
    sampler = LengthGroupedSampler(
        dataset.modality_lengths, batch_size=args.batch_size, world_size=world, rank=rank, seed=args.seed
    )
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        persistent_workers=args.workers > 0,
        # Queues that hand batches over without feeder threads (docs/training.md).
        multiprocessing_context=worker_context() if args.workers > 0 else None,
    )
    batches = CudaPrefetcher(loader)  # a pass-through on CPU
    device = batches.device

    torch.manual_seed(args.seed)
    model: nn.Module = TinyVLM().to(device)
    if distributed:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    step, epoch, started = 0, 0, time.perf_counter()
    while step < args.steps:
        sampler.set_epoch(epoch)
        for batch in batches:
            logits = model(batch["input_ids"], batch["pixel_values"])
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if rank == 0:
                print(
                    json.dumps(
                        {
                            "step": step,
                            "epoch": epoch,
                            "loss": round(loss.item(), 4),
                            "samples": len(batch["id"]),
                        }
                    ),
                    flush=True,
                )
            if step == args.steps:
                break
        epoch += 1
    if rank == 0:
        print(json.dumps({"done": True, "steps": step, "seconds": round(time.perf_counter() - started, 2)}))
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
