"""`fusion_fast.torch`: FusionDataset (items, images, errors, pickling, DataLoader workers), collate,
CudaPrefetcher, ensure_indexed without torch.distributed, and the CPU training example."""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
PIL_Image = pytest.importorskip("PIL.Image")

from torch.utils.data import DataLoader, IterableDataset, get_worker_info  # noqa: E402

import fusion_fast as ff  # noqa: E402
from fusion_fast import synth  # noqa: E402
from fusion_fast.benchmarks.memory import private_memory  # noqa: E402
from fusion_fast.errors import RecordError  # noqa: E402
from fusion_fast.mixture import Mixture  # noqa: E402
from fusion_fast.torch import (  # noqa: E402
    SHIP_ENV,
    CudaPrefetcher,
    FusionDataset,
    collate,
    distributed_share,
    ensure_indexed,
    ships_tapes,
    worker_context,
)

REPO = Path(__file__).resolve().parent.parent
PNG = synth.tiny_png()
#: The examples' tiny models gain nothing from intra-op threads, which fight DataLoader workers for 2 cores.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
#: Private memory a DataLoader worker may use beyond a bare process importing torch (at most 100 MB).
WORKER_MEMORY_BOUND = 100 << 20


def conversation(i: int, image_tokens: int = 0) -> list[dict[str, str]]:
    question = "\n".join(["<image>"] * image_tokens + [f"what is in picture {i}?"])
    return [{"from": "human", "value": question}, {"from": "gpt", "value": f"answer number {i} here"}]


