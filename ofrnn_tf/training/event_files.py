"""A run's TensorBoard event files: the last step each curve logged, and their names
dated before a clock that is behind the one that made them."""

from __future__ import annotations

import glob
import os
import re
from typing import Optional

import tensorflow as tf


def last_logged_steps(directory: str) -> dict[str, int]:
    """The largest step of each tag in the TensorBoard event files in `directory`; a
    file cut short by a killed process counts up to where it breaks."""
    last: dict[str, int] = {}
    for path in glob.glob(os.path.join(glob.escape(directory), "events.out.tfevents.*")):
        try:
            for record in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    last[value.tag] = max(last.get(value.tag, 0), event.step)
        except tf.errors.DataLossError:
            pass
    return last


def date_event_files_before(directory: str, now: int) -> Optional[int]:
    """Renames the TensorBoard event files in `directory` to name stamps below `now`
    where any is at or after it, in the same order and with the rest of each name kept;
    returns the newest stamp's distance ahead of `now` in seconds (None: none renamed).

    A writer stamps its file's name with the second it is made, and TensorBoard reads a
    run's files in name order, taking a step lower than the last one read for a restart
    whose later points it drops: a file made by a clock behind the one that dated an
    earlier file (a run folder trained on another host, a clock set back) would sort
    first, and the resumed curves would not be shown."""
    stamped = []
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        match = re.fullmatch(r"(events\.out\.tfevents\.)(\d+)(\..*)", name)
        if match:
            stamped.append((int(match[2]), name, match))
    if not stamped or max(stamped)[0] < now:
        return None
    stamps = sorted({stamp for stamp, _, _ in stamped})
    shift = stamps[-1] - now + 1
    # Shifted alike, so as far apart as they were; never below their rank, which keeps
    # them in order and not negative however far apart the clocks that dated them were.
    earlier = {stamp: max(stamp - shift, rank) for rank, stamp in enumerate(stamps)}
    # Oldest first: every name a file is given has been let go by then.
    for stamp, name, match in sorted(stamped):
        os.rename(os.path.join(directory, name),
                  os.path.join(directory, f"{match[1]}{earlier[stamp]:010d}{match[3]}"))
    return shift - 1
