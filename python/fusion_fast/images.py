"""Images read straight out of their archives: `ImageStore`, an offset index over tar and zip members.

    store = ImageStore.build(["images/COCO.tar", "images/extra.zip"], "images.ffimg")
    store = ImageStore.open("images.ffimg")
    data = store.read("COCO/train2017/000000000009.jpg")     # bytes
    img = store.open_image("COCO/train2017/000000000009.jpg")  # PIL image

The store file holds 16 bytes per member: a hash of its path and where its record (tar header, zip
central directory entry) lies in its archive. A lookup searches the memory-mapped hashes and checks the name
in the archive's own record, so it costs no Python object per member and every process that opens the same
store shares its pages. A member whose record no longer holds its name (the archive changed after the build)
raises `StaleIndexError`; a store of another format version raises `CorruptIndexError` asking for a
rebuild. Plain tar members and stored zip members are read straight from the mapped archive (`view` copies
nothing; `read` copies a page-cached tar member with `pread`, which costs less than a first touch of its
mapped pages); deflated zip members are inflated on read. Every zip member's CRC-32 is checked on read.
Compressed tars (`.tar.gz`) are refused: convert them to a plain `.tar` first.

Paths are normalised (`./a//b` -> `a/b`) both in the archives and in lookups. A path held by more than
one archive (or twice in one) resolves to its first occurrence, archives taken in the order given to
`build`; `BuildReport.duplicates` lists the others. Links, devices, fifos, sparse and encrypted members,
absolute paths and paths with `..` are never indexed (`BuildReport.refused`).

An image folder whose images live in archives holds its store at `<folder>/.fusion-fast/images.ffimg`, keyed
by paths relative to the folder (use `placements` to apply a nesting). `FusionDataset(load_images=True)`
and `check` then resolve an image path that is not a file through the store of the nearest folder above
it (`read_path`, `open_path`, `store_for`): a file on disk wins over a store member.

A store pickles as its path: a DataLoader worker reopens it (cheaply: the header is checked and the file
mapped; archives are mapped on first read) instead of copying anything.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _core
from .archives import DEFAULT_LIMITS, SizeLimits, conversion_refused, convert_limit, space_budget
from .errors import FusionFastError
from .playground import IMAGE_STORE, STATE_DIR

if TYPE_CHECKING:
    from PIL import Image

PathLike = str | os.PathLike[str]

#: File name suffix of an image store.
STORE_SUFFIX = ".ffimg"


@dataclass(frozen=True)
class BuildReport:
    """What `ImageStore.build` indexed and what it left out."""

    members: int
    #: `(archive, member, reason)` for each member that is never read through the store.
    refused: list[tuple[str, str, str]] = field(default_factory=list)
    #: `(member, archive kept, archive ignored)` for each later occurrence of a path.
    duplicates: list[tuple[str, str, str]] = field(default_factory=list)


def _needs_conversion(parts: list[str]) -> bool:
    if len(parts) > 1:
        return True
    with open(parts[0], "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _shard_name(parts: list[str]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode("utf-8", "surrogateescape"))
    base = os.path.basename(parts[0])
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if suffix in base:
            base = base[: base.index(suffix)]
            break
    return f"{base}.{h.hexdigest()}.tar"


def convert_to_shards(
    archives: Sequence[PathLike | Sequence[PathLike]],
    shard_dir: PathLike,
    *,
    size_limits: SizeLimits | None = DEFAULT_LIMITS,
) -> list[Path]:
    """Each archive as a plain tar (or zip) that the store can read in place: plain tars and zips as they
    are, gzip-compressed or split tars converted (in parallel) into `shard_dir`, reusing shards converted
    before from the same source (path, size, mtime).

    `size_limits` protect the disk as in `fusion-fast prepare`: a conversion that expands past
    `max_ratio` times its archive's size (a decompression bomb) or past the free space under `shard_dir`
    (all conversions together) is refused while it streams, with a `FusionFastError` naming the archive;
    its partial shard is removed. `size_limits=None` converts without those checks."""
    out: list[Path] = []
    jobs: list[tuple[list[str], str]] = []
    for a in archives:
        parts = (
            [os.path.abspath(os.fspath(a))]
            if isinstance(a, (str, os.PathLike))
            else [os.path.abspath(os.fspath(p)) for p in a]
        )
        if not parts:
            raise ValueError("an archive given as parts needs at least one part")
        if not _needs_conversion(parts):
            out.append(Path(parts[0]))
            continue
        shard = Path(os.path.abspath(os.fspath(shard_dir))) / _shard_name(parts)
        if not shard.exists():
            jobs.append((parts, str(shard)))
        out.append(shard)
    if jobs:
        folder = Path(os.path.abspath(os.fspath(shard_dir)))
        folder.mkdir(parents=True, exist_ok=True)
        sizes = [sum(os.path.getsize(p) for p in parts) for parts, _ in jobs]
        limits = [convert_limit(size_limits, size, folder) for size in sizes]
        try:
            _core.convert_to_tars(
                jobs, max_bytes=[lim.max_bytes for lim in limits], budget=space_budget(size_limits, folder)
            )
        except FusionFastError as e:
            if size_limits is None or not e.message.startswith(_core.CONVERT_LIMIT_PREFIX):
                raise
            k = next((k for k, (parts, _) in enumerate(jobs) if parts[0] == e.path), None)
            if k is None:
                raise
            raise conversion_refused(
                e.message, size_limits, str(e.path), sizes[k], folder, limits[k]
            ) from None
    return out


def _key(member: str | bytes | os.PathLike[str]) -> bytes:
    return member if isinstance(member, bytes) else os.fsencode(member)


class ImageStore:
    """An open image store (see the module documentation)."""

    __slots__ = ("_inner", "report")

    def __init__(self, inner: Any, report: BuildReport | None = None) -> None:
        self._inner = inner
        #: The build's report when this object was returned by `build`, else None.
        self.report = report

    @classmethod
    def build(
        cls,
        archives: Sequence[PathLike | Sequence[PathLike]],
        path: PathLike,
        *,
        shard_dir: PathLike | None = None,
        placements: Sequence[tuple[int, str]] | None = None,
        size_limits: SizeLimits | None = DEFAULT_LIMITS,
    ) -> ImageStore:
        """Indexes `archives` (in priority order; an archive split in parts is a list of its parts) into
        the store file `path`, written atomically, and opens it. Compressed or split tars are first
        converted into plain tar shards in `shard_dir` (default: `<path>.shards/`). `placements`, one
        `(strip, prefix)` per archive (prepare's nesting decision), makes member `m` readable as `prefix` +
        `m` without its first `strip` folders; members too shallow to strip are refused. Archive paths are
        recorded as absolute paths. A truncated or corrupt archive raises `CorruptArchiveError` naming it
        and the byte where it goes wrong; no store is written then.

        The conversions are held to `size_limits` (see `convert_to_shards`): a gzip bomb, or shards that
        would not fit in the free space, raise `FusionFastError` naming the archive, and leave neither
        that shard nor a store. `size_limits=None` lifts those checks (trusted archives)."""
        shards = convert_to_shards(
            archives,
            shard_dir if shard_dir is not None else f"{os.fspath(path)}.shards",
            size_limits=size_limits,
        )
        raw = _core.ImageStore.build(
            [str(s) for s in shards],
            os.fspath(path),
            None if placements is None else [(int(k), str(p)) for k, p in placements],
        )
        report = BuildReport(
            members=raw["members"],
            refused=[tuple(r) for r in raw["refused"]],
            duplicates=[tuple(d) for d in raw["duplicates"]],
        )
        return cls(_core.ImageStore.open(os.fspath(path)), report)

    @classmethod
    def open(cls, path: PathLike) -> ImageStore:
        """Opens the store file `path`; a corrupt or truncated one raises `CorruptIndexError`."""
        return cls(_core.ImageStore.open(os.fspath(path)))

    @property
    def path(self) -> Path:
        return Path(self._inner.path)

    @property
    def archives(self) -> list[Path]:
        """The archives, in priority order."""
        return [Path(a) for a in self._inner.archives()]

    def __len__(self) -> int:
        return int(self._inner.__len__())

    def __contains__(self, member: object) -> bool:
        if not isinstance(member, (str, bytes, os.PathLike)):
            return False
        return bool(self._inner.__contains__(_key(member)))

    def read(self, member: str | bytes | os.PathLike[str]) -> bytes:
        """The member's bytes; `KeyError` naming it when no archive holds it."""
        return bytes(self._inner.read(_key(member)))

    def view(self, member: str | bytes | os.PathLike[str]) -> memoryview:
        """The member's bytes as a read-only memoryview; no copy for tar and stored zip members."""
        return memoryview(self._inner.view(_key(member)))

    def open_image(self, member: str | bytes | os.PathLike[str]) -> Image.Image:
        """The member decoded by Pillow (loaded, so nothing refers back to the store)."""
        from PIL import Image

        img = Image.open(io.BytesIO(self.view(member)))
        img.load()
        return img

    def members(self) -> list[str]:
        """Every member path, read from the archives: archive by archive (in priority order), each in the
        order of its members."""
        return [os.fsdecode(m) for m in self._inner.members()]

    def location(self, member: str | bytes | os.PathLike[str]) -> tuple[str, int, int, int, int, int]:
        """`(archive, data offset, stored size, size, method, crc)`; method 0 is stored, 8 deflated."""
        return tuple(self._inner.location(_key(member)))  # type: ignore[return-value]

    def verify(self) -> None:
        """Recomputes the checksum of the whole store file (`CorruptIndexError` on a mismatch)."""
        self._inner.verify()

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (ImageStore.open, (str(self.path),))

    def __repr__(self) -> str:
        return f"ImageStore({str(self.path)!r}, {len(self)} members)"


#: Where an image folder keeps the store of its archived images (in prepare's state folder).
FOLDER_STORE = os.path.join(STATE_DIR, IMAGE_STORE)


class _FolderStores(dict[str, "ImageStore | None"]):
    """Per process: folder -> its store (None: it has none). A store appearing later in a folder already
    looked at is seen by new processes (DataLoader workers, the next run), or in this one once the
    folder's entry is dropped (`pop`, `clear`).

    `_nearest_by_dir` caches, per folder of an image path, what `nearest_store` derives from these
    entries; an entry only ever changes by being dropped or replaced, so exactly then that cache is
    emptied (adding a folder changes nothing already derived: every cached answer was derived from
    entries that existed then)."""

    def __setitem__(self, folder: str, store: ImageStore | None) -> None:
        if folder in self:
            _nearest_by_dir.clear()
        super().__setitem__(folder, store)

    def __delitem__(self, folder: str) -> None:
        _nearest_by_dir.clear()
        super().__delitem__(folder)

    def pop(self, folder: str, *default: Any) -> Any:  # type: ignore[override]
        _nearest_by_dir.clear()
        return super().pop(folder, *default)

    def clear(self) -> None:
        _nearest_by_dir.clear()
        super().clear()


#: Absolute folder of an image path, as given (the part before its last "/") -> `(store, prefix)`: the
#: path's member is `prefix` + its file name; None when no folder above has a store. Emptied whenever
#: `_folder_stores` drops or replaces an entry.
_nearest_by_dir: dict[str, tuple[ImageStore, str] | None] = {}
_folder_stores = _FolderStores()


#: Entries either cache may hold: a dataset with a folder per image must not grow a worker's memory with
#: its size. Past the bound the folders known to have no store, and the per-folder answers, start over.
CACHE_ENTRIES = 65536


def _store_of_folder(folder: str) -> ImageStore | None:
    if folder not in _folder_stores:
        if len(_folder_stores) >= CACHE_ENTRIES:
            for known in [f for f, store in _folder_stores.items() if store is None]:
                del _folder_stores[known]
        candidate = os.path.join(folder, FOLDER_STORE)
        _folder_stores[folder] = ImageStore.open(candidate) if os.path.isfile(candidate) else None
    return _folder_stores[folder]


def _nearest_store_walk(path: PathLike) -> tuple[ImageStore, str] | None:
    full = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(full)
    while True:
        store = _store_of_folder(folder)
        if store is not None:
            return store, os.path.relpath(full, folder).replace(os.sep, "/")
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def nearest_store(path: PathLike) -> tuple[ImageStore, str] | None:
    """`(store, member)`: the store of the nearest folder above `path` that has one, and the member
    `path` names in it (which the store may not hold); None when no folder above has a store.

    The folders above an absolute path are looked up once per folder of the path: for a file name that
    is not "." or "..", normalising `folder/name` normalises `folder` and appends `name`, so every path
    of one folder has the same store and the same member prefix."""
    p = os.fspath(path)
    if isinstance(p, str) and _POSIX:
        if not p.startswith("/"):
            p = os.path.join(os.getcwd(), p)  # what `abspath` does before it normalises
        folder, _, name = p.rpartition("/")
        if folder and name and name != "." and name != "..":
            try:
                found = _nearest_by_dir[folder]
            except KeyError:
                walked = _nearest_store_walk(p)
                if walked is not None and walked[1] != name and not walked[1].endswith("/" + name):
                    return walked  # not expected; answered without the cache
                found = None if walked is None else (walked[0], walked[1][: len(walked[1]) - len(name)])
                if len(_nearest_by_dir) >= CACHE_ENTRIES:
                    _nearest_by_dir.clear()
                _nearest_by_dir[folder] = found
            if found is None:
                return None
            return found[0], found[1] + name
    return _nearest_store_walk(p)


#: Paths are split at "/" only where that is the one separator.
_POSIX = os.sep == "/" and os.altsep is None


def store_for(path: PathLike) -> tuple[ImageStore, str] | None:
    """`(store, member)` when a folder above `path` has a store that holds it as `member`, else None."""
    found = nearest_store(path)
    return found if found is not None and found[1] in found[0] else None


def exists(path: PathLike) -> bool:
    """Whether `path` is a file or a member of the store of a folder above it."""
    return os.path.isfile(path) or store_for(path) is not None


def _member_unless_file(path: PathLike) -> tuple[tuple[ImageStore, str] | None, bytes | None]:
    """`(nearest_store(path), data)`: data is the bytes of the member `path` names, or None when `path`
    is a file (a file on disk wins) or no folder above has a store. `FileNotFoundError` when there is a
    store but neither the file nor the member. The store looks for the file itself: a Python exception
    for its absence costs more than the read."""
    found = nearest_store(path)
    if found is None:
        return None, None
    try:
        return found, found[0]._inner.member_unless_file(os.fspath(path), _key(found[1]))
    except KeyError:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(path)) from None


def read_path(path: PathLike) -> bytes:
    """The bytes of the file `path`, else of the store member it names; `FileNotFoundError` when neither."""
    found, data = _member_unless_file(path)
    if data is not None:
        return data
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as missing:
        if found is None:  # else the file was removed since the store looked for it
            raise
        try:
            return found[0].read(found[1])
        except KeyError:
            raise missing from None


def open_path(path: PathLike) -> Image.Image:
    """`PIL.Image.open` of the file `path`, else of the store member it names (lazy, like `Image.open`);
    `FileNotFoundError` when neither."""
    from PIL import Image

    found, data = _member_unless_file(path)
    if data is None:
        try:
            return Image.open(path)
        except FileNotFoundError as missing:
            if found is None:  # else the file was removed since the store looked for it
                raise
            try:
                data = found[0].read(found[1])
            except KeyError:
                raise missing from None
    return Image.open(io.BytesIO(data))


__all__ = [
    "ImageStore",
    "BuildReport",
    "STORE_SUFFIX",
    "FOLDER_STORE",
    "convert_to_shards",
    "store_for",
    "nearest_store",
    "exists",
    "read_path",
    "open_path",
]
