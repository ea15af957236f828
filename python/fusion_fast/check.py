"""`fusion-fast check`: find broken records, missing or corrupt images and playground layout mistakes
before training starts.

    report = run_check("playground/train/stage1.yaml", decode=True)
    report.clean, report.problems   # list[Problem]; `fusion-fast check` renders it (cli/check.py)

Record checks run on every record of every data file the target names (parsed in Rust, in batches);
image existence is checked in parallel in Rust (`_core.files_exist`); `decode=True` opens and decodes
every existing image with Pillow on a thread pool. See docs/check.md for the exact rules.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import _core
from .errors import FusionFastError, MalformedJSONError, MixtureError
from .exclude import write_exclude
from .images import nearest_store, store_for
from .index import JsonIndex
from .index import open as open_index
from .indexing import TargetError, expand_targets, index_file
from .playground import Playground
from .stage import DATA_SUFFIXES, DatasetSpec, is_stage_yaml, read_stage

if TYPE_CHECKING:
    from typing import Protocol

    class ProgressSink(Protocol):
        """Where long work reports progress (`fusion_fast.cli.output.Progress` is one)."""

        def task(self, what: str, total: int, unit: str = ..., *, bar: bool = ...) -> int: ...
        def update(self, task: int | None, done: int) -> None: ...
        def advance(self, task: int | None, n: int) -> None: ...
        def done(self, task: int | None) -> None: ...


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
#: Paths gathered before one `files_exist` call (bounds memory), and before decoding them (paces the bar).
EXIST_CHUNK = 1 << 18
DECODE_CHUNK = 1 << 12
#: States of a record's id.
ID_OK, ID_MISSING, ID_INVALID = 0, 1, 2
#: Files with at least this many records (or images to decode) get a progress bar.
PROGRESS_MIN_RECORDS = 100_000
PROGRESS_MIN_DECODES = 2_000
#: Data files at least this big show the progress of building their index.
PROGRESS_MIN_BYTES = 64 << 20

TargetKind = Literal["yaml", "data", "folder"]


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


# -- targets and the FUSION layout ------------------------------------------------------------------


def _absolute(path: str | os.PathLike[str]) -> Path:
    """Absolute but not resolved: a data file linked into `jsons/` stays in the playground, and paths
    compare equal to those `read_stage` returns."""
    return Path(os.path.abspath(path))


def _data_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        _absolute(p) for p in folder.rglob("*") if p.suffix.lower() in DATA_SUFFIXES and p.is_file()
    )


def target_kind(target: str | os.PathLike[str]) -> TargetKind:
    """What `target` is: a stage YAML, a data file or a folder. Raises `TargetError` otherwise."""
    path = Path(target)
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise TargetError("no such file or folder; check the path", path=str(path))
    if is_stage_yaml(path):
        return "yaml"
    if path.suffix.lower() in DATA_SUFFIXES:
        return "data"
    raise TargetError(
        "expected a stage YAML (.yaml/.yml), a data file (.json/.jsonl) or a folder", path=str(path)
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
    layouts: list[Playground] = field(default_factory=list)
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
        plan.files.append(_DataFile(_absolute(target), None))
    elif kind == "yaml":
        yaml_path = _absolute(target)
        plan.add_specs(read_stage(yaml_path, root=root), check=True)
        plan.layouts = sorted({lay for f in plan.files if (lay := Playground.of_file(f.path))}, key=str)
        # Other stages of the same run use the rest of jsons/: their YAMLs sit beside this one or in train/.
        others = {*_yamls_in(yaml_path.parent), *(y for lay in plan.layouts for y in _yamls_in(lay.train))}
        others.discard(yaml_path)
        plan.add_specs(_stage_specs(sorted(others), root), check=False)
    else:
        layout = Playground.of_folder(_absolute(target))
        if layout is None:
            plan.files = [_DataFile(p, None) for p in expand_targets([target])]
        else:
            # Only jsons/ holds annotation files; images/ may hold millions of files not worth walking.
            yamls = _yamls_in(layout.train)
            plan.add_specs(_stage_specs(yamls, root), check=True)
            from_yaml = {f.path: f for f in plan.files}
            plan.files = [from_yaml.get(p, _DataFile(p, None)) for p in _data_files(layout.jsons)]
            if yamls:
                plan.layouts = [layout]
    return plan


def _image_root(data: _DataFile, image_folder: str | None, layout: Playground | None) -> Path:
    """Where relative image paths of `data` start, in FUSION's order of precedence."""
    if data.image_folder is not None:
        return data.image_folder
    if image_folder is not None:
        return Path(image_folder)
    layout = layout or Playground.of_file(data.path)
    return layout.images if layout is not None else data.path.parent


