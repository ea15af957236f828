"""`fusion-fast prepare --images shards`: image archives indexed where they are, never extracted.

Each archive becomes one file that the image store (`fusion_fast.images.ImageStore`) reads in place:

- a plain tar or a zip: the archive itself, hard-linked into `images/.fusion-fast/shards/` when it is on
  the playground's filesystem (so the playground keeps working when the download is removed), else
  read where it is;
- a gzip-compressed tar (`.tar.gz`, `.tgz`): converted once into a plain tar shard by the Rust
  converter (streaming, every gzip member's CRC-32 and length checked, the stream read to its end);
- a bzip2 or xz-compressed tar: converted once by the standard library's `bz2` / `lzma` readers, which
  check the stream's CRCs (bzip2) or integrity check (xz) when read to their end, as they are here;
- split parts (`X.tar.partaa ...`, `X.zip.001 ...`): concatenated (and decompressed) into one shard.

Conversions run in threads, `jobs` archives at once (the decompressors and the Rust converter release
the GIL). A shard is written to a temporary name and renamed into place only once complete, and is
named after its archive's key and stamp (size, mtime, fingerprint), so a re-run reuses the conversions
already finished.

Then, per archive, the members are listed in archive order (through a store of that archive alone),
checked like extraction checks them (paths that are absolute, hold `..` or a backslash, links, devices
and other special files, a path present twice in the archive, and paths into `.fusion-fast/` are
refused), and the same nesting decision as extraction (`prepare.decide_placement`) maps them onto the
records' paths. A member whose target is already a file in `images/` must hold the same bytes (a file on
disk wins over the store), like a conflict in extract mode. Finally one store over every archive
prepared this way (`images/.fusion-fast/images.ffimg`, written to a temporary name and renamed) is built
with those placements, and only then are the completion markers written.

A path held by more than one archive resolves to the first of them, archives taken in the order of
their keys (their paths relative to the download folder, as prepare lists them); prepare reports the
others (`PrepareResult.duplicates`).
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import io
import lzma
import os
import posixpath
import queue
import re
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import _core
from .archives import (
    _BZ2_MAGIC,
    _GZIP_MAGIC,
    _XZ_MAGIC,
    _ZSTD_MAGIC,
    DEFAULT_LIMITS,
    DELAY_ENV,
    Archive,
    ConcatFile,
    SizeLimits,
    Stamp,
    _ArchiveErrors,
    _Budget,
    _check_not_reserved,
    _pid_alive,
    _refuse,
    check_ratio,
    check_zeros_to_end,
    conversion_refused,
    convert_limit,
    marker_name,
    safe_member_path,
    space_budget,
)
from .errors import CorruptArchiveError, FusionFastError
from .images import ImageStore
from .playground import image_store_path, state_folder

#: How `prepare` makes images available: extracted into files, or read from the archives.
IMAGES_MODES = ("extract", "shards")
#: Extraction stays the default: FUSION's own training code (and any tool) opens image files by path,
#: which only fusion-fast's readers resolve through the store.
DEFAULT_IMAGES = "extract"
#: Where converted shards and links to archives go, inside the state folder.
SHARDS = "shards"

_CHUNK = 1 << 20
#: Seconds an interrupted run waits for its conversion threads to stop and clean up.
_STOP_WAIT = 5.0
#: `.<name>.tmp-<pid>`: temporary files of the Rust writers and of the converters here.
_TMP_NAME = re.compile(r"^\..+\.tmp-(\d+)$")


def shards_dir(images: Path) -> Path:
    """`images/.fusion-fast/shards/`: the plain tars and zips the store reads."""
    return state_folder(images) / SHARDS


def store_file(images: Path) -> Path:
    """`images/.fusion-fast/images.ffimg`: the image folder's store."""
    return Path(image_store_path(images))


