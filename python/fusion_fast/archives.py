"""Image archives and unpacked image folders, materialised safely into a FUSION `images/` folder.

An *image unit* is one thing in a download that holds images: a tar (`.tar`, `.tar.gz`/`.tgz`, `.tar.bz2`,
`.tar.xz`), a zip, a split archive whose parts (`X.tar.gz.00`, `X.tar.partaa`, `X.zip.001`, ...) are
concatenated in name order, or a folder of images that is already unpacked. Every unit can

- `stamp()`: size, mtime and a content fingerprint, to tell on a re-run that it is already in place;
- `members()`: list the files it holds (paths checked as below), without writing anything;
- `extract(dest)`: write them under a fresh folder `dest` (folders are hard-linked, else copied).

Extraction refuses, with a `FusionFastError` naming the archive and the member, absolute paths, `..`
components, symlinks or hard links whose target leaves the destination, and device files or fifos. Tar
members also pass through `tarfile`'s `data` filter where Python has it. A truncated or corrupt
archive (including a tar that ends without its end-of-archive marker) is an error, never a silently
short extraction.

`place()` then moves an extracted tree into `images/` (renames only, merging into folders that
already exist) and `write_marker()` records completion in `images/.fusion-fast/<unit>.done`, written
last. Work happens in `images/.tmp-<unit>-<pid>/` on the same filesystem; `clean_stale_tmp()` removes
those left by a run that was killed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import lzma
import os
import posixpath
import re
import shutil
import stat
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from .errors import FusionFastError

#: Suffixes of the archive formats read here (tar ones autodetect their compression).
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)
ARCHIVE_SUFFIXES = TAR_SUFFIXES + ZIP_SUFFIXES
#: Files materialised from unpacked folders.
IMAGE_SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".png",
    ".gif",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".heic",
    ".avif",
    ".mp4",
    ".webm",
    ".mkv",
    ".avi",
    ".mov",
)
#: Marker folder under `images/`.
MARKER_DIR = ".fusion-fast"
TMP_PREFIX = ".tmp-"
#: Seconds to sleep after each member: a testing aid that makes "killed mid-extraction" deterministic.
DELAY_ENV = "FUSION_FAST_EXTRACT_DELAY"

_FINGERPRINT_SPAN = 1 << 20
_COPY_BUFFER = 1 << 20
_PROGRESS_EVERY_S = 0.1
_SPLIT_PART = re.compile(
    r"^(?P<base>.+?(?:" + "|".join(re.escape(s) for s in ARCHIVE_SUFFIXES) + r"))"
    r"\.(?P<part>(?:part)?(?:\d{1,4}|[a-z]{2,4}))$",
    re.IGNORECASE,
)
_UNSAFE_MARKER_CHARS = re.compile(r"[^A-Za-z0-9._+-]")
#: How damaged archives fail (tarfile maps decompression errors to ReadError; zip CRC errors are
#: BadZipFile; a gzip stream cut short is EOFError).
_DAMAGE = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)

Progress = Callable[[int], None]
"""Called with the bytes of the unit consumed so far."""


# -- stamps ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stamp:
    """What a unit looked like when it was extracted: total size, newest mtime (ns) and a fingerprint."""

    size: int
    mtime_ns: int
    fingerprint: str


def fingerprint(parts: Sequence[Path]) -> str:
    """blake2b of the total size plus the first and last MiB of the parts, read as one stream."""
    raw = ConcatFile(parts)
    size = raw.size
    with io.BufferedReader(raw) as f:
        h = hashlib.blake2b(size.to_bytes(8, "little"), digest_size=16)
        h.update(f.read(min(size, _FINGERPRINT_SPAN)))
        if size > _FINGERPRINT_SPAN:
            f.seek(max(_FINGERPRINT_SPAN, size - _FINGERPRINT_SPAN))
            h.update(f.read())
    return h.hexdigest()


# -- reading split archives as one file ----------------------------------------------------------------
class ConcatFile(io.RawIOBase):
    """The parts of a split archive as one seekable, read-only file (parts opened on demand)."""

    def __init__(self, parts: Sequence[Path]) -> None:
        super().__init__()
        self._parts = list(parts)
        self._sizes = [p.stat().st_size for p in self._parts]
        self._starts = [sum(self._sizes[:k]) for k in range(len(self._sizes))]
        self.size = sum(self._sizes)
        self._pos = 0
        self._open: tuple[int, io.FileIO] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self.size:
            return 0
        k = next(k for k in range(len(self._parts)) if self._pos < self._starts[k] + self._sizes[k])
        if self._open is None or self._open[0] != k:
            self.close_part()
            self._open = (k, open(self._parts[k], "rb", buffering=0))  # noqa: SIM115 - kept open across reads
        f = self._open[1]
        f.seek(self._pos - self._starts[k])
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._starts[k] + self._sizes[k] - self._pos)
        n = f.readinto(view[:want]) or 0
        if n == 0:
            raise FusionFastError(
                f"{self._parts[k]} shrank while it was being read", path=str(self._parts[k])
            )
        self._pos += n
        return n

    def close_part(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None

    def close(self) -> None:
        self.close_part()
        super().close()


# -- member checks -----------------------------------------------------------------------------------
def _refuse(unit: str, member: str, why: str) -> FusionFastError:
    return FusionFastError(f"refusing member {member!r}: {why}", path=unit)


def safe_member_path(unit: str, name: str) -> str | None:
    """The member's path as a relative POSIX path with `.` parts removed (None for the archive root);
    raises on absolute paths, drive letters, backslash separators and `..` components."""
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _refuse(unit, name, "absolute path")
    if "\\" in name:
        raise _refuse(unit, name, "backslash in path (a Windows path?)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(unit, name, "'..' in path")
    return "/".join(parts) or None


def _check_link_target(unit: str, member: str, target: str, *, relative_to: str) -> None:
    """Raise when a link's target (relative to the folder `relative_to`) is absolute or leaves the tree."""
    if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
        raise _refuse(unit, member, f"link to absolute path {target!r}")
    resolved = posixpath.normpath(posixpath.join(relative_to, target))
    if resolved == ".." or resolved.startswith("../"):
        raise _refuse(unit, member, f"link target {target!r} is outside the archive")


