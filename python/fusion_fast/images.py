"""Images read straight out of their archives: `ImageStore`, an offset index over tar and zip members.

    store = ImageStore.build(["images/COCO.tar", "images/extra.zip"], "images.ffimg")
    store = ImageStore.open("images.ffimg")
    data = store.read("COCO/train2017/000000000009.jpg")     # bytes
    img = store.open_image("COCO/train2017/000000000009.jpg")  # PIL image

The store file maps each member path to (archive, offset, size, method, CRC); a lookup is a binary search
in the memory-mapped file, so it costs no Python object per member and every process that opens the same
store shares its pages. Plain tar members and stored zip members are read straight from the mapped
archive (`view` copies nothing); deflated zip members are inflated on read. Every zip member's CRC-32 is
checked on read. Compressed tars (`.tar.gz`) are refused: convert them to a plain `.tar` first.

Paths are normalised (`./a//b` -> `a/b`) both in the archives and in lookups. A path held by more than
one archive (or twice in one) resolves to its first occurrence, archives taken in the order given to
`build`; `BuildReport.duplicates` lists the others. Links, devices, fifos, sparse and encrypted members,
absolute paths and paths with `..` are never indexed (`BuildReport.refused`).

A store pickles as its path: a DataLoader worker reopens it (cheaply: the header is checked and the file
mapped; archives are mapped on first read) instead of copying anything.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _core

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
    def build(cls, archives: list[PathLike], path: PathLike) -> ImageStore:
        """Indexes `archives` (in priority order) into the store file `path`, written atomically, and
        opens it. Archive paths are recorded as absolute paths. A truncated or corrupt archive raises
        `CorruptArchiveError` naming it and the byte where it goes wrong; no store is written then."""
        absolute = [os.path.abspath(os.fspath(a)) for a in archives]
        raw = _core.ImageStore.build(absolute, os.fspath(path))
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
        """Every member path (in the store's internal order)."""
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


__all__ = ["ImageStore", "BuildReport", "STORE_SUFFIX"]