# -- the checker ------------------------------------------------------------------------------------


class _Refs:
    """Image and video paths waiting for the existence check, as parallel lists (cheaper than an object
    each), with the ids of the records they come from."""

    __slots__ = ("records", "paths", "videos", "ids")

    def __init__(self) -> None:
        self.records: list[int] = []
        self.paths: list[str] = []
        self.videos: set[int] = set()  # positions of video paths (few)
        self.ids: dict[int, Any] = {}

    def add(self, record: int, rid: Any, paths: list[str], video: bool) -> None:
        if video:
            self.videos.update(range(len(self.paths), len(self.paths) + len(paths)))
        self.records += [record] * len(paths)
        self.paths += paths
        self.ids[record] = rid

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class _MissingFolder:
    """Files under one folder that does not exist."""

    first_record: int
    first_path: str
    files: int = 0
    records: int = 0
    last_record: int = -1


class _MissingFolders:
    """Which missing files sit under a folder that is missing altogether: the image root itself, or
    its first-level `<Source>` folder (FUSION's `train/images/<Source>/...`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root_exists = root.is_dir()
        self._sources: dict[str, bool] = {}
        self.found: dict[Path, _MissingFolder] = {}

    def folder_of(self, path: str) -> Path | None:
        """The missing folder a missing file `path` is under, if any."""
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

    def add(self, folder: Path, record: int, path: str) -> None:
        """Count one missing file; records arrive in increasing order."""
        entry = self.found.get(folder)
        if entry is None:
            entry = self.found[folder] = _MissingFolder(record, path)
        entry.files += 1
        if record != entry.last_record:
            entry.records += 1
            entry.last_record = record


class _FileCheck:
    """Checks one data file, streaming: records in batches, their paths in chunks, so memory stays
    bounded by the chunk size (plus the problems found and one id hash per record)."""

    def __init__(self, checker: _Checker, idx: JsonIndex, stats: DatasetStats, image_root: Path) -> None:
        self.checker = checker
        self.idx = idx
        self.stats = stats
        self.base = str(image_root)
        self.offsets = idx.columns["offset"]
        self.refs = _Refs()
        self.folders = _MissingFolders(image_root)
        self.problems: list[Problem] = []
        self.chunk = DECODE_CHUNK if checker.decode else EXIST_CHUNK
        n = len(idx)
        # Ids are compared by hash, 8 bytes a record; equal hashes are confirmed by re-reading the ids.
        self.id_hash = np.zeros(n, dtype=np.int64)
        self.id_state = np.full(n, ID_INVALID, dtype=np.int8)

    def add(
        self, kind: str, record: int, rid: Any, detail: str, *, path: str | None = None, bad: bool = True
    ) -> None:
        """A problem of one record; `bad` records are the ones `--write-exclude` lists."""
        self.problems.append(
            Problem(kind, self.stats.path, record, rid, detail, int(self.offsets[record]), path)
        )
        if bad:
            self.stats.bad_records.add(record)

    def add_file_level(self, kind: str, detail: str, path: str | None = None) -> None:
        self.problems.append(Problem(kind, self.stats.path, None, None, detail, None, path))

    def run(self, bar: _Bar) -> list[Problem]:
        n = len(self.idx)
        images = int(self.idx.columns["images"].sum())
        big = n >= PROGRESS_MIN_RECORDS or (self.checker.decode and images >= PROGRESS_MIN_DECODES)
        # On a terminal only long runs get a bar: many records, or many images to decode.
        task = bar.task(f"checking {self.stats.name}", n, "records", big=big)
        for start in range(0, n, BATCH):
            stop = min(n, start + BATCH)
            self._check_records(start, self.idx.get_many(range(start, stop)))
            if len(self.refs) >= self.chunk:
                self._check_paths()
            bar.advance(task, stop - start)
        bar.done(task)
        self._check_paths()
        self._report_ids()
        for folder, entry in self.folders.found.items():
            self.add_file_level(
                "missing_image_folder",
                f"folder does not exist; {entry.files:,} file{_s(entry.files)} in {entry.records:,} "
                f"record{_s(entry.records)} {'is' if entry.files == 1 else 'are'} under it "
                f"(first: record {entry.first_record}, {entry.first_path})",
                str(folder),
            )
        return self.problems

    def _check_records(self, start: int, records: list[Any]) -> None:
        hashes, states = [], []
        for i, rec in enumerate(records, start):
            if type(rec) is not dict:
                hashes.append(0)
                states.append(ID_INVALID)
                self.add("malformed_record", i, None, f"record is a JSON {type(rec).__name__}, not an object")
                continue
            rid = rec.get("id")
            for kind, detail in _record_problems(rec, i, rid, self.refs):
                self.add(kind, i, rid, detail)
            # A missing, odd or repeated id does not stop training, so it is reported, not excluded.
            if type(rid) is str or type(rid) is int:
                hashes.append(hash(rid))
                states.append(ID_OK)
                continue
            hashes.append(0)
            if rid is None and "id" not in rec:
                states.append(ID_MISSING)
            else:
                states.append(ID_INVALID)
                self.add(
                    "malformed_record", i, rid, f"id must be a string or an integer, not {rid!r}", bad=False
                )
        self.id_hash[start : start + len(records)] = hashes
        self.id_state[start : start + len(records)] = states

    def _report_ids(self) -> None:
        n = len(self.idx)
        missing = np.flatnonzero(self.id_state == ID_MISSING)
        # A file where no record has an id simply does not use ids (FUSION's loader does not need them):
        # one file-level problem. Missing ids among records that have them are reported one by one.
        if n and len(missing) == n:
            self.add_file_level("malformed_record", f"none of the {n:,} records has an id")
        else:
            for i in missing.tolist():
                self.add("malformed_record", i, None, "missing id", bad=False)
        with_id = np.flatnonzero(self.id_state == ID_OK)
        order = with_id[np.argsort(self.id_hash[with_id], kind="stable")]
        hashes = self.id_hash[order]
        shared = np.zeros(len(order), dtype=bool)
        shared[1:] = hashes[1:] == hashes[:-1]
        shared[:-1] |= shared[1:]
        candidates = np.sort(order[shared])
        first_with_id: dict[Any, int] = {}
        for start in range(0, len(candidates), BATCH):
            batch = candidates[start : start + BATCH]
            for i, rec in zip(batch.tolist(), self.idx.get_many(batch), strict=True):
                rid = rec["id"]
                if (first := first_with_id.setdefault(rid, i)) != i:
                    self.add("duplicate_id", i, rid, f"id {rid!r} is also used by record {first}", bad=False)

    def _check_paths(self) -> None:
        """Existence of the pending paths (then decoding), grouping files under missing folders."""
        refs, self.refs = self.refs, _Refs()
        if not refs:
            return
        self.stats.images += len(refs)
        present: list[int] = []
        for k, ok in enumerate(_core.files_exist(refs.paths, self.base)):
            path, record = refs.paths[k], refs.records[k]
            if ok or _in_image_store(os.path.join(self.base, path)):
                if k not in refs.videos:
                    present.append(k)
            elif (folder := self.folders.folder_of(path)) is not None and not _has_image_store(
                os.path.join(self.base, path)
            ):
                self.folders.add(folder, record, path)
                self.stats.bad_records.add(record)
            else:
                what = "video" if k in refs.videos else "image"
                full = os.path.join(self.base, path)
                self.add("missing_image", record, refs.ids[record], f"{what} not found: {path}", path=full)
        if self.checker.decode and present:
            paths = [os.path.join(self.base, refs.paths[k]) for k in present]
            for k, path, error in zip(present, paths, self.checker.decode_errors(paths), strict=True):
                if error is not None:
                    record = refs.records[k]
                    detail = f"cannot decode {refs.paths[k]}: {error}"
                    self.add("unreadable_image", record, refs.ids[record], detail, path=path)


class _Checker:
    def __init__(self, report: CheckReport, *, decode: bool, bar: _Bar) -> None:
        self.report = report
        self.decode = decode
        self.bar = bar
        self._pool: ThreadPoolExecutor | None = None

    def check_file(self, data: _DataFile, image_root: Path) -> list[Problem]:
        stats = DatasetStats(str(data.path), str(image_root))
        self.report.datasets[stats.path] = stats
        try:
            idx = self._open(data.path)
        except MalformedJSONError as e:
            where = f"line {e.line} column {e.column}: " if e.line is not None else ""
            detail = f"{where}{e.message} (the file cannot be indexed, so none of its records were checked)"
            problems = [Problem("malformed_record", stats.path, e.record, None, detail, e.offset)]
        else:
            stats.records = len(idx)
            problems = _FileCheck(self, idx, stats, image_root).run(self.bar)
        for p in problems:
            stats.problems[p.kind] += 1
        problems.sort(key=lambda p: (-1 if p.record is None else p.record, _KIND_ORDER[p.kind]))
        return problems

    def _open(self, path: Path) -> JsonIndex:
        """The file's index; building a big one shows its progress."""
        size = path.stat().st_size
        if self.bar.sink is None:
            return open_index(path)
        task = self.bar.task(f"indexing {path.name}", size, "bytes", big=size >= PROGRESS_MIN_BYTES)
        try:
            idx, _ = index_file(path, on_progress=lambda _path, done, _total: self.bar.update(task, done))
        finally:
            self.bar.done(task)
        return idx

    def decode_errors(self, paths: list[str]) -> list[str | None]:
        """For each path, None when Pillow decodes it, else why not. Each distinct path is decoded once."""
        distinct = list(dict.fromkeys(paths))
        if self._pool is None:
            # Pillow releases the GIL while decoding, so threads use every core.
            self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        errors = dict(zip(distinct, self._pool.map(_decode_error, distinct, chunksize=16), strict=True))
        self.report.decoded += len(distinct)
        return [errors[p] for p in paths]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def _in_image_store(path: str) -> bool:
    return store_for(path) is not None


