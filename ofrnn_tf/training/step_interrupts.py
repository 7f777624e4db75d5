"""Ctrl-C and SIGTERM held to the end of the training step they land in.

A run stopped between checkpoints would lose the steps since the last one (up to
``--runtime.checkpoint_every``); a container's SIGTERM (``docker stop``, a preempted
Kubernetes pod) gives seconds of grace, and a step takes milliseconds (the first of a
process, which traces the step, seconds). While an epoch's training steps and the
checkpoint that ends them run, the first of these signals is only noted: the loop
finishes its step, `on_stop` saves a checkpoint there, and the signal is handed on to the
handler found (the command's, which ends it, or Python's own ``KeyboardInterrupt``). A
second signal is handed on at once. Everything else (validation, a label context's fit,
building data) stops where the signal lands."""

import signal
import threading
from typing import Callable, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StepInterrupts:
    """A context in which SIGINT and SIGTERM are held: `pending` is the signal that came,
    if any, until `deliver` hands it on. Leaving the context without an error calls
    `on_stop(signal)` for a pending signal (still held: a second one ends it at once), then
    hands the signal on. Off (the signals stop at once) when `enabled` is False or outside
    the main thread, where Python cannot install handlers."""

    def __init__(self, enabled: bool = True, on_stop: Optional[Callable[[int], None]] = None):
        self.enabled = enabled
        self.on_stop = on_stop
        self.pending: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self) -> "StepInterrupts":
        self.pending = None
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            return self
        for signum in SIGNALS:
            handler = signal.getsignal(signum)
            if handler in (signal.SIG_IGN, None):  # ignored (a background job), or not Python's
                continue
            self._previous[signum] = handler
            signal.signal(signum, self._hold)
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None and self.pending is not None and self.on_stop is not None:
            try:
                self.on_stop(self.pending)
            except BaseException:
                self._restore()  # its error stops the run: the handlers found go back
                raise
        previous = self._previous
        self._restore()
        # Looked at after the handlers are restored, so a signal in between is not lost.
        if kind is None and self.pending is not None:
            signum, self.pending = self.pending, None
            _hand_on(signum, previous.get(signum))

    def _hold(self, signum, frame) -> None:
        if self.pending is None:
            self.pending = signum
            return
        self.pending = signum
        self.deliver()  # a second one: the user means now

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def deliver(self) -> None:
        """Hands the pending signal to the handler found on entry (a Python handler is
        called here, so its ``KeyboardInterrupt`` rises from this call; the default
        action ends the process as the signal would have)."""
        signum, handler = self.pending, self._previous.get(self.pending)
        self._restore()
        self.pending = None
        if signum is not None:
            _hand_on(signum, handler)


def _hand_on(signum: int, handler) -> None:
    if callable(handler):
        handler(signum, None)
    else:
        signal.raise_signal(signum)
