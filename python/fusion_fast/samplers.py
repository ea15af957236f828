"""Samplers for mixtures: deterministic, resumable, vectorised with numpy.

- `DistributedMixtureSampler`: `torch.utils.data.DistributedSampler`'s sharding (padding, `drop_last`) with a
  per-epoch shuffle drawn from (seed, epoch), and `state_dict` / `load_state_dict` to resume mid-epoch.
- `LengthGroupedSampler`: FUSION's / LLaVA's `group_by_modality_length` ordering (see
  `length_grouped_order`), seeded, so that every rank computes the same order without HF Trainer.

They subclass `torch.utils.data.Sampler` when torch is installed; numpy is all they need otherwise.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterator, Mapping, Sized
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from . import _core
from .distributed import worker_config

if TYPE_CHECKING:
    from torch.utils.data import Sampler as _SamplerBase
else:
    try:
        from torch.utils.data import Sampler as _SamplerBase
    except ImportError:  # torch is optional: keep the same interface without it
        _T = TypeVar("_T")

        class _SamplerBase(Generic[_T]):
            pass


#: Sample positions handed out per `tolist()` call while iterating.
_YIELD_CHUNK = 8192


def epoch_rng(kind: str, seed: int, epoch: int) -> np.random.Generator:
    """The random generator of one (sampler kind, seed, epoch): PCG64 seeded with the first 16 bytes of
    `blake2b(b"fusion-fast/sampler/v1\\0{kind}\\0{seed}\\0{epoch}")`, the same in every process."""
    material = b"\0".join([b"fusion-fast/sampler/v1", kind.encode(), str(seed).encode(), str(epoch).encode()])
    entropy = int.from_bytes(hashlib.blake2b(material, digest_size=16).digest(), "little")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def permutation(rng: np.random.Generator, n: int) -> np.ndarray:
    """`rng.permutation(n)`: the same int64 array, leaving `rng` in the same state, drawn in Rust with
    the memory reads of numpy's swaps overlapped (rust/shuffle.rs; for 10M, 0.20 s against numpy's
    0.54 s here). numpy draws it when `rng` is not PCG64, when n reaches 2**32, or if this numpy's
    shuffle turns out to draw differently (checked once, on a small permutation)."""
    state = rng.bit_generator.state
    if state.get("bit_generator") != "PCG64" or not 0 <= n < 2**32 or not _shuffle_matches_numpy():
        return rng.permutation(n)
    out, rng.bit_generator.state = _drawn_in_rust(state, n)
    return out


def _drawn_in_rust(state: Mapping[str, Any], n: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The permutation of n that numpy's PCG64 in `state` draws, and its state after."""
    out = np.arange(n, dtype=np.int64)
    pcg = state["state"]
    after, has_uint32, uinteger = _core.numpy_shuffle_into(
        pcg["state"], pcg["inc"], bool(state["has_uint32"]), state["uinteger"], out
    )
    return out, {
        "bit_generator": "PCG64",
        "state": {"state": after, "inc": pcg["inc"]},
        "has_uint32": int(has_uint32),
        "uinteger": uinteger,
    }


@functools.cache
def _shuffle_matches_numpy() -> bool:
    """Whether the Rust shuffle draws as this numpy's does: the same order and state after."""
    rng = np.random.Generator(np.random.PCG64(20261126))
    rng.integers(2**32, dtype=np.uint32)  # leaves a buffered 32-bit half, drawn first
    ours, after = _drawn_in_rust(rng.bit_generator.state, 1000)
    return bool(np.array_equal(ours, rng.permutation(1000))) and after == rng.bit_generator.state


