"""Training-stage YAML files in FUSION / LLaVA-OneVision format: parsing, validation, path resolution.

```yaml
datasets:
  - json_path: ../../playground/train/jsons/LLaVA-Pretrain-558k.json
    sampling_strategy: "random:10%"   # all | first:N | end:N | random:N; N an integer or P% (P fractional ok)
    repeat: 1.5                        # optional upsampling, K >= 0
    image_folder: ../../playground/train/images   # optional (also images_folder, data_folder)
    exclude: bad-records.txt           # optional: record numbers to skip (from `fusion-fast check`)
```

This module only reads the YAML; it never opens the data files (see `fusion_fast.mixture`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from .errors import MixtureError

STRATEGIES = ("all", "first", "end", "random")
IMAGE_FOLDER_KEYS = ("image_folder", "images_folder", "data_folder")
DATA_SUFFIXES = (".json", ".jsonl")
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(%?)\s*$")


@dataclass(frozen=True)
class Strategy:
    """A sampling strategy: `name` in STRATEGIES with an absolute `count` or a `percent` (exact)."""

    name: str = "all"
    count: int | None = None
    percent: Fraction | None = None

    def selected(self, n: int) -> int:
        """How many of `n` records this strategy keeps: `ceil(P * n / 100)` for P%, capped at n."""
        if self.name == "all":
            return n
        if self.percent is not None:
            return min(n, math.ceil(self.percent * n / 100))
        assert self.count is not None
        return min(n, self.count)

    def __str__(self) -> str:
        if self.name == "all":
            return "all"
        if self.percent is not None:
            p = self.percent
            return f"{self.name}:{p.numerator if p.denominator == 1 else float(p)}%"
        return f"{self.name}:{self.count}"


def parse_strategy(text: Any, *, where: str) -> Strategy:
    """Parse `all`, `first:N`, `end:N`, `random:N` (N an integer or a percentage)."""
    if text is None:
        return Strategy()
    if not isinstance(text, str):
        raise MixtureError(f"{where}: sampling_strategy must be a string like 'first:1000', not {text!r}")
    s = text.strip()
    if s == "all":
        return Strategy()
    name, sep, number = s.partition(":")
    name = name.strip()
    if name not in STRATEGIES:
        raise MixtureError(
            f"{where}: unknown sampling_strategy {text!r}; expected all, first:N, end:N or random:N "
            "(N an integer or a percentage such as 10%)"
        )
    if not sep:
        raise MixtureError(f"{where}: sampling_strategy {text!r} needs a number, e.g. '{name}:1000'")
    if name == "all":
        raise MixtureError(f"{where}: sampling_strategy 'all' takes no number (got {text!r})")
    m = _NUMBER.match(number)
    if not m:
        raise MixtureError(
            f"{where}: sampling_strategy {text!r} needs a non-negative number after ':' "
            "(an integer, or a percentage such as 10% or 2.5%)"
        )
    value, percent = m.groups()
    if percent:
        p = Fraction(value)
        if p > 100:
            raise MixtureError(f"{where}: sampling_strategy {text!r}: a percentage cannot exceed 100%")
        return Strategy(name, percent=p)
    if "." in value:
        raise MixtureError(f"{where}: sampling_strategy {text!r}: a record count must be an integer")
    return Strategy(name, count=int(value))


@dataclass
class DatasetSpec:
    """One `datasets:` entry of a stage YAML, validated, with its data file located (or not)."""

    entry: int  #: 0-based position in the YAML's `datasets` list
    json_path: str  #: as written in the YAML
    path: Path | None  #: the existing file it resolves to, or None when missing
    tried: list[Path]  #: every path that was tried, in order
    strategy: Strategy = field(default_factory=Strategy)
    repeat: Fraction = Fraction(1)
    image_folder: Path | None = None
    exclude: Path | None = None
    yaml_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The dataset name: the file name without its extension."""
        return Path(self.json_path).stem

    def require_path(self) -> Path:
        if self.path is None:
            tried = "\n  ".join(str(p) for p in self.tried)
            raise MixtureError(
                f"{self.where}: data file {self.json_path!r} not found; tried:\n  {tried}",
                path=str(self.yaml_path) if self.yaml_path else None,
            )
        return self.path

    @property
    def where(self) -> str:
        return f"{self.yaml_path or '<mixture>'}: datasets[{self.entry}] ({self.json_path})"


def _candidates(p: str, root: Path, yaml_dir: Path | None) -> list[Path]:
    raw = Path(os.path.expanduser(p))
    if raw.is_absolute():
        return [raw]
    out = [root / raw]
    if yaml_dir is not None and (yaml_dir / raw) not in out:
        out.append(yaml_dir / raw)
    return out


