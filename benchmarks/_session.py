"""A SavedModel signature run as TensorFlow Serving runs it, and its median call time."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np

from ofrnn_tf.serving.servable import load_session


class SessionModel:
    """One signature of a SavedModel, run through TF Serving's session loader."""

    def __init__(self, path: str, signature: str = "serving_default"):
        self.session, defs = load_session(path)
        sig = defs[signature]
        self.input = sig.inputs["images"].name
        self.fetches = {k: v.name for k, v in sig.outputs.items()}

    def __call__(self, images: np.ndarray) -> dict:
        return self.session.run(self.fetches, {self.input: images})


def median_seconds(call: Callable[[], object], repeats: int, warmup: int = 0) -> float:
    """Median wall seconds of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
