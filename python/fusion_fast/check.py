"""`fusion-fast check`: find broken records, missing or corrupt images and playground layout mistakes
before training starts.

    report = run_check("playground/train/stage1.yaml", decode=True)
    report.render(console)          # per-dataset table + first examples of each kind
    report.clean, report.problems   # list[Problem]

Record checks run on every record of every data file the target names (parsed in Rust, in batches);
image existence is checked in parallel in Rust (`_core.files_exist`); `decode=True` opens and decodes
every existing image with Pillow on a thread pool. See docs/check.md for the exact rules.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import _core
from .errors import FusionFastError, MalformedJSONError, MixtureError
from .exclude import write_exclude
from .index import JsonIndex
from .index import open as open_index
from .indexing import expand_targets
from .stage import DATA_SUFFIXES, DatasetSpec, is_stage_yaml, read_stage

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

#: Every problem kind, in the order reports list them.
KINDS = (
    "malformed_record",
    "missing_conversations",
    "bad_roles",
    "image_token_mismatch",
    "missing_image",
    "unreadable_image",
    "duplicate_id",
    "missing_json",
    "unused_json",
    "missing_image_folder",
)
_KIND_ORDER = {k: n for n, k in enumerate(KINDS)}

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
#: Roles FUSION's conversation templates know; `system` turns may only lead.
HUMAN, GPT, SYSTEM = "human", "gpt", "system"

#: Records parsed per `get_many` call.
BATCH = 4096
#: Paths per `files_exist` call: bounds the memory of one call and paces the progress bar.
EXIST_CHUNK = 1 << 18
#: Runs with at least this many records (or images to decode) get a progress bar.
PROGRESS_MIN_RECORDS = 100_000
PROGRESS_MIN_DECODES = 2_000

TargetKind = Literal["yaml", "data", "folder"]


class TargetError(FusionFastError):
    """The target of a check does not exist or is neither a stage YAML, a data file nor a folder."""


@dataclass(slots=True)
class Problem:
    """One thing wrong. `dataset` is the data file's path (None for a YAML entry whose file is missing),
    `record` the 0-based record number in that file (None for file- and layout-level problems), `offset`
    the record's byte offset in the file, `path` the image, folder or file concerned."""

    kind: str
    dataset: str | None
    record: int | None
    id: Any
    detail: str
    offset: int | None = None
    path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dataset": self.dataset,
            "record": self.record,
            "id": self.id,
            "detail": self.detail,
            "offset": self.offset,
            "path": self.path,
        }


