"""A ``grpc.aio`` server run on an asyncio event loop in a thread of its own, stopped
and waited for from threads that are not coroutines, as a ``grpc.Server`` is."""

from __future__ import annotations

import asyncio
import threading
from concurrent import futures

import grpc


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
        """Waits until the server has stopped; True if `timeout` seconds passed first."""
        return not self._stopped.wait(timeout)

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
