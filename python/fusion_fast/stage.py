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
import stat
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from .errors import MixtureError

STRATEGIES = ("all", "first", "end", "random")
IMAGE_FOLDER_KEYS = ("image_folder", "images_folder", "data_folder")
DATA_SUFFIXES = (".json", ".jsonl")
#: The largest `repeat` factor: beyond any real upsampling, and small enough that a typo such as
#: `repeat: 1000000000` fails at once instead of filling the memory with copies of the selection.
MAX_REPEAT = 10_000
#: Digits a count, a percentage or a repeat factor may have (before and after the point together).
MAX_DIGITS = 100
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
        raise MixtureError(
            f"{where}: sampling_strategy must be a string like 'first:1000', not {_short(text)}"
        )
    s = text.strip()
    if s == "all":
        return Strategy()
    name, sep, number = s.partition(":")
    name = name.strip()
    if name not in STRATEGIES:
        raise MixtureError(
            f"{where}: unknown sampling_strategy {_short(text)}; expected all, first:N, end:N or random:N "
            "(N an integer or a percentage such as 10%)"
        )
    if not sep:
        raise MixtureError(f"{where}: sampling_strategy {_short(text)} needs a number, e.g. '{name}:1000'")
    if name == "all":
        raise MixtureError(f"{where}: sampling_strategy 'all' takes no number (got {_short(text)})")
    m = _NUMBER.match(number)
    if not m:
        raise MixtureError(
            f"{where}: sampling_strategy {_short(text)} needs a non-negative number after ':' "
            "(an integer, or a percentage such as 10% or 2.5%)"
        )
    value, percent = m.groups()
    if len(value) > MAX_DIGITS + 1:
        # Python refuses to convert integers of more than 4,300 digits; no count or percentage needs 100.
        raise MixtureError(
            f"{where}: sampling_strategy {_short(text)}: the number has too many digits "
            f"(at most {MAX_DIGITS})"
        )
    if percent:
        p = Fraction(value)
        if p > 100:
            raise MixtureError(f"{where}: sampling_strategy {_short(text)}: a percentage cannot exceed 100%")
        return Strategy(name, percent=p)
    if "." in value:
        raise MixtureError(f"{where}: sampling_strategy {_short(text)}: a record count must be an integer")
    return Strategy(name, count=int(value))


@dataclass(frozen=True)
class Base:
    """A folder that a stage YAML's relative paths may start from, and why it was tried."""

    path: Path
    why: str  #: "--root", "the working directory", "the YAML's folder" or "N folder(s) above the YAML"

    def __str__(self) -> str:
        return f"{self.path} ({self.why})"


@dataclass
class DatasetSpec:
    """One `datasets:` entry of a stage YAML, validated, with its data file located (or not)."""

    entry: int  #: 0-based position in the YAML's `datasets` list
    json_path: str  #: as written in the YAML
    path: Path | None  #: the existing file it resolves to, or None when missing
    tried: list[Path]  #: every path that was tried, in order (normalised)
    strategy: Strategy = field(default_factory=Strategy)
    repeat: Fraction = Fraction(1)
    image_folder: Path | None = None
    exclude: Path | None = None
    yaml_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The folder relative paths resolved against (chosen once per YAML); None for an absolute path.
    base: Base | None = None
    #: Every folder that was considered as the base, in order.
    bases: tuple[Base, ...] = ()

    @property
    def name(self) -> str:
        """The dataset name: the file name without its extension."""
        return Path(self.json_path).stem

    @property
    def expected(self) -> Path:
        """Where the data file should be: under the chosen base, else the first path tried."""
        raw = Path(os.path.expanduser(self.json_path))
        if raw.is_absolute() or self.base is None:
            return self.tried[0]
        return _join(self.base.path, raw)

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


def _join(base: Path, raw: Path) -> Path:
    """`base / raw`, normalised: no `.` or `..` left (`a/b/../../c` -> `c`), as users expect to read it."""
    return Path(os.path.normpath(os.path.join(base, raw)))