@dataclass
class DatasetStats:
    """What was checked in one data file."""

    path: str
    image_folder: str
    records: int = 0
    images: int = 0  #: image and video references checked for existence
    problems: Counter[str] = field(default_factory=Counter)
    #: Records that would fail or mislead training (what `--write-exclude` writes).
    bad_records: set[int] = field(default_factory=set)

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass
class CheckReport:
    """The result of `run_check`."""

    target: str
    problems: list[Problem] = field(default_factory=list)
    #: Per data file, in the order checked, keyed by its path.
    datasets: dict[str, DatasetStats] = field(default_factory=dict)
    decoded: int = 0
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.problems

    @property
    def records(self) -> int:
        return sum(d.records for d in self.datasets.values())

    def counts(self) -> Counter[str]:
        """Problems per kind."""
        return Counter(p.kind for p in self.problems)

    def bad_records(self) -> dict[str, list[int]]:
        """Record numbers to exclude, per data file (files without any are left out)."""
        return {k: sorted(d.bad_records) for k, d in self.datasets.items() if d.bad_records}

    def write_exclude(self, path: str | os.PathLike[str]) -> int:
        """Write `bad_records()` as an exclude file (see `fusion_fast.exclude`); returns how many record
        numbers it holds."""
        bad: dict[str | os.PathLike[str], list[int]] = {k: v for k, v in self.bad_records().items()}
        write_exclude(path, bad)
        return sum(map(len, bad.values()))

    def to_json(self) -> dict[str, Any]:
        """The `--json` report: every problem, plus per-dataset statistics."""
        return {
            "target": self.target,
            "clean": self.clean,
            "records": self.records,
            "seconds": round(self.seconds, 3),
            "counts": {k: n for k, n in sorted(self.counts().items(), key=lambda kv: _KIND_ORDER[kv[0]])},
            "datasets": [
                {
                    "path": d.path,
                    "image_folder": d.image_folder,
                    "records": d.records,
                    "images": d.images,
                    "problems": dict(d.problems),
                    "bad_records": len(d.bad_records),
                }
                for d in self.datasets.values()
            ],
            "problems": [p.to_json() for p in self.problems],
        }

    def render(self, console: Console, *, examples: int = 3) -> None:
        """Print the per-dataset table and the first `examples` problems of each kind."""
        from rich.table import Table
        from rich.text import Text

        kinds = [k for k in KINDS if k in self.counts()]
        table = Table(title=f"fusion-fast check: {Path(self.target).name}", title_justify="left")
        table.add_column("dataset", overflow="fold")
        for col in ("records", "images", "problems"):
            table.add_column(col, justify="right", no_wrap=True)
        table.add_column("by kind", no_wrap=True)
        for d in self.datasets.values():
            table.add_row(d.name, f"{d.records:,}", f"{d.images:,}", *_problem_cells(d.problems))
        layout = Counter(p.kind for p in self.problems if p.dataset not in self.datasets)
        if layout:
            table.add_row("(layout)", "", "", *_problem_cells(layout))
        console.print(table)
        by_kind: dict[str, list[Problem]] = defaultdict(list)
        for p in self.problems:
            by_kind[p.kind].append(p)
        for k in kinds:
            shown = by_kind[k][:examples]
            console.print(Text(f"{k}: {len(by_kind[k]):,}", style="bold"))
            for p in shown:
                console.print(Text("  " + _describe(p)), soft_wrap=True)
        summary = (
            f"{self.records:,} records in {len(self.datasets)} files"
            + (f", {self.decoded:,} images decoded" if self.decoded else "")
            + f" in {self.seconds:.2f} s: "
        )
        if self.clean:
            console.print(Text(summary + "no problems", style="green"))
        else:
            console.print(Text(summary + f"{len(self.problems):,} problems", style="red"))


def _problem_cells(counts: Counter[str]) -> tuple[str, str]:
    """(total, one "kind n" line per kind in KINDS order); empty when there is nothing."""
    if not counts:
        return "", ""
    by_kind = "\n".join(f"{k} {counts[k]:,}" for k in KINDS if counts[k])
    return f"{sum(counts.values()):,}", by_kind


def _describe(p: Problem) -> str:
    where = [Path(p.dataset).name] if p.dataset else []
    if p.record is not None:
        where.append(f"record {p.record}")
    if p.id is not None:
        where.append(f"id {p.id!r}")
    if p.offset is not None:
        where.append(f"byte {p.offset}")
    text = " ".join(where) + ": " + p.detail if where else p.detail
    return text + (f" [{p.path}]" if p.path else "")


# -- targets and the FUSION layout ------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """A FUSION playground: `train/jsons/<Name>-<N>k.json` next to `train/images/<Source>/...`."""

    train: Path
    jsons: Path
    images: Path

    @classmethod
    def at(cls, train: Path) -> Layout:
        return cls(train, train / "jsons", train / "images")

    @classmethod
    def of_folder(cls, folder: Path) -> Layout | None:
        """The playground `folder` is (its root, its `train/` or its `train/jsons/`), if any."""
        if (folder / "train" / "jsons").is_dir():
            return cls.at(folder / "train")
        if (folder / "jsons").is_dir() and (folder / "images").is_dir():
            return cls.at(folder)
        if folder.name == "jsons" and (folder.parent / "images").is_dir():
            return cls.at(folder.parent)
        return None

    @classmethod
    def of_file(cls, path: Path) -> Layout | None:
        """The playground whose `jsons/` folder holds `path` (at any depth), if any."""
        for parent in path.parents:
            if parent.name == "jsons" and (parent.parent / "images").is_dir():
                return cls.at(parent.parent)
        return None

    def data_files(self) -> list[Path]:
        return _data_files(self.jsons)


