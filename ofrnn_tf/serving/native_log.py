"""A rate limit on the lines native code writes to ``ofrnn-serve``'s stderr.

libjpeg and TensorFlow's C++ code write straight to file descriptor 2, past Python's
logging and its `RefusalLog`: a damaged JPEG gets two to four such lines a request
("Corrupt JPEG data: ...", ``E... jpeg_mem.cc:...] Premature end of JPEG data``), so a
client sending them in a loop would fill the server's log. Once the server serves,
`limit_native_stderr` points descriptor 2 at a pipe read by a small child process (this
module, ``python -m ofrnn_tf.serving.native_log``), which writes the lines on to the
original stderr, at most one a second, and then a line counting those it left out, in
the voice of `RefusalLog`: ``(57 more since the last native line)``. Python's own lines
(the server's log) stay on the original stderr, unlimited.

Nothing written before the server dies goes unsaid: the child reads the pipe to its
end, which comes only once the server is gone, and if the server did not stop cleanly
(a crash, an abort), it writes the lines it still held back rather than their count, so
that the native code's last words are seen. Only the standard library is imported here,
so that the child starts in a fraction of a second.
"""

from __future__ import annotations

import collections
import os
import select
import signal
import subprocess
import sys
import time
from typing import Callable, Optional

INTERVAL_SECONDS = 1.0  # one native line shown per interval at most
# Lines left out within the last interval, written at the end when the server did not
# stop cleanly (a fatal error's stack trace fits).
MAX_HELD_LINES = 100
MAX_LINE_BYTES = 64 * 1024  # a longer run without a newline is passed on as a line
# Written into the pipe by `NativeStderr.close` as a server stops cleanly: the child then
# counts the lines it held back instead of writing them. A NUL starts no real log line.
CLEAN_END = b"\0ofrnn-serve stopped\n"


class LineLimit:
    """Which native lines are written, given the time each arrives: the first of each
    `interval` goes through, the rest are counted, and once the interval since the last
    line shown is over, a line says how many were left out. Time is passed in, so the
    rule runs without a clock. Every method returns the lines to write (bytes)."""

    def __init__(self, interval: float = INTERVAL_SECONDS, max_held: int = MAX_HELD_LINES):
        self.interval = float(interval)
        self._shown_at = -float("inf")
        self._left_out = 0  # since the last count line
        self._held: collections.deque[bytes] = collections.deque(maxlen=max_held)

    def line(self, text: bytes, now: float) -> list[bytes]:
        """A line arriving at `now` (ending with its newline)."""
        out = self.tick(now)
        if now - self._shown_at >= self.interval:
            self._shown_at = now
            out.append(text)
        else:
            self._left_out += 1
            self._held.append(text)
        return out

    def tick(self, now: float) -> list[bytes]:
        """The count line, once the interval since the last line shown is over."""
        if not self._left_out or now - self._shown_at < self.interval:
            return []
        out = [count_line(self._left_out)]
        self._left_out = 0
        self._held.clear()
        return out

    def seconds_to_next_tick(self, now: float) -> Optional[float]:
        """How long until a count line is due, or None when none is."""
        if not self._left_out:
            return None
        return max(0.0, self._shown_at + self.interval - now)

    def end(self, clean: bool) -> list[bytes]:
        """At the end of the input: the count of the lines left out or, after an end
        that was not `clean`, those still held (the last `max_held`, after a count of
        any others)."""
        if not self._left_out:
            return []
        if clean:
            return [count_line(self._left_out)]
        dropped = self._left_out - len(self._held)
        held = len(self._held)
        # A header either way: the lines after it were held back, not passed as they came.
        head = (count_line(dropped, f"; the last {held} follow") if dropped else
                f"(the {held} native line(s) held back since the last one shown follow)\n"
                .encode())
        return [head] + list(self._held)


def count_line(n: int, more: str = "") -> bytes:
    """``(N more since the last native line)``, as `RefusalLog` counts its statuses."""
    return f"({n} more since the last native line{more})\n".encode()


def forward(source: int, sink: int, limit: Optional[LineLimit] = None,
            clock: Callable[[], float] = time.monotonic) -> None:
    """Copies the lines read from file descriptor `source` to `sink` through `limit`,
    until `source` ends; then writes what `limit` says is left (`LineLimit.end`, clean
    when the last line read was `CLEAN_END`)."""
    limit = limit or LineLimit()
    pending, last = b"", b""
    while True:
        ready, _, _ = select.select([source], [], [], limit.seconds_to_next_tick(clock()))
        chunk = os.read(source, 65536) if ready else b""
        if ready and not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        if len(pending) > MAX_LINE_BYTES:
            lines, pending = lines + [pending], b""
        out = limit.tick(clock())
        for text in lines:
            last = text + b"\n"
            if last != CLEAN_END:
                out += limit.line(last, clock())
        _write_all(sink, out)
    if pending:  # a last line without its newline
        last = pending + b"\n"
        _write_all(sink, limit.line(last, clock()))
    _write_all(sink, limit.end(clean=last == CLEAN_END))