def write_data(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    return path


def put_image(path: Path, data: bytes = PNG) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def stage(tmp_path):
    """Two datasets: `alpha` (text-only, single, multi-image and absolute paths; images under the
    global folder) and `beta` (its own `image_folder` in the YAML, `first:20`)."""
    images, own, absolute = tmp_path / "images", tmp_path / "beta-images", tmp_path / "abs"
    alpha = []
    for i in range(40):
        rec = {"id": f"alpha-{i}"}
        kind = i % 4
        if kind == 1:
            rec["image"] = f"alpha/{i}.png"
            put_image(images / rec["image"])
        elif kind == 2:
            rec["image"] = [f"alpha/{i}_{k}.png" for k in range(2)]
            for p in rec["image"]:
                put_image(images / p)
        elif kind == 3:
            rec["image"] = str(absolute / f"{i}.png")
            put_image(Path(rec["image"]))
        rec["conversations"] = conversation(i, 0 if kind == 0 else 2 if kind == 2 else 1)
        alpha.append(rec)
    beta = []
    for i in range(30):
        beta.append({"id": f"beta-{i}", "image": f"b{i}.png", "conversations": conversation(i, 1)})
        put_image(own / f"b{i}.png")
    write_data(tmp_path / "data" / "alpha.json", alpha)
    write_data(tmp_path / "data" / "beta.jsonl", beta)
    yaml = tmp_path / "stage.yaml"
    yaml.write_text(
        "datasets:\n"
        "  - json_path: data/alpha.json\n"
        "  - json_path: data/beta.jsonl\n"
        '    sampling_strategy: "first:20"\n'
        f"    image_folder: {own}\n",
        encoding="utf-8",
    )
    return {"yaml": yaml, "images": images, "own": own, "alpha": alpha, "beta": beta, "root": tmp_path}


def expected_item(stage, i: int) -> dict:
    """What FusionDataset must return for position i of the stage, written out from the rules."""
    if i < 40:
        rec, folder, name, number = dict(stage["alpha"][i]), stage["images"], "alpha", i
    else:
        rec, folder, name, number = dict(stage["beta"][i - 40]), stage["own"], "beta", i - 40
    if "image" in rec:
        image = rec["image"]
        rec["image"] = (
            os.path.join(folder, image)
            if isinstance(image, str)
            else [os.path.join(folder, p) for p in image]
        )
    rec["_source"] = {"dataset": name, "index": number}
    return rec


def test_items_resolve_images_and_name_their_source(stage):
    ds = FusionDataset(stage["yaml"], image_folder=stage["images"], root=stage["root"])
    assert len(ds) == 60
    assert [ds[i] for i in range(len(ds))] == [expected_item(stage, i) for i in range(60)]
    assert ds[3]["image"] == stage["alpha"][3]["image"]  # absolute: kept
    assert ds[-1] == expected_item(stage, 59)
    with pytest.raises(IndexError):
        ds[60]
    with pytest.raises(IndexError):
        ds[-61]


def test_batched_fetch_equals_single_fetches(stage):
    ds = FusionDataset(stage["yaml"], image_folder=stage["images"], root=stage["root"])
    order = [59, 0, 41, 2, 2, -3, 17]
    assert ds.__getitems__(order) == [ds[i] for i in order]


def test_without_image_folder_paths_stay_relative(stage):
    ds = FusionDataset(stage["yaml"], root=stage["root"])
    assert ds[1]["image"] == "alpha/1.png"
    assert ds[45]["image"] == os.path.join(stage["own"], "b5.png")  # the dataset's own folder still applies


def test_lengths_are_the_mixtures(stage):
    ds = FusionDataset(stage["yaml"], root=stage["root"])
    mix = Mixture.from_yaml(stage["yaml"], root=stage["root"])
    np.testing.assert_array_equal(ds.lengths, mix.lengths)
    np.testing.assert_array_equal(ds.modality_lengths, mix.modality_lengths)
    words = [
        sum(len(t["value"].split()) for t in expected_item(stage, i)["conversations"]) for i in range(60)
    ]
    has_image = ["image" in expected_item(stage, i) for i in range(60)]
    assert ds.lengths.tolist() == [w + 128 * h for w, h in zip(words, has_image, strict=True)]
    assert ds.modality_lengths.tolist() == [w if h else -w for w, h in zip(words, has_image, strict=True)]


@pytest.mark.parametrize("name", ["one.json", "one.jsonl"])
def test_single_file_source(tmp_path, name):
    records = [{"id": i, "image": f"{i}.jpg", "conversations": conversation(i, 1)} for i in range(25)]
    path = write_data(tmp_path / name, records)
    ds = FusionDataset(path, image_folder="/data/images")
    idx = ff.open(path)
    assert len(ds) == 25
    assert ds[7] == {**records[7], "image": "/data/images/7.jpg", "_source": {"dataset": "one", "index": 7}}
    np.testing.assert_array_equal(ds.lengths, idx.lengths)
    np.testing.assert_array_equal(ds.modality_lengths, idx.modality_lengths)


def test_mixture_object_source(stage):
    mix = Mixture.from_yaml(stage["yaml"], root=stage["root"])
    ds = FusionDataset(mix, image_folder=stage["images"])
    assert ds.mixture is mix
    assert ds[41] == expected_item(stage, 41)


def test_rejects_other_sources_and_modes(stage):
    with pytest.raises(TypeError, match="Mixture or the path"):
        FusionDataset(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_error"):
        FusionDataset(stage["yaml"], on_error="retry")  # type: ignore[arg-type]


def test_load_images_gives_rgb_and_transform_runs_last(stage):
    gray = stage["images"] / "alpha" / "1.png"
    PIL_Image.new("L", (3, 2), 90).save(gray)
    seen = []

    def transform(item):
        seen.append(item)
        return ("done", item["_source"]["index"])

    ds = FusionDataset(
        stage["yaml"], image_folder=stage["images"], root=stage["root"], load_images=True, transform=transform
    )
    assert ds[1] == ("done", 1)
    one = seen[-1]["_image"]
    assert one.mode == "RGB" and one.size == (3, 2) and one.getpixel((0, 0)) == (90, 90, 90)
    ds[2]
    assert [im.mode for im in seen[-1]["_image"]] == ["RGB", "RGB"]
    assert seen[-1]["image"] == expected_item(stage, 2)["image"]
    ds[0]
    assert "_image" not in seen[-1]  # text-only


# -- bad samples ------------------------------------------------------------------------------------


@pytest.fixture
def bad_file(tmp_path):
    """gamma.json: record 3's image is missing, 5 is not an object, 6 has no conversations, 7's image
    is not an image, 9's image is null; the rest are good."""
    images = tmp_path / "images"
    records = []
    for i in range(10):
        records.append({"id": f"g{i}", "image": f"g/{i}.png", "conversations": conversation(i, 1)})
        if i not in (3, 7, 9):
            put_image(images / f"g/{i}.png")
    put_image(images / "g/7.png", b"not a png at all")
    records[5] = 42
    del records[6]["conversations"]
    records[9]["image"] = None
    return write_data(tmp_path / "gamma.json", records), images


def test_raise_names_dataset_record_id_and_path(bad_file):
    path, images = bad_file
    ds = FusionDataset(path, image_folder=images, load_images=True)
    with pytest.raises(RecordError) as e:
        ds[3]
    message = str(e.value)
    assert "'gamma'" in message and "record 3" in message and "'g3'" in message
    assert str(images / "g/3.png") in message and "not found" in message
    assert e.value.record == 3 and e.value.path == str(path)
    with pytest.raises(RecordError, match=r"record 7 \(id 'g7'\): cannot decode image .*7\.png"):
        ds[7]
    with pytest.raises(RecordError, match=r"record 9 \(id 'g9'\): 'image' is null"):
        ds[9]
    assert ds.skipped == 0


def test_bad_records_raise_without_loading_images(bad_file):
    path, images = bad_file
    ds = FusionDataset(path, image_folder=images)
    assert ds[3]["image"] == str(images / "g/3.png")  # images are not touched without load_images
    with pytest.raises(RecordError, match=r"record 5 \(id None\): the record is not a JSON object"):
        ds[5]
    with pytest.raises(RecordError, match=r"record 6 \(id 'g6'\): 'conversations' is missing"):
        ds.__getitems__([0, 6])


def test_raise_crosses_dataloader_workers(bad_file):
    path, images = bad_file
    ds = FusionDataset(path, image_folder=images, load_images=True)
    loader = DataLoader(ds, batch_size=4, num_workers=1, collate_fn=collate)
    with pytest.raises(RecordError, match="record 3"):
        list(loader)


def test_skip_moves_to_next_good_sample_deterministically(bad_file, caplog):
    path, images = bad_file
    ds = FusionDataset(path, image_folder=images, load_images=True, on_error="skip")
    source = lambda item: item["_source"]["index"]  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="fusion_fast.torch"):
        order = [source(it) for it in ds.__getitems__(list(range(10)))]
        # 3 -> 4; 5, 6, 7 -> 8; 9 -> wraps to 0
        assert order == [0, 1, 2, 4, 4, 8, 8, 8, 8, 0]
        assert ds.skipped == 5  # 3, 5, 6, 7, 9: once each, not again when passed over as replacements
        assert ds.skip_causes == {
            "missing_image": 1,
            "malformed_record": 2,
            "missing_conversations": 1,
            "unreadable_image": 1,
        }
        assert [source(ds[i]) for i in (3, 3, 9)] == [4, 4, 0]  # same answer every time
    warnings = [r.getMessage() for r in caplog.records if r.name == "fusion_fast.torch"]
    assert len(warnings) == 1  # once per run, whatever the causes
    assert "(missing_image)" in warnings[0] and "record 3 (id 'g3')" in warnings[0]


def test_skip_when_everything_is_bad_raises(tmp_path):
    path = write_data(tmp_path / "bad.json", [{"id": 1}, {"id": 2}, 3])
    ds = FusionDataset(path, on_error="skip")
    with pytest.raises(RecordError, match="every one of the 3 samples is bad"):
        ds[1]
    assert ds.skipped == 1


def test_transform_can_reject_samples(tmp_path):
    records = [{"id": i, "conversations": conversation(i)} for i in range(6)]
    path = write_data(tmp_path / "t.json", records)

    def odd_only(item):
        if item["id"] % 2 == 0:
            raise RecordError("even ids are not wanted")
        return item["id"]

    assert [FusionDataset(path, transform=odd_only, on_error="skip")[i] for i in range(6)] == [
        1,
        1,
        3,
        3,
        5,
        5,
    ]
    with pytest.raises(RecordError, match=r"record 2 \(id 2\): rejected by the transform: even ids"):
        FusionDataset(path, transform=odd_only)[2]


# -- pickling and DataLoader workers ----------------------------------------------------------------


def test_pickles_only_the_description(stage, tmp_path):
    big = synth.write_file(tmp_path / "big.jsonl", records=5000, seed=3)
    ds = FusionDataset(tmp_path / "big.jsonl")
    assert len(ds) == big  # opened here
    blob = pickle.dumps(ds)
    assert len(blob) < 1000
    clone = pickle.loads(blob)
    assert clone._mixture is None  # opens lazily, on first access
    assert clone[4321] == ds[4321]
    yaml_ds = FusionDataset(stage["yaml"], image_folder=stage["images"], root=stage["root"])
    yaml_ds[0]
    assert pickle.loads(pickle.dumps(yaml_ds))[59] == expected_item(stage, 59)
    mix_ds = FusionDataset(Mixture.from_yaml(stage["yaml"], root=stage["root"]), image_folder=stage["images"])
    assert len(pickle.dumps(mix_ds)) < 4000
    assert pickle.loads(pickle.dumps(mix_ds))[41] == expected_item(stage, 41)


def worker_view(item):
    """Transform for the worker tests: which process made the item, and from where."""
    return os.getpid(), item["_source"]["dataset"], item["_source"]["index"], item.get("image")


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux smaps")
def test_private_memory_counts_memory_not_the_page_cache_of_mapped_files(tmp_path):
    import mmap

    path = tmp_path / "data.bin"
    with open(path, "wb") as f:
        f.write(os.urandom(32 << 20))
        os.fsync(f.fileno())  # written back: the pages are clean, as a data file's are
    before, before_cached = private_memory(), private_memory(include_page_cache=True)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        for page in range(0, len(mapped), 4096):
            mapped[page]  # map every page into this process
        read_file = private_memory() - before
        read_file_cached = private_memory(include_page_cache=True) - before_cached
    assert read_file < 8 << 20 and read_file_cached > 24 << 20
    anonymous = bytearray(64 << 20)
    anonymous[::4096] = b"\x01" * len(anonymous[::4096])  # dirty every page
    assert private_memory() - before > 56 << 20


def report_private_memory(queue) -> None:
    import fusion_fast.torch  # noqa: F401 - the baseline: what a worker has before any data

    queue.put(private_memory())


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_dataloader_workers(stage, start_method):
    ds = FusionDataset(stage["yaml"], image_folder=stage["images"], root=stage["root"], transform=worker_view)
    len(ds)  # opened in the parent first, as a sampler would
    loader = DataLoader(
        ds,
        batch_size=8,
        num_workers=2,
        collate_fn=list,
        persistent_workers=True,
        multiprocessing_context=start_method,
    )
    items = [item for batch in loader for item in batch]
    expected = [expected_item(stage, i) for i in range(60)]
    assert [(d, i, img) for _, d, i, img in items] == [
        (e["_source"]["dataset"], e["_source"]["index"], e.get("image")) for e in expected
    ]
    workers = {pid for pid, *_ in items}
    assert len(workers) == 2 and os.getpid() not in workers
    used = {pid: private_memory(pid) for pid in workers}  # still alive: persistent_workers
    baseline = 0
    if start_method == "spawn":  # a spawned worker first pays for its own `import torch`
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=report_private_memory, args=(queue,))
        proc.start()
        baseline = queue.get(timeout=120)
        proc.join()
    del loader
    for pid, size in used.items():
        assert size - baseline < WORKER_MEMORY_BOUND, (
            f"worker {pid}: {size >> 20} MiB, baseline {baseline >> 20}"
        )