@dataclass
class Extracted:
    """What `extract` wrote: regular files and symlinks (paths relative to the destination)."""

    files: list[str] = field(default_factory=list)
    symlinks: list[tuple[str, str]] = field(default_factory=list)  #: (path, target as written)
    bytes: int = 0


class _Reporter:
    """Throttled progress callback plus the testing delay."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._last = 0.0
        self._delay = float(os.environ.get(DELAY_ENV) or 0)

    def __call__(self, done: int, *, force: bool = False) -> None:
        if self._delay:
            time.sleep(self._delay)
        now = time.monotonic()
        if self._progress is not None and (force or now - self._last >= _PROGRESS_EVERY_S):
            self._last = now
            self._progress(done)


# -- the units ---------------------------------------------------------------------------------------
class ImageUnit(Protocol):
    """An archive or an unpacked folder of images (see the module docstring)."""

    key: str  #: stable name, unique within a download: the path relative to the download folder
    kind: str  #: "tar", "zip" or "folder"

    @property
    def size(self) -> int: ...
    @property
    def fallback_prefix(self) -> str:
        """Where under `images/` members go when no record decides it and there is no single top folder."""
        ...

    def stamp(self) -> Stamp: ...
    def members(self, limit: int | None = None) -> Iterator[str]: ...
    def extract(self, dest: Path, progress: Progress | None = None) -> Extracted: ...


@dataclass
class Archive:
    """A tar or zip archive, possibly split into parts (concatenated in name order)."""

    key: str
    parts: list[Path]
    kind: str  #: "tar" or "zip"

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def stem(self) -> str:
        lower = self.name.lower()
        suffix = max((s for s in ARCHIVE_SUFFIXES if lower.endswith(s)), key=len)
        return self.name[: -len(suffix)]

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.parts)

    @property
    def fallback_prefix(self) -> str:
        return f"{self.stem}/"

    def stamp(self) -> Stamp:
        mtime = max(p.stat().st_mtime_ns for p in self.parts)
        return Stamp(self.size, mtime, fingerprint(self.parts))

    def _open(self) -> io.BufferedReader:
        return io.BufferedReader(ConcatFile(self.parts), _COPY_BUFFER)

    def members(self, limit: int | None = None) -> Iterator[str]:
        """Paths of the files (regular files and links) in the archive, checked, in archive order;
        the first `limit` of them when given."""
        paths = self._member_paths()
        return paths if limit is None else itertools.islice(paths, limit)

    def _member_paths(self) -> Iterator[str]:
        with self._reading():
            if self.kind == "zip":
                with self._open() as raw, zipfile.ZipFile(raw) as zf:
                    for info in zf.infolist():
                        path = self._check_zip_member(info)
                        if path is not None and not info.is_dir():
                            yield path
                return
            with self._open() as raw, _open_tar_stream(raw) as tf:
                while (m := tf.next()) is not None:
                    _forget_members(tf)
                    path = self._check_tar_member(m)
                    if path is not None and not m.isdir():
                        yield path
                _raise_if_unterminated(tf, self.key)

    def extract(self, dest: Path, progress: Progress | None = None) -> Extracted:
        """Write every member under `dest` (which must exist); see the module docstring for the checks."""
        report = _Reporter(progress)
        with self._reading():
            if self.kind == "zip":
                return self._extract_zip(dest, report)
            return self._extract_tar(dest, report)

    # -- tar
    def _check_tar_member(self, m: tarfile.TarInfo) -> str | None:
        path = safe_member_path(self.key, m.name)
        if m.isdir():
            return path
        if path is None:
            raise _refuse(self.key, m.name, "a file member with an empty name")
        if m.issym():
            _check_link_target(self.key, m.name, m.linkname, relative_to=posixpath.dirname(path))
        elif m.islnk():
            _check_link_target(self.key, m.name, m.linkname, relative_to="")
        elif not m.isreg():
            raise _refuse(self.key, m.name, "device file, fifo or other special file")
        return path

    def _extract_tar(self, dest: Path, report: _Reporter) -> Extracted:
        out = Extracted()
        filter_kw: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        with self._open() as raw, _open_tar_stream(raw) as tf:
            while (m := tf.next()) is not None:
                _forget_members(tf)
                path = self._check_tar_member(m)
                if path is None:
                    continue
                try:
                    tf.extract(m, dest, **filter_kw)
                except tarfile.FilterError as e:
                    raise _refuse(self.key, m.name, str(e)) from None
                if m.issym():
                    out.symlinks.append((path, m.linkname))
                elif not m.isdir():
                    out.files.append(path)
                    out.bytes += m.size
                report(raw.tell())
            _raise_if_unterminated(tf, self.key)
        report(self.size, force=True)
        return out

    # -- zip
    def _check_zip_member(self, info: zipfile.ZipInfo) -> str | None:
        path = safe_member_path(self.key, info.filename)
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            kind = "symlink" if stat.S_ISLNK(mode) else "device file, fifo or other special file"
            raise _refuse(self.key, info.filename, f"{kind} (not supported in zip archives)")
        if path is None and not info.is_dir():
            raise _refuse(self.key, info.filename, "a file member with an empty name")
        return path

    def _extract_zip(self, dest: Path, report: _Reporter) -> Extracted:
        out = Extracted()
        done = 0
        with self._open() as raw, zipfile.ZipFile(raw) as zf:
            for info in zf.infolist():
                path = self._check_zip_member(info)
                if path is None:
                    continue
                target = dest / path
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, _COPY_BUFFER)
                mtime = time.mktime((*info.date_time, 0, 0, -1))
                os.utime(target, (mtime, mtime))
                out.files.append(path)
                out.bytes += info.file_size
                done += info.compress_size
                report(done)
        report(self.size, force=True)
        return out

    def _reading(self) -> _ArchiveErrors:
        return _ArchiveErrors(self.key)


class _ArchiveErrors:
    """Turns the many ways a damaged archive fails into one clear `FusionFastError`."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: Any) -> None:
        if isinstance(err, _DAMAGE):
            raise FusionFastError(f"corrupt or truncated archive: {err}", path=self.key) from err