def _data_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p.resolve() for p in folder.rglob("*") if p.suffix.lower() in DATA_SUFFIXES and p.is_file())


def target_kind(target: str | os.PathLike[str]) -> TargetKind:
    """What `target` is: a stage YAML, a data file or a folder. Raises `TargetError` otherwise."""
    path = Path(target)
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise TargetError(f"no such file or folder: {path}", path=str(path))
    if is_stage_yaml(path):
        return "yaml"
    if path.suffix.lower() in DATA_SUFFIXES:
        return "data"
    raise TargetError(
        f"{path}: expected a stage YAML (.yaml/.yml), a data file (.json/.jsonl) or a folder", path=str(path)
    )


@dataclass
class _DataFile:
    path: Path
    image_folder: Path | None  #: from a YAML entry


@dataclass
class _Plan:
    """What to check: data files, YAML entries whose data file is missing, and the playgrounds whose
    `jsons/` folder must be used by some YAML (with the data files those YAMLs use)."""

    files: list[_DataFile] = field(default_factory=list)
    missing: list[DatasetSpec] = field(default_factory=list)
    layouts: list[Layout] = field(default_factory=list)
    used: set[Path] = field(default_factory=set)

    def add_specs(self, specs: Iterable[DatasetSpec], *, check: bool) -> None:
        seen = {f.path for f in self.files}
        for spec in specs:
            if spec.path is None:
                if check:
                    self.missing.append(spec)
                continue
            self.used.add(spec.path)
            if check and spec.path not in seen:
                seen.add(spec.path)
                self.files.append(_DataFile(spec.path, spec.image_folder))


def _stage_specs(yamls: Iterable[Path], root: str | None) -> Iterator[DatasetSpec]:
    """The entries of every readable stage YAML in `yamls`; files that are not stage YAMLs are skipped."""
    for y in yamls:
        try:
            yield from read_stage(y, root=root)
        except MixtureError:
            continue


def _yamls_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.is_file() and is_stage_yaml(p))


def _plan(target: Path, kind: TargetKind, root: str | None) -> _Plan:
    plan = _Plan()
    if kind == "data":
        plan.files.append(_DataFile(target.resolve(), None))
    elif kind == "yaml":
        yaml_path = target.resolve()
        plan.add_specs(read_stage(yaml_path, root=root), check=True)
        plan.layouts = sorted({lay for f in plan.files if (lay := Layout.of_file(f.path))}, key=str)
        # Other stages of the same run use the rest of jsons/: their YAMLs sit beside this one or in train/.
        others = {*_yamls_in(yaml_path.parent), *(y for lay in plan.layouts for y in _yamls_in(lay.train))}
        others.discard(yaml_path)
        plan.add_specs(_stage_specs(sorted(others), root), check=False)
    else:
        layout = Layout.of_folder(target)
        if layout is None:
            plan.files = [_DataFile(p, None) for p in expand_targets([target])]
        else:
            # Only jsons/ holds annotation files; images/ may hold millions of files not worth walking.
            yamls = _yamls_in(layout.train)
            plan.add_specs(_stage_specs(yamls, root), check=True)
            from_yaml = {f.path: f for f in plan.files}
            plan.files = [from_yaml.get(p, _DataFile(p, None)) for p in layout.data_files()]
            if yamls:
                plan.layouts = [layout]
    return plan


def _image_root(data: _DataFile, image_folder: str | None, layout: Layout | None) -> Path:
    """Where relative image paths of `data` start, in FUSION's order of precedence."""
    if data.image_folder is not None:
        return data.image_folder
    if image_folder is not None:
        return Path(image_folder)
    layout = layout or Layout.of_file(data.path)
    return layout.images if layout is not None else data.path.parent


