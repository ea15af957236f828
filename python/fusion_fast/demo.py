"""A small seeded playground in FUSION's repository layout: the README's built-in sample.

FUSION keeps its annotation files in `playground/train/jsons/`, the images under
`playground/train/images/<Source>/`, and its stage YAMLs in `scripts/train/yaml/`, whose `json_path`
entries read `../../playground/train/jsons/X.json`: relative to `scripts/train/`, the folder its launch
scripts run from. The demo writes the same tree so that every example in the docs runs in it as written.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from .playground import FusionRepo, Playground
from .synth import make_record, tiny_png

#: (file name, source folder, records, format)
DEMO_DATASETS = (
    ("LLaVA-Pretrain-2k.json", "LLaVA-Pretrain", 2000, "json"),
    ("PixelProse-1k.jsonl", "PixelProse", 1000, "jsonl"),
    ("ShareGPT4V-1k.json", "ShareGPT4V", 1000, "json"),
)

#: The stage YAML, relative to the demo folder (FUSION's repository root).
STAGE_YAML = f"{FusionRepo.YAML_DIR}/stage1.yaml"
#: The folder FUSION's launch scripts run from: the YAML's relative paths start there.
LAUNCH_DIR = FusionRepo.LAUNCH_DIR
#: How FUSION's YAMLs name an annotation file: relative to LAUNCH_DIR.
JSON_PATH_PREFIX = FusionRepo(Path()).json_path_prefix


@dataclass
class DemoPlayground:
    base: Path  #: the demo folder, laid out like FUSION's repository root
    root: Path  #: base/playground
    jsons: list[Path]
    images: int
    yaml: Path  #: base/scripts/train/yaml/stage1.yaml

    @property
    def repo(self) -> FusionRepo:
        return FusionRepo(self.base)

    @property
    def playground(self) -> Playground:
        return Playground.at(self.root)

    @property
    def launch_dir(self) -> Path:
        """base/scripts/train: where the YAML's `../../playground/...` paths start."""
        return self.repo.launch_dir


def write_playground(base: str | os.PathLike[str], *, seed: int = 0) -> DemoPlayground:
    """Write, under `base`, `playground/train/jsons/*.json[l]`, `playground/train/images/<Source>/...`
    (tiny real PNGs) and `scripts/train/yaml/stage1.yaml` in FUSION's format. Same seed, same bytes."""
    base = Path(base)
    repo = FusionRepo(base)
    root = base / FusionRepo.PLAYGROUND
    playground = Playground.at(root)
    jsons_dir, images_dir = playground.jsons, playground.images
    jsons_dir.mkdir(parents=True, exist_ok=True)
    jsons, n_images = [], 0
    png = tiny_png()
    for k, (name, source, count, fmt) in enumerate(DEMO_DATASETS):
        rng = random.Random(seed * 1000 + k)
        records = []
        for i in range(count):
            rec = make_record(rng, i, image_ext="png")
            rec["id"] = f"{source}-{i:06d}"
            for key in ("image", "video"):
                if key in rec:
                    paths = rec[key] if isinstance(rec[key], list) else [rec[key]]
                    # Every dataset keeps its images under its own source folder.
                    paths = [f"{source}/{p.split('/', 1)[1]}" for p in paths]
                    rec[key] = paths if isinstance(rec[key], list) else paths[0]
                    for p in paths:
                        f = images_dir / p
                        f.parent.mkdir(parents=True, exist_ok=True)
                        f.write_bytes(png)
                        n_images += 1
            records.append(rec)
        path = playground.json_file(name)
        with open(path, "w", encoding="utf-8") as f:
            if fmt == "jsonl":
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            else:
                json.dump(records, f, ensure_ascii=False, indent=4)
        jsons.append(path)
    yaml_path = repo.stage_yaml("stage1")
    yaml_path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["datasets:"]
    strategies = ["all", "random:50%", "first:500"]
    for path, strategy in zip(jsons, strategies, strict=True):
        lines += [f"  - json_path: {repo.json_path_entry(path)}", f'    sampling_strategy: "{strategy}"']
    yaml_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return DemoPlayground(base, root, jsons, n_images, yaml_path)
