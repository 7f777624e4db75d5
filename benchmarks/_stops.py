"""How a benchmark script stops: SIGTERM (``kill``, ``timeout``, a cancelled CI job) takes
Ctrl-C's way out, so that the script's clean-up runs (temporary folders, ``git worktree``
checkouts, local servers, child processes), as the package's commands do
(`ofrnn_tf.cli.interrupts`)."""

from __future__ import annotations

import os
import sys
from typing import Callable

from absl import app

from ofrnn_tf.cli import help_exits_zero, interrupts


def run(main: Callable[[list[str]], object]) -> None:
    """`absl.app.run(main)`, where SIGINT and SIGTERM raise KeyboardInterrupt; once the
    script's clean-up has run, it ends in one line (``interrupted`` or ``terminated``) with
    130 or 143, as a shell reports those signals, instead of a traceback. ``--help`` exits
    with 0, as the commands' does (`help_exits_zero`)."""

    def stoppable(argv):
        interrupts.install()
        try:
            return main(argv)
        except KeyboardInterrupt:
            said, code = interrupts.ended_by()
            print(f"\n{os.path.basename(sys.argv[0])}: {said}", file=sys.stderr)
            raise SystemExit(code) from None

    help_exits_zero()
    app.run(stoppable)