# -- the checker ------------------------------------------------------------------------------------


class _Refs:
    """The image and video paths of one file's records, as parallel lists (cheaper than an object each)."""

    __slots__ = ("records", "paths", "videos")

    def __init__(self) -> None:
        self.records: list[int] = []
        self.paths: list[str] = []
        self.videos: set[int] = set()  # positions of video paths (few)

    def add(self, record: int, paths: list[str], video: bool) -> None:
        if video:
            self.videos.update(range(len(self.paths), len(self.paths) + len(paths)))
        self.records += [record] * len(paths)
        self.paths += paths

    def __len__(self) -> int:
        return len(self.paths)


class _FileCheck:
    """The problems found in one data file so far."""

    def __init__(self, idx: JsonIndex, stats: DatasetStats) -> None:
        self.stats = stats
        self.offsets = idx.columns["offset"]
        self.ids: list[Any] = []  # per record
        self.refs = _Refs()
        self.problems: list[Problem] = []

    def add(self, kind: str, record: int, detail: str, *, path: str | None = None, bad: bool = True) -> None:
        """A problem of one record; `bad` records are the ones `--write-exclude` lists."""
        rid = self.ids[record]
        self.problems.append(
            Problem(kind, self.stats.path, record, rid, detail, int(self.offsets[record]), path)
        )
        if bad:
            self.stats.bad_records.add(record)

    def add_file_level(self, kind: str, detail: str, path: str | None = None) -> None:
        self.problems.append(Problem(kind, self.stats.path, None, None, detail, None, path))


