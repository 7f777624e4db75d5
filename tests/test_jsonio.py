"""Atomic JSON writes: a failed write leaves no temporary file and names its file."""

import errno
import os

import pytest

from ofrnn_tf import jsonio


def test_a_write_that_fails_leaves_no_temporary_file_and_names_the_file(tmp_path,
                                                                        monkeypatch):
    path = str(tmp_path / "meta.json")
    jsonio.write_json(path, {"a": 1})
    real_open = open

    class FullDisk:
        """A file whose writes fail as on a full disk (an OSError naming no file)."""

        def __init__(self, *args, **kwargs):
            self.file = real_open(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jsonio, "open", FullDisk, raising=False)
    with pytest.raises(OSError, match=f"No space left on device: '{path}'"):
        jsonio.write_json(path, {"a": 2})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["meta.json"] and jsonio.read_json(path) == {"a": 1}


def test_a_replace_that_fails_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("x")  # a non-empty folder cannot be replaced by a file
    with pytest.raises(OSError):
        jsonio.write_text(str(target), "text")
    assert sorted(os.listdir(tmp_path)) == ["taken"]
