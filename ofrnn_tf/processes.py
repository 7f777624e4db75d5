"""Who owns a temporary file: processes sharing a cache (on one machine or several,
through a shared folder) never write one file, and only a dead writer's leftovers are
removed.

A temporary name carries its writer's owner tag, ``<host>-<pid>@<start>``, the start
being when the process started (Linux; the tag is ``<host>-<pid>`` elsewhere): a writer
killed and started again under the same pid (a container's PID 1 restarted) is told
from its dead predecessor. Whether a pid is alive can be asked only on its own machine,
so a tag of another host is never taken for a dead writer's: that machine may be
writing the file right now. Such leftovers are named once, for the user to remove
where that host is gone (a container replaced by another of a new name).
"""

import errno
import os
import pwd
import re
import shutil
import socket
import sys
from typing import Optional

from ofrnn_tf.status import log


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


def _started(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since the machine booted (field 22 of
    Linux's ``/proc/<pid>/stat``); None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:].split()[19].decode()  # after "pid (name) "
    except (OSError, ValueError, IndexError):
        return None


def owner_tag() -> str:
    """``<host>-<pid>@<start>`` of this process (``<host>-<pid>`` where its start cannot
    be read), for the temporary names it writes."""
    pid = os.getpid()
    start = _started(pid)
    return f"{_host()}-{pid}" + (f"@{start}" if start else "")


def _parts(tag: str) -> tuple[str, str, str]:
    """(host, pid, start) of an owner tag; "" for a part it lacks."""
    host, _, rest = tag.rpartition("-")
    pid, _, start = rest.partition("@")
    return host, pid, start


def left_by_dead_owner(tag: str) -> bool:
    """True when `tag` is an owner tag of this host whose process has died: its pid is
    gone, or is another process's now (it started at another time than the tag's).

    A bare pid (names written before they carried a host) counts as this host's.
    Tags of other hosts, and text that is no tag, are False: not ours to remove.
    """
    host, pid, start = _parts(tag)
    if not pid.isdigit() or (host and host != _host()):
        return False
    if not pid_alive(int(pid)):
        return True
    now = _started(int(pid))
    return bool(start) and now is not None and now != start


def remove_dead_leftovers(folder: str, name: re.Pattern) -> None:
    """Removes the entries of `folder` (files or folders) whose whole name matches `name`
    and that a dead writer of this host left: `name`'s group ``owner`` holds the owner
    tag, and an entry whose match has none (named before names carried one) counts as
    a dead writer's too. Live writers' entries, and other hosts', stay; the latter are
    named, each once (`_name_other_hosts`)."""
    others = []
    for entry in os.listdir(folder):
        match = name.fullmatch(entry)
        if match and match["owner"] is not None and _parts(match["owner"])[0] not in (
                "", _host()):
            others.append(entry)
        if not match or (match["owner"] is not None and not left_by_dead_owner(match["owner"])):
            continue
        path = os.path.join(folder, entry)
        stopped = remove_entry(path)
        if stopped is not None and (os.path.realpath(folder), entry) not in _named_entries:
            _named_entries.add((os.path.realpath(folder), entry))
            log(f"{path}, a dead command's temporary entry, {not_removed(path, stopped)}: "
                f"left as it is, taking its disk space until its owner removes it")
    if others:
        _name_other_hosts(folder, others)


def remove_entry(path: str) -> Optional[OSError]:
    """Removes the file or folder tree `path`; returns the error that left it, or part of
    it, in place (None once it is gone, also where another process removed it first). A
    folder inside it that this user may not remove entries from (`removal_blocked`)
    leaves it whole."""
    failures: list[OSError] = []
    blocked = removal_blocked(path) if os.path.isdir(path) and not os.path.islink(path) else None
    if blocked is not None:
        return blocked

    def note(error: OSError) -> None:
        if not isinstance(error, FileNotFoundError):  # removed meanwhile: as asked
            failures.append(error)

    try:
        if os.path.isdir(path) and not os.path.islink(path):
            if sys.version_info >= (3, 12):  # `onerror` is deprecated there
                shutil.rmtree(path, onexc=lambda function, name, error: note(error))
            else:
                shutil.rmtree(path, onerror=lambda function, name, info: note(info[1]))
        else:
            os.remove(path)
    except FileNotFoundError:  # its writer, or another cleaner, got there first
        pass
    except OSError as error:
        failures.append(error)
    return failures[0] if failures else None


def removal_blocked(path: str) -> Optional[OSError]:
    """The error removing the folder tree `path` would meet first, found before anything is
    removed: a folder inside it that this user may not list or remove entries from (a
    removal stopped there would leave part of it); None where it is none."""
    blocked: list[OSError] = []
    for folder, _, _ in os.walk(path, onerror=blocked.append):
        if blocked:
            break
        if not os.access(folder, os.W_OK | os.X_OK):
            return PermissionError(errno.EACCES, os.strerror(errno.EACCES), folder)
    return blocked[0] if blocked else None


def not_removed(path: str, error: OSError) -> str:
    """Why `path` was not removed, from the `error` that stopped it: ``belongs to root
    and cannot be removed by this user (Permission denied: <file>)`` where another user
    owns it, ``cannot be removed (<reason>: <file>)`` otherwise; <file> is left out where it
    is `path` itself."""
    where = error.strerror or str(error)
    if error.filename is not None and os.fsdecode(error.filename) != path:
        where += f": {os.fsdecode(error.filename)}"
    try:
        uid = os.lstat(path).st_uid
    except OSError:
        uid = os.geteuid()
    if uid == os.geteuid() or not isinstance(error, PermissionError):
        return f"cannot be removed ({where})"
    try:
        owner = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid the system has no name for (a container's)
        owner = f"uid {uid}"
    return f"belongs to {owner} and cannot be removed by this user ({where})"


# Temporary entries named so far (a folder's real path and the name): other hosts', and
# dead writers' that this user cannot remove.
_named_entries: set[tuple[str, str]] = set()


def _name_other_hosts(folder: str, entries: list[str]) -> None:
    """Says which temporary entries of `folder` other hosts left that this process has
    not named yet: not removed, as their writers may be at work, and taking disk space
    for ever where the host is gone."""
    key = os.path.realpath(folder)
    entries = sorted(entry for entry in entries if (key, entry) not in _named_entries)
    if not entries:
        return
    _named_entries.update((key, entry) for entry in entries)
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3
                                      else "")
    log(f"{folder}: temporary entries of other hosts are left as they are ({shown}): a "
        f"command there may be writing them; where that host is gone (a container replaced "
        f"by one of another name), nothing will remove them: remove them by hand")


def describe_owner(tag: str) -> str:
    """``pid <pid> on host <host>`` for an owner tag (`owner_tag`), for messages naming
    who holds a file; other text is quoted as it is."""
    tag = tag.strip()
    host, pid, _ = _parts(tag)
    if host and pid.isdigit():
        return f"pid {pid} on host {host}"
    return f"another process ({tag!r})" if tag else "another process"
