"""The few concurrency primitives that differ between the async and the sync SDK.

Hand-written on each side (this file and ``_async/_backend.py``); everything else in the
package is generated from the async source. Here a background reader is a daemon thread, so
callbacks fire as output arrives even while the caller is busy elsewhere.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from typing import Any, Callable, Iterator, Optional

from hutch import errors


class Worker:
    """Runs ``fn()`` in a background thread: reading a stream while the caller does other things."""

    def __init__(self, fn: Callable[[], None], abort: Callable[[], None]) -> None:
        self._abort = abort
        self._thread = threading.Thread(target=fn, name="hutch-stream", daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the worker to finish; False if ``timeout`` passed first."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def cancel(self) -> None:
        # A thread cannot be interrupted; unblocking its socket read ends it promptly.
        if self._thread is threading.current_thread():
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


@contextlib.contextmanager
def deadline(seconds: Optional[float], abort: Callable[[], None],
             what: str) -> Iterator[None]:
    """Bound the block to ``seconds`` (None: unbounded); past it, raise ``TimeoutError_``.

    A blocked read cannot be interrupted, so a timer unblocks it through ``abort``.
    """
    if not seconds:
        yield
        return
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        abort()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except Exception:
        if fired.is_set():
            raise errors.TimeoutError_(f"{what} took longer than {seconds:g} s") from None
        raise
    finally:
        timer.cancel()


def sleep(seconds: float) -> None:
    time.sleep(seconds)


class Deferred:
    """Nothing to await on this side: the constructor already finished (see ``construct``)."""


def construct(ready: Callable[[], Any]) -> None:
    """Finish the object inside its constructor, as a blocking call can."""
    ready()
