"""Keras's global dtype policy, set for a block of code and given back after it.

A Keras layer takes the global policy in effect when it is made. What a run decides in
float32 (its frozen backbone, the weights it evaluates and exports) or in the precision
its config names (training) is therefore built inside `global_dtype_policy`, whatever
policy a notebook has set, and the notebook's comes back afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import keras


@contextlib.contextmanager
def global_dtype_policy(name: str) -> Iterator[None]:
    """Keras's global dtype policy is `name` inside the block (``"float32"``,
    ``"mixed_float16"``), the caller's again after it."""
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)
