"""Atomic JSON writes: a failed write leaves no temporary file and names its file."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ofrnn_tf import jsonio
from ofrnn_tf.processes import owner_tag


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


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="writes to /dev/full (Linux)")
def test_every_error_of_a_write_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    # A real full disk: the write fails, and the close fails again over it.
    from ofrnn_tf.cli import disk_full

    real_open = open

    def full(fd, mode):
        os.close(fd)
        return real_open("/dev/full", mode)

    path = str(tmp_path / "run.json")
    monkeypatch.setattr(jsonio, "open", full, raising=False)
    with pytest.raises(OSError) as caught:
        jsonio.write_json(path, {"a": 1})
    assert caught.value.__context__ is not None  # the chain this is about
    assert disk_full(caught.value) == f"No space left on device writing {path}"
    # An error the caller was handling when it wrote is not this write's.
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as earlier:
        with pytest.raises(OSError):
            jsonio.write_json(path, {"a": 1})
        assert earlier.filename is None
    assert os.listdir(tmp_path) == []


def test_a_file_of_the_longest_name_is_written_through_a_shorter_temporary_one(tmp_path):
    path = str(tmp_path / ("n" * 250 + ".json"))
    jsonio.write_json(path, {"a": 1})
    assert jsonio.read_json(path) == {"a": 1} and os.listdir(tmp_path) == [os.path.basename(path)]


def test_a_replace_that_fails_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("x")  # a non-empty folder cannot be replaced by a file
    with pytest.raises(OSError):
        jsonio.write_text(str(target), "text")
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    # kill -9 between the temporary file and its rename leaves it; nothing else would.
    path = str(tmp_path / "calibration.json")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = owner_tag().rpartition("-")[0]
    left = [f"{path}.tmp-{host}-{dead}", f"{path}.tmp-{host}-{os.getppid()}",
            f"{path}.tmp-other.machine-{dead}", str(tmp_path / f"metrics.json.tmp-{host}-{dead}")]
    for name in left:
        with open(name, "w") as f:
            f.write("{")
    jsonio.write_json(path, {"tau": 0.5})
    # Only this file's, of a dead process of this machine: a live writer's, another
    # machine's and another file's stay.
    assert [os.path.exists(name) for name in left] == [False, True, True, True]
    assert jsonio.read_json(path) == {"tau": 0.5}



def test_a_link_left_under_the_temporary_name_is_not_written_through(tmp_path):
    # Someone who may write into the folder plants a link where this process's
    # temporary file will be: the write replaces the link, never what it points to.
    victim = tmp_path / "notes.txt"
    victim.write_text("mine")
    path = str(tmp_path / "run" / "metrics.json")
    os.makedirs(os.path.dirname(path))
    os.symlink(victim, f"{path}.tmp-{owner_tag()}")
    jsonio.write_json(path, {"f1": 0.5})
    assert victim.read_text() == "mine" and jsonio.read_json(path) == {"f1": 0.5}
    assert os.listdir(os.path.dirname(path)) == ["metrics.json"]


def test_a_link_planted_between_the_tidy_up_and_the_open_is_not_followed(tmp_path,
                                                                         monkeypatch):
    # The temporary file is opened new and never through a link (O_EXCL | O_NOFOLLOW):
    # one planted just after the leftover of this process id was removed fails the write.
    victim = tmp_path / "notes.txt"
    victim.write_text("mine")
    path = str(tmp_path / "metrics.json")
    tmp = f"{path}.tmp-{owner_tag()}"
    real_remove, planted = os.remove, []

    def remove_then_plant(name):
        real_remove(name)
        if name == tmp and not planted:
            planted.append(os.symlink(victim, tmp))

    Path(tmp).write_text("left by a killed writer of this process id")
    monkeypatch.setattr(jsonio.os, "remove", remove_then_plant)
    with pytest.raises(FileExistsError):
        jsonio.write_json(path, {"f1": 0.5})
    assert planted and victim.read_text() == "mine" and not os.path.exists(path)


def test_json_nested_deeper_than_the_parser_goes_is_named_as_invalid(tmp_path):
    # A run file or label map edited or damaged into "[[[[...": no RecursionError traceback.
    from ofrnn_tf.labels import LabelMap

    deep = tmp_path / "label_map.json"
    deep.write_text("[" * 100_000)
    with pytest.raises(ValueError, match=rf"^{deep}: not valid JSON \(maximum recursion"):
        jsonio.read_json(str(deep))
    with pytest.raises(ValueError, match=rf"^{deep}: not a valid label map JSON \(maximum"):
        LabelMap.load(str(deep))
