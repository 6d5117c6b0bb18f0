"""The few concurrency primitives that differ between the async and the sync SDK.

Hand-written on each side (this file and ``_async/_backend.py``); everything else in the
package is generated from the async source. Here a background reader is a daemon thread, so
callbacks fire as output arrives even while the caller is busy elsewhere.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import queue
import socket
import threading
import time
from typing import Any, Callable, Iterator, Optional

from hutch import errors


class Worker:
    """Runs ``fn()`` in a background thread: reading a stream while the caller does other things.

    ``background=False`` is for a caller that joins at once (a foreground command): then no
    thread is started, and ``join()`` runs ``fn()`` on the caller's own thread, which saves a
    thread's start and hand-over on every call."""

    def __init__(self, fn: Callable[[], None], abort: Callable[[], None],
                 background: bool = True) -> None:
        self._fn: Optional[Callable[[], None]] = fn
        self._abort = abort
        self._thread: Optional[threading.Thread] = None
        if background:
            self._fn = None
            self._thread = threading.Thread(target=fn, name="hutch-stream", daemon=True)
            self._thread.start()

    def done(self) -> bool:
        if self._thread is None:
            return self._fn is None
        return not self._thread.is_alive()

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the worker to finish; False if ``timeout`` passed first."""
        if self._thread is None:
            fn, self._fn = self._fn, None
            if fn is not None:
                fn()
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def cancel(self) -> None:
        # A thread cannot be interrupted; unblocking its socket read ends it promptly.
        if self._thread is None or self._thread is threading.current_thread():
            return
        self._abort()
        self._thread.join()


class Queue(queue.SimpleQueue):
    """Hands items from the reader thread to an iterating caller (``put_nowait``, ``get()``)."""


def lock() -> Any:
    """Guards state shared with the reader thread."""
    return threading.Lock()


def call(callback: Optional[Callable[..., Any]], *args: Any) -> None:
    if callback is not None:
        callback(*args)


def gather(*results: Any) -> list:
    """The sync twin of ``asyncio.gather``: the calls already ran, one after the other."""
    return list(results)


def abort_response(response: Any) -> None:
    """Unblock a thread reading ``response``: shut its socket down (close() would not wake it)."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Deadlines:
    """One daemon thread that fires every pending deadline of the process, so that a bounded
    call costs a heap entry rather than a thread of its own (a ``threading.Timer``)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list = []          # (when, sequence, entry); entry = [callback or None]
        self._order = itertools.count()
        self._cancelled = 0
        self._thread: Optional[threading.Thread] = None
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        # A child has the heap but not the thread: start afresh.
        self._cond = threading.Condition()
        self._heap, self._cancelled, self._thread = [], 0, None

    def add(self, seconds: float, callback: Callable[[], None]) -> list:
        entry = [callback]
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + seconds, next(self._order), entry))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hutch-deadlines",
                                                daemon=True)
                self._thread.start()
            elif self._heap[0][2] is entry:
                self._cond.notify()
        return entry

    def cancel(self, entry: list) -> None:
        with self._cond:
            if entry[0] is None:
                return
            entry[0] = None
            self._cancelled += 1
            # Cancelled entries leave the heap when due; compact when they are most of it.
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                self._heap = [item for item in self._heap if item[2][0] is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _run(self) -> None:
        cond = self._cond
        with cond:
            while True:
                while self._heap and self._heap[0][2][0] is None:
                    heapq.heappop(self._heap)
                    self._cancelled = max(0, self._cancelled - 1)
                if not self._heap:
                    cond.wait()
                    continue
                when, _, entry = self._heap[0]
                delay = when - time.monotonic()
                if delay > 0:
                    cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                callback, entry[0] = entry[0], None
                cond.release()
                try:
                    callback()
                except Exception:
                    pass  # an abort that fails leaves the read to its own timeout
                finally:
                    cond.acquire()


_deadlines = _Deadlines()


@contextlib.contextmanager
def deadline(seconds: Optional[float], abort: Callable[[], None],
             what: str) -> Iterator[None]:
    """Bound the block to ``seconds`` (None: unbounded); past it, raise ``TimeoutError_``.

    A blocked read cannot be interrupted, so the deadline thread unblocks it through ``abort``.
    """
    if not seconds:
        yield
        return
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        abort()

    entry = _deadlines.add(seconds, expire)
    try:
        yield
    except Exception:
        if fired.is_set():
            raise errors.TimeoutError_(f"{what} took longer than {seconds:g} s") from None
        raise
    finally:
        _deadlines.cancel(entry)


def sleep(seconds: float) -> None:
    time.sleep(seconds)


class Deferred:
    """Nothing to await on this side: the constructor already finished (see ``construct``)."""


def construct(ready: Callable[[], Any]) -> None:
    """Finish the object inside its constructor, as a blocking call can."""
    ready()
