"""`maest.utils.files.atomic_write`: a finished file is replaced whole or not at all."""

import pytest

from maest.utils.files import atomic_write, write_text_atomically


def test_a_failed_write_keeps_the_finished_file_and_leaves_no_temporary(tmp_path):
    path = write_text_atomically(tmp_path / "sub" / "results.json", "finished\n")
    assert path.read_text() == "finished\n"

    def half_write(temporary):
        with open(temporary, "w") as handle:
            handle.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_write)
    assert path.read_text() == "finished\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]
    write_text_atomically(path, "new", fsync=False)
    assert path.read_text() == "new"


def test_finished_files_get_the_umask_mode_not_mkstemp_private_mode(tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        path = write_text_atomically(tmp_path / "out.json", "x")
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        write_text_atomically(path, "y")
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)
