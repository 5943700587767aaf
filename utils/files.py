"""Atomic file writes: every finished output, cache, report and progress file of the project goes through here, so
that a crash or a kill never leaves a half-written file in place of a finished one, and readers polling a file never
see half of it."""

import os
import tempfile
from pathlib import Path


def atomic_write(path, write, fsync: bool = True) -> Path:
    """Calls `write(temporary_path)` for a temporary file beside `path`, then renames it over `path`.

    Args:
        path: the file to create or replace (its folder is created).
        write: writes the content to the path it is given (the temporary file's name ends in `.tmp`, so writers that
            infer a format from the suffix must be told the format).
        fsync: flush the data to disk before the rename (off for small files rewritten every few seconds).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file private (0600); a finished output gets the mode any new file gets (0666 less umask).
    os.fchmod(descriptor, 0o666 & ~current_umask())
    os.close(descriptor)
    try:
        write(temporary)
        if fsync:
            with open(temporary, "rb+") as file:
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def current_umask() -> int:
    """The process's umask, read without changing it where the system tells (Linux's `/proc/self/status`); elsewhere
    set and restored at once."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomically(path, text: str, fsync: bool = True) -> Path:
    """Writes a UTF-8 text file through `atomic_write` (file names that are not UTF-8, held as Python's
    surrogate escapes, are written back as their original bytes)."""
    return atomic_write(
        path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8", errors="surrogateescape"), fsync=fsync
    )