class _Checker:
    def __init__(self, report: CheckReport, *, decode: bool, bar: _Bar) -> None:
        self.report = report
        self.decode = decode
        self.bar = bar
        self._decoded: dict[str, str | None] = {}  # resolved path -> error, across datasets

    def check_file(self, data: _DataFile, image_root: Path) -> list[Problem]:
        stats = DatasetStats(str(data.path), str(image_root))
        self.report.datasets[stats.path] = stats
        try:
            idx = open_index(data.path)
        except MalformedJSONError as e:
            where = f"line {e.line} column {e.column}: " if e.line is not None else ""
            detail = f"{where}{e.message} (the file cannot be indexed, so none of its records were checked)"
            problems = [Problem("malformed_record", stats.path, e.record, None, detail, e.offset)]
        else:
            stats.records = len(idx)
            check = _FileCheck(idx, stats)
            self._check_records(idx, check)
            stats.images = len(check.refs)
            self._check_paths(check, image_root)
            problems = check.problems
        for p in problems:
            stats.problems[p.kind] += 1
        problems.sort(key=lambda p: (-1 if p.record is None else p.record, _KIND_ORDER[p.kind]))
        return problems

    def _check_records(self, idx: JsonIndex, check: _FileCheck) -> None:
        first_with_id: dict[Any, int] = {}
        missing_id: list[int] = []
        n = len(idx)
        task = self.bar.task(f"checking {Path(idx.path).name}", n)
        for start in range(0, n, BATCH):
            for i, rec in enumerate(idx.get_many(range(start, min(n, start + BATCH))), start):
                if type(rec) is not dict:
                    check.ids.append(None)
                    check.add("malformed_record", i, f"record is a JSON {type(rec).__name__}, not an object")
                    continue
                rid = rec.get("id")
                check.ids.append(rid)
                for kind, detail in _record_problems(rec, i, check.refs):
                    check.add(kind, i, detail)
                # A missing, odd or repeated id does not stop training, so it is reported, not excluded.
                if rid is None and "id" not in rec:
                    missing_id.append(i)
                elif type(rid) is not str and type(rid) is not int:
                    check.add(
                        "malformed_record", i, f"id must be a string or an integer, not {rid!r}", bad=False
                    )
                elif (first := first_with_id.setdefault(rid, i)) != i:
                    check.add("duplicate_id", i, f"id {rid!r} is also used by record {first}", bad=False)
            self.bar.advance(task, min(BATCH, n - start))
        # A file where no record has an id simply does not use ids (FUSION's loader does not need them):
        # one file-level problem. Missing ids among records that have them are reported one by one.
        if missing_id and len(missing_id) == n:
            check.add_file_level("malformed_record", f"none of the {n:,} records has an id")
        else:
            for i in missing_id:
                check.add("malformed_record", i, "missing id", bad=False)

    def _check_paths(self, check: _FileCheck, image_root: Path) -> None:
        """Existence of every referenced file (then decoding), grouping files under missing folders."""
        refs = check.refs
        base = str(image_root)
        task = self.bar.task(f"finding images of {check.stats.name}", len(refs))
        exists = bytearray()
        for start in range(0, len(refs), EXIST_CHUNK):
            chunk = refs.paths[start : start + EXIST_CHUNK]
            exists += _core.files_exist(chunk, base)
            self.bar.advance(task, len(chunk))
        folders = _MissingFolders(image_root)
        under_missing: dict[Path, list[int]] = defaultdict(list)
        present: list[int] = []
        for k, ok in enumerate(exists):
            if ok:
                present.append(k)
            elif (folder := folders.missing_folder(refs.paths[k])) is not None:
                under_missing[folder].append(k)
            else:
                what = "video" if k in refs.videos else "image"
                path = refs.paths[k]
                check.add(
                    "missing_image",
                    refs.records[k],
                    f"{what} not found: {path}",
                    path=os.path.join(base, path),
                )
        for folder, missing in under_missing.items():
            records = sorted({refs.records[k] for k in missing})
            check.add_file_level(
                "missing_image_folder",
                f"folder does not exist; {len(missing):,} files in {len(records):,} records are under it "
                f"(first: record {records[0]}, {refs.paths[missing[0]]})",
                str(folder),
            )
            check.stats.bad_records.update(records)
        if self.decode:
            images = [k for k in present if k not in refs.videos]
            for k, error in self._decode([os.path.join(base, refs.paths[k]) for k in images], images):
                path = refs.paths[k]
                check.add(
                    "unreadable_image",
                    refs.records[k],
                    f"cannot decode {path}: {error}",
                    path=os.path.join(base, path),
                )

    def _decode(self, paths: list[str], keys: list[int]) -> Iterator[tuple[int, str]]:
        """(key, error) for each of `paths` that Pillow cannot decode; each file is decoded once a run."""
        todo = sorted(set(paths) - self._decoded.keys())
        if todo:
            task = self.bar.task("decoding images", len(todo), min_total=PROGRESS_MIN_DECODES)
            # Pillow releases the GIL while decoding, so threads use every core.
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                for path, error in zip(todo, pool.map(_decode_error, todo, chunksize=16), strict=True):
                    self._decoded[path] = error
                    self.bar.advance(task, 1)
            self.report.decoded += len(todo)
        for key, path in zip(keys, paths, strict=True):
            error = self._decoded[path]
            if error is not None:
                yield key, error


class _MissingFolders:
    """Which missing files sit under a folder that is missing altogether: the image root itself, or
    its first-level `<Source>` folder (FUSION's `train/images/<Source>/...`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root_exists = root.is_dir()
        self._sources: dict[str, bool] = {}

    def missing_folder(self, path: str) -> Path | None:
        if os.path.isabs(path):
            return None
        if not self.root_exists:
            return self.root
        head, sep, _ = path.partition("/")
        if not sep or head in ("", ".", ".."):
            return None
        exists = self._sources.get(head)
        if exists is None:
            exists = self._sources[head] = (self.root / head).is_dir()
        return None if exists else self.root / head


def _decode_error(path: str) -> str | None:
    """None when Pillow opens and fully decodes `path`, else why not."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
    except Exception as e:  # any failure means training would fail on this image too
        return f"{type(e).__name__}: {e}"
    return None


