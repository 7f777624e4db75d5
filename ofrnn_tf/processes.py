"""Who owns a temporary file: processes sharing a cache (on one machine or several,
through a shared folder) never write one file, and only a dead writer's leftovers are
removed.

A temporary name carries its writer's owner tag, ``<host>-<pid>``. Whether a pid is
alive can be asked only on its own machine, so a tag of another host is never taken
for a dead writer's: that machine may be writing the file right now.
"""

import os
import re
import shutil
import socket


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists (on this machine), whoever owns it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _host() -> str:
    """This machine's name, reduced to characters safe in a file name."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"


def owner_tag() -> str:
    """``<host>-<pid>`` of this process, for the temporary names it writes."""
    return f"{_host()}-{os.getpid()}"


def left_by_dead_owner(tag: str) -> bool:
    """True when `tag` is an owner tag of this host whose process has died.

    A bare pid (names written before they carried a host) counts as this host's.
    Tags of other hosts, and text that is no tag, are False: not ours to remove.
    """
    host, _, pid = tag.rpartition("-")
    if not pid.isdigit() or (host and host != _host()):
        return False
    return not pid_alive(int(pid))


def remove_dead_leftovers(folder: str, name: re.Pattern) -> None:
    """Removes the entries of `folder` (files or folders) whose whole name matches `name`
    and that a dead writer of this host left: `name`'s group ``owner`` holds the owner
    tag, and an entry whose match has none (named before names carried one) counts as
    a dead writer's too. Live writers' entries, and other hosts', stay."""
    for entry in os.listdir(folder):
        match = name.fullmatch(entry)
        if not match or (match["owner"] is not None and not left_by_dead_owner(match["owner"])):
            continue
        path = os.path.join(folder, entry)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except FileNotFoundError:  # its writer, or another cleaner, got there first
                pass


def describe_owner(tag: str) -> str:
    """``pid <pid> on host <host>`` for an owner tag (`owner_tag`), for messages naming
    who holds a file; other text is quoted as it is."""
    tag = tag.strip()
    host, _, pid = tag.rpartition("-")
    if host and pid.isdigit():
        return f"pid {pid} on host {host}"
    return f"another process ({tag!r})" if tag else "another process"
