"""Finding a servable version and running the local server as a child process.

Kept free of TensorFlow so a client can start the server first and import TensorFlow
while the child loads the model (`scripts/grpc_demo.py`): the two imports then run
at the same time instead of one after the other. For the same reason it holds the
server's defaults, which ``ofrnn-serve --help`` shows before TensorFlow loads.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
from typing import Sequence

# The name the export writes into its warm-up requests and that the servers, clients and
# scripts use unless given another; TF Serving's model config must name the model the same.
DEFAULT_MODEL_NAME = "ofrnn"
DEFAULT_PORT = 8500  # tensorflow_model_server's gRPC port
LISTENING_PREFIX = "LISTENING "  # the server prints this and its target once the port is open
# ofrnn-serve's limits on a request, unless its flags set others.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_BATCH_SIZE = 64  # items a request may hold (TF Serving's batching.config: 32)
# The longest deadline a client gives a call: gRPC's overflows further on (1e10 s did), and
# every call then fails at once with DEADLINE_EXCEEDED. inf is no deadline.
MAX_TIMEOUT_S = 1e8
# How long a client goes on trying a server it cannot reach (restarting, or still loading:
# ofrnn-serve takes 15 to 40 s to listen) unless told otherwise; 0: it fails at once.
DEFAULT_WAIT_FOR_SERVER_S = 60.0


# The highest version TF Serving reads: it parses a version folder's name as an int64.
MAX_VERSION = 2 ** 63 - 1


def servable_version(version: int) -> int:
    """`version` as an int where TF Serving can load it (0 to `MAX_VERSION`), for an
    export's folder or a request's model spec; ValueError otherwise."""
    if not 0 <= int(version) <= MAX_VERSION:
        raise ValueError(f"version must be an integer from 0 to {MAX_VERSION} (TF Serving "
                         f"loads only those folders), got {version}")
    return int(version)


# Said where the newest version folder does not load: most often a copy into the base path
# caught part way, which a server polling it (TF Serving every second) reads as it is.
PARTIAL_COPY_HINT = ("; a copy into the base path still running or cut short? Copy a version "
                     "in under a name that is not a number, on the same file system, and "
                     "rename it to its number once whole, as ofrnn-export does (the versions "
                     "below it are not served instead)")


def version_folders(model_base_path: str) -> list[tuple[int, str]]:
    """``(version, folder name)`` of the version folders under `model_base_path`, lowest
    first, named as TF Serving reads them: ASCII digits, leading zeros allowed ("0001" is
    1), a value that fits an int64 (a longer number is no version there)."""
    return sorted((int(name), name) for name in os.listdir(model_base_path)
                  if re.fullmatch(r"[0-9]+", name) and int(name) <= MAX_VERSION
                  and os.path.isdir(os.path.join(model_base_path, name)))


def holds_saved_model(folder: str) -> bool:
    """Whether `folder` is a SavedModel (a version folder, not a model base path)."""
    return any(os.path.isfile(os.path.join(folder, name))
               for name in ("saved_model.pb", "saved_model.pbtxt"))


def refuse_version_folder(model_base_path: str) -> None:
    """ValueError where `model_base_path`, meant as a model base path (the folder of the
    numbered versions), is itself a version folder: the path an export printed, say."""
    if holds_saved_model(model_base_path):
        raise ValueError(
            f"{model_base_path} is itself a version folder (it holds a SavedModel): give its "
            f"parent, {os.path.dirname(os.path.abspath(model_base_path))}, under which each "
            f"export is a new numbered version")


def refuse_taken_version(final: str) -> None:
    """FileExistsError for a version folder that exists, also under another spelling of
    its number (TF Serving reads ``0003`` as version 3 too)."""
    base, name = os.path.split(final)
    same = [d for d in (os.listdir(base) if os.path.isdir(base) else [])
            if re.fullmatch(r"\d+", d) and int(d) == int(name)]
    if os.path.exists(final) or same:
        taken = final if os.path.exists(final) else os.path.join(base, same[0])
        raise FileExistsError(f"{taken} exists; pick another version")


def find_latest_version(model_base_path: str) -> tuple[int, str]:
    """Returns ``(version, path)`` of the highest integer-named subdirectory."""
    if not os.path.isdir(model_base_path):
        raise FileNotFoundError(f"model base path {model_base_path!r} is not a directory")
    versions = version_folders(model_base_path)
    if not versions:
        hint = ""
        if holds_saved_model(model_base_path):
            parent = os.path.dirname(os.path.abspath(model_base_path))
            hint = f" (this is itself a version folder: give its parent, {parent})"
        raise FileNotFoundError(
            f"no version directories under {model_base_path!r}: expected "
            f"{os.path.join(model_base_path, '<integer version>', 'saved_model.pb')}{hint}")
    version, name = versions[-1]
    path = os.path.join(model_base_path, name)
    unreadable = unreadable_part(path)
    if unreadable is not None:
        inside = "" if unreadable == path else f" ({unreadable})"
        raise PermissionError(f"{path!r} is the newest version but cannot be read by this "
                              f"user{inside}: its owner can open it to every user with "
                              f"{open_to_others_command(path)}")
    if not holds_saved_model(path):
        raise FileNotFoundError(f"{path!r} is the newest version but holds no saved_model.pb"
                                f"{PARTIAL_COPY_HINT}")
    return version, path


def unreadable_part(path: str, by_others: bool = False) -> str | None:
    """The first of the folder `path` and the folders and files inside it that this user
    cannot read (a folder: list and enter), or, with `by_others`, that its mode does not
    let every user read; None where there is none. A version written under a restrictive
    umask (077) is read by its writer alone: TF Serving running as a service user of its
    own cannot load it."""
    def closed(entry: str, folder: bool) -> bool:
        if by_others:
            wanted = (stat.S_IROTH | stat.S_IXOTH) if folder else stat.S_IROTH
            try:
                return os.stat(entry).st_mode & wanted != wanted
            except OSError:  # a link to nothing: not a matter of modes
                return False
        return not os.access(entry, (os.R_OK | os.X_OK) if folder else os.R_OK)

    if closed(path, True):
        return path
    for folder, subfolders, files in os.walk(path):
        for name in subfolders + files:
            entry = os.path.join(folder, name)
            if closed(entry, name in subfolders):
                return entry
    return None


def open_to_others_command(version_path: str) -> str:
    """The command that lets every user read the version folder `version_path` (the
    folders X, the files r), which TF Serving running as another user needs."""
    return shlex.join(["chmod", "-R", "a+rX", os.path.abspath(version_path)])


def spawn(model_base_path: str, model_name: str = DEFAULT_MODEL_NAME,
          extra_args: Sequence[str] = (), *, stderr=None) -> subprocess.Popen:
    """Starts `ofrnn_tf.serving.local_server` on a free loopback port and returns at once;
    `wait_until_listening` gives its target. A relative `model_base_path` is the caller's:
    the child runs from the package's parent folder, so that it imports this package.

    The child's standard input is a pipe this process holds the other end of, and the
    child stops when that pipe closes (`stop_when_stdin_closes`): a parent that ends
    without `stop` (SIGKILL, SIGTERM to a script without a handler, a crash) takes its
    server with it instead of leaving it listening under PID 1. The kernel closes the
    pipe whatever ends the parent, and whichever of its threads started the child
    (Linux's parent-death signal fires when that thread ends, and would need a
    ``preexec_fn``, unsafe in a process with threads)."""
    model_base_path = os.path.abspath(model_base_path)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return subprocess.Popen(
        [sys.executable, "-m", "ofrnn_tf.cli.serve", f"--model_base_path={model_base_path}",
         f"--model_name={model_name}", "--port=0", "--stop_when_stdin_closes", *extra_args],
        cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
        text=True)


def stop_when_stdin_closes() -> None:
    """Sends this process SIGTERM once its standard input reaches its end (or is closed),
    from a thread that reads it: a server `spawn` started then stops as on SIGTERM when
    its parent ends, however it ends. What is read is dropped."""
    def watch() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:  # closed from the start: as good as its end
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-when-stdin-closes", daemon=True).start()


def wait_until_listening(proc: subprocess.Popen, timeout: float = 180.0) -> str:
    """The ``host:port`` target of a `spawn`ed server once it listens; raises RuntimeError
    with the child's exit status if it stops before that (a child still silent after
    `timeout` seconds is killed), having closed the pipes of its stdin and stdout.

    The pipe is read with `os.read`, not the file object's ``readline``: that reads ahead
    into its own buffer, so the listening line, arriving with a line before it, would sit
    there while `select` waited on the empty pipe until the child wrote again or ended."""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    pending = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=1.0):
                chunk = os.read(fd, 65536)
                if not chunk:  # the child closed its end: it is ending
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    text = line.decode("utf-8", "replace")
                    if text.startswith(LISTENING_PREFIX):
                        return text[len(LISTENING_PREFIX):].strip()
            elif proc.poll() is not None:
                break
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        failure = f"local server did not listen within {timeout:.0f} s"
    else:
        failure = f"local server exited with status {proc.returncode} before listening"
    _close_pipes(proc)
    raise RuntimeError(failure)


def stop(proc: subprocess.Popen, grace: float = 30.0) -> int:
    """Stops a `spawn`ed server as ``docker stop`` would (SIGTERM, then SIGKILL after
    `grace` seconds) and closes the pipes of its stdin and stdout; returns its exit status
    (0 for a server that stopped on SIGTERM)."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _close_pipes(proc)
    return proc.returncode


def _close_pipes(proc: subprocess.Popen) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


def start_subprocess(model_base_path: str, model_name: str = DEFAULT_MODEL_NAME,
                     extra_args: Sequence[str] = (), *, stderr=None,
                     timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """Runs the local server in a child process on a free loopback port.

    Returns the process and its ``host:port`` target once it is listening (`spawn`,
    then `wait_until_listening`).
    """
    proc = spawn(model_base_path, model_name, extra_args, stderr=stderr)
    return proc, wait_until_listening(proc, timeout)