def _candidates(p: str, bases: list[Path]) -> list[Path]:
    raw = Path(os.path.expanduser(p))
    if raw.is_absolute():
        return [_join(Path("/"), raw)]
    out: list[Path] = []
    for b in bases:
        c = _join(b, raw)
        if c not in out:
            out.append(c)
    return out


def _resolve(p: str, bases: list[Path]) -> tuple[Path | None, list[Path]]:
    tried = _candidates(p, bases)
    for c in tried:
        if c.is_file():
            return c, tried
    return None, tried


def candidate_bases(root: Path | None, yaml_dir: Path | None) -> list[Base]:
    """The folders a YAML's relative paths may start from, in the order they are tried: `root` (else the
    working directory, where FUSION opens them), the YAML's folder, then each of its ancestors (FUSION's
    launch scripts run from a folder above the YAML, e.g. `scripts/train/` for
    `scripts/train/yaml/stage1.yaml`)."""
    first = Base(Path(os.path.abspath(root)), "--root") if root is not None else None
    out = [first or Base(Path.cwd(), "the working directory")]
    if yaml_dir is not None:
        folder = Path(os.path.abspath(yaml_dir))
        chain = [folder, *folder.parents]
        for up, p in enumerate(chain):
            why = "the YAML's folder" if up == 0 else f"{up} folder{'s' if up > 1 else ''} above the YAML"
            if all(b.path != p for b in out):
                out.append(Base(p, why))
    return out


def choose_base(json_paths: list[str], bases: list[Base]) -> tuple[Base, int]:
    """The base the relative `json_paths` of one YAML resolve against, and how many exist under it: the
    first base under which every file exists, else the one under which the most exist (the earliest of
    equals). One base for the whole YAML, so a stage never mixes files from two places by accident."""
    relative = [Path(os.path.expanduser(p)) for p in json_paths]
    relative = [p for p in relative if not p.is_absolute()]
    best, best_found = bases[0], -1
    for b in bases:
        found = sum(_join(b.path, p).is_file() for p in relative)
        if found == len(relative):
            return b, found
        if found > best_found:
            best, best_found = b, found
    return best, best_found


def missing_message(specs: list[DatasetSpec]) -> str:
    """What `Mixture` raises when data files of a YAML are missing: each missing file with the paths
    tried when some files were found; when none was, the bases tried once and how to point at the
    right one."""
    missing = [s for s in specs if s.path is None]
    relative = [s for s in missing if s.base is not None]
    if relative and all(s.path is None for s in specs if s.base is not None) and relative[0].bases:
        first = relative[0]
        n = sum(1 for s in specs if s.base is not None)
        plural = "s" if n > 1 else ""
        lines = [
            f"not one of its {n} relative data file{plural} was found under any folder tried as the base:",
            *(f"  {b}" for b in first.bases),
            f"e.g. datasets[{first.entry}] ({first.json_path}) would be {first.expected}",
            "run from the folder its relative paths start from (FUSION's launch scripts run from "
            "scripts/train/), or pass --root DIR",
        ]
        others = [s for s in missing if s.base is None]
        lines += [f"{s.where}: data file not found: {s.tried[0]}" for s in others]
        return "\n".join(lines)
    messages = []
    for s in missing:
        tried = "\n  ".join(str(p) for p in s.tried)
        messages.append(f"{s.where}: data file {s.json_path!r} not found; tried:\n  {tried}")
    if (line := base_line(specs)) is not None:
        messages.append(line)
    return "\n".join(messages)


def base_line(specs: list[DatasetSpec]) -> str | None:
    """One line saying which folder a YAML's relative paths resolved against, or None if none is relative."""
    base = next((s.base for s in specs if s.base is not None), None)
    if base is None:
        return None
    return f"relative paths resolved against {base.path} ({base.why})"


