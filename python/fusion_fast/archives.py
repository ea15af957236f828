"""Image archives and unpacked image folders, materialised safely into a FUSION `images/` folder.

An *image unit* is one thing in a download that holds images: a tar (`.tar`, `.tar.gz`/`.tgz`, `.tar.bz2`,
`.tar.xz`), a zip, a split archive whose parts (`X.tar.gz.00`, `X.tar.partaa`, `X.zip.001`, ...) are
concatenated in name order, or a folder of images that is already unpacked. Every unit can

- `stamp()`: size, mtime and a content fingerprint, to tell on a re-run that it is already in place;
- `members()`: list the files it holds (paths checked as below), without writing anything;
- `extract(dest)`: write them under a fresh folder `dest` (folders are hard-linked, else copied).

Extraction refuses, with a `FusionFastError` naming the archive and the member, absolute paths, `..`
components, symlinks or hard links whose target leaves the destination, device files, fifos and sparse
files, names that appear twice, and names in `.fusion-fast/` (prepare's own state). Tar members also
pass through `tarfile`'s `data` filter where Python has it. A truncated or corrupt archive is an error,
never a silently short extraction: a tar that ends without its end-of-archive marker, and a compressed
tar whose gzip / bzip2 / xz stream is not read to its end with every CRC and length checked (the tar's
end blocks come before the gzip trailer, so `tarfile` alone never looks at it). Zip members are CRC
checked as they are read. `SizeLimits` refuses, before and during extraction, archives whose declared
sizes exceed the free space or expand far beyond the archive's own size.

`place()` then moves an extracted tree into `images/` (renames only, merging into folders that
already exist; a different file already at a target is a conflict, found before anything moves) and
`write_marker()` records completion in `images/.fusion-fast/<unit>.done`, written last. Work happens in
`images/.fusion-fast/.tmp-<unit>-<pid>/`, on the same filesystem and where no member can land;
`clean_stale_tmp()` removes those left by a run that was killed.
"""

from __future__ import annotations

import bz2
import errno
import filecmp
import gzip
import hashlib
import io
import itertools
import json
import lzma
import math
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol, cast

from . import _core
from .errors import FusionFastError
from .playground import STATE_DIR, state_folder

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
#: Prepare's own state under `images/`: completion markers and temporary extraction folders. No member
#: may land there (refused by name).
MARKER_DIR = STATE_DIR
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
_DAMAGE = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    gzip.BadGzipFile,
    UnicodeDecodeError,  # a zip entry flagged UTF-8 whose name is not
)
#: The command-line option (and API argument) that lifts `SizeLimits`, named in every refusal.
NO_SIZE_LIMITS = "--no-size-limits (size_limits=None in the Python API)"

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
            # As a real file does: zipfile probes for its end records so, and expects an OSError.
            raise OSError(errno.EINVAL, "negative seek position")
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
    """Raise when a link's target (relative to the folder `relative_to`) is absolute, leaves the tree or
    points into prepare's state folder."""
    if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
        raise _refuse(unit, member, f"link to absolute path {target!r}")
    resolved = posixpath.normpath(posixpath.join(relative_to, target))
    if resolved == ".." or resolved.startswith("../"):
        raise _refuse(unit, member, f"link target {target!r} is outside the archive")
    if _is_state_folder(resolved.split("/", 1)[0]):
        raise _refuse(
            unit, member, f"link target {target!r} is in {MARKER_DIR}/, where prepare keeps its state"
        )


def _link_on_the_way(start: str, target: str, is_link: Callable[[str], bool]) -> str | None:
    """The first link that resolving `target` from the folder `start` passes through as a folder (a
    component followed by more of the path), or None. Checked one link at a time, two links that each
    stay inside could together lead out (`b/l2 -> ..` and `l1 -> b/l2/../..`); refusing links through
    links keeps the lexical checks sound."""
    here = [c for c in start.split("/") if c]
    parts = [c for c in target.split("/") if c not in ("", ".")]
    for i, part in enumerate(parts):
        if part == "..":
            if here:
                here.pop()
            continue
        here.append(part)
        if i < len(parts) - 1 and is_link("/".join(here)):
            return "/".join(here)
    return None


def _check_link_chains(
    unit: str, links: Sequence[tuple[str, str, str]], is_link: Callable[[str], bool]
) -> None:
    """Refuse a link (member, path, target) whose target passes through a link (`_link_on_the_way`)."""
    for member, path, target in links:
        via = _link_on_the_way(posixpath.dirname(path), target, is_link)
        if via is not None:
            raise _refuse(unit, member, f"link target {target!r} goes through the link {via!r}")


def _member_error(unit: str, member: str, err: OSError) -> Exception:
    """An OS error while writing a member, naming the archive and the member (a damaged compressed
    stream, which bz2 and gzip also report as OSError, is passed on as damage)."""
    if isinstance(err, _DAMAGE) or err.errno is None:
        return err
    # The file name would be the temporary folder's, removed by then: the member says more.
    return FusionFastError(f"cannot extract member {member!r}: {err.strerror or err}", path=unit)


