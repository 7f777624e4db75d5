"""How a command or benchmark script stops on Ctrl-C and SIGTERM: both raise
KeyboardInterrupt, so that ``finally`` blocks and context managers run (checkpoints,
temporary folders, child processes, local servers), where SIGTERM's default action
(``kill``, ``timeout``, ``docker stop``, a cancelled job) would end the process at once and
leave them behind. Once they have run, the process ends in one line (`ended_by`) with the
code a shell reports for the signal. Imports no TensorFlow."""

import contextlib
import signal
import subprocess
from typing import Optional

# The signals the process has received since `install` (`_note`).
_RECEIVED: list[int] = []
_deferring = False  # within `deferred`


def _note(signum, frame) -> None:
    _RECEIVED.append(signum)
    if not _deferring:
        raise KeyboardInterrupt  # as Python's own SIGINT handler does


@contextlib.contextmanager
def deferred(defer: bool = True):
    """A block a SIGINT or SIGTERM does not cut short (where `defer`): it raises
    KeyboardInterrupt once the block is done, so that a step and its record (a report's line
    and its count) are both done or neither."""
    global _deferring
    _deferring = defer
    try:
        yield
    finally:
        _deferring = False
    stop_if_interrupted()


def install() -> None:
    """Makes SIGINT and SIGTERM raise KeyboardInterrupt, each where its handler is still
    Python's default: a signal the parent ignores (SIGINT of a background job in a
    non-interactive shell) stays ignored, and a handler of the program's own is kept."""
    _RECEIVED.clear()
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _note)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _note)


def received() -> Optional[int]:
    """The last SIGINT or SIGTERM received, or None before any: a script that runs a child
    passes a SIGTERM on to it, which (unlike a terminal's Ctrl-C) reached the script
    alone."""
    return _RECEIVED[-1] if _RECEIVED else None


def stop_if_interrupted() -> None:
    """Raises KeyboardInterrupt where a signal came already: the handler's own raise is lost
    where the signal lands in a callback Python runs for the garbage collector
    (TensorFlow's weak references), which prints it as ignored and goes on."""
    if _RECEIVED:
        raise KeyboardInterrupt


def ended_by() -> tuple[str, int]:
    """What a process a KeyboardInterrupt stops says (``interrupted`` or ``terminated``) and
    its exit code (130 or 143), for the last signal received (a KeyboardInterrupt with
    none, raised by Python itself, is taken for Ctrl-C)."""
    signum = received() or signal.SIGINT
    return ("terminated" if signum == signal.SIGTERM else "interrupted"), 128 + signum


def wait_for(child: subprocess.Popen, poll: float = 0.5) -> int:
    """`child.wait()`, back in Python every `poll` seconds: the kernel may hand a SIGINT or
    SIGTERM sent to this process to any of its threads (TensorFlow's), and Python runs the
    handler, which raises here, in the main thread only once that is back in Python — a
    wait without a timeout would hold it until the child ended on its own."""
    while True:
        try:
            return child.wait(timeout=poll)
        except subprocess.TimeoutExpired:
            pass