def _tmp_name(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.tmp-{os.getpid()}"


def clean_stale_files(images: Path) -> list[Path]:
    """Remove temporary shard and store files (`.<name>.tmp-<pid>`) of runs that no longer exist."""
    removed = []
    for folder in (state_folder(images), shards_dir(images)):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            m = _TMP_NAME.match(entry.name)
            if m is None or entry.is_dir():
                continue
            pid = int(m[1])
            if pid != os.getpid() and _pid_alive(pid):
                continue
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


# -- one readable file per archive -------------------------------------------------------------------
def compression(parts: Sequence[Path]) -> str:
    """The compression of a tar: "gzip", "bzip2", "xz", "zstd" or "" (none), from the magic number of its
    first part."""
    with open(parts[0], "rb") as f:
        head = f.read(16)
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if _BZ2_MAGIC.match(head):
        return "bzip2"
    if head.startswith(_XZ_MAGIC):
        return "xz"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return ""


def shard_path(images: Path, unit: Archive, stamp: Stamp) -> Path:
    """Where the readable form of `unit` as it is now (its stamp) goes."""
    suffix = ".zip" if unit.kind == "zip" else ".tar"
    h = hashlib.blake2b(f"{stamp.size}\0{stamp.mtime_ns}\0{stamp.fingerprint}".encode(), digest_size=8)
    return shards_dir(images) / f"{marker_name(unit.key)}~{h.hexdigest()}{suffix}"


def how_readable(unit: Archive) -> str:
    """What making `unit` readable takes: "index" (read in place) or "convert"."""
    if len(unit.parts) > 1 or (unit.kind == "tar" and compression(unit.parts)):
        return "convert"
    return "index"


class Aborted(Exception):
    """The run was interrupted while converting."""


def readable_archive(
    unit: Archive,
    stamp: Stamp,
    images: Path,
    report: Callable[[int], None],
    abort: threading.Event,
    limits: SizeLimits | None = DEFAULT_LIMITS,
    cancel: _core.ConvertCancel | None = None,
    space: _core.ConvertBudget | None = None,
) -> tuple[Path, bool]:
    """(the plain tar or zip the store reads for `unit`, whether it is a file of ours in `shards/`).

    Converted shards and links already made are reused; a conversion writes a temporary file renamed
    into place once the whole stream was read and checked. `limits` apply to what a conversion writes
    as they apply to extraction, chunk by chunk: bzip2, xz and split copies here; a gzip conversion in
    Rust, given the most bytes it may write (the ratio limit, or the free space when that is less),
    refuses as soon as the stream passes it and removes its temporary file, so a gzip bomb never fills
    the disk. `space` is the free space shared by every conversion running at once (`space_budget`):
    each draws every chunk from it, so together they never write more. `cancel` (set with `abort`)
    stops a gzip conversion at its next chunk."""
    dest = shard_path(images, unit, stamp)
    source = Path(os.path.realpath(unit.parts[0]))
    how = compression(unit.parts) if unit.kind == "tar" else ""
    linked = not how and len(unit.parts) == 1
    # A link is reused only while it is the archive itself (a download replaced by a new file is not).
    if dest.is_file() and (not linked or os.path.samefile(dest, source)):
        return dest, True
    dest.parent.mkdir(parents=True, exist_ok=True)
    budget = _Budget(limits, unit.key, dest.parent, unit.size, space)
    if how == "zstd":
        raise FusionFastError(
            "zstd-compressed tar archives are not supported; decompress it first", path=unit.key
        )
    if how == "gzip":
        budget.declare(unit.size)
        limit = convert_limit(limits, unit.size, dest.parent)
        delay = float(os.environ.get(DELAY_ENV) or 0)  # a testing aid, as for the other conversions
        try:
            _core.convert_to_tars(
                [([str(p) for p in unit.parts], str(dest))],
                max_bytes=[limit.max_bytes],
                cancel=cancel,
                chunk_delay=delay or None,
                budget=budget.shared,
            )
        except FusionFastError as e:
            if cancel is not None and cancel.is_requested():
                raise Aborted from None
            if e.message.startswith(_core.CONVERT_LIMIT_PREFIX):
                assert limits is not None
                raise conversion_refused(e.message, limits, unit.key, unit.size, dest.parent, limit) from None
            if isinstance(e, CorruptArchiveError):
                raise FusionFastError(f"corrupt or truncated archive: {e.message}", path=unit.key) from None
            raise FusionFastError(f"cannot convert it: {e.message}", path=unit.key) from None
        return dest, True
    if not linked:
        if not how:
            budget.declare(unit.size)
        _stream_copy(unit, how, dest, report, abort, budget)
        return dest, True
    tmp = _tmp_name(dest)
    try:
        os.link(source, tmp)
        os.replace(tmp, dest)
    except OSError:  # another filesystem, or links not allowed: read it where it is
        tmp.unlink(missing_ok=True)
        return source, False
    return dest, True


def _stream_copy(
    unit: Archive,
    how: str,
    dest: Path,
    report: Callable[[int], None],
    abort: threading.Event,
    budget: _Budget,
) -> None:
    """Write the (decompressed) stream of `unit`'s parts to `dest`, atomically. bz2 and lzma check the
    stream's CRCs / integrity check as it is read to its end, and raise on data after it that is not a
    further stream."""
    tmp = _tmp_name(dest)
    delay = float(os.environ.get(DELAY_ENV) or 0)  # a testing aid, as for extraction
    try:
        with _ArchiveErrors(unit.key), io.BufferedReader(ConcatFile(unit.parts), _CHUNK) as raw:
            src: io.BufferedIOBase | io.BufferedReader = raw
            if how == "bzip2":
                src = bz2.BZ2File(raw)
            elif how == "xz":
                src = lzma.LZMAFile(raw)
            with open(tmp, "wb") as out:
                while chunk := src.read(_CHUNK):
                    if abort.is_set():
                        raise Aborted
                    budget.take("", len(chunk))
                    out.write(chunk)
                    report(raw.tell())
                    if delay:
                        abort.wait(delay)
                out.flush()
                os.fsync(out.fileno())
        _rename_into_place(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        budget.give_back()
        raise


def _rename_into_place(tmp: Path, dest: Path) -> None:
    os.replace(tmp, dest)


def make_readable(
    units: Sequence[tuple[Archive, Stamp]],
    images: Path,
    jobs: int,
    progress: Callable[[int, int], None] | None,
    limits: SizeLimits | None = DEFAULT_LIMITS,
) -> Iterator[tuple[int, tuple[Path, bool] | Exception, float]]:
    """`readable_archive` for each (unit, stamp), `jobs` at a time in threads; yields (position,
    result or error, seconds) as they finish. Interrupting this (Ctrl-C, SIGTERM) stops the Python
    conversions at their next chunk and the Rust gzip conversions through `cancel`; each removes its
    temporary file. (A process killed outside Python's reach leaves temporary files to the next run's
    `clean_stale_files`.)"""
    if not units:
        return
    sizes = [u.size for u, _ in units]
    total = sum(sizes)
    done_bytes = [0] * len(units)
    abort = threading.Event()
    cancel = _core.ConvertCancel()
    # One count of the free space for all conversions: each alone is held to the space free when it
    # starts, which `jobs` conversions at once could each use up.
    space = space_budget(limits, images)
    todo: queue.Queue[int] = queue.Queue()
    for k in range(len(units)):
        todo.put(k)
    results: queue.Queue[tuple[str, int, object, float]] = queue.Queue()

    def work() -> None:
        while not abort.is_set():
            try:
                k = todo.get_nowait()
            except queue.Empty:
                return
            unit, stamp = units[k]
            started = time.perf_counter()
            out: tuple[Path, bool] | Exception

            def report(n: int, k: int = k) -> None:
                results.put(("progress", k, n, 0.0))

            try:
                out = readable_archive(unit, stamp, images, report, abort, limits, cancel, space)
            except Aborted:
                return
            except (FusionFastError, OSError) as e:
                out = e
            except Exception as e:  # never lose a unit's outcome (the run would wait for it for ever)
                out = FusionFastError(f"cannot make it readable: {e!r}", path=unit.key)
            results.put(("done", k, out, time.perf_counter() - started))

    # Daemon threads: an interrupted run must not wait at exit for a conversion it abandoned.
    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, min(jobs, len(units))))]
    for t in threads:
        t.start()
    finished = 0
    try:
        while finished < len(units):
            try:
                kind, k, value, seconds = results.get(timeout=0.1)
            except queue.Empty:
                continue
            if kind == "progress":
                done_bytes[k] = int(value)  # type: ignore[call-overload]
            else:
                done_bytes[k] = sizes[k]
                finished += 1
            if progress is not None:
                progress(sum(done_bytes), total)
            if kind == "done":
                yield k, value, seconds  # type: ignore[misc]
    finally:
        abort.set()
        cancel.request()
        # Every conversion stops at its next chunk and removes its temporary file: wait for that.
        deadline = time.monotonic() + _STOP_WAIT
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))


