"""JSON files written atomically and read with errors that name the file."""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Any

from ofrnn_tf.processes import owner_tag, remove_dead_leftovers


def write_text(path: str, text: str) -> str:
    """Writes `text` to `path` through a temporary file, so readers never see half a file.

    A write that fails (a full disk, a read-only folder) removes its temporary file, and
    its OSError names `path` (a full disk's, raised by the write, names none). The
    temporary files of `path` that killed processes of this machine left are removed.
    """
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    with contextlib.suppress(OSError):  # a tidy-up: the write says what is wrong
        remove_dead_leftovers(folder, re.compile(
            re.escape(os.path.basename(path)) + r"\.tmp-(?P<owner>.+)"))
    tmp = f"{path}.tmp-{owner_tag()}"  # processes sharing a folder must not share it
    try:
        with contextlib.suppress(FileNotFoundError):  # a dead process's of this process id
            os.remove(tmp)
        # Made new, never opened through a symbolic link someone left under its name.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        with open(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(error, OSError) and error.filename is None:
            error.filename = path
        raise
    return path


def write_json(path: str, data: Any, indent: int | None = 1) -> str:
    """Writes `data` to `path` atomically (`write_text`); ``indent=None`` writes it
    compactly, without spaces."""
    separators = (",", ":") if indent is None else None
    return write_text(path, json.dumps(data, indent=indent, separators=separators))


def read_json(path: str) -> Any:
    """The JSON value in `path`; FileNotFoundError or ValueError naming the file."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