def _resolve(p: str, root: Path, yaml_dir: Path | None) -> tuple[Path | None, list[Path]]:
    tried = _candidates(p, root, yaml_dir)
    for c in tried:
        if c.is_file():
            return Path(os.path.abspath(c)), tried
    return None, tried


def _repeat(value: Any, where: str) -> Fraction:
    if value is None:
        return Fraction(1)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise MixtureError(f"{where}: repeat must be a number >= 0, not {value!r}")
    try:
        r = Fraction(str(value))
    except ValueError:
        raise MixtureError(f"{where}: repeat must be a number >= 0, not {value!r}") from None
    if r < 0:
        raise MixtureError(f"{where}: repeat must be >= 0, not {value!r}")
    return r


def spec_from_entry(item: Any, entry: int, *, root: Path, yaml_path: Path | None = None) -> DatasetSpec:
    """Validate one dataset entry (a mapping, or a bare path string) and locate its files."""
    yaml_dir = yaml_path.parent if yaml_path is not None else None
    where = f"{yaml_path or '<mixture>'}: datasets[{entry}]"
    if isinstance(item, (str, os.PathLike)):
        item = {"json_path": os.fspath(item)}
    if not isinstance(item, dict):
        raise MixtureError(f"{where}: each dataset must be a mapping with json_path, not {item!r}")
    json_path = item.get("json_path")
    if not isinstance(json_path, str) or not json_path.strip():
        raise MixtureError(f"{where}: json_path is missing or not a string")
    where = f"{where} ({json_path})"
    if not json_path.lower().endswith(DATA_SUFFIXES):
        raise MixtureError(f"{where}: unsupported file type; expected a .json or .jsonl file")
    path, tried = _resolve(json_path, root, yaml_dir)
    image_folder = None
    for key in IMAGE_FOLDER_KEYS:
        if key in item and item[key] is not None:
            if not isinstance(item[key], str):
                raise MixtureError(f"{where}: {key} must be a string path, not {item[key]!r}")
            # Like json_path: the working directory (root) first, then the YAML's folder.
            folders = _candidates(item[key], root, yaml_dir)
            image_folder = next((f for f in folders if f.is_dir()), folders[0])
            break
    exclude = None
    if item.get("exclude") is not None:
        if not isinstance(item["exclude"], str):
            raise MixtureError(f"{where}: exclude must be a string path, not {item['exclude']!r}")
        found, tried_ex = _resolve(item["exclude"], root, yaml_dir)
        if found is None:
            raise MixtureError(f"{where}: exclude file {item['exclude']!r} not found; tried {tried_ex}")
        exclude = found
    known = {"json_path", "sampling_strategy", "repeat", "exclude", *IMAGE_FOLDER_KEYS}
    return DatasetSpec(
        entry=entry,
        json_path=json_path,
        path=path,
        tried=tried,
        strategy=parse_strategy(item.get("sampling_strategy"), where=where),
        repeat=_repeat(item.get("repeat"), where),
        image_folder=image_folder,
        exclude=exclude,
        yaml_path=yaml_path,
        extra={k: v for k, v in item.items() if k not in known},
    )


def read_stage(
    path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None
) -> list[DatasetSpec]:
    """Parse and validate a stage YAML. Relative paths are tried against `root` (default: the working
    directory, like FUSION), then against the YAML's own folder. Missing data files are reported in
    the specs (`path is None`), not raised, so `check` can list them all."""
    yaml_path = Path(os.path.abspath(path))
    try:
        with open(yaml_path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise MixtureError(f"stage YAML not found: {yaml_path}", path=str(yaml_path)) from None
    except yaml.YAMLError as e:
        raise MixtureError(f"{yaml_path}: not valid YAML: {e}", path=str(yaml_path)) from None
    if not isinstance(doc, dict) or "datasets" not in doc:
        raise MixtureError(f"{yaml_path}: expected a mapping with a 'datasets' list", path=str(yaml_path))
    datasets = doc["datasets"]
    if not isinstance(datasets, list):
        raise MixtureError(f"{yaml_path}: 'datasets' must be a list, not {type(datasets).__name__}")
    base = Path(os.path.abspath(root)) if root is not None else Path.cwd()
    return [spec_from_entry(item, k, root=base, yaml_path=yaml_path) for k, item in enumerate(datasets)]


def is_stage_yaml(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).lower().endswith((".yaml", ".yml"))
