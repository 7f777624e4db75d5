"""What training reports of its steps: the TensorBoard window of per-decoding-step losses
and pace, the progress bar's numbers, and the learning rate a step trained at."""

from __future__ import annotations

import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf


def last_step_learning_rate(optimizer) -> float:
    """The rate the optimizer's last update used. Keras evaluates a schedule at its
    `iterations`, the count after that update (the rate of the step to come: 0 after a
    cosine schedule's last step); a constant rate is a (possibly mirrored) variable."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # under loss scaling
    schedule = inner._learning_rate  # Keras keeps no public handle on the schedule
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return float(schedule(max(int(variable_value(inner.iterations)) - 1, 0)))
    return float(variable_value(inner.learning_rate))


def variable_value(value):
    """A (possibly mirrored) variable's value, which does not convert with int()."""
    return tf.convert_to_tensor(getattr(value, "value", value)).numpy()


def stage_bar_postfix(loss: float, rate: Optional[float]) -> str:
    """A stage bar's numbers after tqdm's own, each saying what it is: the step's loss and,
    once measured (after the epoch's first step), the pace in images a second, as the
    project's other bars write it (``loss=1.0581, 412 img/s``)."""
    return f"loss={loss:.4f}" + ("" if rate is None else f", {rate:.0f} img/s")


class LoggingWindow:
    """The training steps since the last TensorBoard point: their per-decoding-step
    losses and their pace.

    A point of `loss_per_decoding_step/t<t>` is the mean over the window's batches in
    which some image took step t (one batch's value was noisy, and 0 where none did);
    `examples_per_second` is the window's own pace, not the epoch's average so far, and
    leaves out each epoch's first step (the one that traces the step function, or waits
    for the epoch's input to start)."""

    def __init__(self):
        self._traced = None  # when the first step, the trace, ended
        self._steps_since_trace = 0
        self.restart()

    def restart(self) -> None:
        self._losses = self._counts = None
        self._started, self._steps = time.perf_counter(), 0

    def add(self, per_step) -> None:
        """One step done; `per_step`, its loss at each decoding step (NaN where no image
        took it), or None in stage 1."""
        if self._traced is None:
            self._traced = self._started = time.perf_counter()
        else:
            self._steps += 1
            self._steps_since_trace += 1
        if per_step is not None:
            taken = np.isfinite(per_step)
            if self._losses is None:
                self._losses, self._counts = np.zeros(len(per_step)), np.zeros(len(per_step))
            self._losses += np.where(taken, per_step, 0.0)
            self._counts += taken

    def step_losses(self) -> list:
        """Each decoding step's mean loss over the window, None where no image took it."""
        if self._losses is None:
            return []
        return [float(total / count) if count else None
                for total, count in zip(self._losses, self._counts)]

    def examples_per_second(self, global_batch: int) -> Optional[float]:
        """The window's pace; None for a window of the trace alone."""
        if not self._steps:
            return None
        return self._steps * global_batch / (time.perf_counter() - self._started)

    def bar_rate(self, global_batch: int) -> Optional[float]:
        """The pace since the trace, for the progress bar."""
        if not self._steps_since_trace:
            return None
        return self._steps_since_trace * global_batch / (time.perf_counter() - self._traced)
