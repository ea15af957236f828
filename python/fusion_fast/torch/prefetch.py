"""`CudaPrefetcher`: batches copied to the GPU on a side stream while the previous one trains."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from ..vision_device import ShippedBatch, ShippedImage

__all__ = ["CudaPrefetcher"]


class CudaPrefetcher:
    """Iterate `loader` with each batch already on the GPU: while batch k is in use, batch k+1 is
    copied on a side CUDA stream (asynchronous from pinned memory, so use `pin_memory=True`). The main
    stream waits for the copy before it is handed out (`wait_stream`) and every tensor is marked as used
    by it (`record_stream`), so the caching allocator never reuses its memory too early. Tensors are
    found in nested dicts, lists and tuples; other values pass unchanged.

    `device`: a CUDA device (default: the current one). Without CUDA (or with a CPU `device`) batches
    pass through unchanged, so the same training script runs on CPU. `len()` is the loader's.

    Compressed images: a `fusion_fast.vision_device.ShippedBatch` in a batch (what `collate` makes of
    the JPEGs that `FusionImageProcessor(device="cuda")` has DataLoader workers ship) is decoded with
    nvJPEG and preprocessed on the side stream too, so the batch handed out holds `_pixel_values` on the
    GPU as `collate` would have stacked them from tensors. Passing through, a top-level field holding
    one is preprocessed on `device` (the CPU) the same way; nothing else changes.
    """

    def __init__(
        self, loader: Iterable[Any], device: torch.device | str | int | None = None, non_blocking: bool = True
    ):
        self.loader = loader
        self.non_blocking = non_blocking
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)

    @property
    def enabled(self) -> bool:
        """Whether batches are copied to a GPU (False: pass-through)."""
        return self.device.type == "cuda"

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        if not self.enabled:
            return (_preprocessed(batch, self.device) for batch in self.loader)
        return self._prefetch()

    def _prefetch(self) -> Iterator[Any]:
        side = torch.cuda.Stream(self.device)
        batches = iter(self.loader)

        def copy_next() -> Any:
            batch = next(batches, _END)
            if batch is _END:
                return _END
            with torch.cuda.stream(side):
                return _to_device(batch, self.device, self.non_blocking)

        upcoming = copy_next()
        while upcoming is not _END:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(side)
            batch = upcoming
            _record_stream(batch, current)
            upcoming = copy_next()  # queued on the side stream before batch k's work is queued
            yield batch


_END = object()


def _preprocessed(batch: Any, device: torch.device) -> Any:
    """`batch` with each top-level `ShippedBatch` preprocessed on `device`; else `batch` itself."""
    if type(batch) is not dict or not any(isinstance(v, ShippedBatch) for v in batch.values()):
        return batch
    return {k: v.to_device(device) if isinstance(v, ShippedBatch) else v for k, v in batch.items()}


def _to_device(obj: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, ShippedBatch):  # decoded and preprocessed on the current (side) stream
        return obj.to_device(device, non_blocking=non_blocking)
    if isinstance(obj, ShippedImage):
        raise TypeError(
            "a batch holds a compressed image outside a ShippedBatch: collate the DataLoader's items "
            "with fusion_fast.torch.collate"
        )
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, tuple):
        moved = [_to_device(v, device, non_blocking) for v in obj]
        return type(obj)(*moved) if hasattr(obj, "_fields") else tuple(moved)
    if isinstance(obj, list):
        return [_to_device(v, device, non_blocking) for v in obj]
    return obj


def _record_stream(obj: Any, stream: torch.cuda.Stream) -> None:
    if isinstance(obj, torch.Tensor):
        if obj.is_cuda:
            obj.record_stream(stream)
    elif isinstance(obj, Mapping):
        for v in obj.values():
            _record_stream(v, stream)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _record_stream(v, stream)
