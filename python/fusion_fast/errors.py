"""The exception hierarchy. Every error fusion-fast raises on purpose is a `FusionFastError`."""

from __future__ import annotations


class FusionFastError(Exception):
    """Base class. `path`, `offset`, `line`, `column` and `record` are set when known."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        offset: int | None = None,
        line: int | None = None,
        column: int | None = None,
        record: int | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.offset = offset
        self.line = line
        self.column = column
        self.record = record
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if self.line is not None:
            where.append(f"line {self.line} column {self.column} (byte {self.offset}, record {self.record})")
        return ": ".join([*where, self.message])

    def __reduce__(self):  # keep the fields across processes (DataLoader workers)
        return (
            _rebuild,
            (type(self), self.message, self.path, self.offset, self.line, self.column, self.record),
        )


def _rebuild(cls, message, path, offset, line, column, record):
    return cls(message, path=path, offset=offset, line=line, column=column, record=record)


class MalformedJSONError(FusionFastError, ValueError):
    """A data file is not valid JSON (or JSON Lines). `message` says what was expected."""

    @property
    def expected(self) -> str:
        return self.message


class IndexMissingError(FusionFastError):
    """No index exists and rebuilding is disabled (`rebuild="never"`)."""


class StaleIndexError(FusionFastError):
    """The data file changed after it was indexed and rebuilding is disabled."""


class CorruptIndexError(FusionFastError):
    """The index file is truncated, corrupt or of another format version."""


class CorruptArchiveError(FusionFastError, ValueError):
    """An image archive is truncated or corrupt, or not one the image store can read in place."""


class FusionFastIOError(FusionFastError, OSError):
    """A file could not be read or written."""


class MixtureError(FusionFastError, ValueError):
    """A training-stage YAML or mixture definition is malformed."""


class RecordError(FusionFastError):
    """A record (or the image it references) cannot be used for training."""


__all__ = [
    "FusionFastError",
    "MalformedJSONError",
    "IndexMissingError",
    "StaleIndexError",
    "CorruptIndexError",
    "CorruptArchiveError",
    "FusionFastIOError",
    "MixtureError",
    "RecordError",
]