def _is_state_folder(name: str) -> bool:
    """`name` is prepare's state folder, also on a case-insensitive filesystem (macOS, Windows)."""
    return name.casefold() == MARKER_DIR


def _check_not_reserved(unit: str, member: str, path: str) -> None:
    """Refuse a member whose path (inside `images/`) starts with prepare's state folder: it could plant a
    fake completion marker there or be removed as a stale temporary file."""
    if _is_state_folder(path.split("/", 1)[0]):
        raise _refuse(unit, member, f"{MARKER_DIR}/ is where prepare keeps its own state")


@dataclass
class Extracted:
    """What `extract` wrote: regular files and symlinks (paths relative to the destination)."""

    files: list[str] = field(default_factory=list)
    symlinks: list[tuple[str, str]] = field(default_factory=list)  #: (path, target as written)
    bytes: int = 0


class _Reporter:
    """Throttled progress callback plus the testing delay.

    It is called for every chunk written (not only per member), so that a progress callback that raises
    (an interrupted run) stops even a large member within a fraction of a second."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._last = 0.0
        self._done = 0
        self._delay = float(os.environ.get(DELAY_ENV) or 0)

    def __call__(self, done: int, *, force: bool = False) -> None:
        self._done = done
        now = time.monotonic()
        if self._progress is not None and (force or now - self._last >= _PROGRESS_EVERY_S):
            self._last = now
            self._progress(done)

    def member_done(self, done: int) -> None:
        """After each member: the testing delay (slept in slices, reporting progress between them, as a
        slow disk would), then a progress report."""
        end = time.monotonic() + self._delay
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, _PROGRESS_EVERY_S / 4))
            self(done)
        self(done)


def usable_space(folder: Path) -> int:
    """Bytes that may be written under `folder`: the free space less a reserve of 5% of the filesystem,
    at most 64 MiB (a full disk breaks more than this extraction)."""
    usage = shutil.disk_usage(folder)
    return usage.free - min(64 << 20, usage.total // 20)


@dataclass(frozen=True)
class SizeLimits:
    """Refuse archives that would fill the disk or are decompression bombs.

    Before extraction (zip: from the central directory) and before each member is written (tar: from
    its header; both: the bytes actually copied), the bytes the unit expands to are checked against
    `free_space(destination)` and, once past `ratio_floor`, against `max_ratio` times the archive's own
    size (images do not compress: real image archives stay near 1:1; deflate bombs reach 1000:1)."""

    max_ratio: float = 100.0
    ratio_floor: int = 32 << 20
    free_space: Callable[[Path], int] = usable_space
    #: Bytes written between two lookups of the free space (sooner when a member would not fit).
    recheck_every: int = 64 << 20


DEFAULT_LIMITS = SizeLimits()


def ratio_limit(limits: SizeLimits, archive_size: int) -> int:
    """The most bytes an archive of `archive_size` may expand to under `limits.max_ratio` (what
    `_Budget` refuses: more than `ratio_floor` and more than `max_ratio` times the size)."""
    return max(limits.ratio_floor, math.floor(limits.max_ratio * max(archive_size, 1)))


@dataclass(frozen=True)
class ConvertLimit:
    """The most bytes one conversion of a compressed tar may write (None: no limit), and whether that
    is the ratio limit (else the free space when it started)."""

    max_bytes: int | None
    by_ratio: bool


def convert_limit(limits: SizeLimits | None, archive_size: int, folder: Path) -> ConvertLimit:
    """`limits` applied to one conversion of an archive of `archive_size` into `folder`: the ratio
    limit, or the free space under `folder` when that is less. (Conversions running at once also share
    one `space_budget`.)"""
    if limits is None:
        return ConvertLimit(None, False)
    by_ratio, free = ratio_limit(limits, archive_size), limits.free_space(folder)
    return ConvertLimit(max(0, min(by_ratio, free)), by_ratio <= free)


def space_budget(limits: SizeLimits | None, folder: Path) -> _core.ConvertBudget | None:
    """The bytes that all the conversions of one run (started together, `--jobs` at once) may write
    together: the free space under `folder` now, after the reserve. Each conversion alone is held to the
    free space when it starts, which N conversions at once could each use up; this counts them all.
    None (no count) when `limits` is None."""
    if limits is None:
        return None
    return _core.ConvertBudget(max(0, limits.free_space(folder)))


def _space_refused(key: str, folder: Path, detail: str) -> FusionFastError:
    return FusionFastError(
        f"refusing to convert: the conversions running at once would together write more than the "
        f"space free under {folder} (after a reserve); {detail}; the partial shard was removed; free "
        f"some space, convert fewer archives at once, or pass {NO_SIZE_LIMITS} to convert it anyway",
        path=key,
    )


def conversion_refused(
    message: str, limits: SizeLimits, key: str, archive_size: int, folder: Path, limit: ConvertLimit
) -> FusionFastError:
    """The Rust converter's refusal (`message`, starting with `_core.CONVERT_LIMIT_PREFIX`: the bytes
    produced and the limit) of the archive `key`, saying which limit it was: the shared space budget,
    the ratio, or the free space under `folder` when the conversion started."""
    if message.startswith(_core.CONVERT_SPACE_PREFIX):
        return _space_refused(key, folder, message.removeprefix(_core.CONVERT_SPACE_PREFIX).strip())
    detail = message.removeprefix(_core.CONVERT_LIMIT_PREFIX).strip()
    if limit.by_ratio:
        why = (
            f"it expands to more than {limits.max_ratio:g} times its size of {_human(archive_size)} "
            "(a decompression bomb?)"
        )
    else:
        why = f"it expands to more than the space free under {folder} (after a reserve)"
    return FusionFastError(
        f"refusing to convert: {why}; {detail}; the partial shard was removed; pass {NO_SIZE_LIMITS} "
        "to convert it anyway",
        path=key,
    )


def check_ratio(
    limits: SizeLimits, key: str, archive_size: int, total: int, member: str | None, verb: str = "extract"
) -> None:
    """Refuse the archive `key` of `archive_size` bytes when its members, up to and including `member`
    (None: all of them), expand to `total` bytes, more than `ratio_limit` allows: a decompression bomb.
    `verb` says what is refused ("extract", "index")."""
    if total > limits.ratio_floor and total > limits.max_ratio * max(archive_size, 1):  # max_ratio may be inf
        what = f" (at member {member!r})" if member else ""
        raise FusionFastError(
            f"refusing to {verb}: it expands to at least {_human(total)}{what} from "
            f"{_human(archive_size)}, more than {limits.max_ratio:g} times its size (a decompression "
            f"bomb?); pass {NO_SIZE_LIMITS} to {verb} it anyway",
            path=key,
        )


class _Budget:
    """Applies `SizeLimits` to one extraction or conversion; `limits=None` checks nothing. `shared`
    (a conversion's) is the `space_budget` of every conversion running at once: each take is drawn
    from it too, and `give_back` returns what was drawn once the output is removed."""

    def __init__(
        self,
        limits: SizeLimits | None,
        key: str,
        dest: Path,
        archive_size: int,
        shared: _core.ConvertBudget | None = None,
    ) -> None:
        self.limits = limits
        self.key = key
        self.dest = dest
        self.archive_size = archive_size
        self.shared = shared if limits is not None else None
        self.total = 0  #: bytes declared (and written) so far
        self._free: int | None = None  #: free space at the last lookup
        self._since = 0  #: bytes taken since that lookup
        self._drawn = 0  #: bytes drawn from `shared`

    def _ratio(self, total: int, member: str | None) -> None:
        assert self.limits is not None
        check_ratio(self.limits, self.key, self.archive_size, total, member)

    def _room(self, n: int, member: str | None, *, fresh: bool = False) -> None:
        lim = self.limits
        assert lim is not None
        if fresh or self._free is None or n > self._free - self._since or self._since >= lim.recheck_every:
            self._free, self._since = lim.free_space(self.dest), 0
        if n > self._free - self._since:
            what = f"member {member!r} needs" if member else "its members need"
            free = max(self._free - self._since, 0)
            raise FusionFastError(
                f"refusing to extract: {what} {_human(n)} but only {_human(free)} "
                f"is free under {self.dest.parent} (after a reserve); free some space, or pass "
                f"{NO_SIZE_LIMITS} to extract it anyway",
                path=self.key,
            )

    def declare(self, total: int) -> None:
        """Before extraction: the sizes the archive declares for all its members."""
        if self.limits is not None:
            self._ratio(total, None)
            self._room(total, None, fresh=True)

    def take(self, member: str, n: int) -> None:
        """Before writing `n` more bytes of `member` (its declared size, or bytes beyond it)."""
        if self.limits is not None:
            self._ratio(self.total + n, member)
            self._room(n, member)
            self._draw(n)
            self._since += n
        self.total += n

    def _draw(self, n: int) -> None:
        shared = self.shared
        if shared is None:
            return
        if not shared.take(n):
            raise _space_refused(
                self.key,
                self.dest,
                f"it had produced {self.total + n} bytes when the budget of {shared.limit} bytes that all "
                f"conversions running at once may write together ran out (other conversions had taken "
                f"{max(shared.used - self._drawn, 0)} bytes of it)",
            )
        self._drawn += n

    def give_back(self) -> None:
        """The output was removed: its bytes are free again for the other conversions."""
        if self.shared is not None:
            self.shared.release(self._drawn)
        self._drawn = 0


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


def _copy_member(
    src: io.BufferedIOBase | IO[bytes],
    target: Path,
    declared: int,
    member: str,
    budget: _Budget,
    report: Callable[[], None],
) -> int:
    """Copy one member's bytes into a new file `target` (never following or replacing what is there),
    reporting progress per chunk; the bytes actually written are held to the declared size."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600)
    written = 0
    try:
        with open(fd, "wb", closefd=True) as dst:
            while chunk := src.read(_COPY_BUFFER):
                written += len(chunk)
                if written > declared:
                    budget.take(member, len(chunk))  # more than declared: count it against the limits
                dst.write(chunk)
                report()
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise FusionFastError(
                f"the disk filled up while writing member {member!r} to {target}", path=budget.key
            ) from None
        raise
    return written


_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


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
    def extract(
        self, dest: Path, progress: Progress | None = None, limits: SizeLimits | None = ...
    ) -> Extracted: ...


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
                    for info, path in self._checked_zip_members(zf):
                        if path is not None and not info.is_dir():
                            yield path
                return
            with self._open() as raw, _decompressed(raw, self.key) as stream, _open_tar_stream(stream) as tf:
                seen: set[str] = set()
                links: set[str] = set()
                while (m := tf.next()) is not None:
                    _forget_members(tf)
                    path = self._check_tar_member(m, seen, links)
                    if m.isreg():
                        _skip_data(tf, m)
                    if path is not None and not m.isdir():
                        yield path
                _raise_if_unterminated(tf, self.key)
                _read_to_end(tf, self.key)

    def extract(
        self, dest: Path, progress: Progress | None = None, limits: SizeLimits | None = DEFAULT_LIMITS
    ) -> Extracted:
        """Write every member under `dest` (which must exist); see the module docstring for the checks.
        `limits=None` lifts the size limits."""
        report = _Reporter(progress)
        budget = _Budget(limits, self.key, dest, self.size)
        with self._reading():
            if self.kind == "zip":
                return self._extract_zip(dest, report, budget)
            return self._extract_tar(dest, report, budget)

    # -- tar
    def _check_tar_member(self, m: tarfile.TarInfo, seen: set[str], links: set[str]) -> str | None:
        """The member's checked path; `seen` collects the paths so far, `links` the symlinks'."""
        path = safe_member_path(self.key, m.name)
        if path is not None:
            _check_not_reserved(self.key, m.name, path)
            folder = posixpath.dirname(path)
            while folder:  # a member written through a link would not be at the path it is listed under
                if folder in links:
                    raise _refuse(self.key, m.name, f"its folder is reached through the link {folder!r}")
                folder = posixpath.dirname(folder)
        if m.isdir():
            return path
        if path is None:
            raise _refuse(self.key, m.name, "a file member with an empty name")
        if m.issym():
            _check_link_target(self.key, m.name, m.linkname, relative_to=posixpath.dirname(path))
        elif m.islnk():
            _check_link_target(self.key, m.name, m.linkname, relative_to="")
        elif m.issparse():
            raise _refuse(self.key, m.name, "sparse file (its declared size need not match its data)")
        elif not m.isreg():
            raise _refuse(self.key, m.name, "device file, fifo or other special file")
        if path in seen:
            raise _refuse(self.key, m.name, "the archive holds two members with this path")
        seen.add(path)
        if m.issym():
            links.add(path)
        return path

    def _extract_tar(self, dest: Path, report: _Reporter, budget: _Budget) -> Extracted:
        out = Extracted()
        seen: set[str] = set()
        links: set[str] = set()
        regular: set[str] = set()  # files written so far: what a hard link may point at
        with self._open() as raw, _decompressed(raw, self.key) as stream, _open_tar_stream(stream) as tf:
            while (m := tf.next()) is not None:
                _forget_members(tf)
                path = self._check_tar_member(m, seen, links)
                if path is None:
                    continue
                if m.islnk() and posixpath.normpath(m.linkname) not in regular:
                    raise _refuse(
                        self.key,
                        m.name,
                        f"hard link to {m.linkname!r}, which is not a file earlier in the archive",
                    )
                if m.islnk():  # the system resolves its target now, through the links already written
                    _check_link_chains(self.key, [(m.name, "", m.linkname)], links.__contains__)
                if not _plausible_mtime(m.mtime):
                    m.mtime = None  # type: ignore[assignment]  # as GNU tar: extracted, time not set
                try:
                    # Links and folders through tarfile; regular files are written here, in chunks,
                    # after the same filter has checked them.
                    checked = _data_filter(m, dest)
                    if m.isreg():
                        budget.take(m.name, m.size)
                        target = dest / path
                        target.parent.mkdir(parents=True, exist_ok=True)
                        src = tf.extractfile(m)
                        assert src is not None
                        written = _copy_member(
                            src, target, m.size, m.name, budget, lambda: report(raw.tell())
                        )
                        if written != m.size:
                            raise FusionFastError(
                                f"corrupt or truncated archive: member {m.name!r} holds {written} bytes, "
                                f"its header says {m.size}",
                                path=self.key,
                            )
                        if checked.mode is not None:
                            os.chmod(target, checked.mode)
                        if m.mtime is not None:
                            os.utime(target, (m.mtime, m.mtime))
                    else:
                        tf.extract(m, dest, **_FILTER_KW)
                except tarfile.FilterError as e:
                    raise _refuse(self.key, m.name, str(e)) from None
                except OSError as e:
                    raise _member_error(self.key, m.name, e) from e
                except (KeyError, ValueError):
                    # tarfile's fallback for a link it cannot make looks the target up among the headers,
                    # which stream reading does not keep: the link itself could not be made.
                    raise _refuse(self.key, m.name, "cannot extract member (the link was refused)") from None
                if m.issym():
                    out.symlinks.append((path, m.linkname))
                elif not m.isdir():
                    regular.add(path)
                    out.files.append(path)
                    out.bytes += m.size
                report.member_done(raw.tell())
            _raise_if_unterminated(tf, self.key)
            _read_to_end(tf, self.key)
        # Once every link is known: a link may come before the link its target passes through.
        _check_link_chains(self.key, [(p, p, t) for p, t in out.symlinks], links.__contains__)
        report(self.size, force=True)
        return out

    # -- zip
    def _check_zip_member(self, info: zipfile.ZipInfo) -> str | None:
        path = safe_member_path(self.key, info.filename)
        if path is not None:
            _check_not_reserved(self.key, info.filename, path)
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            kind = "symlink" if stat.S_ISLNK(mode) else "device file, fifo or other special file"
            raise _refuse(self.key, info.filename, f"{kind} (not supported in zip archives)")
        if path is None and not info.is_dir():
            raise _refuse(self.key, info.filename, "a file member with an empty name")
        if info.flag_bits & 0x41:  # traditional or strong encryption
            raise _refuse(self.key, info.filename, "encrypted (not supported)")
        if info.flag_bits & 0x20:
            raise _refuse(self.key, info.filename, "compressed patched data (not supported)")
        if info.compress_type not in _ZIP_METHODS:
            raise _refuse(
                self.key,
                info.filename,
                f"compression method {info.compress_type} is not supported (stored, deflate, bzip2, lzma)",
            )
        return path

    def _checked_zip_members(self, zf: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, str | None]]:
        """Every entry of the central directory with its checked path; names that appear twice are
        refused (zipfile would silently give the last one)."""
        out = []
        seen: set[str] = set()
        for info in zf.infolist():
            path = self._check_zip_member(info)
            if path is not None and not info.is_dir():
                if path in seen:
                    raise _refuse(self.key, info.filename, "the archive holds two members with this path")
                seen.add(path)
            out.append((info, path))
        return out

    def _extract_zip(self, dest: Path, report: _Reporter, budget: _Budget) -> Extracted:
        out = Extracted()
        with self._open() as raw, zipfile.ZipFile(raw) as zf:
            members = self._checked_zip_members(zf)
            budget.declare(sum(info.file_size for info, _ in members if not info.is_dir()))
            for info, path in members:
                if path is None:
                    continue
                target = dest / path
                if not info.is_dir():
                    budget.take(info.filename, info.file_size)
                try:
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src:  # zipfile checks the CRC when the member is read to its end
                        written = _copy_member(
                            src, target, info.file_size, info.filename, budget, lambda: report(raw.tell())
                        )
                except OSError as e:
                    raise _member_error(self.key, info.filename, e) from e
                if written != info.file_size:
                    raise FusionFastError(
                        f"corrupt or truncated archive: member {info.filename!r} holds {written} bytes, "
                        f"the central directory says {info.file_size}",
                        path=self.key,
                    )
                mtime = time.mktime((*info.date_time, 0, 0, -1))
                os.utime(target, (mtime, mtime))
                out.files.append(path)
                out.bytes += info.file_size
                report.member_done(raw.tell())
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
        # bz2 and lzma report a damaged stream as an OSError without an errno (disk errors have one).
        if isinstance(err, _DAMAGE) or (type(err) is OSError and err.errno is None):
            raise FusionFastError(f"corrupt or truncated archive: {err}", path=self.key) from err
        if isinstance(err, NotImplementedError):  # zipfile: a newer zip version, an unknown feature
            raise FusionFastError(f"uses a zip feature that is not supported: {err}", path=self.key) from err


