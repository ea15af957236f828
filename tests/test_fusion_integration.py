"""docs/fusion.patch, applied to FUSION's `LazySupervisedDataset`, keeps what FUSION trains on.

The patch is applied with `git apply` to a verbatim copy of FUSION's class (tests/fusion_standin.py), and
the dataset before and after is built from the same stage, laid out as in FUSION's repository and read
from `scripts/train/` as FUSION's launch scripts do. FUSION's own code is the oracle: its records, its
`lengths` and its `modality_lengths`.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fusion_fast.demo import JSON_PATH_PREFIX, write_playground

REPO = Path(__file__).resolve().parents[1]
PATCH = REPO / "docs" / "fusion.patch"
STANDIN = Path(__file__).with_name("fusion_standin.py")

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git to apply the patch")


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fusion(tmp_path_factory) -> tuple[ModuleType, ModuleType]:
    """FUSION's class as it is, and with docs/fusion.patch applied."""
    src = tmp_path_factory.mktemp("fusion-src")
    target = src / "fusion" / "train" / "train.py"
    target.parent.mkdir(parents=True)
    shutil.copy(STANDIN, target)
    result = subprocess.run(["git", "apply", str(PATCH)], cwd=src, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    patched = target.read_text(encoding="utf-8")
    assert "fusion_fast.Mixture.from_yaml" in patched and "json.load(json_file)" not in patched
    return load(STANDIN, "fusion_before"), load(target, "fusion_after")


@pytest.fixture(scope="module")
def playground(tmp_path_factory):
    return write_playground(tmp_path_factory.mktemp("fusion-repo"))


def records(dataset) -> list:
    return [dataset[i] for i in range(len(dataset))]


def build(module: ModuleType, data_path: str):
    return module.LazySupervisedDataset(data_path, tokenizer=None, data_args=None)


def test_patch_applies_and_records_lengths_are_unchanged(fusion, playground, monkeypatch) -> None:
    before_mod, after_mod = fusion
    yaml = playground.base / "scripts" / "train" / "yaml" / "exact.yaml"
    llava, pixelprose, sharegpt = (f"{JSON_PATH_PREFIX}{p.name}" for p in playground.jsons)
    yaml.write_text(
        "datasets:\n"
        f"  - json_path: {llava}\n    sampling_strategy: all\n"
        f"  - json_path: {pixelprose}\n    sampling_strategy: first:10%\n"
        f"  - json_path: {sharegpt}\n    sampling_strategy: end:300\n"
        f"  - json_path: {pixelprose}\n    sampling_strategy: end:7%\n"
        f"  - json_path: {sharegpt}\n    sampling_strategy: first:25\n"
        f"  - json_path: {llava}\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(playground.launch_dir)  # where FUSION's launch scripts run
    before = build(before_mod, "yaml/exact.yaml")
    after = build(after_mod, "yaml/exact.yaml")
    assert isinstance(before.list_data_dict, list)
    assert not isinstance(after.list_data_dict, list)  # the patch is in effect
    assert len(after) == len(before) == 2000 + 100 + 300 + 70 + 25 + 2000
    assert records(after) == records(before)
    assert after.lengths == before.lengths
    assert after.modality_lengths == before.modality_lengths
    assert all(type(v) is int for v in after.lengths + after.modality_lengths)
    # The records hold images and text-only samples both, so the signs and the +128 are exercised.
    assert min(before.modality_lengths) < 0 < max(before.modality_lengths)


def test_a_single_json_file_is_unchanged(fusion, playground, monkeypatch) -> None:
    before_mod, after_mod = fusion
    monkeypatch.chdir(playground.launch_dir)
    path = f"{JSON_PATH_PREFIX}{playground.jsons[2].name}"
    before, after = build(before_mod, path), build(after_mod, path)
    assert records(after) == records(before)
    assert (after.lengths, after.modality_lengths) == (before.lengths, before.modality_lengths)


def test_random_strategy_draws_a_seeded_subset_of_the_same_size(fusion, playground, monkeypatch) -> None:
    # FUSION's `random:` shuffles with the process's unseeded `random` state, so no two runs (or ranks)
    # agree on the records; the patched class draws a seeded subset of the same size from the same file.
    before_mod, after_mod = fusion
    monkeypatch.chdir(playground.launch_dir)
    stage = "yaml/stage1.yaml"  # the demo's: all, random:50%, first:500
    before, after = build(before_mod, stage), build(after_mod, stage)
    got = records(after)
    assert records(build(after_mod, stage)) == got  # the same on every rank and every run

    def by_source(rows: list) -> dict[str, list]:
        out: dict[str, list] = {}
        for r in rows:
            out.setdefault(r["id"].rsplit("-", 1)[0], []).append(r)
        return out

    want, have = by_source(records(before)), by_source(got)
    assert {k: len(v) for k, v in have.items()} == {k: len(v) for k, v in want.items()}
    assert have["LLaVA-Pretrain"] == want["LLaVA-Pretrain"] and have["ShareGPT4V"] == want["ShareGPT4V"]
    with open(playground.jsons[1], encoding="utf-8") as f:
        file_records = [json.loads(line) for line in f]
    drawn = have["PixelProse"]
    assert len({r["id"] for r in drawn}) == len(drawn) == 500
    assert all(r in file_records for r in drawn)
    # FUSION's own length loops over the patched class's records give the patched class's arrays.
    oracle = before_mod.LazySupervisedDataset.__new__(before_mod.LazySupervisedDataset)
    oracle.list_data_dict = got
    assert after.lengths == oracle.lengths
    assert after.modality_lengths == oracle.modality_lengths


def test_training_guide_shows_the_patch_as_it_is() -> None:
    text = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    shown = text.split("```diff\n", 1)[1].split("```", 1)[0]
    assert shown == PATCH.read_text(encoding="utf-8")