def _paths_of(value: Any, key: str) -> tuple[list[str], str | None]:
    """The paths in an `image` / `video` value, and what is wrong with it (or None)."""
    if type(value) is str:
        return [value], None
    if value is None:
        return [], f"{key} is null"
    if type(value) is not list:
        return [], f"{key} must be a path or a list of paths, not {type(value).__name__}"
    if not all(type(p) is str for p in value):
        return [], f"{key} list holds something other than a path"
    return value, None


def _conversation_text(conv: Any) -> tuple[list[tuple[str, str]], str | None]:
    """(problems, the turns' values joined by newlines when every turn is well formed)."""
    # Fast path: an even number of well-formed turns from human, gpt, human, gpt, ...
    if type(conv) is list and conv and len(conv) % 2 == 0:
        try:
            roles = [turn["from"] for turn in conv]
            text = "\n".join([turn["value"] for turn in conv])
        except (TypeError, KeyError):
            pass
        else:
            half = len(roles) // 2
            if roles[0::2].count(HUMAN) == half and roles[1::2].count(GPT) == half:
                return [], text
    return _conversation_problems(conv)


def _conversation_problems(conv: Any) -> tuple[list[tuple[str, str]], str | None]:
    """`_conversation_text` for conversations that are not plain human/gpt pairs: names the problem."""
    if conv is None:
        return [("missing_conversations", "no conversations")], None
    if not isinstance(conv, list):
        return [("missing_conversations", f"conversations is a {type(conv).__name__}, not a list")], None
    if not conv:
        return [("missing_conversations", "conversations is empty")], None
    roles, values = [], []
    for t, turn in enumerate(conv):
        if not isinstance(turn, dict):
            return [("missing_conversations", f"turn {t} is not an object")], None
        role, value = turn.get("from"), turn.get("value")
        if not isinstance(role, str):
            return [("missing_conversations", f"turn {t} has no string 'from'")], None
        if not isinstance(value, str):
            return [("missing_conversations", f"turn {t} has no string 'value'")], None
        roles.append(role)
        values.append(value)
    bad = _role_problem(roles)
    return ([("bad_roles", bad)] if bad else []), "\n".join(values)


def _role_problem(roles: list[str]) -> str | None:
    """Optional leading system turns, then human, gpt, human, gpt, ... ending with gpt."""
    start = 0
    while start < len(roles) and roles[start] == SYSTEM:
        start += 1
    if start == len(roles):
        return "only system turns"
    for t in range(start, len(roles)):
        expected = HUMAN if (t - start) % 2 == 0 else GPT
        if roles[t] != expected:
            return f"turn {t} is from {roles[t]!r}, expected {expected!r}"
    if (len(roles) - start) % 2:
        return f"turn {len(roles) - 1} (human) has no gpt answer"
    return None


def _record_problems(rec: dict[str, Any], i: int, refs: _Refs) -> list[tuple[str, str]]:
    """(kind, detail) of everything wrong with one record object; its image/video paths go to `refs`."""
    found: list[tuple[str, str]] = []
    images = videos = 0
    if "image" in rec:
        paths, bad = _paths_of(rec["image"], "image")
        refs.add(i, paths, False)
        images = len(paths)
        if bad:
            found.append(("malformed_record", bad))
    if "video" in rec:
        paths, bad = _paths_of(rec["video"], "video")
        refs.add(i, paths, True)
        videos = len(paths)
        if bad:
            found.append(("malformed_record", bad))
    conv_found, text = _conversation_text(rec.get("conversations"))
    found += conv_found
    if text is not None and not found:
        # Turns are joined by newlines, which no token contains, so no token is counted twice or made up.
        image_tokens = text.count(IMAGE_TOKEN)
        video_tokens = text.count(VIDEO_TOKEN)
        if image_tokens == images and video_tokens == videos:
            return found
        # LLaVA-OneVision writes a video-only record's prompt with <image> tokens: accept that too.
        if videos and "image" not in rec and video_tokens == 0 and image_tokens == videos:
            return found
        if image_tokens != images:
            found.append(("image_token_mismatch", f"{image_tokens} {IMAGE_TOKEN} tokens for {images} images"))
        if video_tokens != videos:
            found.append(("image_token_mismatch", f"{video_tokens} {VIDEO_TOKEN} tokens for {videos} videos"))
    return found