#: Compression methods zipfile reads (others, e.g. AES's 99 or deflate64's 9, it cannot).
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)

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
        except (ValueError, IndexError, KeyError, OverflowError) as e:
            # A malformed extended header (e.g. a PAX sparse map) that tarfile's parser does not catch.
            raise tarfile.ReadError(f"malformed header: {e}") from None


def _plausible_mtime(mtime: object) -> bool:
    """A modification time that the OS can set (a header can hold 1e400, NaN or 2**80)."""
    return isinstance(mtime, (int, float)) and math.isfinite(mtime) and abs(mtime) < 2**40


def _open_tar_stream(stream: IO[bytes]) -> tarfile.TarFile:
    """A tar read as a stream from `stream`, already decompressed (`_decompressed`)."""
    # tarfile's default record-sized buffer: its stream reader slices its whole buffer on every read, so
    # a large one costs a copy of it per header (the decompressing reader below buffers already).
    tf = tarfile.open(fileobj=stream, mode="r|", tarinfo=_EndCheckingTarInfo)
    tf.unterminated = None  # type: ignore[attr-defined]
    return tf


_GZIP_MAGIC = b"\x1f\x8b"
_BZ2_MAGIC = re.compile(rb"BZh[1-9]1AY&SY")
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _decompressed(raw: io.BufferedReader, key: str) -> IO[bytes]:
    """The tar stream inside `raw`: a gzip / bzip2 / xz reader (by magic number) or `raw` itself.

    These readers check every CRC and length of the compressed stream, but only when read to its end;
    `_read_to_end` does that after the tar's end-of-archive blocks."""
    head = raw.peek(16)[:16]
    if head.startswith(_GZIP_MAGIC):
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if _BZ2_MAGIC.match(head):
        return bz2.BZ2File(raw)
    if head.startswith(_XZ_MAGIC):
        return lzma.LZMAFile(raw)  # checks the xz integrity check (CRC64 by default)
    if head.startswith(_ZSTD_MAGIC):
        raise FusionFastError("zstd-compressed tar archives are not supported; decompress it first", path=key)
    return raw