def remove_old_shards(images: Path, unit: Archive, current: Path) -> None:
    """Remove the shards of earlier versions of `unit` (the store no longer reads them)."""
    folder = shards_dir(images)
    name = marker_name(unit.key)
    for entry in folder.iterdir() if folder.is_dir() else []:
        stem = entry.name.rsplit(".", 1)[0]
        if stem.rpartition("~")[0] == name and entry != current and not _TMP_NAME.match(entry.name):
            entry.unlink(missing_ok=True)


# -- members, checked as extraction checks them ------------------------------------------------------
@dataclass
class Listing:
    """An archive's members in archive order, their total size, and a store of that archive alone."""

    members: list[str]
    bytes: int
    store: ImageStore


def list_members(
    key: str,
    archive: Path,
    work: Path,
    limits: SizeLimits | None = DEFAULT_LIMITS,
    archive_size: int | None = None,
) -> Listing:
    """List and check the members of the readable archive `archive` (a store of it alone is built in the
    work folder `work`). Raises `FusionFastError` naming `key` and the member for what extraction refuses
    and the store cannot read (links, special files), and for a damaged archive.

    A zip's members are held to `limits` as extraction holds them (`check_ratio`, the download's
    `archive_size`, default the zip's own): each member read inflates to its declared size, so a zip
    bomb is refused from its central directory, before any member is inflated. (The free space does not
    apply: nothing is written.) Every member is then read once, in chunks, to check its CRC-32."""
    try:
        store = ImageStore.build([archive], work / f"{marker_name(key)}.ffimg")
    except FusionFastError as e:
        raise FusionFastError(f"corrupt or truncated archive: {e.message}", path=key) from None
    report = store.report
    assert report is not None
    if report.refused:
        _, member, why = report.refused[0]
        raise _refuse(
            key, member, f"{why} (the image store reads regular files only; --images extract places links)"
        )
    if report.duplicates:
        raise _refuse(key, report.duplicates[0][0], "the archive holds two members with this path")
    # One location per member, without a Python object per member beyond the path and its numbers.
    inner = store._inner
    raw = inner.members()
    located = [inner.location(m) for m in raw]
    order = sorted(range(len(raw)), key=lambda i: located[i][1])
    members = [os.fsdecode(raw[i]) for i in order]
    _check_names(key, members)
    total = sum(loc[3] for loc in located)
    end = max((loc[1] + loc[2] for loc in located), default=0)
    if _is_tar(archive):
        _check_tar_end(key, archive, end)
    else:
        if limits is not None:
            size = os.path.getsize(archive) if archive_size is None else archive_size
            _check_zip_ratio(key, members, [located[i][3] for i in order], limits, size)
        _check_zip_crcs(key, members, [located[i] for i in order])
    return Listing(members, total, store)