def _write_all(fd: int, lines: list[bytes]) -> None:
    """Writes `lines`; where the original stderr refuses them (a full disk), they are
    dropped and reading goes on, so the lines after are written once it takes them again
    (and the server never blocks on a pipe nobody reads)."""
    data = b"".join(lines)
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


class NativeStderr:
    """The running rate limit of `limit_native_stderr`: the child process and the
    original stderr (a duplicate of descriptor 2 from before), which Python writes to."""

    def __init__(self, child: subprocess.Popen, original: int):
        self.child, self.original = child, original

    def close(self, timeout: float = 5.0) -> None:
        """The server stops cleanly: descriptor 2 is the original stderr again, and the
        child, its pipe ended, writes its last count; waited for up to `timeout` s."""
        try:
            os.write(2, CLEAN_END)
        except OSError:  # the child is gone, or stopped with the pipe full
            pass
        os.dup2(self.original, 2)
        try:
            self.child.wait(timeout)
        except subprocess.TimeoutExpired:
            pass  # it ends on its own once it has written what it read


def limit_native_stderr() -> Optional[NativeStderr]:
    """Points file descriptor 2 at a pipe whose child process writes the lines to the
    original stderr, rate-limited (this module's docstring); Python's `sys.stderr`, its
    logging handlers and `faulthandler` move to a duplicate of the original, so its lines
    are not limited. Returns None, the stderr left as it was, where the child cannot be
    started (said in one warning) or there is no stderr."""
    if sys.stderr is None:  # started with descriptor 2 closed: nothing to limit
        return None
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    try:
        child = _start_child(read_end, original)
    except (OSError, subprocess.SubprocessError) as e:
        for fd in (original, read_end, write_end):
            os.close(fd)
        from absl import logging

        logging.warning("native stderr lines (libjpeg, TensorFlow's C++ log) are not "
                        "rate-limited: their forwarding process did not start: %s", e)
        return None
    os.close(read_end)
    # A native line the pipe has no room for (the child stopped, or a write to the
    # original stderr hanging) is dropped: a full pipe must not stall the requests.
    os.set_blocking(write_end, False)
    _python_lines_to(original)
    os.dup2(write_end, 2)
    os.close(write_end)
    return NativeStderr(child, original)


def _start_child(read_end: int, original: int, timeout: float = 60.0) -> subprocess.Popen:
    """This module as a child process reading `read_end` and writing to `original`, once
    it says it is ready (its signals ignored); OSError where it fails to within
    `timeout` s."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")])))
    ready_read, ready_write = os.pipe()
    try:
        try:
            # Its own session: the Ctrl-C a terminal sends the server's group is not for it.
            child = subprocess.Popen(
                [sys.executable, "-m", "ofrnn_tf.serving.native_log", str(ready_write)],
                stdin=read_end, stdout=original, stderr=original, env=env, close_fds=True,
                pass_fds=(ready_write,), start_new_session=True,
                # `-m` puts the working folder first on sys.path: this package's, not an
                # `ofrnn_tf` folder wherever the server was started.
                cwd=root)
        finally:
            os.close(ready_write)
        ready = (select.select([ready_read], [], [], timeout)[0]
                 and os.read(ready_read, 1) == b"1")
    finally:
        os.close(ready_read)
    if not ready:
        status = child.poll()
        child.kill()
        child.wait()
        raise OSError("python -m ofrnn_tf.serving.native_log " + (
            f"was not ready within {timeout:.0f} s" if status is None
            else f"exited with status {status} as it started"))
    return child


def _python_lines_to(fd: int) -> None:
    """Moves `sys.stderr`, the logging handlers that write to it (absl's among them) and
    `faulthandler` to descriptor `fd`."""
    import faulthandler
    import logging

    old = sys.stderr
    new = open(fd, "w", buffering=1, encoding=old.encoding, errors=old.errors,
               closefd=False)
    sys.stderr = new
    handlers = list(logging.getLogger().handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        handlers += getattr(logger, "handlers", [])
    try:
        from absl import logging as absl_logging
        handlers.append(absl_logging.get_absl_handler().python_handler)
    except ImportError:
        pass
    for handler in handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is old:
            handler.setStream(new)
    if faulthandler.is_enabled():
        faulthandler.enable(new, all_threads=True)


def _main(ready_fd: int) -> None:
    """The child: stdin is the pipe, stdout the original stderr. It ends at the pipe's
    end only, so it reads what the server wrote up to its last moment."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    try:
        os.write(ready_fd, b"1")
    except BrokenPipeError:  # the server stopped while this started
        return
    os.close(ready_fd)
    forward(sys.stdin.fileno(), sys.stdout.fileno())


if __name__ == "__main__":
    _main(int(sys.argv[1]))