#: Header errors that `tarfile` treats as the end of the archive when they occur after the first member.
_BAD_END: tuple[type[Exception], ...] = tuple(
    getattr(tarfile, name) for name in ("EmptyHeaderError", "TruncatedHeaderError", "InvalidHeaderError")
)


class _EndCheckingTarInfo(tarfile.TarInfo):
    """Notes when a tar stream stops without its end-of-archive block (zeros), i.e. is truncated or
    damaged: `tarfile` itself silently treats that as the end."""

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> _EndCheckingTarInfo:
        try:
            return super().fromtarfile(tf)
        except _BAD_END as e:
            tf.unterminated = str(e)  # type: ignore[attr-defined]
            raise


def _open_tar_stream(raw: io.BufferedReader) -> tarfile.TarFile:
    tf = tarfile.open(fileobj=raw, mode="r|*", bufsize=_COPY_BUFFER, tarinfo=_EndCheckingTarInfo)
    tf.unterminated = None  # type: ignore[attr-defined]
    return tf


def _forget_members(tf: tarfile.TarFile) -> None:
    """Stream mode keeps every header read so far; millions of members would fill memory."""
    tf.members.clear()  # type: ignore[attr-defined]


def _raise_if_unterminated(tf: tarfile.TarFile, key: str) -> None:
    why = getattr(tf, "unterminated", None)
    if why is not None:
        raise FusionFastError(
            f"corrupt or truncated archive: the tar stream stops without its end-of-archive marker ({why})",
            path=key,
        )


