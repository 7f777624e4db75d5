"""How a benchmark script stops: SIGTERM (``kill``, ``timeout``, a cancelled CI job) takes
Ctrl-C's way out, so that the script's clean-up runs (temporary folders, ``git worktree``
checkouts, local servers, child processes), where SIGTERM's default action would end the
process at once and leave them behind."""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable, Optional

from absl import app

# The signals the script has received (`_raise_interrupt`).
_RECEIVED: list[int] = []


def received() -> Optional[int]:
    """The last SIGINT or SIGTERM the script received, or None before any: a script that
    runs a child passes a SIGTERM on to it, which (unlike a terminal's Ctrl-C) reached the
    script alone."""
    return _RECEIVED[-1] if _RECEIVED else None


def _raise_interrupt(signum, frame) -> None:
    _RECEIVED.append(signum)
    raise KeyboardInterrupt  # as Python's own SIGINT handler does


def run(main: Callable[[list[str]], object]) -> None:
    """`absl.app.run(main)`, where SIGINT and SIGTERM raise KeyboardInterrupt, so that
    ``finally`` blocks and context managers run; once they have, the script ends in one line
    (``interrupted`` or ``terminated``) with 130 or 143, as a shell reports those signals,
    instead of a traceback."""

    def stoppable(argv):
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _raise_interrupt)
        try:
            return main(argv)
        except KeyboardInterrupt:
            signum = received() or signal.SIGINT
            said = "terminated" if signum == signal.SIGTERM else "interrupted"
            print(f"\n{os.path.basename(sys.argv[0])}: {said}", file=sys.stderr)
            raise SystemExit(128 + signum) from None

    app.run(stoppable)
