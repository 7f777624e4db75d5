"""The bytes of an input file a command is given to read whole (an image to predict).

Shared by ``ofrnn-predict`` (`Predictor.iter_files`) and ``ofrnn-client``
(`predict_files`), so that both read the same folder the same way: a named pipe that
nothing writes to would block a plain ``open`` for ever, and a link to a device
(``/dev/zero``) would be read until memory runs out. Standard library only: the
reader costs its importer no TensorFlow.
"""

from __future__ import annotations

import os
import select
import stat

# How long a pipe among the inputs (`<(cat img)`, /dev/stdin, a named pipe) may take to
# give its first bytes: a named pipe nothing writes to would otherwise block for ever.
PIPE_WAIT_SECONDS = 5.0


def read_input_file(path: str) -> bytes:
    """The bytes of a regular file or of a pipe; OSError for anything else (a device, a
    folder), and for a pipe that gives nothing within `PIPE_WAIT_SECONDS`. Opened without
    blocking: the open of a named pipe would block until something writes to it."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with open(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode):
            if not select.select([fd], [], [], PIPE_WAIT_SECONDS)[0]:
                raise OSError(f"a pipe nothing was written to within {PIPE_WAIT_SECONDS:g} s")
            os.set_blocking(fd, True)  # read to the writer's end
        elif not stat.S_ISREG(mode):
            raise OSError("not a regular file or a pipe")
        return f.read()
