"""FUSION's playground layout (`fusion_fast.playground`): the folders a root implies, how FUSION's stage
YAMLs name annotation files, and where fusion-fast keeps its own state.

The expected paths are written out literally, as FUSION's repository and docs spell them, rather than
derived from the code under test."""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
from pathlib import Path

import pytest

from fusion_fast.archives import marker_path, tmp_dir
from fusion_fast.images import ImageStore, nearest_store
from fusion_fast.playground import FusionRepo, Playground, image_store_path, state_folder
from fusion_fast.stage import read_stage


def test_a_root_implies_train_jsons_images_and_the_state_folder(tmp_path: Path) -> None:
    pg = Playground.at(tmp_path / "playground")
    assert pg.train == tmp_path / "playground" / "train"
    assert pg.jsons == tmp_path / "playground" / "train" / "jsons"
    assert pg.images == tmp_path / "playground" / "train" / "images"
    assert pg.state == tmp_path / "playground" / "train" / "images" / ".fusion-fast"
    assert pg.image_store == tmp_path / "playground" / "train" / "images" / ".fusion-fast" / "images.ffimg"
    assert pg.json_file("LLaVA-Pretrain-558k.json") == pg.jsons / "LLaVA-Pretrain-558k.json"
    assert pg.stage_yaml("stage1") == tmp_path / "playground" / "train" / "stage1.yaml"


def test_paths_are_kept_as_given_not_resolved(tmp_path: Path) -> None:
    """A relative root stays relative and a symlinked one is not followed: messages name what the user
    typed, and a data file linked into jsons/ stays in the playground."""
    assert Playground.at("playground").jsons == Path("playground/train/jsons")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert Playground.at(tmp_path / "link").images == tmp_path / "link" / "train" / "images"


def test_a_playground_is_a_frozen_hashable_value() -> None:
    pg = Playground.at("p")
    with pytest.raises(dataclasses.FrozenInstanceError):
        pg.train = Path("elsewhere")  # type: ignore[misc]
    assert pg == Playground(Path("p/train"))
    assert len({pg, Playground.at("p"), Playground.at("q")}) == 2


def test_fusion_yaml_entries_are_relative_to_the_launch_folder(tmp_path: Path) -> None:
    """FUSION's `scripts/train/yaml/*.yaml` name `../../playground/train/jsons/X.json`, resolved from
    `scripts/train/` (where its launch scripts run); the stage reader finds the file from there."""
    repo = FusionRepo(tmp_path)
    data = repo.playground.json_file("PixelProse-1k.jsonl")
    assert repo.launch_dir == tmp_path / "scripts" / "train"
    assert repo.stage_yaml("stage1") == tmp_path / "scripts" / "train" / "yaml" / "stage1.yaml"
    assert repo.json_path_entry(data) == "../../playground/train/jsons/PixelProse-1k.jsonl"
    assert repo.json_path_prefix == "../../playground/train/jsons/"

    data.parent.mkdir(parents=True)
    data.write_text("")
    yaml = repo.stage_yaml("stage1")
    yaml.parent.mkdir(parents=True)
    yaml.write_text(f"datasets:\n  - json_path: {repo.json_path_entry(data)}\n")
    (spec,) = read_stage(yaml, root=repo.launch_dir)
    assert spec.path is not None and spec.path.samefile(data)


def test_prepare_style_yaml_entries_are_relative_to_the_yaml_folder(tmp_path: Path) -> None:
    pg = Playground.at(tmp_path / "playground")
    data = pg.json_file("ShareGPT4V-1k.json")
    assert Playground.json_path_entry(data, pg.train) == "jsons/ShareGPT4V-1k.json"
    data.parent.mkdir(parents=True)
    data.write_text("[]")
    yaml = pg.stage_yaml("stage1")
    yaml.write_text(f"datasets:\n  - json_path: {Playground.json_path_entry(data, yaml.parent)}\n")
    (spec,) = read_stage(yaml, root=yaml.parent)
    assert spec.path is not None and spec.path.samefile(data)


def test_yaml_entries_use_forward_slashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A YAML written on Windows must read the same on Linux: separators are written as `/`."""
    monkeypatch.setattr(os, "sep", "\\")
    monkeypatch.setattr(os.path, "relpath", lambda path, start: "..\\..\\playground\\train\\jsons\\X.json")
    assert FusionRepo(tmp_path).json_path_entry("X.json") == "../../playground/train/jsons/X.json"


@pytest.mark.parametrize("where", ["root", "train", "jsons"])
def test_a_playground_is_found_from_its_root_train_or_jsons_folder(tmp_path: Path, where: str) -> None:
    root = tmp_path / "playground"
    (root / "train" / "jsons" / "sub").mkdir(parents=True)
    (root / "train" / "images").mkdir()
    folder = {"root": root, "train": root / "train", "jsons": root / "train" / "jsons"}[where]
    assert Playground.of_folder(folder) == Playground(root / "train")
    assert Playground.of_file(root / "train" / "jsons" / "sub" / "a.json") == Playground(root / "train")


def test_a_folder_without_images_is_not_a_playground(tmp_path: Path) -> None:
    (tmp_path / "jsons").mkdir()
    assert Playground.of_folder(tmp_path) is None
    assert Playground.of_folder(tmp_path / "jsons") is None
    assert Playground.of_file(tmp_path / "jsons" / "a.json") is None
    assert Playground.of_file(tmp_path / "a.json") is None


def test_prepare_state_lives_in_the_state_folder(tmp_path: Path) -> None:
    """Prepare's markers and work folders go where the playground says its state is."""
    images = Playground.at(tmp_path).images
    assert state_folder(images) == images / ".fusion-fast"
    assert marker_path(images, "images/COCO.tar").parent == images / ".fusion-fast"
    assert tmp_dir(images, "images/COCO.tar").parent == images / ".fusion-fast"


def test_the_image_store_at_the_playground_path_serves_its_images(tmp_path: Path) -> None:
    """A store written where the playground puts it is the one image lookups find for files under
    `images/` (whatever folder the store's member sits in)."""
    pg = Playground.at(tmp_path / "playground")
    archive = tmp_path / "coco.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("a.png")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"bytes"))
    pg.state.mkdir(parents=True)
    assert image_store_path(pg.images) == str(pg.image_store)
    ImageStore.build([archive], pg.image_store, placements=[(0, "COCO")])
    found = nearest_store(pg.images / "COCO" / "a.png")
    assert found is not None
    store, member = found
    assert store.path == pg.image_store and member == "COCO/a.png"
    assert store.read(member) == b"bytes"