def _has_image_store(path: str) -> bool:
    """Whether a folder above `path` has an image store (then a missing folder is not the problem)."""
    return nearest_store(path) is not None


def _decode_error(path: str) -> str | None:
    """None when Pillow opens and fully decodes `path`, else why not."""
    from .images import open_path  # a file, else a member of its folder's image store

    try:
        with open_path(path) as img:
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


def _record_problems(rec: dict[str, Any], i: int, rid: Any, refs: _Refs) -> list[tuple[str, str]]:
    """(kind, detail) of everything wrong with one record object; its image/video paths go to `refs`."""
    found: list[tuple[str, str]] = []
    counts = {"image": 0, "video": 0}
    for key in counts:
        if key in rec:
            paths, bad = _paths_of(rec[key], key)
            refs.add(i, rid, paths, key == "video")
            counts[key] = len(paths)
            if bad:
                found.append(("malformed_record", bad))
    images, videos = counts["image"], counts["video"]
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
            found.append(
                (
                    "image_token_mismatch",
                    f"{image_tokens} {IMAGE_TOKEN} token{_s(image_tokens)} for {images} image{_s(images)}",
                )
            )
        if video_tokens != videos:
            found.append(
                (
                    "image_token_mismatch",
                    f"{video_tokens} {VIDEO_TOKEN} token{_s(video_tokens)} for {videos} video{_s(videos)}",
                )
            )
    return found