#: What extraction refuses that the store's own path checks let through, in names joined by NUL (which
#: no member name holds): a drive letter, prepare's state folder (any letter case) as the first
#: component, a backslash anywhere.
_BAD_NAME = re.compile(r"(?:^|\0)(?:[A-Za-z]:|\.fusion-fast(?:/|\0|\Z))|\\", re.IGNORECASE)


def _check_names(key: str, members: Sequence[str]) -> None:
    """Refuse the member names extraction refuses (`safe_member_path`, `_check_not_reserved`), found by
    one scan over all names; the first one found is checked again by those functions for the message."""
    joined = "\0".join(members)
    found = _BAD_NAME.search(joined)
    if found is None:
        return
    name = members[joined.count("\0", 0, found.start() + 1)]
    path = safe_member_path(key, name)
    if path is not None:
        _check_not_reserved(key, name, path)
    raise _refuse(key, name, "not a safe relative path")


def _check_zip_ratio(
    key: str, members: Sequence[str], sizes: Sequence[int], limits: SizeLimits, archive_size: int
) -> None:
    """Refuse a zip whose members, in archive order, declare more than `limits` allow (`check_ratio`),
    naming the member at which the total passes the limit, as extraction refuses it."""
    total = 0
    for member, size in zip(members, sizes, strict=True):
        total += size
        check_ratio(limits, key, archive_size, total, member, verb="index")


