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


def write_text_atomically(path, text: str, fsync: bool = True) -> Path:
    """Writes a UTF-8 text file through `atomic_write`."""
    return atomic_write(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"), fsync=fsync)
