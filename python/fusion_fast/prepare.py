"""`fusion-fast prepare`: from downloaded (or Hugging Face Hub) files to a ready, indexed FUSION playground.

    plan = plan_prepare("downloads/FUSION-Finetune-12M", "playground")
    result = run_prepare(plan, jobs=8)
    result.ok   # every file in place, every JSON indexed, `fusion-fast check` clean

What goes where, under `PLAYGROUND/train/`:

- every `.json` / `.jsonl` file of the download -> `jsons/<same name>` (hard link, else a copy; never
  rewritten);
- every image archive or unpacked image folder -> `images/`, nested so that the `image` / `video` paths
  of the records resolve (`decide_placement`);
- a stage YAML in FUSION's format listing every annotation file with `sampling_strategy: "all"`.

Archives are extracted into a temporary folder and moved into place only when complete; a marker per
archive (`images/.fusion-fast/<archive>.done`, see `fusion_fast.archives`) lets a re-run skip what is
in place and redo what an interrupted run left. See docs/prepare.md.
"""

from __future__ import annotations

import filecmp
import json
import multiprocessing
import os
import queue
import re
import shutil
import signal
import tempfile
import threading
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatch
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .archives import (
    DEFAULT_LIMITS,
    IMAGE_SUFFIXES,
    TMP_PREFIX,
    Archive,
    Extracted,
    FolderUnit,
    ImageUnit,
    Marker,
    SizeLimits,
    Stamp,
    archive_base,
    check_symlinks,
    clean_stale_tmp,
    group_archives,
    is_in_place,
    place,
    read_markers,
    strip_components,
    tmp_dir,
    write_marker,
)
from .errors import FusionFastError
from .index import HAS_IMAGE, HAS_VIDEO, JsonIndex
from .index import open as open_index
from .indexing import index_file
from .playground import Playground, state_folder
from .prepare_shards import (
    DEFAULT_IMAGES,
    IMAGES_MODES,
    StoreEntry,
    build_store,
    check_not_shadowing,
    check_targets,
    clean_stale_files,
    how_readable,
    list_members,
    make_readable,
    marker_archive,
    recorded_archive,
    remove_old_shards,
)
from .stage import DATA_SUFFIXES

if TYPE_CHECKING:
    from .check import CheckReport

#: `owner/name`: a Hugging Face dataset repository id.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: Members of a unit sampled to decide its nesting.
SAMPLE = 512
#: At most this many leading path components are stripped from members.
MAX_STRIP = 4
#: Candidate prefixes tried per strip depth.
MAX_PREFIXES = 32
#: Members listed per archive by a dry run (a compressed tar has to be decompressed to be listed).
DRY_RUN_MEMBERS = 10_000
#: Records parsed per `get_many` call when collecting image paths.
BATCH = 65_536
#: First line of the stage YAMLs written here; only such a file is ever overwritten.
YAML_HEADER = "# FUSION training stage written by `fusion-fast prepare`"