# -- collate ----------------------------------------------------------------------------------------


def test_collate_pads_stacks_and_lists():
    batch = [
        {
            "input_ids": torch.tensor([1, 2, 3]),
            "labels": torch.tensor([4, 5, 6]),
            "pixels": torch.ones(3, 2, 2),
            "mask": torch.tensor([1, 1, 1]),
            "id": "a",
            "meta": {"n": torch.tensor(1), "tag": "x"},
        },
        {
            "input_ids": torch.tensor([7]),
            "labels": torch.tensor([8]),
            "pixels": torch.zeros(3, 2, 2),
            "mask": torch.tensor([1]),
            "id": "b",
            "meta": {"n": torch.tensor(2), "tag": "y"},
            "extra": [1, 2],
        },
    ]
    out = collate(batch)
    assert out["input_ids"].tolist() == [[1, 2, 3], [7, 0, 0]]
    assert out["labels"].tolist() == [[4, 5, 6], [8, -100, -100]]
    assert out["mask"].tolist() == [[1, 1, 1], [1, 0, 0]]  # default pad 0
    assert (
        out["pixels"].shape == (2, 3, 2, 2) and out["pixels"][0].sum() == 12 and out["pixels"][1].sum() == 0
    )
    assert out["id"] == ["a", "b"]
    assert out["meta"]["n"].tolist() == [1, 2] and out["meta"]["tag"] == ["x", "y"]
    assert out["extra"] == [None, [1, 2]]  # absent from the first item
    assert list(out) == ["input_ids", "labels", "pixels", "mask", "id", "meta", "extra"]


def test_collate_pad_values_other_shapes_and_tuples():
    custom = functools.partial(collate, pad_values={"input_ids": 99}, default_pad=-1)
    out = custom(
        [
            {"input_ids": torch.tensor([1]), "x": torch.tensor([2.0])},
            {"input_ids": torch.tensor([1, 2]), "x": torch.tensor([2.0, 3.0])},
        ]
    )
    assert out["input_ids"].tolist() == [[1, 99], [1, 2]]
    assert out["x"].tolist() == [[2.0, -1.0], [2.0, 3.0]]
    images = [torch.zeros(3, 4, 4), torch.zeros(3, 5, 4)]
    kept = collate([{"img": images[0]}, {"img": images[1]}])["img"]  # different shapes: a list
    assert isinstance(kept, list) and kept[0] is images[0] and kept[1] is images[1]
    pairs = collate([(torch.tensor([1, 2]), "a"), (torch.tensor([3]), "b")])
    assert isinstance(pairs, tuple) and pairs[0].tolist() == [[1, 2], [3, 0]] and pairs[1] == ["a", "b"]
    assert collate([1, 2, 3]) == [1, 2, 3]