#: The keys of a dataset entry that are read; FUSION ignores others, and so does this module, except
#: near-misses of these: `sampling_stratgy: first:10%` would otherwise train on all of the data.
ENTRY_KEYS = ("json_path", "sampling_strategy", "repeat", "exclude", *IMAGE_FOLDER_KEYS)


def _refuse_misspelt_keys(item: dict[Any, Any], where: str) -> None:
    import difflib

    for key in item:
        if not isinstance(key, str) or key in ENTRY_KEYS:
            continue
        close = difflib.get_close_matches(key, ENTRY_KEYS, n=1, cutoff=0.8)
        if close:
            raise MixtureError(f"{where}: unknown key {key!r}; did you mean {close[0]!r}?")


def _refuse_non_files(tried: list[Path], where: str) -> None:
    """A tried path that exists but is no regular file (a folder named `x.json`, a FIFO) is reported as
    what it is: "not found" would send the user looking for a file that is there."""
    for c in tried:
        try:
            mode = os.stat(c).st_mode
        except OSError:
            continue
        kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")]
        kinds += [(stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]
        what = next((name for test, name in kinds if test(mode)), "not a regular file")
        raise MixtureError(f"{where}: data file {c} is {what}, not a .json or .jsonl file")


def _repeat(value: Any, where: str) -> Fraction:
    if value is None:
        return Fraction(1)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise MixtureError(f"{where}: repeat must be a number >= 0, not {_short(value)}")
    if isinstance(value, int) and value > MAX_REPEAT:
        raise MixtureError(f"{where}: repeat must be at most {MAX_REPEAT:,}, not {_short(value)}")
    # Decimal reads any exponent at once; Fraction("1e100000000") would first compute 10**100000000.
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise MixtureError(f"{where}: repeat must be a number >= 0, not {_short(value)}") from None
    if not d.is_finite():
        raise MixtureError(f"{where}: repeat must be a number >= 0, not {_short(value)}")
    if d < 0:
        raise MixtureError(f"{where}: repeat must be >= 0, not {_short(value)}")
    if d > MAX_REPEAT:
        raise MixtureError(f"{where}: repeat must be at most {MAX_REPEAT:,}, not {_short(value)}")
    if _digits(d) > MAX_DIGITS:
        raise MixtureError(f"{where}: repeat {_short(value)} has too many digits (at most {MAX_DIGITS})")
    return Fraction(d)


def _digits(d: Decimal) -> int:
    """Digits needed to write `d` without an exponent (0.001 and 1000 both need 4)."""
    _, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    return max(len(digits), -exponent, len(digits) + exponent)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...{text[-10:]} ({len(text):,} characters)"


def spec_from_entry(
    item: Any,
    entry: int,
    *,
    root: Path,
    yaml_path: Path | None = None,
    bases: list[Base] | None = None,
    base: Base | None = None,
) -> DatasetSpec:
    """Validate one dataset entry (a mapping, or a bare path string) and locate its files.

    Relative paths are tried against `bases` (default: `root`, then the YAML's folder); a relative
    json_path is looked for only under `base` when one is given (the base `read_stage` chose for the
    whole YAML), though every base appears in `tried`. Image folders and exclude files try `base` first,
    then the other bases."""
    yaml_dir = yaml_path.parent if yaml_path is not None else None
    if bases is None:
        bases = [Base(root, "--root")]
        if yaml_dir is not None and yaml_dir != root:
            bases.append(Base(yaml_dir, "the YAML's folder"))
    folders = [b.path for b in bases]
    preferred = [base.path, *(f for f in folders if f != base.path)] if base is not None else folders
    where = f"{yaml_path or '<mixture>'}: datasets[{entry}]"
    if isinstance(item, (str, os.PathLike)):
        item = {"json_path": os.fspath(item)}
    if not isinstance(item, dict):
        raise MixtureError(f"{where}: each dataset must be a mapping with json_path, not {item!r}")
    _refuse_misspelt_keys(item, where)
    json_path = item.get("json_path")
    if not isinstance(json_path, str) or not json_path.strip():
        raise MixtureError(f"{where}: json_path is missing or not a string")
    where = f"{where} ({json_path})"
    if not json_path.lower().endswith(DATA_SUFFIXES):
        raise MixtureError(f"{where}: unsupported file type; expected a .json or .jsonl file")
    absolute = Path(os.path.expanduser(json_path)).is_absolute()
    if base is not None and not absolute:
        tried = _candidates(json_path, folders)
        at_base = _join(base.path, Path(os.path.expanduser(json_path)))
        path = at_base if at_base.is_file() else None
    else:
        path, tried = _resolve(json_path, folders)
    if path is None:
        _refuse_non_files(tried, where)
    image_folder = None
    for key in IMAGE_FOLDER_KEYS:
        if key in item and item[key] is not None:
            if not isinstance(item[key], str):
                raise MixtureError(f"{where}: {key} must be a string path, not {item[key]!r}")
            # Like json_path: the chosen base first, then the others.
            found = _candidates(item[key], preferred)
            image_folder = next((f for f in found if f.is_dir()), found[0])
            break
    exclude = None
    if item.get("exclude") is not None:
        if not isinstance(item["exclude"], str):
            raise MixtureError(f"{where}: exclude must be a string path, not {item['exclude']!r}")
        found_ex, tried_ex = _resolve(item["exclude"], preferred)
        if found_ex is None:
            tried_text = ", ".join(str(p) for p in tried_ex)
            raise MixtureError(f"{where}: exclude file {item['exclude']!r} not found; tried {tried_text}")
        exclude = found_ex
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
        base=None if absolute else base,
        bases=tuple(bases),
    )