def _check_zip_crcs(
    key: str, members: Sequence[str], locations: Sequence[tuple[str, int, int, int, int, int]]
) -> None:
    """Read every member once, in chunks, checking its CRC-32 and that a deflated one inflates to exactly
    its declared size: a damaged zip is refused now, as extraction refuses it, not at some training step.
    Memory stays bounded whatever the members' sizes. `locations` are the members' `location`s."""
    with contextlib.ExitStack() as files:
        opened: dict[str, io.BufferedReader] = {}
        for m, (path, offset, stored, size, method, crc) in zip(members, locations, strict=True):
            if path not in opened:
                opened[path] = files.enter_context(open(path, "rb"))
            why = _member_damage(opened[path], offset, stored, size, method, crc)
            if why is not None:
                raise FusionFastError(f"corrupt archive: member {m!r} {why}", path=key)


#: Compression methods of zip members the image store reads.
_STORED, _DEFLATED = 0, 8


def _member_damage(
    f: io.BufferedReader, offset: int, stored: int, size: int, method: int, crc: int
) -> str | None:
    """What is wrong with the zip member whose data is the `stored` bytes at `offset` of `f` (None when
    nothing): a CRC-32 other than `crc`, or (deflated) a stream that does not inflate to `size` bytes.
    Reads and inflates chunk by chunk, never more than `size` bytes plus one chunk."""
    f.seek(offset)
    inflate = zlib.decompressobj(-zlib.MAX_WBITS) if method == _DEFLATED else None
    left, produced, check = stored, 0, 0
    while left:
        chunk = f.read(min(left, _CHUNK))
        if not chunk:
            return f"is cut short: the archive ends inside its data ({stored - left} of {stored} bytes)"
        left -= len(chunk)
        if inflate is None:
            produced += len(chunk)
            check = zlib.crc32(chunk, check)
            continue
        data = chunk
        while data:
            try:
                out = inflate.decompress(data, _CHUNK)
            except zlib.error as e:
                return f"does not inflate: {e}"
            produced += len(out)
            if produced > size:
                return f"inflates to more than the {size} bytes its header says"
            check = zlib.crc32(out, check)
            data = inflate.unconsumed_tail
            if inflate.eof:
                break
        if inflate.eof:
            break
    if inflate is not None and not inflate.eof:
        return f"does not inflate: its deflate stream stops early ({produced} bytes of {size})"
    if produced != size:
        return f"holds {produced} bytes, its header says {size}"
    if check != crc:
        return "fails its CRC-32 check"
    return None


