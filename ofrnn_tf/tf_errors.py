"""The reason in a TensorFlow op error, for messages people read (server answers, CLI
errors, images skipped by extraction or prediction)."""

from __future__ import annotations

import re

# Whole lines that are not the reason: eager errors carry the Python stack of the node
# (`Detected at node ... defined at (most recent call last):`, then `File "...", line N`).
_NOISE_LINE = re.compile(
    r"^(Graph execution error:|Detected at node .*|<stack traces unavailable>|\s*\[\[\{\{node .*"
    r"|\s*File \".*\", line \d+.*)$")
# Session errors end with the path of the failing call: [[cond_1/then/...]].
_NODE_PATH = re.compile(r"\s*\[\[[^\]]*\]\]")
# A failed Assert prints its data in brackets: "assertion failed: [<message>]".
_ASSERTION = re.compile(r"^assertion failed: \[(.*)\]$", re.S)


def op_error_text(error: BaseException) -> str:
    """The reason in a TensorFlow error message (an op error's ``message``, else the
    exception's text), without node names and stack notes."""
    return reason_text(getattr(error, "message", None) or str(error)) or type(error).__name__


def reason_text(text: str) -> str:
    """The reason in the text of a TensorFlow error (or a server's answer holding one),
    without node names, stack notes and the ``assertion failed: [...]`` of a failed
    `tf.debugging.Assert` around a message of the graph's own."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:[\w.]+\].*$", "", text, flags=re.S)  # and its "name:"
    text = _NODE_PATH.sub("", text)
    # Stack frames may run on one line after the reason's first words.
    text = re.sub(r'\s*File "[^"]*", line \d+, in \S+', "", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not _NOISE_LINE.match(ln)]
    text = " ".join(lines)
    return _ASSERTION.sub(r"\1", text)
