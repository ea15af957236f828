"""`FusionDataset(on_error="skip")` counts: every DataLoader worker's skips reach the main process, a bad
sample counts once per epoch however often it is met as a replacement, and the "first bad sample"
warning is logged once per run, whatever the causes and however many workers."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

from fusion_fast import synth  # noqa: E402
from fusion_fast.torch import FusionDataset, collate  # noqa: E402

N = 40
NO_CONVERSATIONS = {1, 5, 6, 7, 22, 23, 38, 39}  # runs of bad samples, and one that wraps around
MISSING_IMAGE = {13, 30}
BAD = NO_CONVERSATIONS | MISSING_IMAGE
WARNING = "skipping bad samples"


def make_records(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    records: list[dict[str, Any]] = []
    for i in range(N):
        record: dict[str, Any] = {"id": f"r{i}", "image": f"{i}.png"}
        if i not in NO_CONVERSATIONS:
            record["conversations"] = [
                {"from": "human", "value": f"<image>\nq{i}"},
                {"from": "gpt", "value": "a"},
            ]
        if i not in MISSING_IMAGE:
            (images / f"{i}.png").write_bytes(synth.tiny_png())
        records.append(record)
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path, images


def log_to(path: str, *_: object) -> None:
    """Append fusion_fast.torch's warnings to `path` (in whichever process this runs, once)."""
    logger = logging.getLogger("fusion_fast.torch")
    if not any(getattr(h, "baseFilename", None) == path for h in logger.handlers):
        logger.addHandler(logging.FileHandler(path))
    logger.setLevel(logging.WARNING)


@pytest.fixture
def warnings_file(tmp_path: Path):
    path = str(tmp_path / "warnings.log")
    log_to(path)
    yield Path(path)
    logger = logging.getLogger("fusion_fast.torch")
    for h in [h for h in logger.handlers if getattr(h, "baseFilename", None) == path]:
        logger.removeHandler(h)
        h.close()


def ids(batches: list[Any]) -> list[str]:
    return [i for b in batches for i in b["id"]]


def test_a_run_of_bad_samples_counts_each_once(tmp_path: Path) -> None:
    """3 bad samples out of 4: each is counted once, not again when met while looking for a replacement."""
    lines = [{"id": 0, "conversations": [{"from": "human", "value": "q"}]}, {"id": 1}, {"id": 2}, {"id": 3}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    ds = FusionDataset(path, on_error="skip")
    assert [item["id"] for item in ds.__getitems__([0, 1, 2, 3])] == [0, 0, 0, 0]
    assert ds.skipped == 3
    assert ds.skip_causes == {"missing_conversations": 3}


@pytest.mark.parametrize(
    ("workers", "context"),
    [(0, None), (2, "fork"), (2, "spawn")],
)
@pytest.mark.parametrize("load_images", [False, True])
def test_skips_in_workers_reach_the_main_process(
    tmp_path: Path, warnings_file: Path, workers: int, context: str | None, load_images: bool
) -> None:
    path, images = make_records(tmp_path)
    ds = FusionDataset(path, image_folder=images, load_images=load_images, on_error="skip")
    loader = DataLoader(
        ds,
        batch_size=4,
        num_workers=workers,
        collate_fn=collate,
        multiprocessing_context=context,
        worker_init_fn=functools.partial(log_to, str(warnings_file)) if workers else None,
    )
    bad = NO_CONVERSATIONS | (MISSING_IMAGE if load_images else set())
    causes = {"missing_conversations": len(NO_CONVERSATIONS)}
    if load_images:
        causes["missing_image"] = len(MISSING_IMAGE)
    for epoch in (1, 2):
        got = ids(list(loader))
        assert len(got) == N and not {f"r{i}" for i in bad} & set(got)
        assert ds.skipped == epoch * len(bad)
        assert ds.skip_causes == {k: epoch * v for k, v in causes.items()}
    warnings = [line for line in warnings_file.read_text().splitlines() if WARNING in line]
    assert len(warnings) == 1, warnings  # once over both epochs, every cause and every worker


def test_counts_survive_pickling_without_sharing(tmp_path: Path) -> None:
    """A plain pickle (not a worker start) carries the counts so far and counts on its own afterwards."""
    import pickle

    path, images = make_records(tmp_path)
    ds = FusionDataset(path, image_folder=images, on_error="skip")
    ds.__getitems__([1])
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.skipped == 1
    copy.__getitems__([5])
    assert copy.skipped == 2 and ds.skipped == 1


def test_raise_counts_nothing(tmp_path: Path) -> None:
    path, images = make_records(tmp_path)
    ds = FusionDataset(path, image_folder=images)
    ds.__getitems__([0, 2])
    assert ds.skipped == 0 and ds.skip_causes == {}
