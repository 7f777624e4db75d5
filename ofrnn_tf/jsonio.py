"""Files written whole (atomically), and JSON files read with errors that name the file."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import sys
from typing import Any, Iterator

from ofrnn_tf.processes import owner_tag, remove_dead_leftovers


# What a full disk, or a full quota, says when a write stops.
DISK_FULL = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded"}


def out_of_room(error: BaseException) -> bool:
    """Whether `error` is a write stopped by a full disk or quota."""
    return isinstance(error, OSError) and error.errno in DISK_FULL


# The longest file name the common file systems take, in bytes.
LONGEST_NAME = 255


@contextlib.contextmanager
def replaced_whole(path: str) -> Iterator[str]:
    """The temporary file to write `path`'s new content to; it replaces `path` once the
    block ends, so that readers never see half a file.

    A write that fails (a full disk, a read-only folder) removes its temporary file, and
    its OSErrors name `path` (a full disk's, raised by a write, names none). The
    temporary files of `path` that killed processes of this machine left are removed.
    """
    handled = sys.exc_info()[1]  # an error being handled by the caller is not this write's
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    if len(os.fsencode(f"{name}.tmp-{owner_tag()}")) > LONGEST_NAME:
        name = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]  # a name of 255 bytes
    with contextlib.suppress(OSError):  # a tidy-up: the write says what is wrong
        remove_dead_leftovers(folder, re.compile(re.escape(name) + r"\.tmp-(?P<owner>.+)"))
    # Processes sharing a folder must not share it.
    tmp = os.path.join(folder, f"{name}.tmp-{owner_tag()}")
    try:
        with contextlib.suppress(FileNotFoundError):  # a dead process's of this process id
            os.remove(tmp)
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        # A failed close raises again, over the write's own failure: name both.
        link = error
        while isinstance(link, OSError) and link is not handled:
            if link.filename is None:
                link.filename = path
            link = link.__context__
        raise


def write_text(path: str, text: str) -> str:
    """Writes `text` to `path` whole (`replaced_whole`)."""
    with replaced_whole(path) as tmp:
        # Made new, never opened through a symbolic link someone left under its name.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        with open(fd, "w") as f:
            f.write(text)
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
    except (json.JSONDecodeError, RecursionError) as error:  # Recursion: nested too deep
        raise ValueError(f"{path}: not valid JSON ({error})") from None