@dataclass
class FolderUnit:
    """Image files that are already unpacked: `files` are (path relative to `base`, size, mtime_ns)."""

    key: str
    root: Path  #: the folder, for messages
    base: Path  #: member paths are relative to this folder
    files: list[tuple[str, int, int]]
    kind: str = "folder"

    @property
    def size(self) -> int:
        return sum(size for _, size, _ in self.files)

    @property
    def fallback_prefix(self) -> str:
        # Members already start with the folder's name, unless the folder is an `images/` root itself.
        return ""

    def stamp(self) -> Stamp:
        h = hashlib.blake2b(digest_size=16)
        for path, size, mtime in sorted(self.files):
            h.update(f"{path}\0{size}\0{mtime}\n".encode())
        return Stamp(self.size, max((m for _, _, m in self.files), default=0), h.hexdigest())

    def members(self, limit: int | None = None) -> Iterator[str]:
        for path, _, _ in self.files[:limit]:
            yield path

    def extract(self, dest: Path, progress: Progress | None = None) -> Extracted:
        """Hard-link every file under `dest` (copy when linking fails, e.g. across filesystems)."""
        report = _Reporter(progress)
        out = Extracted()
        can_link = True
        for path, size, _ in self.files:
            src, target = self.base / path, dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if can_link:
                try:
                    os.link(src, target)
                except OSError:
                    can_link = False
            if not can_link:
                shutil.copy2(src, target)
            out.files.append(path)
            out.bytes += size
            report(out.bytes)
        report(self.size, force=True)
        return out


# -- finding units -----------------------------------------------------------------------------------
def archive_base(name: str) -> tuple[str, str | None] | None:
    """(archive name, part suffix or None) when `name` is an archive or a part of a split one."""
    lower = name.lower()
    if lower.endswith(ARCHIVE_SUFFIXES):
        return name, None
    m = _SPLIT_PART.match(name)
    return (m["base"], m["part"]) if m else None


def _archive_kind(name: str) -> str:
    return "zip" if name.lower().endswith(ZIP_SUFFIXES) else "tar"


def _part_order(part: str) -> tuple[int, str]:
    body = part.lower().removeprefix("part")
    return (int(body), "") if body.isdigit() else (0, body)


def _check_sequence(key: str, suffixes: list[str]) -> None:
    """Split parts (sorted) must be a gap-free sequence: 00 01 02, 001 002, aa ab ac, partaa partab."""
    bodies = [s.lower().removeprefix("part") for s in suffixes]
    if all(b.isdigit() for b in bodies):
        numbers = [int(b) for b in bodies]
        start = 0 if numbers[0] == 0 else 1
        missing = sorted(set(range(start, numbers[-1] + 1)) - set(numbers))
        if not missing:
            return
        detail = f"missing part {', '.join(map(str, missing))}"
    elif all(b.isalpha() for b in bodies) and len({len(b) for b in bodies}) == 1:
        width = len(bodies[0])
        values = [sum((ord(c) - 97) * 26 ** (width - 1 - i) for i, c in enumerate(b)) for b in bodies]
        if values == list(range(len(values))):
            return
        detail = f"expected {'a' * width} first and no gaps"
    else:
        detail = "mixed part names"
    raise FusionFastError(
        f"split archive: parts {', '.join(suffixes)} are not a complete sequence ({detail})", path=key
    )


def group_archives(files: Sequence[tuple[str, Path]]) -> list[Archive]:
    """Archives among `files` ((key, path) pairs, key relative to the download folder), split parts
    grouped under their archive's key. Raises on incomplete part sequences or an archive present both
    whole and split."""
    whole: dict[str, Path] = {}
    split: dict[str, list[tuple[str, Path]]] = {}
    for key, path in files:
        found = archive_base(PurePosixPath(key).name)
        if found is None:
            continue
        base, part = found
        base_key = str(PurePosixPath(key).with_name(base))
        if part is None:
            whole[base_key] = path
        else:
            split.setdefault(base_key, []).append((part, path))
    out = [Archive(k, [p], _archive_kind(k)) for k, p in whole.items()]
    for key, parts in split.items():
        if key in whole:
            raise FusionFastError("present both whole and as split parts; keep one", path=key)
        parts.sort(key=lambda sp: _part_order(sp[0]))
        _check_sequence(key, [s for s, _ in parts])
        out.append(Archive(key, [p for _, p in parts], _archive_kind(key)))
    return sorted(out, key=lambda a: a.key)