def _is_tar(path: Path) -> bool:
    with open(path, "rb") as f:
        return not f.read(4).startswith(b"PK")


def _check_tar_end(key: str, path: Path, start: int) -> None:
    """After the last member's data: headers without data (folders, extended headers) up to the
    end-of-archive block, then only zeros. A second archive joined on with `cat` would otherwise be
    silently left out, as extraction refuses it too."""
    with open(path, "rb") as f:
        at = -(-start // 512) * 512
        f.seek(at)
        while True:
            block = f.read(512)
            if len(block) < 512:
                raise FusionFastError(
                    f"corrupt or truncated archive: the tar stops at byte {at} without its end-of-archive "
                    "marker",
                    path=key,
                )
            if block.count(0) == 512:
                break
            try:
                size = tarfile.nti(block[124:136])  # type: ignore[attr-defined]
            except (tarfile.HeaderError, ValueError):
                raise FusionFastError(
                    f"corrupt or truncated archive: bad tar header at byte {at}", path=key
                ) from None
            at += 512 + (-(-size // 512) * 512 if block[156:157] not in (b"5",) else 0)
            f.seek(at)
        check_zeros_to_end(f, at, key)


#: Conflicts listed in full in an error (the rest are counted).
_SHOWN = 5


def check_not_shadowing(key: str, files: Sequence[tuple[str, str, Path]], images: Path) -> None:
    """Extraction into a folder whose store reads other archives: a file placed at `target` would be
    read instead of the store's member there, so it must hold the same bytes. `files` are (member,
    target relative to `images/`, extracted file)."""
    path = store_file(images)
    if not path.is_file():
        return
    store = ImageStore.open(path)
    conflicts = [
        f"member {member!r} -> images/{target}: the image store holds other bytes there"
        for member, target, file in files
        if target in store and file.read_bytes() != store.read(target)
    ]
    if conflicts:
        raise FusionFastError(_conflict_message(conflicts, "place"), path=key)


def _conflict_message(conflicts: Sequence[str], verb: str) -> str:
    shown = "; ".join(conflicts[:_SHOWN])
    more = f" (and {len(conflicts) - _SHOWN} more)" if len(conflicts) > _SHOWN else ""
    return (
        f"cannot {verb} its files without shadowing others: {shown}{more}. A file in images/ is read "
        "instead of the image store's member; nothing of it was placed; remove what is in the way (or "
        "this archive) and run again"
    )


def check_targets(key: str, listing: Listing, strip: int, prefix: str, images: Path) -> list[str]:
    """The top-level entries of `images/` the members land in, once placed by (strip, prefix). Raises
    when two members would become one path, one member a folder of another, a member would land in the
    state folder, or a file already in `images/` (which wins over a store member) differs from the
    member placed on it or stands where a member's folder goes."""
    targets = [prefix + (m.split("/", strip)[strip] if strip else m) for m in listing.members]
    claimed: dict[str, str] = {}
    conflicts: list[str] = []
    for member, target in zip(listing.members, targets, strict=True):
        _check_not_reserved(key, member, target)
        if target in claimed:
            conflicts.append(f"members {claimed[target]!r} and {member!r} would both become images/{target}")
        claimed[target] = member
    folders: set[str] = set()
    for target in claimed:
        d = posixpath.dirname(target)
        while d and d not in folders:
            folders.add(d)
            d = posixpath.dirname(d)
    for folder in sorted(folders & claimed.keys()):
        conflicts.append(f"member {claimed[folder]!r}: images/{folder} would be both a file and a folder")
    tops = {t.split("/", 1)[0] for t in claimed}
    present = {t for t in tops if os.path.lexists(images / t)}
    kinds: dict[str, bool] = {}  # folder -> is it a real folder on disk (or absent)

    def folder_ok(rel: str) -> bool:
        if not rel:
            return True
        if rel not in kinds:
            p = images / rel
            kinds[rel] = folder_ok(posixpath.dirname(rel)) and (
                not os.path.lexists(p) or (p.is_dir() and not p.is_symlink())
            )
        return kinds[rel]

    for target, member in claimed.items():
        if target.split("/", 1)[0] not in present:
            continue
        if not folder_ok(posixpath.dirname(target)):
            conflicts.append(f"member {member!r} -> images/{target}: a file is in the way of its folder")
            continue
        p = images / target
        if not os.path.lexists(p):
            continue
        if p.is_dir() and not p.is_symlink():
            conflicts.append(f"member {member!r} -> images/{target}: a folder is there")
        elif p.is_symlink() or not p.is_file() or p.read_bytes() != listing.store.read(member):
            conflicts.append(f"member {member!r} -> images/{target}: exists and differs")
    if conflicts:
        raise FusionFastError(_conflict_message(conflicts, "index"), path=key)
    return sorted(tops)


# -- the store ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreEntry:
    """An archive the image store reads, with its nesting."""

    key: str
    archive: Path
    strip: int
    prefix: str


@dataclass
class StoreBuild:
    """What building the folder's store found."""

    members: int
    #: (image path, key of the archive it is read from, key of an archive whose copy is ignored)
    duplicates: list[tuple[str, str, str]] = field(default_factory=list)


def build_store(images: Path, entries: Sequence[StoreEntry]) -> StoreBuild:
    """Build `images/.fusion-fast/images.ffimg` over `entries`, first key first (a path held twice is
    read from the archive whose key sorts first), atomically; processes that open the folder's store
    from now on see it."""
    ordered = sorted(entries, key=lambda e: e.key)
    path = store_file(images)
    store = ImageStore.build(
        [str(e.archive) for e in ordered], path, placements=[(e.strip, e.prefix) for e in ordered]
    )
    forget_store(images)
    report = store.report
    assert report is not None
    by_archive = {os.path.abspath(e.archive): e.key for e in ordered}
    dups = [(m, by_archive.get(kept, kept), by_archive.get(ign, ign)) for m, kept, ign in report.duplicates]
    return StoreBuild(report.members, dups)


def forget_store(images: Path) -> None:
    """Drop this process's cached store of `images` (it is rebuilt or removed): the next lookup opens the
    file anew."""
    from . import images as image_store

    for key in (os.fspath(images), os.path.abspath(images)):
        image_store._folder_stores.pop(key, None)


def recorded_archive(images: Path, archive: Path) -> str:
    """How a marker records the archive the store reads: relative to `images/` when it is one of ours
    in the state folder (the playground may be moved), else absolute."""
    full = os.path.abspath(archive)
    folder = os.path.abspath(shards_dir(images))
    return os.path.relpath(full, images) if os.path.dirname(full) == folder else full


def marker_archive(images: Path, recorded: str) -> Path:
    """The archive a marker records (`recorded_archive`), as a path."""
    return Path(os.path.abspath(Path(images) / recorded))


def store_archives(images: Path) -> set[str] | None:
    """The archives the folder's store reads (absolute paths), or None when it has none or it cannot be
    opened."""
    path = store_file(images)
    if not path.is_file():
        return None
    try:
        return {os.fspath(a) for a in ImageStore.open(path).archives}
    except (FusionFastError, OSError):
        return None


__all__ = [
    "DEFAULT_IMAGES",
    "IMAGES_MODES",
    "Listing",
    "StoreBuild",
    "StoreEntry",
    "build_store",
    "check_targets",
    "clean_stale_files",
    "compression",
    "how_readable",
    "list_members",
    "make_readable",
    "marker_archive",
    "readable_archive",
    "recorded_archive",
    "remove_old_shards",
    "shards_dir",
    "store_archives",
    "store_file",
]
