"""Status lines and progress bars: how the library tells the user what it does, on stderr."""

import os
import re
import sys
import time

from tqdm import tqdm

# Where stderr is no terminal (a log file, a pipe, CI), a bar is written as a line at most
# this often (and once more at its end), rather than redrawn ten times a second.
LOG_INTERVAL_SECONDS = 30.0


# C0 controls but tab, DEL, C1 controls: what a terminal acts on, and a newline.
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` as one line for a terminal, control characters (a newline too) written as
    ``\\xNN``: a file name or a server's message holding an escape sequence or a newline
    must not clear the screen, nor write a line of its own, on the terminal of whoever
    reads about it."""
    return _CONTROLS.sub(lambda match: f"\\x{ord(match.group()):02x}", str(text))


def say(line: str) -> None:
    """Prints `line` on stderr at once (progress bars share the stream), as one line
    (`printable`)."""
    print(printable(line), file=sys.stderr, flush=True)


def log(message: str) -> None:
    """Prints ``[ofrnn_tf] message`` on stderr at once (`say`)."""
    say(f"[ofrnn_tf] {message}")


# The bar between its percentage and its count: ``100%|██████████| 64/64``.
_BAR = re.compile(r"(\d+%)\|[ \u2588-\u258f#0-9]*\| ")


class _LineStream:
    """A bar's stream off a terminal: each redraw becomes a line of its own instead of a
    carriage return over the last (which a log file keeps, every one of them), and
    without the bar's blocks, which the percentage and count already say in a log (and
    a screen reader would read out as "full block" ten times a line)."""

    def __init__(self, stream):
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None) or "utf-8"

    def write(self, text: str) -> None:
        line = _BAR.sub(r"\1 ", text.replace("\r", "").rstrip(), count=1)
        if line:  # not a bar's clearing, nor the newline it ends with
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _SteadyBar(tqdm):
    """A tqdm bar timed by the monotonic clock, not the wall clock tqdm reads: a wall clock
    set back or forward (NTP, a suspended machine, a hand) would show a negative or absurd
    elapsed time, rate and ETA, and hold back a log's next line until it caught up."""

    # tqdm's monitor thread compares the wall clock with the times the bar keeps; it only
    # redraws a bar that waits for more than one update (`miniters`), which ours never do.
    monitor_interval = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.disable:
            self._time = time.monotonic
            self.last_print_t = self.start_t = self._time()


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar on stderr: redrawn in place on a terminal, elsewhere a line at most every
    `LOG_INTERVAL_SECONDS`, checked at each update (a bar slowing down after a fast start
    writes its line in time). Its times are the monotonic clock's (`_SteadyBar`). Use it as
    a context manager (or close it), so a bar that an error or Ctrl-C interrupts is not
    drawn again after the message that says so."""
    stream = sys.stderr
    if enabled and not _sized_terminal(stream):
        kwargs.setdefault("mininterval", LOG_INTERVAL_SECONDS)
        kwargs.setdefault("maxinterval", LOG_INTERVAL_SECONDS)
        stream = _LineStream(stream)
    kwargs.setdefault("miniters", 1)
    return _SteadyBar(iterable, file=stream, disable=not enabled, dynamic_ncols=True,
                      **kwargs)


def _sized_terminal(stream) -> bool:
    """Whether `stream` is a terminal with a size: one opened without a window size (a
    pseudo-terminal of a CI runner or container) reports 0 columns and rows, where tqdm
    draws a bar as an empty line."""
    isatty = getattr(stream, "isatty", None)
    if not (isatty and isatty()):
        return False
    try:
        columns, rows = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return columns > 0 and rows > 0
