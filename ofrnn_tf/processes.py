"""Whether a process still runs: temporary files and folders carry their writer's pid,
so that processes sharing a cache never write one file, and only a dead writer's
leftovers are removed."""

import os


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists (on this machine), whoever owns it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True