# -- progress ---------------------------------------------------------------------------------------


class _Bar:
    """A rich progress bar on stderr, shown only for long runs (tasks below `min_total` stay hidden)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    def task(self, description: str, total: int, *, min_total: int = PROGRESS_MIN_RECORDS) -> TaskID | None:
        if self.progress is None or total < min_total:
            return None
        return self.progress.add_task(description, total=total)

    def advance(self, task: TaskID | None, n: int) -> None:
        if self.progress is not None and task is not None:
            self.progress.advance(task, n)


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[_Bar]:
    if not enabled:
        yield _Bar(None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        yield _Bar(progress)


# -- entry point ------------------------------------------------------------------------------------


def run_check(
    target: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    image_folder: str | os.PathLike[str] | None = None,
    decode: bool = False,
    progress: bool = False,
) -> CheckReport:
    """Check every record of the data files `target` names, the files they reference and, for a FUSION
    playground, its layout.

    `target`: a stage YAML (every data file it lists, whole), a `.json` / `.jsonl` file, or a folder
    (every data file inside; a playground root, `train/` or `train/jsons/` folder also gets the layout
    checks against the stage YAMLs in `train/`). `root`: where relative YAML paths start (default: the
    working directory, then the YAML's folder). `image_folder`: where relative image paths start for
    entries without their own `image_folder`. `decode`: also decode every existing image (Pillow).
    `progress`: show a progress bar on stderr for long runs. Raises `TargetError` for a target that
    does not exist or is of an unknown type, `MixtureError` for an unreadable target stage YAML (other
    YAMLs of a playground that are not stage YAMLs are ignored).
    """
    import time

    if decode:
        try:
            import PIL  # noqa: F401
        except ImportError:
            raise FusionFastError("decoding images needs Pillow: pip install pillow") from None
    started = time.perf_counter()
    target_path = Path(target)
    kind = target_kind(target_path)
    root_str = os.fspath(root) if root is not None else None
    folder_str = os.fspath(image_folder) if image_folder is not None else None
    plan = _plan(target_path, kind, root_str)
    folder_layout = Layout.of_folder(target_path) if kind == "folder" else None
    report = CheckReport(os.fspath(target))
    report.problems += [_missing_json(spec, root_given=root is not None) for spec in plan.missing]
    with _progress_bar(progress) as bar:
        checker = _Checker(report, decode=decode, bar=bar)
        for data in plan.files:
            report.problems += checker.check_file(data, _image_root(data, folder_str, folder_layout))
    for layout in plan.layouts:
        for unused in (p for p in layout.data_files() if p not in plan.used):
            detail = f"in {layout.jsons} but used by no stage YAML"
            report.problems.append(Problem("unused_json", str(unused), None, None, detail, None, str(unused)))
            if (stats := report.datasets.get(str(unused))) is not None:  # a folder target checked it too
                stats.problems["unused_json"] += 1
    report.seconds = time.perf_counter() - started
    return report


def _missing_json(spec: DatasetSpec, *, root_given: bool) -> Problem:
    """`path` is where the file is expected: under `root` when one was given, else beside the YAML."""
    tried = ", ".join(str(p) for p in spec.tried)
    expected = spec.tried[0] if root_given else spec.tried[-1]
    return Problem(
        "missing_json",
        None,
        None,
        None,
        f"{spec.where}: data file not found (tried {tried})",
        None,
        str(expected),
    )


__all__ = [
    "KINDS",
    "CheckReport",
    "DatasetStats",
    "Layout",
    "Problem",
    "TargetError",
    "run_check",
    "target_kind",
]
