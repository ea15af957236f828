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
