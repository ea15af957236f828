"""Samplers: DistributedMixtureSampler against torch's DistributedSampler semantics, exact resume, and
LengthGroupedSampler against a line-by-line port of FUSION's `group_by_modality_length` code."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_fast.samplers import (
    DistributedMixtureSampler,
    LengthGroupedSampler,
    _drawn_in_rust,
    _shuffle_matches_numpy,
    epoch_rng,
    length_grouped_order,
    permutation,
)

# -- a port of FUSION's llava_trainer.py code, with torch.randperm replaced by the same numpy draws ---------


def split_to_even_chunks(indices: list[int], lengths: Any, num_chunks: int) -> list[list[int]]:
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    num_indices_per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    chunks_lengths: list[float] = [0 for _ in range(num_chunks)]
    for index in indices:
        shortest_chunk = chunks_lengths.index(min(chunks_lengths))
        chunks[shortest_chunk].append(index)
        chunks_lengths[shortest_chunk] += lengths[index]
        if len(chunks[shortest_chunk]) == num_indices_per_chunk:
            chunks_lengths[shortest_chunk] = float("inf")
    return chunks


def get_length_grouped_indices(
    lengths: Any, batch_size: int, world_size: int, rng: np.random.Generator
) -> list[int]:
    indices = rng.permutation(len(lengths)).tolist()
    megabatch_size = world_size * batch_size
    megabatches = [indices[i : i + megabatch_size] for i in range(0, len(lengths), megabatch_size)]
    megabatches = [sorted(megabatch, key=lambda i: lengths[i], reverse=True) for megabatch in megabatches]
    split = [split_to_even_chunks(megabatch, lengths, world_size) for megabatch in megabatches]
    return [i for megabatch in split for batch in megabatch for i in batch]


def get_modality_length_grouped_indices(
    lengths: list[int], batch_size: int, world_size: int, rng: np.random.Generator
) -> list[int]:
    # FUSION asserts there is no zero length and sorts a text-only stage by signed length; ours counts zero
    # as text-only and always uses |length| (docs/mixtures.md).
    if all(l > 0 for l in lengths) or all(l <= 0 for l in lengths):  # noqa: E741
        return get_length_grouped_indices([abs(l) for l in lengths], batch_size, world_size, rng)  # noqa: E741
    mm_indices, mm_lengths = zip(*[(i, l) for i, l in enumerate(lengths) if l > 0], strict=True)  # noqa: E741
    lang_indices, lang_lengths = zip(*[(i, -l) for i, l in enumerate(lengths) if l <= 0], strict=True)  # noqa: E741
    mm_shuffle = [mm_indices[i] for i in get_length_grouped_indices(mm_lengths, batch_size, world_size, rng)]
    lang_shuffle = [
        lang_indices[i] for i in get_length_grouped_indices(lang_lengths, batch_size, world_size, rng)
    ]
    megabatch_size = world_size * batch_size
    mm_megabatches = [mm_shuffle[i : i + megabatch_size] for i in range(0, len(mm_shuffle), megabatch_size)]
    lang_megabatches = [
        lang_shuffle[i : i + megabatch_size] for i in range(0, len(lang_shuffle), megabatch_size)
    ]
    last_mm = mm_megabatches[-1]
    last_lang = lang_megabatches[-1]
    additional_batch = last_mm + last_lang
    megabatches = mm_megabatches[:-1] + lang_megabatches[:-1]
    megabatch_indices = rng.permutation(len(megabatches))
    megabatches = [megabatches[i] for i in megabatch_indices]
    if len(additional_batch) > 0:
        megabatches.append(sorted(additional_batch))
    return [i for megabatch in megabatches for i in megabatch]


def random_lengths(n: int, seed: int, image_share: float = 0.6, zeros: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    words = rng.integers(1, 60, n)  # small range: many ties, which exercise the tie rules
    words[rng.random(n) < zeros] = 0
    return np.where(rng.random(n) < image_share, words, -words)


# -- LengthGroupedSampler ------------------------------------------------------------------------------------

PORT_CASES = [
    # n, batch_size, world_size, image share, zero share
    (1000, 4, 2, 0.6, 0.0),
    (1003, 3, 4, 0.7, 0.05),
    (777, 8, 1, 0.5, 0.0),
    (640, 4, 8, 0.5, 0.0),  # both kinds end on a full megabatch
    (500, 5, 3, 1.0, 0.0),  # images only
    (500, 5, 3, 0.0, 0.1),  # text only, with zeros
    (10, 4, 4, 0.5, 0.0),  # fewer samples than one megabatch
    (2000, 1, 16, 0.3, 0.0),
    (1, 2, 2, 1.0, 0.0),
]


@pytest.mark.parametrize(("n", "batch_size", "world_size", "image_share", "zeros"), PORT_CASES)
def test_order_equals_fusion_port(n, batch_size, world_size, image_share, zeros):
    for seed in range(3):
        lengths = random_lengths(n, seed, image_share, zeros)
        ours = length_grouped_order(
            lengths, batch_size=batch_size, world_size=world_size, rng=np.random.default_rng(seed)
        )
        port = get_modality_length_grouped_indices(
            lengths.tolist(), batch_size, world_size, np.random.default_rng(seed)
        )
        assert ours.tolist() == port
        plain = length_grouped_order(
            lengths,
            batch_size=batch_size,
            world_size=world_size,
            group_by_modality=False,
            rng=np.random.default_rng(seed),
        )
        assert plain.tolist() == get_length_grouped_indices(
            np.abs(lengths).tolist(), batch_size, world_size, np.random.default_rng(seed)
        )


def test_sampler_uses_the_epoch_rng_and_changes_per_epoch():
    lengths = random_lengths(3000, 1)
    sampler = LengthGroupedSampler(lengths, batch_size=4, world_size=2, seed=11)
    first = list(sampler)
    expected = get_modality_length_grouped_indices(lengths.tolist(), 4, 2, epoch_rng("length-grouped", 11, 0))
    assert first == expected and len(sampler) == 3000
    assert list(LengthGroupedSampler(lengths.tolist(), batch_size=4, world_size=2, seed=11)) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == list(range(3000))
    assert list(LengthGroupedSampler(lengths, batch_size=4, world_size=2, seed=12)) != first
    assert sampler.order(0).tolist() == first and sampler.epoch == 1


def test_structure_of_the_order():
    n, batch_size, world = 5000, 8, 4
    megabatch = batch_size * world
    lengths = random_lengths(n, 3, 0.65)
    order = LengthGroupedSampler(lengths, batch_size=batch_size, world_size=world, seed=5).order()
    assert sorted(order.tolist()) == list(range(n))
    image = lengths > 0
    n_image, n_text = int(image.sum()), int((~image).sum())
    body = (math.ceil(n_image / megabatch) - 1 + math.ceil(n_text / megabatch) - 1) * megabatch
    size = np.abs(lengths)
    kinds = []
    for start in range(0, body, megabatch):
        block = order[start : start + megabatch]
        assert len(set(image[block].tolist())) == 1  # one modality per megabatch
        kinds.append(bool(image[block[0]]))
        for chunk in block.reshape(world, batch_size):
            assert (np.diff(size[chunk]) <= 0).all()  # each rank's batch: longest first
    assert 0 < sum(kinds) < len(kinds) and kinds != sorted(kinds)  # both kinds, shuffled together
    tail = order[body:]
    assert tail.tolist() == sorted(tail.tolist()) and len(set(image[tail].tolist())) == 2


@pytest.mark.parametrize(("n", "batch_size", "world"), [(5000, 8, 4), (1000, 4, 3), (7, 2, 4), (64, 4, 4)])
def test_rank_chunks(n, batch_size, world):
    lengths = random_lengths(n, 4)
    whole = LengthGroupedSampler(lengths, batch_size=batch_size, world_size=world, seed=2).order()
    per_rank = [
        list(LengthGroupedSampler(lengths, batch_size=batch_size, world_size=world, seed=2, rank=r))
        for r in range(world)
    ]
    megabatch = batch_size * world
    expected_len = math.ceil(n / megabatch) * batch_size
    assert all(len(p) == expected_len for p in per_rank)
    assert len(LengthGroupedSampler(lengths, batch_size=batch_size, world_size=world, rank=1)) == expected_len
    padded = np.concatenate([whole, np.tile(whole, 2)])[: expected_len * world]
    for start in range(0, len(padded), megabatch):
        for r in range(world):
            k = start // megabatch * batch_size
            assert (
                per_rank[r][k : k + batch_size]
                == padded[start + r * batch_size : start + (r + 1) * batch_size].tolist()
            )
    assert set().union(*map(set, per_rank)) == set(range(n))


def test_no_crash_on_one_modality_zero_lengths_or_nothing():
    for lengths in ([5] * 10, [-5] * 10, [0] * 10, [0, 3, 0, -2, 7], [], [0]):
        order = LengthGroupedSampler(lengths, batch_size=2, world_size=2).order()
        assert sorted(order.tolist()) == list(range(len(lengths)))
    assert list(LengthGroupedSampler([], batch_size=2, world_size=2, rank=0)) == []
    assert len(LengthGroupedSampler([], batch_size=2, world_size=2, rank=0)) == 0


@pytest.mark.parametrize("scale", [5000, 2**33])  # sizes past 16 bits, and past 32 bits (wide totals)
def test_large_lengths_and_big_megabatches(scale):
    lengths = random_lengths(3000, 8) * scale
    ours = length_grouped_order(lengths, batch_size=64, world_size=8, rng=np.random.default_rng(1))
    assert ours.tolist() == get_modality_length_grouped_indices(
        lengths.tolist(), 64, 8, np.random.default_rng(1)
    )


def test_huge_lengths_sort_and_balance_exactly():
    # Sizes compare as magnitudes and chunk totals cannot overflow: no length is too large.
    for lengths, world_size in (([2**62, 1, 2, 3], 1), ([2**58, 1, 2, 3], 2), ([2**63 - 1] * 4 + [5, -7], 2)):
        rng = np.random.default_rng(3)
        ours = length_grouped_order(lengths, batch_size=2, world_size=world_size, rng=rng)
        assert ours.tolist() == get_modality_length_grouped_indices(
            lengths, 2, world_size, np.random.default_rng(3)
        )


def test_length_grouped_argument_errors():
    with pytest.raises(ValueError):
        LengthGroupedSampler([1, 2], batch_size=0)
    with pytest.raises(ValueError):
        LengthGroupedSampler([1, 2], batch_size=2, world_size=2, rank=2)
    with pytest.raises(ValueError):
        LengthGroupedSampler([[1, 2]], batch_size=2)
    with pytest.raises(TypeError):
        LengthGroupedSampler([1, 2], batch_size=2, seed="x")  # type: ignore[arg-type]


# -- DistributedMixtureSampler -------------------------------------------------------------------------------


@pytest.mark.parametrize("drop_last", [False, True])
def test_unshuffled_shards_equal_torch(drop_last):
    torch_data = pytest.importorskip("torch.utils.data")
    for n in (1, 5, 16, 17, 23):
        for replicas in (1, 2, 3, 4, 8):
            for rank in range(replicas):
                ours = DistributedMixtureSampler(
                    n, num_replicas=replicas, rank=rank, shuffle=False, drop_last=drop_last
                )
                theirs = torch_data.DistributedSampler(
                    range(n), num_replicas=replicas, rank=rank, shuffle=False, drop_last=drop_last
                )
                assert list(ours) == list(theirs) and len(ours) == len(theirs), (n, replicas, rank)


@pytest.mark.parametrize(
    ("n", "replicas", "drop_last"),
    [(100, 4, False), (103, 4, False), (103, 4, True), (5, 8, False), (5, 8, True), (1000, 3, True)],
)
def test_shuffled_shards_are_disjoint_and_cover(n, replicas, drop_last):
    shards = [
        list(DistributedMixtureSampler(range(n), num_replicas=replicas, rank=r, seed=3, drop_last=drop_last))
        for r in range(replicas)
    ]
    sizes = {len(s) for s in shards}
    assert len(sizes) == 1
    interleaved = [shards[r][k] for k in range(sizes.pop()) for r in range(replicas)]
    perm = epoch_rng("distributed", 3, 0).permutation(n).tolist()
    if drop_last:
        assert len(set(interleaved)) == len(interleaved) == n // replicas * replicas
        assert interleaved == perm[: len(interleaved)]
    else:
        assert set(interleaved) == set(range(n)) and len(interleaved) == math.ceil(n / replicas) * replicas
        assert interleaved == (perm * math.ceil(len(interleaved) / n))[: len(interleaved)]
        if n % replicas == 0:
            assert len(set(interleaved)) == n  # no padding: disjoint shards


def test_epochs_and_seeds():
    sampler = DistributedMixtureSampler(50, num_replicas=2, rank=1, seed=4)
    first = list(sampler)
    assert list(sampler) == first == list(DistributedMixtureSampler(50, num_replicas=2, rank=1, seed=4))
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(DistributedMixtureSampler(50, num_replicas=2, rank=1, seed=5)) != first


@pytest.mark.parametrize("sampler_kind", ["distributed", "length-grouped"])
def test_resume_continues_at_exactly_the_next_sample(sampler_kind):
    def make() -> Any:
        if sampler_kind == "distributed":
            return DistributedMixtureSampler(30_000, num_replicas=3, rank=2, seed=9)
        return LengthGroupedSampler(random_lengths(30_000, 2), batch_size=4, world_size=3, rank=2, seed=9)

    for epoch in (0, 3):
        reference = make()
        reference.set_epoch(epoch)
        full = list(reference)
        for k in (0, 1, 8191, 8192, 8193, len(full) - 1, len(full)):
            sampler = make()
            sampler.set_epoch(epoch)
            it = iter(sampler)
            head = [next(it) for _ in range(k)]
            state = json.loads(json.dumps(sampler.state_dict()))
            assert state["yielded"] == k and state["epoch"] == epoch and head == full[:k]
            resumed = make()
            resumed.load_state_dict(state)
            resumed.set_epoch(epoch)  # a training loop sets the epoch again: the position survives
            assert list(resumed) == full[k:]
            resumed.set_epoch(epoch + 1)  # the next epoch starts from its beginning
            nxt = make()
            nxt.set_epoch(epoch + 1)
            assert list(resumed) == list(nxt)


def test_resume_errors():
    sampler = DistributedMixtureSampler(10, num_replicas=1, rank=0, seed=1)
    with pytest.raises(ValueError, match="seed"):
        sampler.load_state_dict({"seed": 2, "epoch": 0, "yielded": 3})
    with pytest.raises(ValueError, match="negative"):
        sampler.load_state_dict({"seed": 1, "epoch": 0, "yielded": -1})


def test_distributed_argument_errors_and_defaults():
    with pytest.raises(ValueError):
        DistributedMixtureSampler(10, num_replicas=2, rank=2)
    with pytest.raises(ValueError):
        DistributedMixtureSampler(10, num_replicas=0, rank=0)
    sampler = DistributedMixtureSampler(10)
    assert (sampler.num_replicas, sampler.rank) == (1, 0) and sorted(sampler) == list(range(10))
    assert list(DistributedMixtureSampler(0, num_replicas=2, rank=1)) == []


def test_rank_and_world_from_torch_distributed(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        sampler = DistributedMixtureSampler(7, num_replicas=None, rank=None)
        assert (sampler.num_replicas, sampler.rank) == (1, 0) and len(sampler) == 7
    finally:
        dist.destroy_process_group()


def test_with_a_dataloader():
    torch_data = pytest.importorskip("torch.utils.data")
    lengths = random_lengths(100, 0)
    sampler = LengthGroupedSampler(lengths, batch_size=4, world_size=1, seed=1)
    assert isinstance(sampler, torch_data.Sampler)
    loader = torch_data.DataLoader(list(range(100)), batch_size=4, sampler=sampler)
    assert [int(i) for batch in loader for i in batch] == sampler.order().tolist()
    dist_sampler = DistributedMixtureSampler(100, num_replicas=2, rank=0)
    assert isinstance(dist_sampler, torch_data.Sampler)
    assert len(list(torch_data.DataLoader(list(range(100)), batch_size=5, sampler=dist_sampler))) == 10


@pytest.mark.filterwarnings("ignore:.set_vital. is deprecated")
@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_resume(workers):
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    data = list(range(200))

    def loader() -> Any:
        sampler = DistributedMixtureSampler(200, num_replicas=2, rank=1, seed=3)
        return stateful.StatefulDataLoader(data, batch_size=4, sampler=sampler, num_workers=workers)

    full = [int(i) for batch in loader() for i in batch]
    seen = []
    first = loader()
    for step, batch in enumerate(first):
        seen += [int(i) for i in batch]
        if step == 6:
            state = first.state_dict()
            break
    resumed = loader()
    resumed.load_state_dict(state)
    assert len(seen) == 28 and seen + [int(i) for batch in resumed for i in batch] == full


def test_works_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import fusion_fast\n"
        "from fusion_fast import LengthGroupedSampler, DistributedMixtureSampler\n"
        "s = LengthGroupedSampler([3, -2, 5, -1, 4, 0], batch_size=2, world_size=1, seed=1)\n"
        "d = DistributedMixtureSampler(6, num_replicas=2, rank=0)\n"
        "print(sorted(s), sorted(d) == sorted(set(d)), len(d), type(s).__mro__[-2].__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[0,", "1,", "2,", "3,", "4,", "5]", "True", "3", "Generic"]


def test_importing_fusion_fast_does_not_import_torch():
    code = "import sys, fusion_fast; fusion_fast.Mixture; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


# -- permutation: numpy's, drawn in Rust ---------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.one_of(st.integers(0, 300), st.integers(300, 200_000)),
    seed=st.integers(0, 2**64 - 1),
    drawn_before=st.integers(0, 3),
)
def test_permutation_equals_numpys_and_leaves_the_generator_where_numpy_does(n, seed, drawn_before):
    ours, theirs = np.random.default_rng(seed), np.random.default_rng(seed)
    for rng in (ours, theirs):  # an odd count leaves a buffered 32-bit half, which numpy draws first
        rng.integers(2**32, size=drawn_before, dtype=np.uint32)
    assert np.array_equal(permutation(ours, n), theirs.permutation(n))
    assert ours.bit_generator.state == theirs.bit_generator.state
    assert ours.integers(2**63) == theirs.integers(2**63)


def test_the_rust_shuffle_is_the_one_in_use_and_draws_as_numpy():
    """`permutation` falls back to numpy when the Rust shuffle disagrees: check it agrees here, so the
    tests above exercise the Rust path, and compare it directly at a size past every block edge."""
    assert _shuffle_matches_numpy()
    rng = np.random.default_rng(99)
    drawn, after = _drawn_in_rust(rng.bit_generator.state, 1_000_003)
    assert np.array_equal(drawn, rng.permutation(1_000_003))
    assert after == rng.bit_generator.state


def test_permutation_of_other_generators_is_numpys():
    ours, theirs = (np.random.Generator(np.random.Philox(7)) for _ in range(2))
    assert np.array_equal(permutation(ours, 1000), theirs.permutation(1000))
    assert np.array_equal(ours.integers(2**63, size=4), theirs.integers(2**63, size=4))


def test_sampler_orders_are_numpy_permutations_at_full_scale():
    """The samplers' documented order, at a size where Rust's prefetching swaps matter."""
    n = 3_000_000
    sampler = DistributedMixtureSampler(n, seed=5)
    assert np.array_equal(sampler.order(), epoch_rng("distributed", 5, 0).permutation(n))