json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=3)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abcd"), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values | st.dictionaries(st.sampled_from("abcde"), json_values, max_size=4), max_size=5))
def test_rust_collate_of_json_items_equals_the_python_rules(items):
    """`collate` hands JSON-like batches to Rust (`collate_records`); the Python rules decide the rest."""
    from fusion_fast._core import collate_records
    from fusion_fast.torch.collate import _collate

    by_rules = _collate(items, None, {}, 0)
    assert collate_records(items) == by_rules
    assert collate(items) == by_rules
    spec = collate_as_documented(items)
    assert by_rules == spec and same_key_order(by_rules, spec)


def collate_as_documented(items: list[Any]) -> Any:
    """`collate` of JSON-like items as its docstring defines it, written independently of the code: items
    that are all dicts become a dict over the union of their keys (first-seen order), each field
    collated from the items' values, None where an item lacks the key; anything else becomes the list
    of the items."""
    if items and all(type(x) is dict for x in items):
        keys: list[str] = []
        for x in items:
            keys += [k for k in x if k not in keys]
        return {k: collate_as_documented([x.get(k) for x in items]) for k in keys}
    return list(items)


def same_key_order(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same_key_order(a[k], b[k]) for k in a)
    return True


image_values = (
    st.none()
    | st.sampled_from(["a.png", "/abs/b.png", "", "dir/c d.png"])
    | st.lists(st.sampled_from(["a.png", "/abs/b.png", "x/y.png"]), max_size=3)
)
member_values = {
    "id": st.text(max_size=4) | st.integers(),
    "image": image_values,
    "_source": json_values,
    "meta": json_values,
    "conversations": st.lists(
        st.fixed_dictionaries({"from": st.just("human"), "value": st.text(max_size=5)})
    ),
}
#: A record as its members in order, a key possibly repeated (JSON allows it; the last value wins).
records_as_members = st.lists(
    st.lists(
        st.sampled_from(sorted(member_values)).flatmap(lambda k: st.tuples(st.just(k), member_values[k])),
        max_size=6,
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(records_as_members)
def test_batches_built_from_shipped_bytes_equal_collated_items(tmp_path_factory, records):
    """The batch decoded from shipped bytes (what arrives from a worker) equals `collate` of the decoded
    items, for any key order, missing or repeated keys, an own `_source` key, nested values and images."""
    from fusion_fast import _core

    text = (
        "["
        + ",".join(
            "{" + ",".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in members) + "}"
            for members in records
        )
        + "]"
    )
    path = tmp_path_factory.mktemp("batch") / "b.json"
    path.write_text(text, encoding="utf-8")
    index = ff.open(path)
    sources = _core.ItemSources([index._core, index._core], ["one", "two"], ["/img/", ""])
    n = len(records)
    datasets = np.array([k % 2 for k in range(n)], dtype="<i8").tobytes()
    numbers = np.arange(n, dtype="<i8")[::-1].copy().tobytes()
    shipped = sources.pack(datasets, numbers)
    items = shipped.decode()
    assert items == sources.items(datasets, numbers)
    batch = shipped.decode(collated=True)
    assert batch == collate(items)
    assert list(batch) == list(collate(items))  # same key order
    spec = collate_as_documented(items)
    assert batch == spec and same_key_order(batch, spec)


def test_rust_collate_leaves_tensors_and_tuples_to_python():
    from fusion_fast._core import collate_records

    assert collate_records([{"x": torch.tensor([1])}]) is None
    assert collate_records([{"x": {"y": (1, 2)}}, {"x": {"y": (3, 4)}}]) is None
    assert collate_records([{"a": 1}, torch.tensor(1)]) is None
    assert collate_records([{"a": 1}, 2]) == [{"a": 1}, 2]  # dicts beside leaves stay a list
    assert collate_records([{"a": [1], "b": {"c": None}}, {"b": {"d": "x"}}]) == {
        "a": [[1], None],
        "b": {"c": [None, None], "d": [None, "x"]},
    }
    assert collate([{"a": 1}, 2]) == [{"a": 1}, 2]


def make_tensors(item):
    n = item["_source"]["index"] % 3 + 1
    return {"input_ids": torch.arange(n), "labels": torch.full((n,), 7), "pixels": torch.ones(2, 2) * n}


def tensors_and_id(item):
    return {"id": item["id"], **make_tensors(item)}


def test_collate_in_workers_builds_batches(stage):
    ds = FusionDataset(stage["yaml"], root=stage["root"], transform=make_tensors)
    batches = list(DataLoader(ds, batch_size=4, num_workers=1, collate_fn=collate))
    first = batches[0]
    assert first["input_ids"].tolist() == [[0, 0, 0], [0, 1, 0], [0, 1, 2], [0, 0, 0]]
    assert first["labels"].tolist() == [[7, -100, -100], [7, 7, -100], [7, 7, 7], [7, -100, -100]]
    assert first["pixels"].shape == (4, 2, 2) and first["pixels"][:, 0, 0].tolist() == [1, 2, 3, 1]
    assert sum(len(b["input_ids"]) for b in batches) == 60


def plain_and_arrays(item):
    return {
        "id": item["id"],
        "source": item["_source"],
        "turns": item["conversations"],
        "array": np.full(2, item["_source"]["index"]),
    }


def test_worker_batches_equal_in_process_batches(stage):
    """Whatever the fields hold (JSON values, numpy arrays), batches from workers are the same."""
    ds = FusionDataset(stage["yaml"], root=stage["root"], transform=plain_and_arrays)
    via_workers = list(DataLoader(ds, batch_size=7, num_workers=2, collate_fn=collate))
    in_process = [collate([ds[i] for i in range(lo, min(lo + 7, 60))]) for lo in range(0, 60, 7)]
    assert len(via_workers) == len(in_process) == 9
    for got, want in zip(via_workers, in_process, strict=True):
        assert (
            type(got["id"]) is list and type(got["source"]["dataset"]) is list and type(got["array"]) is list
        )
        assert got["id"] == want["id"] and got["source"] == want["source"] and got["turns"] == want["turns"]
        assert [a.tolist() for a in got["array"]] == [a.tolist() for a in want["array"]]


def add_count(batch):
    """A collate that reads and changes the batch in the worker, after fusion-fast's collate."""
    out = collate(batch)
    out["count"] = len(out["id"])
    return out


@pytest.mark.parametrize("ship", ["json", "tape"])
@pytest.mark.parametrize("worker_queues", [False, True], ids=["torch-context", "worker_context"])
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_raw_records_from_workers_equal_in_process_items(
    stage, start_method, worker_queues, ship, monkeypatch
):
    """Raw records travel from workers as JSON bytes or tapes (PackedRecords): what arrives is the same
    items, as plain lists and dicts, whatever the collate_fn does with them in the worker; with torch's
    own context and with `worker_context`'s queues."""
    monkeypatch.setenv(SHIP_ENV, ship)  # the workers inherit it, forked or spawned
    ds = FusionDataset(stage["yaml"], image_folder=stage["images"], root=stage["root"])
    expected = [expected_item(stage, i) for i in range(60)]
    context = worker_context(start_method) if worker_queues else start_method

    def loader(collate_fn):
        return DataLoader(
            ds, batch_size=7, num_workers=2, collate_fn=collate_fn, multiprocessing_context=context
        )

    batches = list(loader(collate))
    want = [collate(expected[lo : lo + 7]) for lo in range(0, 60, 7)]
    assert all(type(b) is dict for b in batches) and batches == want
    lists = list(loader(list))
    assert all(type(b) is list for b in lists) and [it for b in lists for it in b] == expected
    counted = list(loader(add_count))
    assert [b.pop("count") for b in counted] == [7] * 8 + [4] and counted == want


@pytest.mark.parametrize("ship", ["json", "tape"])
def test_packed_records_behave_as_the_items(stage, ship, monkeypatch):
    from fusion_fast.torch import PackedBatch, PackedRecords
    from fusion_fast.torch.shipping import _pack

    monkeypatch.setenv(SHIP_ENV, ship)
    ds = FusionDataset(stage["yaml"], image_folder=stage["images"], root=stage["root"])
    positions = [3, 45, 2, 59, 2]
    datasets, numbers = ds._locate_good(positions)
    packed = PackedRecords(_pack(ds._item_sources(), datasets, numbers))
    expected = [expected_item(stage, i) for i in positions]
    assert len(packed) == 5
    sent = pickle.loads(pickle.dumps(packed))
    assert type(sent) is list and sent == expected  # untouched: shipped as bytes, decoded on arrival
    batch = collate(packed)
    assert isinstance(batch, PackedBatch)
    assert pickle.loads(pickle.dumps(batch)) == collate(expected)
    assert batch["id"] == [e["id"] for e in expected]  # used in place: decoded there
    batch["id"] = "changed"
    assert pickle.loads(pickle.dumps(batch))["id"] == "changed"  # and what was changed is what is sent
    packed[0]["id"] = "changed too"
    assert pickle.loads(pickle.dumps(packed))[0]["id"] == "changed too"
    assert packed == [{**expected[0], "id": "changed too"}, *expected[1:]]


def test_workers_pack_positions_in_one_call_as_the_general_path_does(stage, bad_file):
    from fusion_fast.torch.shipping import _pack

    ds = FusionDataset(stage["yaml"], image_folder=stage["images"], root=stage["root"])
    n = len(ds)
    for positions in ([0], [3, 45, 2, 59, 2], list(range(n)), [-1, -n, 39, 40], []):
        general = _pack(ds._item_sources(), *ds._locate_good(positions))
        assert ds._pack_positions(positions) == general
    # Out of range, or a bad sample: None, and the general path raises or replaces.
    assert ds._pack_positions([0, n]) is None and ds._pack_positions([-n - 1]) is None
    with pytest.raises(IndexError, match="out of range"):
        ds.__getitems__([0, n])
    path, _ = bad_file
    bad = FusionDataset(path, on_error="skip")
    assert bad._pack_positions([4, 5]) is None and bad._pack_positions([6]) is None
    assert bad._pack_positions([0, 4, 7, 9]) is not None  # image problems are not judged without images
    replaced = _pack(bad._item_sources(), *bad._locate_good([4, 5]))
    assert list(np.frombuffer(replaced.numbers, "<i8")) == [4, 7]  # 5 (and 6) skipped: the next good one is 7


def test_a_data_file_cut_short_after_opening_is_a_clear_error_in_the_worker_path(tmp_path):
    """Workers read records with positional reads: a record past the new end of a truncated data file
    is a StaleIndexError naming the file and the record (reading it from the mapping would crash the
    process with SIGBUS)."""
    from fusion_fast.errors import StaleIndexError

    path = write_data(
        tmp_path / "cut.jsonl", [{"id": f"r{i}", "conversations": conversation(i)} for i in range(20)]
    )
    ds = FusionDataset(path)
    assert ds._pack_positions([0, 19]) is not None
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(StaleIndexError, match="record 19 cannot be read") as raised:
        ds._pack_positions([0, 19])
    assert raised.value.path == str(path)


def dataset_with_record_7_rewritten(path: Path) -> FusionDataset:
    """A JSONL dataset opened (and indexed) before its record 7 was made invalid in place: the record's
    closing brace replaced, same size."""
    write_data(path, [{"id": f"r{i}", "conversations": conversation(i)} for i in range(20)])
    ds = FusionDataset(path)
    assert ds._pack_positions([0, 7]) is not None
    lines = path.read_bytes().split(b"\n")
    lines[7] = lines[7][:-1] + b"]"
    with open(path, "r+b") as f:
        f.write(b"\n".join(lines))
    return ds


def test_a_record_rewritten_after_opening_is_a_clear_error_in_the_main_process(tmp_path, monkeypatch):
    """A record whose bytes were overwritten in place after the worker opened the file (same size, no
    longer JSON) ships as those bytes; decoding it in the main process is a StaleIndexError naming the
    dataset and the record, not a bare ValueError."""
    from fusion_fast.errors import StaleIndexError
    from fusion_fast.torch import PackedBatch, PackedRecords

    monkeypatch.setenv(SHIP_ENV, "json")
    ds = dataset_with_record_7_rewritten(tmp_path / "edit.jsonl")
    assert pickle.loads(pickle.dumps(PackedBatch(ds._pack_positions([0, 6]))))["id"] == ["r0", "r6"]
    payload = ds._pack_positions([0, 7])
    for shipped in (PackedBatch(payload), PackedRecords(payload)):
        with pytest.raises(StaleIndexError, match=r"dataset 'edit', record 7: record bytes changed"):
            pickle.loads(pickle.dumps(shipped))


def test_a_record_rewritten_after_opening_is_a_clear_error_in_a_worker_shipping_tapes(tmp_path, monkeypatch):
    """Shipping tapes, the worker parses the record: the rewritten record is a StaleIndexError there,
    naming the file and the record."""
    from fusion_fast.errors import StaleIndexError

    monkeypatch.setenv(SHIP_ENV, "tape")
    path = tmp_path / "edit.jsonl"
    ds = dataset_with_record_7_rewritten(path)
    assert ds._pack_positions([0, 6]) is not None
    with pytest.raises(StaleIndexError, match="record 7 cannot be read.*no longer the JSON value") as raised:
        ds._pack_positions([0, 7])
    assert raised.value.path == str(path)


def shipped_as_tapes(batch):
    """A collate_fn that reports how the worker packed its batch."""
    return batch._shipped.tape


@pytest.mark.parametrize("ship", ["json", "tape"])
def test_workers_ship_as_the_environment_says(stage, ship, monkeypatch):
    monkeypatch.setenv(SHIP_ENV, ship)
    ds = FusionDataset(stage["yaml"], root=stage["root"])
    flags = list(DataLoader(ds, batch_size=7, num_workers=2, collate_fn=shipped_as_tapes))
    assert flags == [ship == "tape"] * 9


@pytest.mark.parametrize(
    ("v2", "v1_quota", "v1_period", "expected"),
    [
        ("max 100000\n", None, None, None),
        ("250000 100000\n", None, None, 2.5),
        (None, "-1\n", "100000\n", None),
        (None, "400000\n", "100000\n", 4.0),
        (None, None, None, None),
        ("garbage\n", "50000\n", "100000\n", 0.5),
    ],
)
def test_cgroup_cpu_quota_reads_v2_then_v1(tmp_path, monkeypatch, v2, v1_quota, v1_period, expected):
    import fusion_fast.torch.shipping as fft

    files = []
    for name, text in (("cpu.max", v2), ("cpu.cfs_quota_us", v1_quota), ("cpu.cfs_period_us", v1_period)):
        files.append(str(tmp_path / name))
        if text is not None:
            (tmp_path / name).write_text(text)
    monkeypatch.setattr(fft, "CGROUP_CPU_FILES", tuple(files))
    fft.cgroup_cpu_quota.cache_clear()
    try:
        assert fft.cgroup_cpu_quota() == expected
    finally:
        fft.cgroup_cpu_quota.cache_clear()


def test_workers_ship_tapes_where_they_and_the_main_process_have_cpus_of_their_own(monkeypatch):
    import types

    import fusion_fast.torch.shipping as fft

    def ships(
        cpus: int, workers: int | None, local_ranks: str | None = None, quota: float | None = None
    ) -> bool:
        monkeypatch.setattr(fft.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
        monkeypatch.setattr(fft, "cgroup_cpu_quota", lambda: quota)
        info = None if workers is None else types.SimpleNamespace(id=0, num_workers=workers)
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
        if local_ranks is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", local_ranks)
        return ships_tapes()

    monkeypatch.delenv(SHIP_ENV, raising=False)
    assert not ships(2, 2) and not ships(2, 1) and not ships(4, 3)  # the dev machine: JSON
    assert ships(4, 2) and ships(16, 4) and ships(16, 8)
    assert not ships(16, 4, "8") and ships(128, 4, "8") and ships(128, 4, "")  # torchrun ranks share CPUs
    assert not ships(64, 4, quota=2.0) and ships(64, 4, quota=5.5) and not ships(64, 4, quota=4.0)
    monkeypatch.setenv(SHIP_ENV, "json")
    assert not ships(16, 4)
    monkeypatch.setenv(SHIP_ENV, "tape")
    assert ships(2, 2)
    monkeypatch.setenv(SHIP_ENV, "fast")
    with pytest.raises(ValueError, match="FUSION_FAST_SHIP must be 'auto', 'json' or 'tape', not 'fast'"):
        ships_tapes()


def _shipment(stage, monkeypatch, how: str) -> tuple[FusionDataset, Any]:
    """Records 0 and 41 of `stage` packed as a worker ships them with FUSION_FAST_SHIP=`how`."""
    from fusion_fast.torch.shipping import _pack

    ds = FusionDataset(stage["yaml"], root=stage["root"])
    monkeypatch.setenv(SHIP_ENV, how)
    return ds, _pack(ds._item_sources(), *ds._locate_good([0, 41]))


def _parts(packed: Any) -> tuple[bytes, bytes, bytes, bytes, Any, Any]:
    """What `_core.Shipped` is built from, in its order."""
    return packed.data, packed.lengths, packed.datasets, packed.numbers, packed.names, packed.prefixes


def test_damaged_shipments_raise_instead_of_crashing(stage, monkeypatch):
    from fusion_fast import _core
    from fusion_fast.errors import StaleIndexError

    _, packed = _shipment(stage, monkeypatch, "json")
    data, lengths, datasets, numbers, names, prefixes = _parts(packed)
    assert not packed.tape
    for collated in (False, True):

        def decode(*parts: Any, collated: bool = collated) -> Any:
            return _core.Shipped(*parts).decode(collated=collated)

        with pytest.raises(ValueError, match="exceed the shipped bytes"):
            decode(data[:-5], lengths, datasets, numbers, names, prefixes)
        with pytest.raises(ValueError, match="do not add up"):
            decode(data + b" ", lengths, datasets, numbers, names, prefixes)
        with pytest.raises(ValueError, match="same records"):
            decode(data, lengths[:4], datasets, numbers, names, prefixes)
        with pytest.raises(StaleIndexError, match=r"record \d+: record bytes changed since they were"):
            decode(b"[" + data[1:], lengths, datasets, numbers, names, prefixes)
        with pytest.raises(IndexError, match="dataset number 7"):
            decode(data, lengths, (7).to_bytes(8, "little") * 2, numbers, names, prefixes)


def test_damaged_tapes_raise_instead_of_crashing(stage, monkeypatch):
    from fusion_fast import _core

    ds, packed = _shipment(stage, monkeypatch, "tape")
    data, lengths, datasets, numbers, names, prefixes = _parts(packed)
    assert packed.tape
    first = int.from_bytes(lengths[:4], "little")
    as_json = ds._item_sources().pack(datasets, numbers)
    json_data, json_lengths = as_json.data, as_json.lengths
    for collated in (False, True):

        def decode(*parts: Any, collated: bool = collated) -> Any:
            return _core.Shipped(*parts, tape=True).decode(collated=collated)

        from_json = as_json.decode(collated=collated)
        assert decode(data, lengths, datasets, numbers, names, prefixes) == from_json
        with pytest.raises(ValueError, match="shipped batch is malformed"):
            decode(b"\x2a" + data[1:], lengths, datasets, numbers, names, prefixes)  # no such tag
        with pytest.raises(ValueError, match="shipped batch is malformed"):  # a record's tape cut short
            short = (first - 1).to_bytes(4, "little") + (len(data) - first + 1).to_bytes(4, "little")
            decode(data, short, datasets, numbers, names, prefixes)
        with pytest.raises(ValueError, match="shipped batch is malformed"):  # JSON read as a tape
            decode(json_data, json_lengths, datasets, numbers, names, prefixes)


def test_raw_records_skip_and_raise_in_workers(bad_file):
    """Without load_images only the index flags decide: records 5 (not an object) and 6 (no
    conversations) are bad; the image problems of 3, 7 and 9 are not looked at."""
    path, images = bad_file
    skip = FusionDataset(path, image_folder=images, on_error="skip")
    via_workers = list(DataLoader(skip, batch_size=4, num_workers=2, collate_fn=collate))
    assert [i for b in via_workers for i in b["_source"]["index"]] == [0, 1, 2, 3, 4, 7, 7, 7, 8, 9]
    assert [it["_source"]["index"] for it in skip.__getitems__(list(range(10)))] == [
        0, 1, 2, 3, 4, 7, 7, 7, 8, 9
    ]  # fmt: skip
    # 5 and 6 once in the workers and once here: the workers' counts reach this process
    assert skip.skipped == 4 and skip.skip_causes == {"malformed_record": 2, "missing_conversations": 2}
    raising = FusionDataset(path, image_folder=images)
    with pytest.raises(RecordError, match=r"record 5 \(id None\): the record is not a JSON object"):
        list(DataLoader(raising, batch_size=4, num_workers=1, collate_fn=collate))


def test_image_lists_holding_other_values_are_bad_records(tmp_path):
    records = [
        {"id": "ok", "image": ["a.png", "/abs/b.png"], "conversations": conversation(0, 2)},
        {"id": "mixed", "image": ["a.png", 3], "conversations": conversation(1, 2)},
        {"id": "nested", "image": [["a.png"]], "conversations": conversation(2, 1)},
    ]
    ds = FusionDataset(write_data(tmp_path / "imgs.json", records), image_folder="/img")
    assert ds[0]["image"] == ["/img/a.png", "/abs/b.png"]
    for i, name in ((1, "mixed"), (2, "nested")):
        with pytest.raises(RecordError, match=rf"\(id '{name}'\): 'image' is neither a path nor a list"):
            ds[i]


# -- CudaPrefetcher ---------------------------------------------------------------------------------


def test_prefetcher_passes_through_without_cuda():
    batches = [{"x": torch.ones(2)}, {"x": torch.zeros(2)}]
    prefetcher = CudaPrefetcher(batches, device="cpu")
    assert not prefetcher.enabled and len(prefetcher) == 2
    assert all(a is b for a, b in zip(prefetcher, batches, strict=True))
    if not torch.cuda.is_available():
        auto = CudaPrefetcher(batches)
        assert not auto.enabled and auto.device.type == "cpu" and next(iter(auto)) is batches[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prefetcher_copies_nested_batches_to_the_gpu():
    batches = [
        {
            "ids": (torch.arange(6).reshape(2, 3) + k).pin_memory(),
            "meta": {"n": torch.tensor([k]).pin_memory()},
            "pair": ((torch.ones(2) * k).pin_memory(), "tag"),
            "names": ["a", "b"],
        }
        for k in range(5)
    ]
    prefetcher = CudaPrefetcher(batches)
    assert prefetcher.enabled and len(prefetcher) == 5
    seen = 0
    for k, batch in enumerate(prefetcher):
        assert batch["ids"].is_cuda and batch["meta"]["n"].is_cuda and batch["pair"][0].is_cuda
        assert (batch["ids"] * 2).cpu().tolist() == ((torch.arange(6).reshape(2, 3) + k) * 2).tolist()
        assert batch["meta"]["n"].item() == k and batch["pair"][1] == "tag" and batch["names"] == ["a", "b"]
        seen += 1
    assert seen == 5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("pin", [True, False], ids=["pinned", "pageable"])
def test_prefetched_loader_batches_equal_the_cpu_batches(stage, pin):
    """The whole path of a training step: workers collate padded tensors, the DataLoader pins them, and
    CudaPrefetcher hands them out on the GPU, each equal to the batch the CPU path builds. The GPU work
    queued on each batch (and the host's reads of it) race the next batch's copy."""
    ds = FusionDataset(stage["yaml"], root=stage["root"], transform=tensors_and_id)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate, pin_memory=pin)
    expected = list(DataLoader(ds, batch_size=4, num_workers=0, collate_fn=collate))
    seen = 0
    for got, want in zip(CudaPrefetcher(loader), expected, strict=True):
        assert got["input_ids"].is_cuda and got["labels"].is_cuda and got["pixels"].is_cuda
        doubled = {k: (got[k] * 2).cpu() for k in ("input_ids", "labels", "pixels")}
        for k, v in doubled.items():
            assert torch.equal(v, want[k] * 2), k
        assert got["id"] == want["id"] and len(got["id"]) == len(got["input_ids"])
        seen += 1
    assert seen == len(expected) == 15


# -- indexing ---------------------------------------------------------------------------------------


def test_ensure_indexed_without_distributed(stage, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    first = ensure_indexed(stage["yaml"], root=stage["root"])
    assert [Path(i.path).name for i in first] == ["alpha.json", "beta.jsonl"]
    assert all(i.built for i in first)
    again = ensure_indexed([stage["root"] / "data"])
    assert [Path(i.path).name for i in again] == ["alpha.json", "beta.jsonl"] and not any(
        i.built for i in again
    )
    paths = [stage["root"] / "data" / "alpha.json"]
    assert distributed_share(paths) == (paths, None)


# -- the example ------------------------------------------------------------------------------------


def test_minimal_training_example_runs(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "train_minimal.py"),
            "--workdir",
            str(tmp_path),
            "--steps",
            "6",
            "--batch-size",
            "8",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    steps = [line for line in lines if "step" in line]
    assert [s["step"] for s in steps] == list(range(1, 7))
    assert all(np.isfinite(s["loss"]) and s["samples"] == 8 for s in steps)
    assert lines[-1]["done"] and lines[-1]["steps"] == 6


def test_docs_training_example_runs(tmp_path):
    text = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    code = text.split("<!-- example: cpu-training -->\n```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "train.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr
    losses = [
        float(line.rsplit(" ", 1)[1]) for line in result.stdout.splitlines() if line.startswith("step ")
    ]
    assert len(losses) == 20 and all(np.isfinite(losses))


# -- worker_context with DataLoader ------------------------------------------------------------------


class BigItems(torch.utils.data.Dataset):
    """Items of 1 MB: a batch of two is larger than half of `worker_context`'s 1 MiB pipe."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        return {"i": i, "bytes": bytes([i]) * 1_000_000, "tensor": torch.full((1000,), i)}


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_context_carries_tensors_and_batches_larger_than_its_pipes(start_method):
    loader = DataLoader(
        BigItems(),
        batch_size=2,
        num_workers=2,
        collate_fn=collate,
        multiprocessing_context=worker_context(start_method),
    )
    batches = list(loader)
    assert [b["i"] for b in batches] == [[k, k + 1] for k in range(0, 64, 2)]
    assert all(b["bytes"] == [bytes([k]) * 1_000_000 for k in b["i"]] for b in batches)
    assert all(torch.equal(b["tensor"], torch.tensor(b["i"])[:, None].expand(2, 1000)) for b in batches)


def test_leaving_a_worker_context_loader_early_does_not_wait_for_its_workers(monkeypatch):
    """Workers with big batches still on their way to a main process that stopped reading exit on their
    own when the loader shuts down. torch waits MP_STATUS_CHECK_INTERVAL (5 s) for each worker, then
    terminates the ones still alive: a worker stuck writing to a pipe nobody reads ends with -SIGTERM.
    The wait is raised to 60 s so that a slow machine gives a healthy worker all the time it needs; the
    exit codes, not a stopwatch, tell the two apart."""
    from torch.utils.data import _utils

    monkeypatch.setattr(_utils, "MP_STATUS_CHECK_INTERVAL", 60.0)
    loader = DataLoader(
        BigItems(),
        batch_size=2,
        num_workers=2,
        collate_fn=collate,
        prefetch_factor=4,
        multiprocessing_context=worker_context("fork"),
    )
    it = iter(loader)
    next(it)
    time.sleep(1.0)  # the workers fill the pipe and hand the rest to their feeder threads
    it._shutdown_workers()
    assert not any(w.is_alive() for w in it._workers)
    assert [w.exitcode for w in it._workers] == [0, 0]  # none had to be terminated


def test_worker_context_can_be_set_on_a_loader_built_elsewhere():
    """A DataLoader made by other code (HF Trainer's) takes the context before its first iteration."""
    from fusion_fast.torch.worker_context import _DirectQueue

    loader = DataLoader(BigItems(), batch_size=2, num_workers=1, collate_fn=collate)
    loader.multiprocessing_context = worker_context("fork")
    it = iter(loader)
    assert next(it)["i"] == [0, 1]
    if sys.platform.startswith("linux"):
        assert isinstance(it._worker_result_queue, _DirectQueue)
    it._shutdown_workers()


class FailsAt37(torch.utils.data.Dataset):
    """A map-style dataset whose item 37 raises; the others are 4 KB tensors."""

    def __len__(self) -> int:
        return 100

    def __getitem__(self, i: int):
        if i == 37:
            raise KeyError(f"item {i} is bad")
        return torch.full((1000,), i)


class Stream(IterableDataset):
    """An iterable dataset: each worker yields its share of 0..49."""

    def __iter__(self):
        info = get_worker_info()
        return iter(range(info.id, 50, info.num_workers))


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_context_dataloader_behaves_as_with_torchs_context(start_method):
    """With `worker_context` a worker's exception reaches the main process as with torch's own context,
    `timeout=` waits on the queue (a lost message fails the test instead of hanging it), an iterable
    dataset is served by every worker, and persistent workers serve a second epoch after the first
    was left early."""
    context = worker_context(start_method)
    with pytest.raises(KeyError, match="item 37 is bad"):
        list(
            DataLoader(FailsAt37(), batch_size=4, num_workers=2, multiprocessing_context=context, timeout=60)
        )
    first = range(36)
    batches = DataLoader(
        FailsAt37(), batch_size=4, num_workers=2, multiprocessing_context=context, sampler=first, timeout=60
    )
    assert torch.equal(torch.cat(list(batches))[:, 0], torch.arange(36))
    served = DataLoader(Stream(), batch_size=None, num_workers=2, multiprocessing_context=context, timeout=60)
    assert sorted(int(x) for x in served) == list(range(50))
    loader = DataLoader(
        FailsAt37(),
        batch_size=4,
        num_workers=2,
        multiprocessing_context=context,
        persistent_workers=True,
        sampler=first,
        timeout=60,
    )
    for k, _ in enumerate(loader):
        if k == 2:
            break
    assert len(list(loader)) == 9