def read_stage(
    path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None
) -> list[DatasetSpec]:
    """Parse and validate a stage YAML and locate its data files.

    Relative paths start from one base folder for the whole YAML, chosen among `root` (default: the
    working directory, where FUSION opens them), the YAML's folder and that folder's ancestors: the first
    under which every data file exists, else the one under which the most exist (see `choose_base`).
    Missing data files are reported in the specs (`path is None`, `tried` lists every candidate), not
    raised, so `check` can list them all."""
    yaml_path = Path(os.path.abspath(path))
    try:
        with open(yaml_path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise MixtureError(f"stage YAML not found: {yaml_path}", path=str(yaml_path)) from None
    except yaml.YAMLError as e:
        raise MixtureError(f"{yaml_path}: not valid YAML: {e}", path=str(yaml_path)) from None
    except UnicodeDecodeError as e:
        raise MixtureError(
            f"{yaml_path}: not UTF-8 text (byte {e.start}); save the YAML as UTF-8", path=str(yaml_path)
        ) from None
    if not isinstance(doc, dict) or "datasets" not in doc:
        raise MixtureError(f"{yaml_path}: expected a mapping with a 'datasets' list", path=str(yaml_path))
    datasets = doc["datasets"]
    if not isinstance(datasets, list):
        raise MixtureError(f"{yaml_path}: 'datasets' must be a list, not {type(datasets).__name__}")
    bases = candidate_bases(Path(root) if root is not None else None, yaml_path.parent)
    json_paths = [
        p
        for item in datasets
        if isinstance(p := item.get("json_path") if isinstance(item, dict) else item, str)
        and p.strip()
        and p.lower().endswith(DATA_SUFFIXES)
    ]
    base, found = choose_base(json_paths, bases)
    if found == 0 and root is None:
        # Nothing anywhere: expect the files beside the YAML, where a relative path starts for a reader
        # of the YAML alone (`--root` given: under the root).
        base = next(b for b in bases if b.path == yaml_path.parent)
    here = Path(os.path.abspath(root)) if root is not None else Path.cwd()
    return [
        spec_from_entry(item, k, root=here, yaml_path=yaml_path, bases=bases, base=base)
        for k, item in enumerate(datasets)
    ]


def is_stage_yaml(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).lower().endswith((".yaml", ".yml"))
