"""FUSION's three official stage YAMLs (tests/data/fusion, copied verbatim from FUSION's repository at
scripts/train/yaml/) laid out as in that repository, with small stand-in data files under
playground/train/jsons/. FUSION opens each `../../playground/...` json_path relative to the working
directory, which its launch scripts make scripts/train/; fusion-fast must find the same files from there,
from the repository root and from anywhere with --root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fusion_fast import Mixture
from fusion_fast.check import run_check
from fusion_fast.errors import MixtureError

FIXTURE = Path(__file__).resolve().parent / "data" / "fusion"
STAGES = ("stage1.yaml", "stage1.5.yaml", "stage2.yaml")


def official_paths(stage: str) -> list[str]:
    doc = yaml.safe_load((FIXTURE / "scripts" / "train" / "yaml" / stage).read_text())
    return [d["json_path"] for d in doc["datasets"]]


@pytest.fixture
def fusion(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A FUSION checkout: the official YAMLs and one stand-in file per json_path (1-3 records each)."""
    repo = tmp_path / "FUSION"
    shutil.copytree(FIXTURE, repo)
    jsons = repo / "playground" / "train" / "jsons"
    jsons.mkdir(parents=True)
    sizes: dict[str, int] = {}
    for stage in STAGES:
        for p in official_paths(stage):
            name = Path(p).name
            if name in sizes:
                continue
            sizes[name] = 1 + len(sizes) % 3
            records = [
                {"id": f"{name}-{k}", "conversations": [{"from": "human", "value": "hi"}]}
                for k in range(sizes[name])
            ]
            (jsons / name).write_text(json.dumps(records, indent=2))
    return repo, sizes


def test_the_fixture_keeps_fusions_json_path_lines():
    for stage in STAGES:
        paths = official_paths(stage)
        assert paths and all(p.startswith("../../playground/train/jsons/") for p in paths)
    assert (
        len(official_paths("stage1.yaml")) == 9
        and "PixelProse-5500k.json" in official_paths("stage1.yaml")[-1]
    )


def expect_resolved(mix: Mixture, repo: Path, stage: str, sizes: dict[str, int]) -> None:
    jsons = repo / "playground" / "train" / "jsons"
    names = [Path(p).name for p in official_paths(stage)]
    assert [d.path for d in mix.datasets] == [jsons / n for n in names]
    assert len(mix) == sum(sizes[n] for n in names)


@pytest.mark.parametrize("stage", STAGES)
def test_resolves_from_the_repository_root(fusion, monkeypatch, stage):
    repo, sizes = fusion
    monkeypatch.chdir(repo)
    mix = Mixture.from_yaml(f"scripts/train/yaml/{stage}")
    expect_resolved(mix, repo, stage, sizes)
    base = mix.datasets[0].spec.base
    assert base is not None and base.path == repo / "scripts" / "train"
    assert base.why == "1 folder above the YAML"


@pytest.mark.parametrize("stage", STAGES)
def test_resolves_from_scripts_train_like_fusions_launch_scripts(fusion, monkeypatch, stage):
    repo, sizes = fusion
    monkeypatch.chdir(repo / "scripts" / "train")
    mix = Mixture.from_yaml(f"yaml/{stage}")
    expect_resolved(mix, repo, stage, sizes)
    base = mix.datasets[0].spec.base
    assert base is not None and base.path == repo / "scripts" / "train"
    assert base.why == "the working directory"


@pytest.mark.parametrize("stage", STAGES)
def test_resolves_from_anywhere_with_root(fusion, tmp_path, monkeypatch, stage):
    repo, sizes = fusion
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    mix = Mixture.from_yaml(repo / "scripts" / "train" / "yaml" / stage, root=repo / "scripts" / "train")
    expect_resolved(mix, repo, stage, sizes)
    base = mix.datasets[0].spec.base
    assert base is not None and base.why == "--root"


def test_check_finds_every_file_from_the_repository_root(fusion, monkeypatch):
    repo, _ = fusion
    monkeypatch.chdir(repo)
    report = run_check("scripts/train/yaml/stage2.yaml")
    assert not [p for p in report.problems if p.kind == "missing_json"]


def test_the_base_is_the_first_under_which_every_file_exists(fusion, tmp_path, monkeypatch):
    repo, sizes = fusion
    # The working directory holds some of stage1's files (not all): the YAML's ancestor, which holds all
    # of them, is chosen, and no file comes from the working directory.
    decoy = tmp_path / "decoy"
    (decoy / "playground" / "train" / "jsons").mkdir(parents=True)
    first = Path(official_paths("stage1.yaml")[0]).name
    shutil.copy(repo / "playground" / "train" / "jsons" / first, decoy / "playground" / "train" / "jsons")
    cwd = decoy / "a" / "b"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    mix = Mixture.from_yaml(repo / "scripts" / "train" / "yaml" / "stage1.yaml")
    expect_resolved(mix, repo, "stage1.yaml", sizes)


def test_a_partial_layout_takes_the_base_with_most_files_and_names_the_missing(fusion, monkeypatch):
    repo, _ = fusion
    gone = repo / "playground" / "train" / "jsons" / "SynthColor-244k.json"
    gone.unlink()
    monkeypatch.chdir(repo)
    with pytest.raises(MixtureError) as err:
        Mixture.from_yaml("scripts/train/yaml/stage1.yaml")
    text = str(err.value)
    assert "data file '../../playground/train/jsons/SynthColor-244k.json' not found" in text
    assert str(gone) in text and "/../" not in text.replace("(../../", "").replace("'../../", "")
    assert f"relative paths resolved against {repo / 'scripts' / 'train'}" in text
    assert "LLaVA-Pretrain-558k" not in text  # found files are not listed


def test_no_base_works_lists_the_bases_tried_and_suggests_root(tmp_path, monkeypatch):
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(FIXTURE / "scripts" / "train" / "yaml" / "stage1.yaml", lonely)
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with pytest.raises(MixtureError) as err:
        Mixture.from_yaml(lonely / "stage1.yaml")
    text = str(err.value)
    assert "not one of its 9 relative data files was found" in text
    for folder, why in [
        (cwd, "the working directory"),
        (lonely, "the YAML's folder"),
        (tmp_path, "1 folder above the YAML"),
        (Path("/"), f"{len(lonely.parents)} folders above the YAML"),
    ]:
        assert f"  {folder} ({why})" in text
    assert "--root DIR" in text and "/../" not in text.replace("(../../", "")


def fusion_fast(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-m", "fusion_fast", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_says_which_base_it_used_and_what_it_tried(fusion, tmp_path):
    repo, _ = fusion
    out = fusion_fast("mix", "scripts/train/yaml/stage1.yaml", cwd=repo)
    assert out.returncode == 0, out.stderr
    assert (
        f"relative paths resolved against {repo / 'scripts' / 'train'} (1 folder above the YAML)"
        in out.stdout
    )
    out = fusion_fast("check", "scripts/train/yaml/stage1.yaml", cwd=repo)
    assert f"relative paths resolved against {repo / 'scripts' / 'train'}" in out.stdout, out.stderr
    assert "missing_json" not in out.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lonely = shutil.copy(FIXTURE / "scripts" / "train" / "yaml" / "stage2.yaml", elsewhere)
    out = fusion_fast("mix", str(lonely), cwd=elsewhere)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert (
        "error:" in out.stderr
        and "--root DIR" in out.stderr
        and f"{elsewhere} (the working directory)" in out.stderr
    )