BytesProgress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) of the extraction work."""


# -- the source --------------------------------------------------------------------------------------
def resolve_source(
    source: str, *, revision: str | None = None, include: Sequence[str] = ()
) -> tuple[Path, str]:
    """(local folder, name) of SOURCE: an existing folder as it is, or a Hugging Face dataset id
    (`owner/name`) downloaded with `huggingface_hub.snapshot_download` into its usual cache."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        if revision is not None:
            raise FusionFastError("--revision only applies to a Hugging Face dataset id, not a folder")
        return folder.resolve(), folder.resolve().name
    if not _HUB_ID.match(source) or folder.exists():
        raise FusionFastError(
            f"SOURCE {source!r} is neither a folder nor a Hugging Face dataset id such as "
            "starriver030515/FUSION-Pretrain-10M"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FusionFastError(
            f"{source!r} is not a folder here; downloading it from the Hugging Face Hub needs "
            "huggingface_hub: pip install 'fusion-fast[hub]'"
        ) from None
    local = snapshot_download(
        source, repo_type="dataset", revision=revision, allow_patterns=list(include) or None
    )
    return Path(local), source.split("/", 1)[1]


@dataclass
class SourceFiles:
    """What a download folder holds: annotation files, archives and unpacked image folders."""

    jsons: list[tuple[str, Path]]  #: (path relative to the folder, file)
    units: list[ImageUnit]


def scan_source(folder: Path, *, skip: Path | None = None, include: Sequence[str] = ()) -> SourceFiles:
    """Find annotation files, archives (split parts grouped) and unpacked image folders under `folder`.

    Hidden files and folders are ignored, and so is `skip` (the playground, if it lies inside). With
    `include`, only files whose relative path matches one of the globs are taken (the Hub's
    `allow_patterns` semantics). An unpacked image folder is a folder holding images and no annotation
    file or archive at any depth, whose parent does hold some (or is the download folder); loose images
    beside annotation files or archives form a unit of their own."""
    skip_real = os.path.realpath(skip) if skip is not None else None
    jsons: list[tuple[str, Path]] = []
    archive_files: list[tuple[str, Path]] = []
    images: dict[str, list[tuple[str, int, int]]] = defaultdict(list)  # dir (relative) -> its own images
    impure: set[str] = set()  # dirs directly holding annotation files or archives
    dirs: list[str] = []
    for top, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(
            d
            for d in subdirs
            if not d.startswith(".") and os.path.realpath(os.path.join(top, d)) != skip_real
        )
        rel_dir = os.path.relpath(top, folder).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir
        dirs.append(rel_dir)
        for name in sorted(files):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if name.startswith(".") or (include and not any(fnmatch(rel, g) for g in include)):
                continue
            lower = name.lower()
            path = Path(top, name)
            if lower.endswith(DATA_SUFFIXES):
                jsons.append((rel, path))
                impure.add(rel_dir)
            elif archive_base(name) is not None:
                archive_files.append((rel, path))
                impure.add(rel_dir)
            elif lower.endswith(IMAGE_SUFFIXES):
                st = path.stat()
                images[rel_dir].append((name, st.st_size, st.st_mtime_ns))
    return SourceFiles(jsons, [*group_archives(archive_files), *_folder_units(folder, dirs, images, impure)])


def _parent(rel_dir: str) -> str | None:
    return None if rel_dir == "" else rel_dir.rpartition("/")[0]


def _folder_units(
    folder: Path, dirs: list[str], images: dict[str, list[tuple[str, int, int]]], impure: set[str]
) -> list[FolderUnit]:
    children: dict[str, list[str]] = defaultdict(list)
    for d in dirs:
        if (parent := _parent(d)) is not None:
            children[parent].append(d)
    impure_below: set[str] = set()
    images_below: set[str] = set()
    for d in sorted(dirs, key=lambda d: d.count("/") if d else -1, reverse=True):  # deepest first
        if d in impure or any(c in impure_below for c in children[d]):
            impure_below.add(d)
        if images.get(d) or any(c in images_below for c in children[d]):
            images_below.add(d)

    def subtree(d: str, rel: str = "") -> Iterator[tuple[str, int, int]]:
        yield from ((rel + n, size, mtime) for n, size, mtime in images.get(d, []))
        for c in children[d]:
            yield from subtree(c, f"{rel}{c.rpartition('/')[2]}/")

    units = []
    for d in dirs:
        parent = _parent(d)
        if d not in impure_below and (parent is None or parent in impure_below) and d in images_below:
            files, key = list(subtree(d)), f"{d}/" if d else "./"
        elif d in impure_below and images.get(d):
            files, key = [(n, size, mtime) for n, size, mtime in images[d]], f"{d}/*" if d else "./*"
        else:
            continue
        # Members keep the folder's own name (so `PixelProse/000/1.jpg` stays recognisable) unless the
        # folder is an `images/` root itself.
        name = d.rpartition("/")[2] or folder.name
        lead = "" if name == "images" else f"{name}/"
        base = folder / d if not lead else (folder / d).parent
        units.append(FolderUnit(key, folder / d, base, sorted((lead + p, s, m) for p, s, m in files)))
    return units


# -- what the records reference ----------------------------------------------------------------------
class References:
    """Every image / video path the annotation files reference (kept as 64-bit hashes) and how many
    references each folder has: enough to tell where an archive's members must go."""

    def __init__(self, paths: Iterable[str]) -> None:
        hashes = array("q")
        folders: Counter[str] = Counter()
        for p in paths:
            hashes.append(hash(p))
            folders[p.rpartition("/")[0]] += 1
        folders.pop("", None)
        self._hashes = np.unique(np.frombuffer(hashes, dtype=np.int64))
        self._by_name: dict[str, list[str]] = defaultdict(list)
        for d in folders:
            self._by_name[d.rpartition("/")[2]].append(d)
        self._top_folders = [d for d, _ in folders.most_common(MAX_PREFIXES)]

    @classmethod
    def from_indexes(cls, indexes: Iterable[JsonIndex]) -> References:
        """The references of every record with an `image` or `video` key (per the index's flags)."""
        return cls(_referenced_paths(indexes))

    def __len__(self) -> int:
        return len(self._hashes)

    def contains(self, paths: Sequence[str]) -> np.ndarray:
        """Whether each path is referenced (a bool array)."""
        h = np.fromiter((hash(p) for p in paths), dtype=np.int64, count=len(paths))
        if not len(self._hashes):
            return np.zeros(len(paths), dtype=bool)
        pos = np.minimum(np.searchsorted(self._hashes, h), len(self._hashes) - 1)
        return self._hashes[pos] == h

    def prefixes_for(self, tails: Sequence[str]) -> list[str]:
        """Candidate prefixes P (`""` first) such that P + tail is a referenced path for some tails:
        P + the tail's folder must be a referenced folder (tails without a folder: the busiest ones)."""
        counts: Counter[str] = Counter()
        for tail in tails:
            folder = tail.rpartition("/")[0]
            if not folder:
                counts.update(f"{d}/" for d in self._top_folders)
                continue
            for d in self._by_name.get(folder.rpartition("/")[2], ()):
                if d.endswith(f"/{folder}"):
                    counts[d[: len(d) - len(folder)]] += 1
        return ["", *(p for p, _ in counts.most_common(MAX_PREFIXES))]


def _referenced_paths(indexes: Iterable[JsonIndex]) -> Iterator[str]:
    for idx in indexes:
        rows = np.flatnonzero(idx.columns["flags"] & (HAS_IMAGE | HAS_VIDEO))
        for start in range(0, len(rows), BATCH):
            for rec in idx.get_many(rows[start : start + BATCH]):
                if not isinstance(rec, dict):
                    continue
                for key in ("image", "video"):
                    value = rec.get(key)
                    for p in value if isinstance(value, list) else [value]:
                        if isinstance(p, str) and p:
                            while p.startswith("./"):
                                p = p[2:]
                            yield p


@dataclass(frozen=True)
class Placement:
    """Member `m` of a unit goes to `images/<prefix><m without its first strip components>`."""

    strip: int
    prefix: str  #: "" or a relative folder ending with "/"
    matched: int  #: sampled members whose target is referenced by a record
    sampled: int
    reason: str  #: "records", "single top folder", "archive name", "as is" or "empty"

    def target(self, member: str) -> str:
        return self.prefix + strip_components(member, self.strip)

    def describe(self) -> str:
        """How the placement was chosen, e.g. "40/40 sampled files referenced, first folder dropped"."""
        how = (
            f"{self.matched}/{self.sampled} sampled files referenced"
            if self.reason == "records"
            else self.reason
        )
        if self.strip:
            how += f", top {f'{self.strip} folders' if self.strip > 1 else 'folder'} of each path dropped"
        return how


def placed_at(prefix: str, entries: Sequence[str]) -> str:
    """Where a unit's files went, for people: `images/PixelProse/`, `images/{A, B}/`."""
    if prefix or not entries:
        return f"images/{prefix}"
    if len(entries) == 1:
        return f"images/{entries[0]}/"
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    return f"images/{{{shown}}}/"


def one_to_one(members: Sequence[str], k: int) -> bool:
    """Whether stripping the first `k` components keeps the members apart: no two become one path, and
    none becomes a folder of another (`a` and `a/b`). Placing a tree where this fails would make one
    member replace another."""
    if k == 0:
        return True  # an extracted tree: distinct paths, and no file is also a folder
    tails = {strip_components(m, k) for m in members}
    if len(tails) != len(set(members)):
        return False
    folders: set[str] = set()
    for t in tails:
        d = t.rpartition("/")[0]
        while d and d not in folders:  # each folder's ancestors are added once
            folders.add(d)
            d = d.rpartition("/")[0]
    return folders.isdisjoint(tails)


def decide_placement(members: Sequence[str], refs: References | None, fallback_prefix: str) -> Placement:
    """Choose where a unit's members go so that records' paths resolve.

    Tries every (strip k leading components, prepend prefix P) with k up to the shallowest member's
    depth (at most MAX_STRIP) and P among `""` and the prefixes `References.prefixes_for` proposes; the
    pair under which most sampled members are referenced wins (ties: smaller k, then shorter P). A k
    under which two members would land on one path (`one_to_one`, checked over every member, not only
    the sample) is never chosen. When no member is referenced: an archive with a single top folder goes
    to `images/` as it is, otherwise to `images/<fallback_prefix>`."""
    if not members:
        return Placement(0, "", 0, 0, "empty")
    n = len(members)
    sample = list(members) if n <= SAMPLE else [members[i * n // SAMPLE] for i in range(SAMPLE)]
    depth = min(m.count("/") for m in members)
    if refs is not None and len(refs):
        candidates: list[tuple[int, int, int, str]] = []
        for k in range(min(depth, MAX_STRIP) + 1):
            tails = [strip_components(m, k) for m in sample]
            for prefix in refs.prefixes_for(tails):
                hits = int(refs.contains([prefix + t for t in tails]).sum())
                if hits:
                    candidates.append((hits, -k, -len(prefix), prefix))
        # Best first; a stable sort keeps the proposal order among exact ties.
        candidates.sort(key=lambda c: c[:3], reverse=True)
        apart: dict[int, bool] = {}
        for hits, minus_k, _, prefix in candidates:
            if apart.setdefault(-minus_k, one_to_one(members, -minus_k)):
                return Placement(-minus_k, prefix, hits, len(sample), "records")
    if depth >= 1 and len({m.split("/", 1)[0] for m in members}) == 1:
        return Placement(0, "", 0, len(sample), "single top folder")
    return Placement(0, fallback_prefix, 0, len(sample), "archive name" if fallback_prefix else "as is")


# -- the plan ----------------------------------------------------------------------------------------
@dataclass
class JsonItem:
    """An annotation file and where it goes."""

    key: str  #: path relative to the download folder
    source: Path
    target: Path
    action: str  #: "link", "copy" or "in place"


@dataclass
class UnitItem:
    """An archive or unpacked folder, as it is now, and its marker when it is already in place."""

    unit: ImageUnit
    stamp: Stamp
    marker: Marker | None  #: set when the unit is already in place

    @property
    def todo(self) -> bool:
        return self.marker is None


@dataclass
class Plan:
    """Everything `run_prepare` will do; building it writes nothing."""

    source: Path
    root: Path
    yaml_path: Path
    jsons: list[JsonItem]
    units: list[UnitItem]
    yaml_text: str
    #: How archives are made available: "extract" (files in `images/`) or "shards" (the image store).
    images: str = DEFAULT_IMAGES

    @property
    def playground(self) -> Playground:
        return Playground.at(self.root)

    @property
    def train(self) -> Path:
        return self.playground.train

    @property
    def jsons_dir(self) -> Path:
        return self.playground.jsons

    @property
    def images_dir(self) -> Path:
        return self.playground.images

    @property
    def yaml_unchanged(self) -> bool:
        return self.yaml_path.is_file() and self.yaml_path.read_text(encoding="utf-8") == self.yaml_text


def plan_prepare(
    source: Path,
    root: str | os.PathLike[str],
    *,
    name: str | None = None,
    stage: str | None = None,
    yaml_path: str | os.PathLike[str] | None = None,
    include: Sequence[str] = (),
    images: str = DEFAULT_IMAGES,
) -> Plan:
    """Look at the download folder `source` and the playground `root` and decide what to do. Raises
    `FusionFastError` (before anything is written) on conflicts: two annotation files with the same
    name, a different file already at `jsons/<name>`, a YAML not written by `prepare` in the way."""
    if images not in IMAGES_MODES:
        raise FusionFastError(f"images mode must be one of {', '.join(IMAGES_MODES)}, not {images!r}")
    source = Path(source).resolve()
    root_path = Path(os.path.abspath(root))
    if not source.is_dir():
        raise FusionFastError(f"no such folder: {source}", path=str(source))
    found = scan_source(source, skip=root_path, include=include)
    if not found.jsons and not found.units:
        raise FusionFastError(f"no annotation files, archives or image folders found under {source}")
    playground = Playground.at(root_path)
    by_name: dict[str, str] = {}
    jsons = []
    for key, path in found.jsons:
        if not _is_utf8(path.name):
            raise FusionFastError(
                f"the annotation file name {path.name!r} is not valid UTF-8, which the stage YAML (UTF-8 "
                "text) cannot name; rename it",
                path=key.encode("utf-8", "backslashreplace").decode(),
            )
        if path.name in by_name:
            raise FusionFastError(
                f"two annotation files are both named {path.name}: {by_name[path.name]} and {key}; "
                "FUSION's jsons/ folder can hold only one (use --include to pick)"
            )
        by_name[path.name] = key
        target = playground.json_file(path.name)
        jsons.append(JsonItem(key, path, target, _json_action(path, target)))
    units = []
    for unit in found.units:
        stamp = unit.stamp()
        units.append(UnitItem(unit, stamp, is_in_place(playground.images, unit, stamp)))
    yaml_out = (
        Path(os.path.abspath(yaml_path)) if yaml_path else playground.stage_yaml(stage or name or source.name)
    )
    text = stage_yaml_text(yaml_out, [j.target for j in jsons], source)
    if yaml_out.exists() and not yaml_out.read_text(encoding="utf-8").startswith(YAML_HEADER):
        raise FusionFastError(
            f"{yaml_out} exists and was not written by fusion-fast prepare; pass another --yaml or remove it",
            path=str(yaml_out),
        )
    return Plan(source, root_path, yaml_out, jsons, units, text, images)


def _is_utf8(name: str) -> bool:
    """`name` came from UTF-8 bytes (the OS's bytes that are not show up as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_action(source: Path, target: Path) -> str:
    if os.path.lexists(target):
        if _same_content(source, target):
            return "in place"
        raise FusionFastError(
            f"{target} exists and differs from {source}; remove it (or rename one of them) and run again",
            path=str(target),
        )
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    return "link" if source.stat().st_dev == parent.stat().st_dev else "copy"


def _same_content(a: Path, b: Path) -> bool:
    """The same file, or a copy of it: same size and either same mtime (copies keep it) or same bytes."""
    try:
        if os.path.samefile(a, b):
            return True
        sa, sb = a.stat(), b.stat()
    except OSError:  # e.g. a dangling symlink in jsons/
        return False
    if sa.st_size != sb.st_size:
        return False
    return sa.st_mtime_ns == sb.st_mtime_ns or filecmp.cmp(a, b, shallow=False)


def stage_yaml_text(yaml_path: Path, json_files: Sequence[Path], source: Path) -> str:
    """A FUSION stage YAML: one entry per file, `sampling_strategy: "all"`, paths relative to the
    YAML's folder (images resolve through the playground layout, `train/images/`)."""
    lines = [f"{YAML_HEADER} from {source}", "datasets:" if json_files else "datasets: []"]
    for path in sorted(json_files, key=lambda p: p.name):
        rel = Playground.json_path_entry(path, yaml_path.parent)
        lines += [f"  - json_path: {json.dumps(rel, ensure_ascii=False)}", '    sampling_strategy: "all"']
    return "\n".join(lines) + "\n"


# -- previewing (dry run) ----------------------------------------------------------------------------
@dataclass
class Preview:
    """What a dry run found out about a unit that is not in place yet."""

    placement: Placement | None
    listed: int  #: members listed
    complete: bool  #: all members were listed (else only the first DRY_RUN_MEMBERS)
    target: str = ""  #: `placed_at` of the listed members
    error: str | None = None


def preview_units(plan: Plan) -> dict[str, Preview]:
    """Decide, without writing anything under the playground, where each pending unit would go: the
    annotation files are indexed into a temporary folder, the units' members listed (archives: up to
    DRY_RUN_MEMBERS each)."""
    todo = [u for u in plan.units if u.todo]
    if not todo:
        return {}
    with tempfile.TemporaryDirectory(prefix="fusion-fast-dry-run-") as index_dir:
        indexes = []
        for j in plan.jsons:
            try:
                indexes.append(open_index(j.source, index_dir=index_dir))
            except (FusionFastError, OSError):
                continue  # the real run reports it
        refs = References.from_indexes(indexes)
    out = {}
    for item in todo:
        try:
            members = list(item.unit.members(limit=DRY_RUN_MEMBERS + 1))
        except FusionFastError as e:
            out[item.unit.key] = Preview(None, 0, False, error=str(e))
            continue
        complete = len(members) <= DRY_RUN_MEMBERS
        members = members[:DRY_RUN_MEMBERS]
        placement = decide_placement(members, refs, item.unit.fallback_prefix)
        tops = sorted({placement.target(m).split("/", 1)[0] for m in members})
        out[item.unit.key] = Preview(placement, len(members), complete, placed_at(placement.prefix, tops))
    return out


# -- running -----------------------------------------------------------------------------------------
@dataclass
class JsonResult:
    """How placing and indexing one annotation file went."""

    item: JsonItem
    action: str  #: "linked", "copied", "in place" or "failed"
    records: int = 0
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class UnitResult:
    """How one archive or unpacked folder went; `target` says where its files are (`placed_at`)."""

    item: UnitItem
    #: "extracted", "indexed" (read in place through the image store), "converted" (into a plain tar
    #: shard, then indexed), "in place" or "failed"
    status: str
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    placement: Placement | None = None
    referenced: int | None = None  #: files that records reference (None when not computed)
    target: str = ""
    error: str | None = None


@dataclass
class PrepareResult:
    """Everything `run_prepare` did, per annotation file and per unit, and the `check` report."""

    plan: Plan
    jsons: list[JsonResult] = field(default_factory=list)
    units: list[UnitResult] = field(default_factory=list)
    yaml_written: bool = False
    check: CheckReport | None = None
    check_error: str | None = None
    seconds: float = 0.0
    #: Image paths held by more than one archive read through the image store: (path, key of the
    #: archive it is read from, key of an archive whose copy is ignored). Empty when the store was not
    #: rebuilt by this run.
    duplicates: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every file in place and indexed, and `check` ran and found nothing."""
        return (
            all(j.error is None for j in self.jsons)
            and all(u.error is None for u in self.units)
            and self.check is not None
            and self.check.clean
        )


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived during `run_prepare`: handled like Ctrl-C (stop, clean up, keep completed work)."""


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM (a batch scheduler's stop, `kill`) into `Terminated` while a run is under way, unless
    the program installed its own handler or this is not the main thread (only it can have one)."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Terminated(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_prepare(
    plan: Plan,
    *,
    jobs: int = 1,
    progress: BytesProgress | None = None,
    size_limits: SizeLimits | None = DEFAULT_LIMITS,
) -> PrepareResult:
    """Carry out `plan`: place the annotation files, index them, extract and place the pending units
    (`jobs` at a time, in worker processes when > 1), write the stage YAML and run `check` on it.

    A unit that fails (corrupt archive, refused member, a conflict with files in place, an archive past
    `size_limits`; `None` lifts those) is reported in its `UnitResult`, leaves nothing behind, and does
    not stop the others. Ctrl-C and SIGTERM stop the extractions within a fraction of a second, remove
    their temporary folders and raise `KeyboardInterrupt` (`Terminated` for SIGTERM); units already
    placed keep their markers."""
    with _sigterm_interrupts(), _playground_lock(plan.images_dir):
        return _run_prepare(plan, jobs, progress, size_limits)


def prepare_playground(
    source: str | os.PathLike[str],
    root: str | os.PathLike[str],
    *,
    images: str = DEFAULT_IMAGES,
    jobs: int = 1,
    stage: str | None = None,
    yaml_path: str | os.PathLike[str] | None = None,
    include: Sequence[str] = (),
    revision: str | None = None,
    progress: BytesProgress | None = None,
    size_limits: SizeLimits | None = DEFAULT_LIMITS,
) -> PrepareResult:
    """`fusion-fast prepare SOURCE --root ROOT --images IMAGES --jobs JOBS` in one call:
    `resolve_source`, `plan_prepare` and `run_prepare`. `images` is "extract" or "shards"."""
    folder, name = resolve_source(os.fspath(source), revision=revision, include=include)
    plan = plan_prepare(
        folder, root, name=name, stage=stage, yaml_path=yaml_path, include=include, images=images
    )
    return run_prepare(plan, jobs=jobs, progress=progress, size_limits=size_limits)


@contextmanager
def _playground_lock(images: Path) -> Iterator[None]:
    """Hold `images/.fusion-fast/lock` for the run: a second run on the same playground (from another
    container or node, where the work folders' pids mean nothing) would take the first one's work
    folders for a killed run's and remove them. The lock goes with the process, however it ends."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    state = state_folder(images)
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FusionFastError(
                f"another fusion-fast prepare is writing to {images}; wait for it to finish", path=str(images)
            ) from None
        yield


def _run_prepare(
    plan: Plan, jobs: int, progress: BytesProgress | None, size_limits: SizeLimits | None
) -> PrepareResult:
    started = time.perf_counter()
    result = PrepareResult(plan)
    images = plan.images_dir
    for folder in (plan.jsons_dir, state_folder(images)):
        folder.mkdir(parents=True, exist_ok=True)
    # Only prepare's own folders: a member of an archive may be called `.tmp-x` (images/ is theirs).
    for folder in (plan.jsons_dir, state_folder(images)):
        clean_stale_tmp(folder)
    clean_stale_files(images)
    indexes = []
    for item in plan.jsons:
        json_result, idx = _place_and_index(item)
        result.jsons.append(json_result)
        if idx is not None:
            indexes.append(idx)
    todo = [u for u in plan.units if u.todo]
    refs = References.from_indexes(indexes) if todo else None
    done = {u.unit.key: _in_place_result(u) for u in plan.units if not u.todo}
    as_shards = [u for u in todo if plan.images == "shards" and isinstance(u.unit, Archive)]
    to_extract = [u for u in todo if u not in as_shards]
    shard_bytes = sum(u.stamp.size for u in as_shards)
    extract_bytes = sum(u.stamp.size for u in to_extract)
    extract_progress = shard_progress = None
    if progress is not None:
        report = progress
        extract_progress = lambda n, _t: report(n, extract_bytes + shard_bytes)  # noqa: E731
        shard_progress = lambda n, _t: report(extract_bytes + n, extract_bytes + shard_bytes)  # noqa: E731
    for unit_item, outcome, seconds in _extract_all(to_extract, images, jobs, extract_progress, size_limits):
        done[unit_item.unit.key] = _finish_unit(unit_item, outcome, seconds, images, refs)
    if as_shards:
        shard_results, result.duplicates = _prepare_shards(
            as_shards, images, refs, jobs, shard_progress, size_limits
        )
        done.update(shard_results)
    result.units = [done[u.unit.key] for u in plan.units]
    if not plan.yaml_unchanged:
        plan.yaml_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = plan.yaml_path.with_name(f"{TMP_PREFIX}{plan.yaml_path.name}-{os.getpid()}")
        tmp.write_text(plan.yaml_text, encoding="utf-8")
        os.replace(tmp, plan.yaml_path)
        result.yaml_written = True
    try:
        from .check import run_check
    except ImportError as e:
        result.check_error = f"fusion-fast check is not available: {e}"
    else:
        try:
            result.check = run_check(plan.yaml_path, root=plan.yaml_path.parent)
        except FusionFastError as e:
            result.check_error = str(e)
    result.seconds = time.perf_counter() - started
    return result


def _place_and_index(item: JsonItem) -> tuple[JsonResult, JsonIndex | None]:
    started = time.perf_counter()
    action = "in place"
    try:
        if item.action != "in place":
            action = _link_or_copy(item.source, item.target)
        idx, report = index_file(item.target)
    except (FusionFastError, OSError) as e:
        return JsonResult(item, "failed", seconds=time.perf_counter() - started, error=str(e)), None
    return JsonResult(item, action, len(idx), report.size, time.perf_counter() - started), idx


def _link_or_copy(source: Path, target: Path) -> str:
    try:
        os.link(source, target)
        return "linked"
    except OSError:
        tmp = target.with_name(f"{TMP_PREFIX}{target.name}-{os.getpid()}")
        shutil.copy2(source, tmp)
        os.replace(tmp, target)
        return "copied"


def _in_place_result(item: UnitItem) -> UnitResult:
    m = item.marker
    assert m is not None
    where = placed_at(m.prefix, m.entries) + (" (image store)" if m.mode == "shards" else "")
    return UnitResult(item, "in place", m.files, m.bytes, target=where)


def _prepare_shards(
    items: list[UnitItem],
    images: Path,
    refs: References | None,
    jobs: int,
    progress: BytesProgress | None,
    size_limits: SizeLimits | None,
) -> tuple[dict[str, UnitResult], list[tuple[str, str, str]]]:
    """Make each archive readable in place (`prepare_shards.make_readable`), list and check its members,
    decide its nesting as extraction would, then build the folder's image store over these archives and
    every archive already prepared this way, and write their markers last. Returns the results by key
    and the duplicate paths the store found."""
    results: dict[str, UnitResult] = {}
    ready: list[tuple[UnitItem, Path, list[str], int, Placement, int | None, float]] = []
    ready_bytes: dict[str, int] = {}
    work = tmp_dir(images, "image store")
    work.mkdir(exist_ok=True)
    try:
        units = [(cast(Archive, u.unit), u.stamp) for u in items]
        for k, outcome, seconds in make_readable(units, images, jobs, progress, size_limits):
            item = items[k]
            unit = item.unit
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                archive, ours = outcome
                started = time.perf_counter()
                try:
                    listing = list_members(unit.key, archive, work, size_limits, unit.size)
                except FusionFastError:
                    if ours:  # a damaged shard is never reused
                        archive.unlink(missing_ok=True)
                    raise
                try:
                    placement = decide_placement(listing.members, refs, unit.fallback_prefix)
                    entries = check_targets(unit.key, listing, placement.strip, placement.prefix, images)
                    targets = [placement.target(m) for m in listing.members]
                    referenced = int(refs.contains(targets).sum()) if refs else None
                finally:  # the archive's own store is needed no more (80 bytes or so per member)
                    listing.store.path.unlink(missing_ok=True)
                seconds += time.perf_counter() - started
                ready.append((item, archive, entries, len(listing.members), placement, referenced, seconds))
                ready_bytes[unit.key] = listing.bytes
            except (FusionFastError, OSError) as e:
                results[unit.key] = UnitResult(item, "failed", seconds=seconds, error=str(e))
        if not ready:
            return results, []
        todo_keys = {u.unit.key for u in items}
        entries_in_store = [
            StoreEntry(m.key, marker_archive(images, m.archive), m.strip, m.prefix)
            for m in read_markers(images)
            if m.mode == "shards" and m.key not in todo_keys and marker_archive(images, m.archive).is_file()
        ]
        entries_in_store += [StoreEntry(i.unit.key, a, p.strip, p.prefix) for i, a, _, _, p, _, _ in ready]
        try:
            built = build_store(images, entries_in_store)
        except (FusionFastError, OSError) as e:
            for item, *_ in ready:
                results[item.unit.key] = UnitResult(item, "failed", error=f"building the image store: {e}")
            return results, []
        for item, archive, entries, files, placement, referenced, seconds in ready:
            unit, s = item.unit, item.stamp
            marker = Marker(
                unit.key, unit.kind, s.size, s.mtime_ns, s.fingerprint, placement.strip, placement.prefix,
                entries, files, ready_bytes[unit.key],
                mode="shards", archive=recorded_archive(images, archive),
            )  # fmt: skip
            write_marker(images, marker)
            remove_old_shards(images, cast(Archive, unit), archive)
            status = "indexed" if how_readable(cast(Archive, unit)) == "index" else "converted"
            target = placed_at(placement.prefix, entries) + " (image store)"
            results[unit.key] = UnitResult(
                item, status, files, ready_bytes[unit.key], seconds, placement, referenced, target
            )
        return results, built.duplicates
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _finish_unit(
    item: UnitItem,
    outcome: Extracted | Exception,
    seconds: float,
    images: Path,
    refs: References | None,
) -> UnitResult:
    """Decide where the extracted tree goes, move it there and write the marker (last)."""
    unit = item.unit
    tmp = tmp_dir(images, unit.key)
    try:
        if isinstance(outcome, Exception):
            raise outcome
        members = outcome.files + [p for p, _ in outcome.symlinks]
        placement = decide_placement(members, refs, unit.fallback_prefix)
        check_symlinks(unit.key, outcome.symlinks, placement.strip, placement.prefix, images)
        check_not_shadowing(unit.key, [(f, placement.target(f), tmp / f) for f in outcome.files], images)
        referenced = int(refs.contains([placement.target(f) for f in outcome.files]).sum()) if refs else None
        entries = place(tmp, images, placement.strip, placement.prefix, unit.key, len(members))
        shutil.rmtree(tmp)
        s = item.stamp
        write_marker(
            images,
            Marker(
                unit.key,
                unit.kind,
                s.size,
                s.mtime_ns,
                s.fingerprint,
                placement.strip,
                placement.prefix,
                entries,
                len(outcome.files),
                outcome.bytes,
            ),
        )
    except (FusionFastError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        return UnitResult(item, "failed", seconds=seconds, error=str(e))
    except BaseException:
        # Interrupted while placing: what moved stays (no marker; the next run finds those files the
        # same and finishes), the rest of the temporary folder goes.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return UnitResult(
        item,
        "extracted",
        len(outcome.files),
        outcome.bytes,
        seconds,
        placement,
        referenced,
        placed_at(placement.prefix, entries),
    )


def _extract_all(
    items: list[UnitItem],
    images: Path,
    jobs: int,
    progress: BytesProgress | None,
    limits: SizeLimits | None = DEFAULT_LIMITS,
) -> Iterator[tuple[UnitItem, Extracted | Exception, float]]:
    """Extract each unit into its temporary folder; yields (item, what was extracted or the error,
    seconds) as units finish. Own temporary folders are removed if this is interrupted."""
    total = sum(u.stamp.size for u in items)
    done_bytes = dict.fromkeys(range(len(items)), 0)

    def advance(k: int, done: int) -> None:
        done_bytes[k] = done
        if progress is not None:
            progress(sum(done_bytes.values()), total)

    finished = set()
    try:
        if jobs <= 1 or len(items) <= 1:
            for k, item in enumerate(items):
                tmp = tmp_dir(images, item.unit.key)
                tmp.mkdir()
                started = time.perf_counter()
                try:
                    outcome: Extracted | Exception = item.unit.extract(tmp, partial(advance, k), limits)
                except (FusionFastError, OSError) as e:
                    outcome = e
                advance(k, item.stamp.size)
                finished.add(k)
                yield item, outcome, time.perf_counter() - started
            return
        yield from _extract_in_pool(items, images, jobs, advance, finished, limits)
    finally:
        for k, item in enumerate(items):
            if k not in finished:
                shutil.rmtree(tmp_dir(images, item.unit.key), ignore_errors=True)


def _extract_in_pool(
    items: list[UnitItem],
    images: Path,
    jobs: int,
    advance: Callable[[int, int], None],
    finished: set[int],
    limits: SizeLimits | None,
) -> Iterator[tuple[UnitItem, Extracted | Exception, float]]:
    # Processes, not threads: tar member handling is Python code that holds the GIL. "spawn" because
    # forking a process that runs Rust and rich threads is unsafe.
    ctx = multiprocessing.get_context("spawn")
    progress_queue = ctx.Queue()
    abort = ctx.Event()
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(items)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(progress_queue, abort, os.getpid()),
    )
    try:
        futures: dict[Future[tuple[Extracted, float]], int] = {}
        for k, item in enumerate(items):
            tmp = tmp_dir(images, item.unit.key)
            tmp.mkdir()
            futures[pool.submit(_extract_in_worker, k, item.unit, tmp, limits)] = k
        while futures:
            ready, _ = wait(futures, timeout=0.1, return_when=FIRST_COMPLETED)
            _drain(progress_queue, advance)
            for future in ready:
                k = futures.pop(future)
                outcome: Extracted | Exception
                try:
                    outcome, seconds = future.result()
                except (FusionFastError, OSError) as e:
                    outcome, seconds = e, 0.0
                except BrokenProcessPool as e:
                    message = f"the worker process extracting it died (out of memory? killed?): {e}"
                    outcome, seconds = FusionFastError(message, path=items[k].unit.key), 0.0
                advance(k, items[k].stamp.size)
                finished.add(k)
                yield items[k], outcome, seconds
    except BaseException:
        # Interrupted: running workers stop at their next progress report, queued units never start.
        abort.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _drain(progress_queue: Any, advance: Callable[[int, int], None]) -> None:
    while True:
        try:
            advance(*progress_queue.get_nowait())
        except queue.Empty:
            return


_worker: dict[str, Any] = {}


def _init_worker(progress_queue: Any, abort: Any, parent_pid: int) -> None:
    # Ctrl-C in a terminal reaches the whole process group; the parent decides (it sets `abort`, and
    # workers stop at their next progress report), so workers never die half-way through a queue call.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker.update(queue=progress_queue, abort=abort, parent=parent_pid)


class _Aborted(Exception):
    """The run that started this worker was interrupted."""


def _extract_in_worker(
    k: int, unit: ImageUnit, dest: Path, limits: SizeLimits | None
) -> tuple[Extracted, float]:
    def report(done: int) -> None:
        if os.getppid() != _worker["parent"]:
            os._exit(1)  # the run was killed: stop writing into its temporary folder
        if _worker["abort"].is_set():
            raise _Aborted
        _worker["queue"].put((k, done))

    started = time.perf_counter()
    extracted = unit.extract(dest, report, limits)
    return extracted, time.perf_counter() - started
