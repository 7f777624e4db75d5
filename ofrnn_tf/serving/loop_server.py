"""A ``grpc.aio`` server run on an asyncio event loop in a thread of its own, stopped
and waited for from threads that are not coroutines, as a ``grpc.Server`` is."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures

import grpc


# The longest a wait for the server's end goes without returning to Python (see
# `LoopServer.wait_for_termination`).
_WAIT_SLICE_S = 0.5


class LoopServer:
    """A started ``grpc.aio`` server, run on an event loop in a thread of its own, for
    callers that are not coroutines: `stop` and `wait_for_termination` as on a
    ``grpc.Server``. Dropped without `stop`, it stops at once (as gRPC stops a server
    it collects)."""

    def __init__(self, server: grpc.aio.Server, loop: asyncio.AbstractEventLoop,
                 workers: futures.Executor):
        self._server, self._loop, self._workers = server, loop, workers
        self._stopped = threading.Event()
        self._stops: list[asyncio.Future] = []  # those begun, read and added to on the loop

    def stop(self, grace: float | None) -> threading.Event:
        """Refuses new calls and cancels those still open after `grace` seconds (None:
        at once); returns an Event set once the server has stopped. As on a
        ``grpc.Server``, a later call with a shorter grace stops it sooner. It takes no
        lock: a signal handler that calls it may interrupt a call to it."""
        server, loop, workers, stopped, stops = (self._server, self._loop, self._workers,
                                                 self._stopped, self._stops)

        def end(_) -> None:  # held by the stops, not by this object
            workers.shutdown(wait=False)
            stopped.set()
            if all(begun.done() for begun in stops):
                loop.call_soon(loop.stop)  # after the calls' last steps

        def begin() -> None:  # on the loop, so one call at a time
            if not stopped.is_set():
                stops.append(asyncio.ensure_future(server.stop(grace)))
                stops[-1].add_done_callback(end)

        if not stopped.is_set():
            try:
                loop.call_soon_threadsafe(begin)
            except RuntimeError:  # the loop closed meanwhile: the server has stopped
                pass
        return stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Waits until the server has stopped; True if `timeout` seconds passed first.

        In slices of at most half a second, as ``grpc.Server`` waits: the kernel may hand
        a SIGINT or SIGTERM to any thread (gRPC's, TensorFlow's), and Python runs its
        handler in the main thread only once that is back in Python, which one wait
        without a timeout never is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _WAIT_SLICE_S if deadline is None else min(
                _WAIT_SLICE_S, deadline - time.monotonic())
            if self._stopped.wait(max(left, 0.0)):
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return True

    def __del__(self):
        if not self._loop.is_closed():
            self.stop(None)


def run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Runs `loop` in the calling thread (the server's own) until it is stopped, then
    closes it."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()
