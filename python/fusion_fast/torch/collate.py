"""`collate`: items into a batch, field by field (stack, pad or list), tensors built in shared memory in
DataLoader workers; a packed batch of raw records stays packed (`PackedBatch`)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .._core import collate_records
from ..distributed import in_dataloader_worker
from ..vision_device import ShippedBatch
from .dataset import PIXELS_KEY
from .shipping import PackedBatch, PackedRecords

__all__ = ["collate", "DEFAULT_PAD_VALUES"]

#: Pad values by field name; fields not listed pad with `collate`'s `default_pad`.
DEFAULT_PAD_VALUES: Mapping[str, int | float] = {"input_ids": 0, "labels": -100, "attention_mask": 0}


def collate(
    batch: Sequence[Any],
    *,
    pad_values: Mapping[str, int | float] | None = None,
    default_pad: int | float = 0,
) -> Any:
    """Collate a list of items into a batch, field by field (dicts recursively, tuples position-wise):
    tensors of one shape are stacked, 1-D tensors of different lengths are right-padded into one
    `(batch, longest)` tensor with the field's pad value (`DEFAULT_PAD_VALUES`, overridden by
    `pad_values`, else `default_pad`), and everything else (strings, numbers, lists, PIL images, tensors
    of other shapes, fields some items lack) becomes a list with one entry per item (None when absent).

    For `DataLoader(collate_fn=...)` with other pad values use `functools.partial(collate, pad_values=...)`.
    In DataLoader workers stacked and padded tensors are built directly in shared memory, as torch's
    default collate does, so sending them to the main process copies nothing.

    When items' `_pixel_values` hold compressed JPEGs (`FusionImageProcessor(device="cuda")` shipping
    them), that field becomes one `fusion_fast.vision_device.ShippedBatch`: every JPEG of the batch in
    one flat uint8 buffer with offsets (pinned as one buffer by `pin_memory=True`), beside the tensors of
    the images processed on the CPU. `CudaPrefetcher` turns it into what this function gives for the
    tensors (`ShippedBatch.to_device` does without one).
    """
    if isinstance(batch, PackedRecords) and batch._items is None:
        return PackedBatch(batch._shipped)  # raw records hold no tensors: the pad values play no part
    pads = {**DEFAULT_PAD_VALUES, **(pad_values or {})}
    items = list(batch)
    if items and all(type(item) is dict for item in items):
        if any(ShippedBatch.holds_shipped(item.get(PIXELS_KEY)) for item in items):
            return _collate_shipped(items, pads, default_pad)
    return _collate_items(items, pads, default_pad)


def _collate_shipped(
    items: list[dict[str, Any]], pads: Mapping[str, int | float], default: int | float
) -> Any:
    """`collate` of items whose `_pixel_values` include compressed JPEGs: that field packed, the rest as
    usual, the fields in the order `collate` gives them."""
    column = [item.get(PIXELS_KEY) for item in items]
    rest = [{k: v for k, v in item.items() if k != PIXELS_KEY} for item in items]
    collated = _collate_items(rest, pads, default)
    packed = ShippedBatch.pack(column, shared=in_dataloader_worker())
    keys = dict.fromkeys(itertools.chain.from_iterable(items))  # union, in first-seen order
    return {k: packed if k == PIXELS_KEY else collated[k] for k in keys}


def _collate_items(items: list[Any], pads: Mapping[str, int | float], default: int | float) -> Any:
    if items and type(items[0]) is dict:
        collated = collate_records(items)  # `_collate`'s rules in Rust, for JSON-like items (raw records)
        if collated is not None:
            return collated
    return _collate(items, None, pads, default)


#: Values `collate` keeps as they are, checked first because most fields of raw records are these.
_LEAVES = (str, bytes, int, float, list, type(None))


# `_collate` is where the collate rules are stated. Rust has a fast path for items made only of JSON
# values (`collate_records`, and `Shipped.decode(collated=True)` building the batch from shipped bytes):
# tests/test_shipping.py runs both over generated batches and requires them equal.
def _collate(items: list[Any], key: str | None, pads: Mapping[str, int | float], default: int | float) -> Any:
    first = items[0] if items else None
    if isinstance(first, _LEAVES):
        return items
    if isinstance(first, torch.Tensor):
        if all(isinstance(x, torch.Tensor) for x in items):
            return _stack_or_pad(items, pads.get(key, default) if key is not None else default)
        return items
    if isinstance(first, Mapping):
        if all(isinstance(x, dict) or isinstance(x, Mapping) for x in items):
            keys = dict.fromkeys(itertools.chain.from_iterable(items))  # union, in first-seen order
            return {k: _collate([x.get(k) for x in items], k, pads, default) for k in keys}
        return items
    if isinstance(first, tuple) and all(isinstance(x, tuple) and len(x) == len(first) for x in items):
        fields = [_collate(list(column), key, pads, default) for column in zip(*items, strict=True)]
        return type(first)(*fields) if hasattr(first, "_fields") else tuple(fields)
    return items


def _stack_or_pad(tensors: list[torch.Tensor], pad: int | float) -> torch.Tensor | list[torch.Tensor]:
    first = tensors[0]
    if all(t.shape == first.shape for t in tensors):
        return torch.stack(tensors, out=_new_batch_tensor(first, (len(tensors), *first.shape)))
    if all(t.dim() == 1 for t in tensors) and all(t.dtype == first.dtype for t in tensors):
        out = _new_batch_tensor(first, (len(tensors), max(len(t) for t in tensors)))
        if out is None:
            out = first.new_empty((len(tensors), max(len(t) for t in tensors)))
        out.fill_(pad)
        for row, t in zip(out, tensors, strict=True):
            row[: len(t)] = t
        return out
    return tensors


def _new_batch_tensor(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """In a DataLoader worker, an uninitialised tensor of `shape` in shared memory; else None."""
    if not in_dataloader_worker() or like.device.type != "cpu":
        return None
    numel = 1
    for s in shape:
        numel *= s
    storage = like._typed_storage()._new_shared(numel, device=like.device)
    return like.new(storage).resize_(shape)