def _distributed_defaults(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """World size and rank from `torch.distributed` when it is initialised, else 1 and 0."""
    if num_replicas is None or rank is None:
        where = worker_config()
        num_replicas = where.world_size if num_replicas is None else num_replicas
        rank = where.rank if rank is None else rank
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, not {num_replicas}")
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
    return num_replicas, rank


class _ResumableSampler(_SamplerBase[int]):
    """Shared epoch and resume logic: subclasses give `_order()`, this rank's positions for the epoch."""

    _kind = "sampler"

    def __init__(self, seed: int) -> None:
        super().__init__()
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an integer, not {seed!r}")
        self.seed = int(seed)
        self.epoch = 0
        self._yielded = 0
        self._resume_at = 0

    def _order(self) -> np.ndarray:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields. A resume point loaded with
        `load_state_dict` survives setting the same epoch again."""
        if epoch != self.epoch:
            self._resume_at = 0
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        start, self._resume_at = self._resume_at, 0
        self._yielded = start
        for lo in range(start, len(order), _YIELD_CHUNK):
            for i in order[lo : lo + _YIELD_CHUNK].tolist():
                self._yielded += 1
                yield i

    def state_dict(self) -> dict[str, Any]:
        """Where iteration stands: the epoch and how many positions this rank has yielded in it."""
        return {"seed": self.seed, "epoch": self.epoch, "yielded": self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration continue exactly after the last position `state` counted."""
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this sampler has seed {self.seed}")
        yielded = int(state["yielded"])
        if yielded < 0:
            raise ValueError(f"cannot resume at a negative position ({yielded})")
        self.epoch = int(state["epoch"])
        self._resume_at = yielded
        self._yielded = yielded

    def order(self, epoch: int | None = None) -> np.ndarray:
        """This rank's whole order for `epoch` (default: the current one) as an int64 array."""
        if epoch is None:
            return self._order()
        saved, self.epoch = self.epoch, int(epoch)
        try:
            return self._order()
        finally:
            self.epoch = saved


class DistributedMixtureSampler(_ResumableSampler):
    """Shards a dataset of `data_or_len` samples over ranks like `torch.utils.data.DistributedSampler`:
    the (shuffled) positions are padded by wrapping around to a multiple of `num_replicas` (or, with
    `drop_last`, cut to one) and rank r takes every `num_replicas`-th from r. The shuffle is
    `epoch_rng("distributed", seed, epoch).permutation(n)`, identical on every rank. `num_replicas` and
    `rank` default to `torch.distributed`'s when it is initialised, else 1 and 0."""

    _kind = "distributed"

    def __init__(
        self,
        data_or_len: Sized | int,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(seed)
        n = data_or_len if isinstance(data_or_len, (int, np.integer)) else len(data_or_len)
        if n < 0:
            raise ValueError(f"a dataset cannot have {n} samples")
        self.total = int(n)
        self.num_replicas, self.rank = _distributed_defaults(num_replicas, rank)
        self.shuffle = shuffle
        self.drop_last = drop_last
        if drop_last and self.total % self.num_replicas:
            self.num_samples = math.ceil((self.total - self.num_replicas) / self.num_replicas)
        else:
            self.num_samples = math.ceil(self.total / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def __len__(self) -> int:
        return self.num_samples

    def _order(self) -> np.ndarray:
        n = self.total
        if self.shuffle:
            positions = permutation(epoch_rng(self._kind, self.seed, self.epoch), n)
        else:
            positions = np.arange(n, dtype=np.int64)
        positions = _pad_or_cut(positions, self.total_size)
        return positions[self.rank : self.total_size : self.num_replicas]


class LengthGroupedSampler(_ResumableSampler):
    """FUSION's length-grouped order (`group_by_modality_length`), deterministic from (seed, epoch).

    `lengths`: FUSION's `modality_lengths` (positive: has an image, otherwise text-only) when
    `group_by_modality`, else its `lengths`. Without `rank` it yields the whole order, for HF Trainer to
    shard. With `rank` it yields that rank's share, as HF Trainer + accelerate hand it out: the order is
    padded by wrapping around to a multiple of `world_size * batch_size` and rank r takes the r-th
    `batch_size` slice of every megabatch, so every rank yields the same number of samples.
    """

    _kind = "length-grouped"

    def __init__(
        self,
        lengths: Any,
        *,
        batch_size: int,
        world_size: int = 1,
        group_by_modality: bool = True,
        seed: int = 0,
        rank: int | None = None,
    ) -> None:
        super().__init__(seed)
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size and world_size must be >= 1 (got {batch_size}, {world_size})")
        if rank is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.ndim != 1:
            raise ValueError("lengths must be one-dimensional")
        self.batch_size = batch_size
        self.world_size = world_size
        self.group_by_modality = group_by_modality
        self.rank = rank

    def __len__(self) -> int:
        if self.rank is None:
            return len(self.lengths)
        megabatch = self.world_size * self.batch_size
        return math.ceil(len(self.lengths) / megabatch) * self.batch_size

    def _order(self) -> np.ndarray:
        order = length_grouped_order(
            self.lengths,
            batch_size=self.batch_size,
            world_size=self.world_size,
            group_by_modality=self.group_by_modality,
            rng=epoch_rng(self._kind, self.seed, self.epoch),
        )
        if self.rank is None:
            return order
        megabatch = self.world_size * self.batch_size
        padded = _pad_or_cut(order, math.ceil(len(order) / megabatch) * megabatch)
        return padded.reshape(-1, self.world_size, self.batch_size)[:, self.rank].ravel()


def length_grouped_order(
    lengths: np.ndarray,
    *,
    batch_size: int,
    world_size: int = 1,
    group_by_modality: bool = True,
    rng: np.random.Generator,
) -> np.ndarray:
    """FUSION's `get_modality_length_grouped_indices` (or, without `group_by_modality`,
    `get_length_grouped_indices`), vectorised, drawing from `rng` in this order: the permutation of the
    image samples (`lengths > 0`), of the others, then of the megabatches. A single modality (or
    `group_by_modality=False`) draws one permutation of everything. Sorting and chunk balancing use
    |length|; zero lengths count as text-only."""
    lengths = np.asarray(lengths, dtype=np.int64)
    megabatch = world_size * batch_size
    size = np.abs(lengths)
    image = lengths > 0
    n_image = int(image.sum())
    if not group_by_modality or n_image in (0, len(lengths)):
        return _grouped(permutation(rng, len(lengths)), size, megabatch, world_size)
    image_ids = np.flatnonzero(image)
    text_ids = np.flatnonzero(~image)
    image_perm = permutation(rng, len(image_ids))
    image_order = image_ids[_grouped(image_perm, size[image_ids], megabatch, world_size)]
    text_order = text_ids[_grouped(permutation(rng, len(text_ids)), size[text_ids], megabatch, world_size)]
    # Each kind's last megabatch (even when full) goes to the end, merged and sorted by position.
    image_cut = (math.ceil(len(image_order) / megabatch) - 1) * megabatch
    text_cut = (math.ceil(len(text_order) / megabatch) - 1) * megabatch
    body = np.concatenate([image_order[:image_cut], text_order[:text_cut]]).reshape(-1, megabatch)
    body = body[permutation(rng, len(body))]
    last = np.sort(np.concatenate([image_order[image_cut:], text_order[text_cut:]]))
    return np.concatenate([body.ravel(), last])


def _grouped(perm: np.ndarray, size: np.ndarray, megabatch: int, chunks: int) -> np.ndarray:
    """FUSION's `get_length_grouped_indices` given its permutation: cut `perm` into megabatches, sort each
    by size (longest first, ties in permutation order) and split it with `split_to_even_chunks` (a last,
    uneven megabatch is dealt round-robin, as FUSION does). In Rust, megabatches in parallel."""
    out = np.empty(len(perm), dtype=np.int64)
    _core.length_grouped_into(
        np.ascontiguousarray(perm, dtype=np.int64),
        np.ascontiguousarray(size, dtype=np.int64),
        megabatch,
        chunks,
        out,
    )
    return out


def _pad_or_cut(positions: np.ndarray, size: int) -> np.ndarray:
    """`positions` cut to `size`, or padded to it by wrapping around (as DistributedSampler pads)."""
    if size <= len(positions):
        return positions[:size]
    if not len(positions):
        raise ValueError("cannot pad an empty order")
    reps = math.ceil(size / len(positions))
    return np.tile(positions, reps)[:size]