def _read_to_end(tf: tarfile.TarFile, key: str) -> None:
    """Read the (decompressed) stream after the tar's end-of-archive block to its end, so that a
    compressed stream's trailer (CRC, length, end-of-stream marker, any further concatenated members) is
    checked: a damaged or cut archive raises here. What follows the end block must be zeros (padding):
    anything else is a second archive (`cat a.tar b.tar`) whose members `tarfile` would silently skip."""
    stream = cast(IO[bytes], tf.fileobj)
    check_zeros_to_end(stream, tf.offset, key)  # type: ignore[attr-defined]


def check_zeros_to_end(stream: IO[bytes], at: int, key: str) -> None:
    """Read the rest of the tar stream `stream` of archive `key`, which follows its end-of-archive
    marker at byte `at`, in chunks: it must hold only zeros (padding). Anything else is a second archive
    (`cat a.tar b.tar`) whose members would silently be left out."""
    while chunk := stream.read(_COPY_BUFFER):
        if chunk.count(0) != len(chunk):
            raise FusionFastError(
                "corrupt or concatenated archive: data after the end-of-archive marker at byte "
                f"{at} of the tar stream (two archives joined with cat? prepare them separately)",
                path=key,
            )


def _data_filter(m: tarfile.TarInfo, dest: Path) -> tarfile.TarInfo:
    """`tarfile`'s `data` filter where Python has it (it resolves paths on disk: a symlink planted by an
    earlier member is caught); the name checks above are the fallback."""
    data_filter = getattr(tarfile, "data_filter", None)
    return m if data_filter is None else data_filter(m, str(dest))


