"""What the downloads through keras share: a bound on how long a silent network may hold
one, and the cache folder keras really reads and writes.

A firewalled host drops packets instead of refusing them: a connection then waits for the
kernel's retries (about two minutes) unless the socket has a timeout.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator

DOWNLOAD_SOCKET_TIMEOUT_S = 30.0


@contextlib.contextmanager
def socket_timeout(seconds: float = DOWNLOAD_SOCKET_TIMEOUT_S) -> Iterator[None]:
    """Gives sockets opened meanwhile a timeout of `seconds`, unless the process set one."""
    import socket

    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def certificates_remedy(error: BaseException) -> str:
    """What to add to a download's `error` where it is the certificate failure of
    python.org's Python for macOS, which trusts no certificate authority until a command
    it ships installs them (every HTTPS download fails until then); else ""."""
    if sys.platform != "darwin" or "CERTIFICATE_VERIFY_FAILED" not in str(error):
        return ""
    return ("; a Python installed from python.org verifies no certificate until its "
            "\"Install Certificates.command\" (in its folder under /Applications) has run")


def _tmp_keras_home() -> str:
    """Where keras keeps its home when no other is writable."""
    return os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")


def keras_home() -> str:
    """The folder keras takes as its home: ``$KERAS_HOME``, else ``~/.keras``, or
    ``/tmp/.keras`` where the home folder is not writable (keras's own rule)."""
    if "KERAS_HOME" in os.environ:
        return os.environ["KERAS_HOME"]
    home = os.path.expanduser("~")
    return os.path.join(home, ".keras") if os.access(home, os.W_OK) else _tmp_keras_home()


def keras_cache_dir(subdir: str) -> str:
    """The folder ``keras.utils.get_file`` reads and writes `subdir` in (``models``,
    ``datasets/fashion-mnist``): under `keras_home`, or under ``/tmp/.keras`` where that is
    not writable, whatever files it already holds."""
    base = os.path.expanduser(keras_home())
    if not _writable(base):
        base = _tmp_keras_home()
    return os.path.join(base, subdir)


def _writable(folder: str) -> bool:
    """Whether `folder` may be written in, or made (keras makes its home on import)."""
    if os.path.exists(folder):
        return os.access(folder, os.W_OK)
    return os.access(os.path.dirname(os.path.abspath(folder)), os.W_OK)


def keras_cache_candidates(subdir: str) -> list[str]:
    """Every folder a file keras caches in `subdir` may have been put in, in the order
    they are looked at: ``$KERAS_HOME``'s, ``~/.keras``'s and ``/tmp/.keras``'s (keras's
    fallback where the others are not writable)."""
    homes = [os.environ.get("KERAS_HOME"), os.path.join(os.path.expanduser("~"), ".keras"),
             _tmp_keras_home()]
    folders = [os.path.join(os.path.expanduser(h), subdir) for h in homes if h]
    return list(dict.fromkeys(folders))
