"""Where a finished output file goes.

Outputs are written under a temporary name beside the target and renamed onto it, so a reader never sees
half a file. That only works for a regular file: renaming onto a named pipe, `/dev/stdout` or a device
would replace it with a plain file (as root, `--export /dev/null` would replace the machine's
`/dev/null`), and renaming onto a symbolic link would replace the link instead of the file it names.
"""

from __future__ import annotations

import os
import stat


def rename_target(path: str | os.PathLike[str]) -> str | None:
    """The path to rename a finished temporary file onto: `path` with symbolic links followed. None when
    `path` exists and is not a regular file (a pipe, a device): write into it directly instead."""
    real = os.path.realpath(path)
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return real
    return real if stat.S_ISREG(mode) else None


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` whole or not at all: beside it under a temporary name, then renamed
    (a pipe or a device is written into). An `OSError` names `path`."""
    target = rename_target(path)
    tmp = f"{target}.tmp-{os.getpid()}" if target is not None else os.fspath(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        if target is not None:
            os.replace(tmp, target)
    except BaseException as e:
        if target is not None:
            try:
                os.remove(tmp)
            except OSError:
                pass
        if isinstance(e, OSError) and e.filename is None:
            e.filename = os.fspath(path)
        raise