_FILTER_KW: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def _skip_data(tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
    """Read past a member's data. tarfile's own skipping (in `next()`) goes block by block to the offset
    the header claims, also beyond the end of the stream: a size of 10**20 would loop for ever. Reading
    ends at the end of the stream, with an "unexpected end of data" error."""
    src = tf.extractfile(m)
    assert src is not None
    while src.read(_COPY_BUFFER):
        pass


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
        for path, size, mtime in sorted(self.files):  # names as the OS gave them, UTF-8 or not
            h.update(f"{path}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
        return Stamp(self.size, max((m for _, _, m in self.files), default=0), h.hexdigest())

    def members(self, limit: int | None = None) -> Iterator[str]:
        for path, _, _ in self.files[:limit]:
            yield path

    def extract(
        self, dest: Path, progress: Progress | None = None, limits: SizeLimits | None = DEFAULT_LIMITS
    ) -> Extracted:
        """Hard-link every file under `dest` (copy when linking fails, e.g. across filesystems: copies
        are held to `limits`' free-space check)."""
        report = _Reporter(progress)
        budget = _Budget(limits and replace(limits, max_ratio=float("inf")), self.key, dest, self.size)
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
                budget.take(path, size)
                with open(src, "rb") as f:
                    _copy_member(f, target, size, path, budget, lambda: report(out.bytes))
                shutil.copystat(src, target)
            out.files.append(path)
            out.bytes += size
            report.member_done(out.bytes)
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
    keys = [str(int(b)) if b.isdigit() else b for b in bodies]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        detail = f"part {', '.join(twice)} twice"
    elif all(b.isdigit() for b in bodies):
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
    """The work folder for `key`: in `images/.fusion-fast/` (same filesystem as `images/`, where no
    member may land), tagged with our pid."""
    return state_folder(images) / f"{TMP_PREFIX}{marker_name(key)}-{os.getpid()}"


#: Longest marker name kept readable (a file name must stay under 255 bytes with its suffixes).
_MAX_MARKER_NAME = 160


def marker_name(key: str) -> str:
    """A file name for `key`'s marker and work folder: readable, and distinct for distinct keys. The
    readable form alone is not (`a b.tar` and `a_b.tar`, `x/y.tar` and `x__y.tar`): when it does not
    give the key back, or is too long, a hash of the key is added."""
    name = _UNSAFE_MARKER_CHARS.sub("_", key.replace("/", "__"))
    if name.replace("__", "/") != key or len(name) > _MAX_MARKER_NAME:
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
        name = f"{name[:_MAX_MARKER_NAME]}~{digest}"
    return name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(folder: Path) -> list[Path]:
    """Remove `.tmp-*-<pid>` entries in `folder` left by processes that no longer run. Only prepare's
    own folders are cleaned (`images/.fusion-fast/`, `jsons/`), where no archive member can be."""
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


def check_symlinks(
    key: str, symlinks: Sequence[tuple[str, str]], strip: int, prefix: str, images: Path | None = None
) -> None:
    """Symlinks must still point inside `images/`, and not into its state folder, once members are moved
    to `prefix + stripped path`, and not through another link (of the unit, or one in `images/`)."""
    finals = [(path, prefix + strip_components(path, strip), target) for path, target in symlinks]
    for path, final, target in finals:
        _check_link_target(key, path, target, relative_to=posixpath.dirname(final))
    ours = {final for _, final, _ in finals}
    _check_link_chains(
        key, finals, lambda p: p in ours or (images is not None and os.path.islink(images / p))
    )


def _same_file(src: Path, target: Path) -> bool:
    """`target` already holds what `src` holds: the same file, an equal copy or an equal symlink."""
    if src.is_symlink() or target.is_symlink():
        return src.is_symlink() and target.is_symlink() and os.readlink(src) == os.readlink(target)
    if not (src.is_file() and target.is_file()):
        return False
    if os.path.samefile(src, target):
        return True
    return src.stat().st_size == target.stat().st_size and filecmp.cmp(src, target, shallow=False)


#: Conflicts listed in full in a placement error (the rest are counted).
_SHOWN_CONFLICTS = 5


def _placement_conflicts(
    tmp: Path, images: Path, strip: int, prefix: str, key: str, expected: int | None = None
) -> None:
    """Raise before anything moves when placing `tmp` would put two members on one path, a file where
    a folder is (or the reverse), a member in prepare's state folder, or replace a different file; or
    when `tmp` does not hold the `expected` number of files and links."""
    claimed: dict[str, str] = {}  # target (relative to images/) -> member
    kind: dict[str, str] = {}  # what a folder path of images/ is: "dir", "missing" or "other"
    conflicts: list[str] = []

    def folder_kind(rel: str) -> str:
        if rel == "":
            return "dir"
        if rel not in kind:
            parent = folder_kind(posixpath.dirname(rel))
            path = images / rel
            if parent != "dir":
                kind[rel] = "missing" if parent == "missing" else "other"
            elif not os.path.lexists(path):
                kind[rel] = "missing"
            else:
                kind[rel] = "dir" if path.is_dir() and not path.is_symlink() else "other"
        return kind[rel]

    for top, dirs, files in os.walk(tmp):
        dirs.sort()  # archive-independent, reproducible messages
        rel_top = os.path.relpath(top, tmp).replace(os.sep, "/")
        names = list(files) + [d for d in dirs if os.path.islink(os.path.join(top, d))]
        for name in sorted(names):
            member = name if rel_top == "." else f"{rel_top}/{name}"
            if member.count("/") < strip:
                continue  # `place` drops entries above the strip depth (decide_placement avoids them)
            target = prefix + strip_components(member, strip)
            _check_not_reserved(key, member, target)
            if target in claimed:
                conflicts.append(
                    f"members {claimed[target]!r} and {member!r} would both become images/{target}"
                )
                continue
            claimed[target] = member
            parent = folder_kind(posixpath.dirname(target))
            if parent == "other":
                conflicts.append(f"member {member!r} -> images/{target}: a file is in the way of its folder")
            elif parent == "dir" and os.path.lexists(images / target):
                if (images / target).is_dir() and not (images / target).is_symlink():
                    conflicts.append(f"member {member!r} -> images/{target}: a folder is there")
                elif not _same_file(Path(top, name), images / target):
                    conflicts.append(f"member {member!r} -> images/{target}: exists and differs")
    if expected is not None and len(claimed) != expected:
        raise FusionFastError(
            f"{expected} were extracted but {len(claimed)} are in its work folder {tmp} (changed by "
            "something else?); nothing of it was placed",
            path=key or None,
        )
    for target in claimed:  # a member file where another member's folder goes
        folder = posixpath.dirname(target)
        while folder:
            if folder in claimed:
                conflicts.append(
                    f"members {claimed[folder]!r} and {claimed[target]!r}: images/{folder} would be both a "
                    "file and a folder"
                )
                break
            folder = posixpath.dirname(folder)
    if conflicts:
        shown = "; ".join(conflicts[:_SHOWN_CONFLICTS])
        more = f" (and {len(conflicts) - _SHOWN_CONFLICTS} more)" if len(conflicts) > _SHOWN_CONFLICTS else ""
        raise FusionFastError(
            f"cannot place its files without replacing others: {shown}{more}. Nothing of it was placed; "
            "remove what is in the way (or this archive) and run again",
            path=key or None,
        )


def place(
    tmp: Path, images: Path, strip: int, prefix: str, key: str = "", expected: int | None = None
) -> list[str]:
    """Move the extracted tree `tmp` into `images/<prefix>`, dropping its first `strip` path components
    (every file is deeper than that). Folders that exist are merged into; a file that exists is left as
    it is when it is the same (a re-run after an interrupted move), and is otherwise a conflict: every
    conflict is found before anything moves (`FusionFastError` naming `key`, the members and targets).
    With `expected`, the number of files and links `tmp` must hold. Returns the top-level entries of
    `images/` that received files."""
    _placement_conflicts(tmp, images, strip, prefix, key, expected)
    roots = [tmp]
    for _ in range(strip):
        roots = [d for r in roots for d in sorted(r.iterdir()) if d.is_dir() and not d.is_symlink()]
    dest = images / prefix if prefix else images
    dest.mkdir(parents=True, exist_ok=True)
    entries: set[str] = set()
    for root in roots:
        for child in sorted(root.iterdir()):
            entries.add(prefix.split("/", 1)[0] if prefix else child.name)
            _move_merging(child, dest / child.name, key)
    return sorted(entries)


def _move_merging(src: Path, target: Path, key: str) -> None:
    if not os.path.lexists(target):
        os.rename(src, target)
        return
    src_is_dir = src.is_dir() and not src.is_symlink()
    target_is_dir = target.is_dir() and not target.is_symlink()
    if src_is_dir and target_is_dir:
        for child in sorted(src.iterdir()):
            _move_merging(child, target / child.name, key)
    elif src_is_dir and not any(src.iterdir()):
        pass  # an empty folder where a file is: nothing to place
    elif not src_is_dir and not target_is_dir and _same_file(src, target):
        src.unlink()  # already in place (an earlier, interrupted run moved it)
    else:  # changed since `_placement_conflicts` looked
        raise FusionFastError(f"cannot place {src.name}: {target} exists and differs", path=key or None)


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
    #: "extract" (files placed in `images/`) or "shards" (read through the folder's image store)
    mode: str = "extract"
    #: shards: the plain tar or zip the store reads (relative to `images/` when in the state folder)
    archive: str = ""

    @property
    def stamp(self) -> Stamp:
        return Stamp(self.size, self.mtime_ns, self.fingerprint)


def marker_path(images: Path, key: str) -> Path:
    return state_folder(images) / f"{marker_name(key)}.done"


def read_marker(images: Path, key: str) -> Marker | None:
    """The unit's marker, or None when it is missing or unreadable."""
    try:
        data = json.loads(marker_path(images, key).read_text(encoding="utf-8"))
        return Marker(**data)
    except (OSError, ValueError, TypeError):
        return None


def read_markers(images: Path) -> list[Marker]:
    """Every readable marker in the state folder of `images`."""
    out = []
    folder = state_folder(images)
    for path in sorted(folder.glob("*.done")) if folder.is_dir() else []:
        try:
            out.append(Marker(**json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError):
            continue
    return out


def write_marker(images: Path, marker: Marker) -> None:
    """Write the marker atomically (a temporary file renamed into place)."""
    path = marker_path(images, marker.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{os.getpid()}"
    tmp.write_text(json.dumps(asdict(marker), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def is_in_place(images: Path, unit: ImageUnit, stamp: Stamp) -> Marker | None:
    """The unit's marker when it matches `stamp` and every entry it lists still exists (prepared as
    shards: the archive it records exists and the folder's image store reads it)."""
    marker = read_marker(images, unit.key)
    if marker is None or marker.key != unit.key or marker.stamp != stamp:
        return None
    if marker.mode == "shards":
        from .prepare_shards import marker_archive, store_archives

        archive = marker_archive(images, marker.archive)
        readable = archive.is_file() and str(archive) in (store_archives(images) or ())
        return marker if readable else None
    if not all(os.path.lexists(images / e) for e in marker.entries):
        return None
    return marker