# -- placing extracted trees -------------------------------------------------------------------------
def tmp_dir(images: Path, key: str) -> Path:
    """The work folder for `key` under `images/` (same filesystem, hidden, tagged with our pid)."""
    return images / f"{TMP_PREFIX}{marker_name(key)}-{os.getpid()}"


def marker_name(key: str) -> str:
    return _UNSAFE_MARKER_CHARS.sub("_", key.replace("/", "__"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(folder: Path) -> list[Path]:
    """Remove `.tmp-*-<pid>` entries in `folder` left by processes that no longer run."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if not entry.name.startswith(TMP_PREFIX):
            continue
        pid_text = entry.name.rsplit("-", 1)[-1].split(".", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and _pid_alive(int(pid_text)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry)
    return removed


def strip_components(path: str, k: int) -> str:
    return path.split("/", k)[k] if k else path


def check_symlinks(key: str, symlinks: Sequence[tuple[str, str]], strip: int, prefix: str) -> None:
    """Symlinks must still point inside `images/` once members are moved to `prefix + stripped path`."""
    for path, target in symlinks:
        final = prefix + strip_components(path, strip)
        _check_link_target(key, path, target, relative_to=posixpath.dirname(final))


def place(tmp: Path, images: Path, strip: int, prefix: str) -> list[str]:
    """Move the extracted tree `tmp` into `images/<prefix>`, dropping its first `strip` path components
    (every file is deeper than that). Folders that exist are merged into; files that exist are replaced.
    Returns the top-level entries of `images/` that received files."""
    roots = [tmp]
    for _ in range(strip):
        roots = [d for r in roots for d in sorted(r.iterdir()) if d.is_dir() and not d.is_symlink()]
    dest = images / prefix if prefix else images
    dest.mkdir(parents=True, exist_ok=True)
    entries: set[str] = set()
    for root in roots:
        for child in sorted(root.iterdir()):
            entries.add(prefix.split("/", 1)[0] if prefix else child.name)
            _move_merging(child, dest / child.name)
    return sorted(entries)


def _move_merging(src: Path, target: Path) -> None:
    if not os.path.lexists(target):
        os.rename(src, target)
        return
    src_is_dir = src.is_dir() and not src.is_symlink()
    if src_is_dir and target.is_dir():
        for child in sorted(src.iterdir()):
            _move_merging(child, target / child.name)
    elif src_is_dir or target.is_dir():
        raise FusionFastError(
            f"cannot place {src.name}: {target} exists and is {'a folder' if target.is_dir() else 'a file'}",
            path=str(target),
        )
    else:
        os.replace(src, target)


# -- completion markers ------------------------------------------------------------------------------
@dataclass
class Marker:
    """`images/.fusion-fast/<unit>.done`: the unit is fully in place as recorded here."""

    key: str
    kind: str
    size: int
    mtime_ns: int
    fingerprint: str
    strip: int
    prefix: str
    entries: list[str]
    files: int
    bytes: int

    @property
    def stamp(self) -> Stamp:
        return Stamp(self.size, self.mtime_ns, self.fingerprint)


def marker_path(images: Path, key: str) -> Path:
    return images / MARKER_DIR / f"{marker_name(key)}.done"


def read_marker(images: Path, key: str) -> Marker | None:
    """The unit's marker, or None when it is missing or unreadable."""
    try:
        data = json.loads(marker_path(images, key).read_text(encoding="utf-8"))
        return Marker(**data)
    except (OSError, ValueError, TypeError):
        return None


def write_marker(images: Path, marker: Marker) -> None:
    """Write the marker atomically (a temporary file renamed into place)."""
    path = marker_path(images, marker.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{os.getpid()}"
    tmp.write_text(json.dumps(asdict(marker), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def is_in_place(images: Path, unit: ImageUnit, stamp: Stamp) -> Marker | None:
    """The unit's marker when it matches `stamp` and every entry it lists still exists."""
    marker = read_marker(images, unit.key)
    if marker is None or marker.stamp != stamp:
        return None
    if not all(os.path.lexists(images / e) for e in marker.entries):
        return None
    return marker
