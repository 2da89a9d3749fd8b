"""hylra_compile.files: outputs written whole or not at all, and checked before long work starts."""

from __future__ import annotations

import pytest

from hylra_compile import files
from hylra_compile.files import check_output_file, check_writable_folder, write_atomic


def test_write_atomic_replaces_whole_and_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    write_atomic(path, "old\n")
    write_atomic(path, b"new\n")
    assert path.read_bytes() == b"new\n"

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "half")
    assert path.read_text() == "new\n"


def test_write_atomic_leaves_no_temporary_file_when_the_data_cannot_be_written(tmp_path):
    path = tmp_path / "out.txt"
    with pytest.raises(TypeError):
        write_atomic(path, 42)  # neither str nor bytes
    assert list(tmp_path.iterdir()) == []


def test_checks_name_the_argument(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match="--out-dir .* cannot be written"):
        check_writable_folder(tmp_path / "a-file" / "sub", "--out-dir")
    with pytest.raises(ValueError, match="--out .* is a folder"):
        check_output_file(tmp_path, "--out", lambda p: True)
    with pytest.raises(ValueError, match="exists and is not an earlier output of this kind.*--force"):
        check_output_file(tmp_path / "a-file", "--out", lambda p: False)
    check_output_file(tmp_path / "a-file", "--out", lambda p: False, force=True)
    check_output_file(tmp_path / "a-file", "--out", lambda p: True)
    check_output_file(tmp_path / "new" / "p.json", "--out", lambda p: False)  # its folder is created
    assert (tmp_path / "new").is_dir()