# -- progress ---------------------------------------------------------------------------------------


class _Bar:
    """Progress reported to a `ProgressSink`, or nowhere."""

    def __init__(self, sink: ProgressSink | None) -> None:
        self.sink = sink

    def task(self, description: str, total: int, unit: str, *, big: bool) -> int | None:
        """A task for every file: logs get a line when it runs long; a terminal shows a bar only for
        `big` ones."""
        return None if self.sink is None else self.sink.task(description, total, unit, bar=big)

    def advance(self, task: int | None, n: int) -> None:
        if self.sink is not None:
            self.sink.advance(task, n)

    def update(self, task: int | None, completed: int) -> None:
        if self.sink is not None:
            self.sink.update(task, completed)

    def done(self, task: int | None) -> None:
        """End a finished task, so checking many files does not stack up bars."""
        if self.sink is not None:
            self.sink.done(task)


@contextmanager
def _progress_bar(progress: bool | ProgressSink) -> Iterator[_Bar]:
    if progress is False:
        yield _Bar(None)
    elif progress is True:
        from .cli.output import Progress

        with Progress() as sink:
            yield _Bar(sink)
    else:
        yield _Bar(progress)


# -- entry point ------------------------------------------------------------------------------------


def run_check(
    target: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    image_folder: str | os.PathLike[str] | None = None,
    decode: bool = False,
    progress: bool | ProgressSink = False,
) -> CheckReport:
    """Check every record of the data files `target` names, the files they reference and, for a FUSION
    playground, its layout.

    `target`: a stage YAML (every data file it lists, whole), a `.json` / `.jsonl` file, or a folder
    (every data file inside; a playground root, `train/` or `train/jsons/` folder also gets the layout
    checks against the stage YAMLs in `train/`). `root`: where relative YAML paths start (default: the
    working directory, then the YAML's folder). `image_folder`: where relative image paths start for
    entries without their own `image_folder`. `decode`: also decode every existing image (Pillow).
    `progress`: report long work to this `ProgressSink`, or (True) on stderr: a bar on a terminal, a line
    every few seconds in a log. Raises `TargetError` for a target that
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
    if not plan.files and not plan.missing:
        raise TargetError("no .json / .jsonl data files to check", path=str(target_path))
    folder_layout = Playground.of_folder(_absolute(target_path)) if kind == "folder" else None
    report = CheckReport(os.fspath(target))
    report.problems += [_missing_json(spec, root_given=root is not None) for spec in plan.missing]
    with _progress_bar(progress) as bar:
        checker = _Checker(report, decode=decode, bar=bar)
        try:
            for data in plan.files:
                report.problems += checker.check_file(data, _image_root(data, folder_str, folder_layout))
        finally:
            checker.close()
    for layout in plan.layouts:
        for unused in (p for p in _data_files(layout.jsons) if p not in plan.used):
            detail = f"in {layout.jsons} but used by no stage YAML"
            report.problems.append(Problem("unused_json", str(unused), None, None, detail, None, str(unused)))
            if (stats := report.datasets.get(str(unused))) is not None:  # a folder target checked it too
                stats.problems["unused_json"] += 1
    report.seconds = time.perf_counter() - started
    return report


def _missing_json(spec: DatasetSpec, *, root_given: bool) -> Problem:
    """`path` is where the file is expected: under `root` when one was given, else beside the YAML."""
    tried = ", ".join(str(p) for p in spec.tried)
    expected = spec.expected
    detail = f"{spec.where}: data file not found (tried {tried})"
    return Problem("missing_json", None, None, None, detail, None, str(expected))


def _s(n: int) -> str:
    """The plural ending for a count: "" for one, "s" otherwise."""
    return "" if n == 1 else "s"


__all__ = [
    "KINDS",
    "CheckReport",
    "DatasetStats",
    "Problem",
    "TargetError",
    "run_check",
    "target_kind",
]
