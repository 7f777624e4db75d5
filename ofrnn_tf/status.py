"""Status lines: how the library tells the user what it does, on stderr."""

import sys


def log(message: str) -> None:
    """Prints ``[ofrnn_tf] message`` on stderr at once (progress bars share the stream)."""
    print(f"[ofrnn_tf] {message}", file=sys.stderr, flush=True)
